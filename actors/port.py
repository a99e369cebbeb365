"""The coordinator's ExecutionPort over SymbolActor handles, with snapshots and replay.

Every call to a symbol actor comes from here, in order, numbered. What the coordinator asks of a
symbol actor -- ingest a batch, take trades, collect results, take a snapshot -- is queued per
actor as *operations* and sent in as few calls as possible: one ``SymbolActor.run`` call carries
every operation queued since the last call, and a call is made only when its output is needed (a
``collect`` at a settlement round, a snapshot), or when ``MAX_QUEUED_BATCHES`` batches
(``MAX_QUEUED_ROWS`` rows) have piled up for an actor. On two cores a Ray call costs milliseconds
of submission, scheduling and wake-up; a settlement round used to cost three calls per symbol
(ingest, submit, collect) and now costs one, a quiet symbol costs no call per batch, and a
snapshot round costs one light call per actor (queued batches stay queued). The
executor sees exactly the same sequence of ingests, submits and collects, so results do not
change.

The port keeps, per symbol, the last snapshot and every call made since; when an actor died
(``RayActorError``/``ActorUnavailableError``) or came back empty (``NotRestored``) it restores the
snapshot into the restarted actor and re-sends those calls in order. Outputs of replayed collects
that were already applied are discarded, so no result is lost or delivered twice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import ray
from loguru import logger
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from actors.symbol import OP_COLLECT, OP_INGEST, OP_SNAPSHOT, OP_SUBMIT, NotRestored
from common.types import ExecutionResult, Trade

#: how long recovery keeps waiting for a restarted actor before giving up on the run
RECOVERY_TIMEOUT_S = 600.0
#: batches (or rows) queued for a symbol actor before they are sent although nothing needs them
#: yet, as one fire-and-forget call: bounds what a quiet actor keeps the object store holding on
#: to (about as much as the calls kept for replay between two snapshots)
MAX_QUEUED_BATCHES = 64
MAX_QUEUED_ROWS = 20 * 65_536
#: an actor with trades outstanding gets its queued batches at least this often, so that the
#: collect settling them finds it caught up: on a live feed (hundreds of one-book batches a
#: second) a settlement otherwise waits while the actor works through the whole queue
HOT_FLUSH_S = 0.02


def _recoverable(exc: BaseException) -> bool:
    """An actor death or restart (ActorUnavailableError is a RayActorError), or the restarted
    actor saying it needs a restore. Any other task error is a bug and propagates."""
    if isinstance(exc, RayActorError):
        return True
    return isinstance(exc, RayTaskError) and isinstance(exc.cause, NotRestored)


@dataclass
class _Link:
    """What the port knows about one symbol actor."""

    handle: object
    snapshot: dict | None = None
    seq: int = 0
    calls: list = field(default_factory=list)  # (seq, method, args) since the snapshot
    unchecked: list = field(default_factory=list)  # refs of fire-and-forget calls
    ops: list = field(default_factory=list)  # operations queued, not sent yet (actors.symbol)
    outstanding: int = 0  # trades submitted and not collected yet
    last_send: float = 0.0  # time.monotonic() of the last call sent
    queued_batches: int = 0
    queued_rows: int = 0
    sent_last: object = None  # the last FeedPart ref sent to the actor
    #: the ref of the FeedPart last ingested before the snapshot: the snapshot leaves that batch
    #: out, ``restore`` gets it back from here
    snapshot_part: object = None


class RayExecutionPort:
    """ExecutionPort (``submit``/``collect``) plus ``ingest`` and ``snapshot_all``."""

    def __init__(self, handles: dict[str, object]) -> None:
        self.links = {s: _Link(h) for s, h in handles.items()}
        self.calls_sent = 0
        self.recoveries = 0
        self.snapshots = 0
        #: settlement rounds and the wall time spent in them (the per-trade Ray cost)
        self.collect_rounds = 0
        self.collect_wait_s = 0.0

    # -- the protocol --------------------------------------------------------------------------
    def start(self) -> None:
        """Start every actor at sequence 0 and keep its initial snapshot."""
        refs = {s: link.handle.start.remote() for s, link in self.links.items()}
        snaps = ray.get(list(refs.values()))
        for s, snap in zip(refs, snaps, strict=True):
            self.links[s].snapshot = snap
        self.calls_sent += len(refs)

    def add(self, symbol: str, handle) -> None:
        """A symbol actor for a symbol that joined TopN: start it and keep its first snapshot."""
        link = self.links[symbol] = _Link(handle)
        link.snapshot = ray.get(handle.start.remote())
        self.calls_sent += 1

    def ingest(self, parts_ref, watermark_ns: int, rows: int = 0) -> None:
        """Queue the next batch (the ObjectRef of a ``FeedPart``, or for a small live batch the
        part itself; ``rows`` rows) for every symbol actor; it travels with the actor's next
        call, or within ``HOT_FLUSH_S`` to an actor with trades outstanding."""
        for link in self.links.values():
            link.ops.append((OP_INGEST, watermark_ns, parts_ref))
            link.queued_batches += 1
            link.queued_rows += rows
            if (link.queued_batches >= MAX_QUEUED_BATCHES or link.queued_rows >= MAX_QUEUED_ROWS
                    or (link.outstanding and time.monotonic() - link.last_send >= HOT_FLUSH_S)):
                link.unchecked.append(self._send_ops(link))

    def submit(self, symbol: str, trades: list[Trade]) -> None:
        """Queue trades; they travel with the collect that settles them (or an earlier call)."""
        link = self.links[symbol]
        link.ops.append((OP_SUBMIT, trades))
        link.outstanding += len(trades)

    def collect(self, symbols: list[str], up_to_ns: int) -> dict[str, list[ExecutionResult]]:
        """One call per settling symbol (carrying its queued batches and trades), one wait."""
        t0 = time.perf_counter()
        refs = {}
        for s in symbols:
            link = self.links[s]
            link.ops.append((OP_COLLECT, up_to_ns))
            refs[s] = self._send_ops(link)
        out: dict[str, list[ExecutionResult]] = {}
        try:
            out = dict(zip(refs, ray.get(list(refs.values())), strict=True))
        except Exception:  # noqa: BLE001 - one of them failed: sort them out one by one
            ray.wait(list(refs.values()), num_returns=len(refs))
            for s, ref in refs.items():
                try:
                    out[s] = ray.get(ref)
                except Exception as e:  # noqa: BLE001 - sorted out by _recoverable
                    if not _recoverable(e):
                        raise
                    out[s] = self._recover(s, e)
        for s, results in out.items():
            link = self.links[s]
            link.outstanding = max(0, link.outstanding - len(results or ()))
        self.collect_rounds += 1
        self.collect_wait_s += time.perf_counter() - t0
        return out

    def snapshot_all(self) -> None:
        """Take every actor's snapshot (one light call each, one wait round) and forget the
        calls it covers.

        A snapshot is of the state the actor reached with the calls sent so far; operations
        still queued stay queued (they are not in the replay list yet), so the snapshot round
        does not make every actor catch up on its queued batches first. Quiet actors are asked
        too: the round doubles as a check that each actor is still there, so a lost one is
        restored while it has little to replay."""
        self.check()
        pending = {s: self._send(link, "run", ([(OP_SNAPSHOT,)],))
                   for s, link in self.links.items()}
        ray.wait(list(pending.values()), num_returns=len(pending))
        for s, ref in pending.items():
            link = self.links[s]
            try:
                snap = ray.get(ref)
            except Exception as e:  # noqa: BLE001
                if not _recoverable(e):
                    raise
                # the replay ends with this very call: its output is the snapshot
                snap = self._recover(s, e)
            # every call before the snapshot ran, in order, in the process that took it
            link.snapshot, link.calls, link.unchecked = snap, [], []
            link.snapshot_part = link.sent_last
        self.snapshots += 1

    def check(self) -> None:
        """Make sure every fire-and-forget call so far ran (recovering if one did not)."""
        for s, link in self.links.items():
            refs, link.unchecked = link.unchecked, []
            for ref in refs:
                try:
                    ray.get(ref)
                except Exception as e:  # noqa: BLE001
                    if not _recoverable(e):
                        raise
                    self._recover(s, e)
                    break

    # -- internals -----------------------------------------------------------------------------
    def _send_ops(self, link: _Link):
        """One ``run`` call with every operation queued for the actor; the batches' refs go as
        top-level arguments (Ray resolves them: the actor never holds a ref of its own)."""
        ops, link.ops, link.queued_batches, link.queued_rows = link.ops, [], 0, 0
        wire, parts = [], []
        for op in ops:
            if op[0] == OP_INGEST:
                wire.append(op[:2])
                parts.append(op[2])
            else:
                wire.append(op)
        if parts:
            link.sent_last = parts[-1]
        return self._send(link, "run", (wire, *parts))

    def _send(self, link: _Link, method: str, args: tuple):
        link.last_send = time.monotonic()
        link.seq += 1
        link.calls.append((link.seq, method, args))
        self.calls_sent += 1
        return getattr(link.handle, method).remote(link.seq, *args)

    def _recover(self, symbol: str, cause: BaseException):
        """Restore the snapshot into the (restarted) actor, re-send every call since in order, and
        return the output of the last one (the call that found the actor gone)."""
        link = self.links[symbol]
        deadline = time.monotonic() + RECOVERY_TIMEOUT_S
        logger.warning("symbol-{}: actor lost ({}); restoring snapshot seq {} and replaying {} "
                       "calls", symbol, type(cause).__name__, link.snapshot["seq"], len(link.calls))
        attempt = 0
        while True:
            attempt += 1
            try:
                ray.get(link.handle.restore.remote(link.snapshot, link.snapshot_part),
                        timeout=60)
                refs = [getattr(link.handle, m).remote(seq, *args) for seq, m, args in link.calls]
                self.calls_sent += 1 + len(refs)
                outs = ray.get(refs, timeout=120) if refs else []
            except Exception as e:  # noqa: BLE001
                if not (_recoverable(e) or isinstance(e, GetTimeoutError)):
                    raise
                if time.monotonic() > deadline:
                    raise RuntimeError(f"symbol-{symbol}: not back after "
                                       f"{RECOVERY_TIMEOUT_S:.0f} s ({attempt} attempts)") from e
                time.sleep(min(0.1 * attempt, 2.0))
                continue
            self.recoveries += 1
            link.unchecked = []
            return outs[-1] if outs else None
