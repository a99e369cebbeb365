"""SymbolActor: the Ray shell around one symbol's PaperExecutor (its L2 books and FillModel).

Every call but ``start``/``restore`` carries a sequence number handed out by the coordinator, and
an actor process starts *unrestored*: a restarted incarnation refuses work until the coordinator
has restored it from its last snapshot, so a call can never silently run on an empty executor.

Market data arrives as ``FeedPart``s: one object per batch in the object store, shared by every
symbol actor (its numpy arrays are read straight from shared memory, no copy per actor), from
which each actor's executor takes its own rows by index, exactly as the local engine's executors
do. Parts are passed as top-level arguments, so Ray resolves them before the call and the actor
never holds an ObjectRef (no borrower bookkeeping per batch). A snapshot therefore leaves its
batch out (``LAST_PART``): the coordinator keeps the ref of the last part it sent and hands that
part back to ``restore``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import ray

from common.execution.executor import PaperExecutor
from common.fill.models import FillModelConfig
from common.marketdata.batch import BookBatch
from common.portfolio.state import FeeSchedule


@dataclass(frozen=True, slots=True)
class FeedPart:
    """One validated batch as the feed hands it to every symbol actor (one ``ray.put``).

    ``rows_for(symbol)`` are that symbol's executor's rows of ``batch``: its Upbit rows, its
    Binance rows and the FX rows (``common.engine.build.executor_rows``: the same indices the
    local engine's executors get, so both engines' executors see identical rows). Splitting
    indices instead of copying rows keeps the feed's cost per batch independent of the number
    of symbols, and the FX rows are held once for all. The symbols' indices sit in one flat
    array (``rows[row_off[2k]:row_off[2k + 1]]`` Upbit, then Binance up to ``row_off[2k + 2]``,
    for the k-th symbol of ``index``): an actor deserialises a handful of arrays per batch, not
    two per symbol.
    """

    batch: BookBatch
    index: dict[str, int]
    row_off: np.ndarray
    rows: np.ndarray
    fx_rows: np.ndarray

    @staticmethod
    def split(batch: BookBatch, per_symbol: dict[str, tuple[np.ndarray, np.ndarray]],
              fx_rows: np.ndarray) -> FeedPart:
        """A part from each symbol's (Upbit rows, Binance rows), in ``per_symbol``'s order."""
        pieces = [r for pair in per_symbol.values() for r in pair]
        off = np.zeros(len(pieces) + 1, dtype=np.int64)
        np.cumsum([len(r) for r in pieces], out=off[1:])
        flat = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
        return FeedPart(batch, {name: k for k, name in enumerate(per_symbol)}, off, flat,
                        fx_rows)

    def rows_for(self, symbol: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(Upbit rows, Binance rows, FX rows) of ``symbol``'s executor."""
        k = 2 * self.index[symbol]
        off = self.row_off
        return (self.rows[off[k]:off[k + 1]], self.rows[off[k + 1]:off[k + 2]], self.fx_rows)


#: the operations of a ``run`` call, applied in order: (OP_INGEST, watermark_ns) -- the batch is
#: the call's next FeedPart argument --, (OP_SUBMIT, trades), (OP_COLLECT, up_to_ns), (OP_SNAPSHOT,)
OP_INGEST, OP_SUBMIT, OP_COLLECT, OP_SNAPSHOT = "ingest", "submit", "collect", "snapshot"
#: stands in a snapshot for the batch of the last FeedPart ingested (restore gets it back)
LAST_PART = "last-part"


class NotRestored(RuntimeError):
    """The actor process has no state to continue from (it was restarted), or a call is out of
    sequence: the coordinator must restore it from a snapshot and replay."""


class SymbolExecutorShell:
    """The plain object behind ``SymbolActor``: sequence checks around a ``PaperExecutor``."""

    def __init__(self, symbol: str, fill_model_config: FillModelConfig, fees: FeeSchedule,
                 seed: int) -> None:
        self.symbol = symbol
        self.executor = PaperExecutor(symbol, fill_model_config, fees, seed)
        self.seq: int | None = None  # None: not restored yet
        #: the batch of the FeedPart last ingested (or restored): the only batch a snapshot may
        #: leave out as ``LAST_PART``
        self._last_batch: BookBatch | None = None

    def _step(self, seq: int) -> None:
        if self.seq is None:
            raise NotRestored(f"symbol-{self.symbol}: restarted, waiting for a restore")
        if seq != self.seq + 1:
            raise NotRestored(f"symbol-{self.symbol}: call {seq} after {self.seq}")
        self.seq = seq

    def start(self) -> dict:
        """First incarnation only: begin at sequence 0 and return the initial snapshot."""
        self.seq = 0
        return self.snapshot()

    def run(self, seq: int, ops: list[tuple], *parts: FeedPart):
        """Apply the operations the coordinator queued since its last call, in order, and return
        the output of the last one (a collect's results, a snapshot, or None).

        One call carries a settlement round's batches, trades and collect together (see
        actors/port.py); ``parts`` are the batches of the OP_INGEST operations, in order."""
        self._step(seq)
        batches = iter(parts)
        out = None
        for op in ops:
            kind = op[0]
            if kind == OP_INGEST:
                part = next(batches)
                self.executor.ingest_split(part.batch, op[1], *part.rows_for(self.symbol))
                self._last_batch = part.batch
                out = None
            elif kind == OP_SUBMIT:
                self.executor.submit(op[1])
                out = None
            elif kind == OP_COLLECT:
                out = self.executor.collect(op[1])
            elif kind == OP_SNAPSHOT:
                out = self.snapshot()
            else:
                raise ValueError(f"symbol-{self.symbol}: unknown operation {kind!r}")
        return out

    def snapshot(self) -> dict:
        """The sequence number and the executor's state, its current batch left out: that is
        always the last part ingested, which the coordinator keeps (and hands to ``restore``)."""
        if self.seq is None:
            raise NotRestored(f"symbol-{self.symbol}: restarted, waiting for a restore")
        state = self.executor.get_state()
        if state["batch"] is not None:
            assert state["batch"] is self._last_batch, "executor batch is not the last part's"
            state["batch"] = LAST_PART
        return {"seq": self.seq, "state": state}

    def restore(self, snap: dict, part: FeedPart | None = None) -> int:
        """Continue from ``snap``; ``part`` is the FeedPart last ingested before it was taken."""
        state = dict(snap["state"])
        if state["batch"] is not None:
            if part is None:
                raise ValueError(f"symbol-{self.symbol}: the snapshot needs its last batch")
            state["batch"] = part.batch
        self._last_batch = state["batch"]
        self.executor.set_state(state)
        self.seq = snap["seq"]
        return self.seq


@ray.remote
class SymbolActor(SymbolExecutorShell):
    """One per symbol, named ``symbol-<SYMBOL>``; restartable, never retried by Ray itself."""

    def where(self) -> dict:
        return {"pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id()}
