"""The coordinator's ExecutionPort over SymbolActor handles, with snapshots and replay.

Every call to a symbol actor comes from here, in order, numbered. Batches are queued and sent
lazily (one call for many batches, before anything needs them); ``submit`` and ``ingest_many`` are
fire-and-forget; ``collect`` gathers all the symbols settling at one chunk boundary in one wait
round. The port keeps, per symbol, the last snapshot and every call made since; when an actor died
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

from actors.symbol import NotRestored
from common.types import ExecutionResult, Trade

#: how long recovery keeps waiting for a restarted actor before giving up on the run
RECOVERY_TIMEOUT_S = 600.0
#: batches (or rows) queued for a symbol actor before they are sent although nothing needs them
#: yet: bounds what the object store holds on to
MAX_BACKLOG = 64
MAX_BACKLOG_ROWS = 262_144


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
    backlog: list = field(default_factory=list)  # (parts ref, watermark) not yet sent
    backlog_rows: int = 0


class RayExecutionPort:
    """ExecutionPort (``submit``/``collect``) plus ``ingest`` and ``snapshot_all``."""

    def __init__(self, handles: dict[str, object]) -> None:
        self.links = {s: _Link(h) for s, h in handles.items()}
        self.calls_sent = 0
        self.recoveries = 0
        self.snapshots = 0

    # -- the protocol --------------------------------------------------------------------------
    def start(self) -> None:
        """Start every actor at sequence 0 and keep its initial snapshot."""
        refs = {s: link.handle.start.remote() for s, link in self.links.items()}
        for s, ref in refs.items():
            self.links[s].snapshot = ray.get(ref)
        self.calls_sent += len(refs)

    def add(self, symbol: str, handle) -> None:
        """A symbol actor for a symbol that joined TopN: start it and keep its first snapshot."""
        link = self.links[symbol] = _Link(handle)
        link.snapshot = ray.get(handle.start.remote())
        self.calls_sent += 1

    def ingest(self, parts_ref, watermark_ns: int, rows: int = 0) -> None:
        """Queue the next batch (one ObjectRef of every symbol's rows) for every symbol actor.

        Batches are sent lazily, in order, in one call per actor: right before anything that
        needs them (a submit, a collect, a snapshot) or once ``MAX_BACKLOG`` have queued up. The
        executor sees exactly the same sequence of ingests as if each had been sent at once, so
        results do not change, but a quiet symbol costs no call per batch.
        """
        for link in self.links.values():
            link.backlog.append((parts_ref, watermark_ns))
            link.backlog_rows += rows
            if len(link.backlog) >= MAX_BACKLOG or link.backlog_rows >= MAX_BACKLOG_ROWS:
                self._flush(link)

    def _flush(self, link: _Link) -> None:
        if link.backlog:
            watermarks = [w for _, w in link.backlog]
            refs = [r for r, _ in link.backlog]
            link.backlog, link.backlog_rows = [], 0
            link.unchecked.append(self._send(link, "ingest_many", (watermarks, *refs)))

    def submit(self, symbol: str, trades: list[Trade]) -> None:
        link = self.links[symbol]
        self._flush(link)
        link.unchecked.append(self._send(link, "submit", (trades,)))

    def collect(self, symbols: list[str], up_to_ns: int) -> dict[str, list[ExecutionResult]]:
        for s in symbols:
            self._flush(self.links[s])
        refs = {s: self._send(self.links[s], "collect", (up_to_ns,)) for s in symbols}
        ray.wait(list(refs.values()), num_returns=len(refs))
        out: dict[str, list[ExecutionResult]] = {}
        for s, ref in refs.items():
            try:
                out[s] = ray.get(ref)
            except Exception as e:  # noqa: BLE001 - sorted out by _recoverable
                if not _recoverable(e):
                    raise
                out[s] = self._recover(s, e)
        return out

    def snapshot_all(self) -> None:
        """Take every actor's snapshot (one wait round) and forget the calls it covers."""
        for link in self.links.values():
            self._flush(link)
        self.check()
        pending = {s: link.handle.snapshot.remote() for s, link in self.links.items()}
        self.calls_sent += len(pending)
        while pending:
            ray.wait(list(pending.values()), num_returns=len(pending))
            retry = {}
            for s, ref in pending.items():
                link = self.links[s]
                try:
                    snap = ray.get(ref)
                except Exception as e:  # noqa: BLE001
                    if not _recoverable(e):
                        raise
                    self._recover(s, e)
                    retry[s] = link.handle.snapshot.remote()
                    self.calls_sent += 1
                    continue
                # every call before the snapshot ran, in order, in the process that took it
                link.snapshot, link.calls, link.unchecked = snap, [], []
            pending = retry
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
    def _send(self, link: _Link, method: str, args: tuple):
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
                ray.get(link.handle.restore.remote(link.snapshot), timeout=60)
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
