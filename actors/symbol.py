"""SymbolActor: the Ray shell around one symbol's PaperExecutor (its L2 books and FillModel).

Every call but ``start``/``restore`` carries a sequence number handed out by the coordinator, and
an actor process starts *unrestored*: a restarted incarnation refuses work until the coordinator
has restored it from its last snapshot, so a call can never silently run on an empty executor.
"""

from __future__ import annotations

import os

import ray

from common.execution.executor import PaperExecutor
from common.fill.models import FillModelConfig
from common.marketdata.batch import BookBatch
from common.portfolio.state import FeeSchedule
from common.types import ExecutionResult, Trade


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

    def ingest(self, seq: int, batch: BookBatch, watermark_ns: int) -> None:
        self._step(seq)
        self.executor.ingest(batch, watermark_ns)

    def ingest_many(self, seq: int, watermarks: list[int], *parts: dict[str, BookBatch]) -> None:
        """Several batches in order; each part holds every symbol's rows, this actor takes its own."""
        self._step(seq)
        for wm, part in zip(watermarks, parts, strict=True):
            self.executor.ingest(part[self.symbol], wm)

    def submit(self, seq: int, trades: list[Trade]) -> None:
        self._step(seq)
        self.executor.submit(trades)

    def collect(self, seq: int, up_to_ns: int) -> list[ExecutionResult]:
        self._step(seq)
        return self.executor.collect(up_to_ns)

    def snapshot(self) -> dict:
        if self.seq is None:
            raise NotRestored(f"symbol-{self.symbol}: restarted, waiting for a restore")
        return {"seq": self.seq, "state": self.executor.get_state()}

    def restore(self, snap: dict) -> int:
        self.executor.set_state(snap["state"])
        self.seq = snap["seq"]
        return self.seq


@ray.remote
class SymbolActor(SymbolExecutorShell):
    """One per symbol, named ``symbol-<SYMBOL>``; restartable, never retried by Ray itself."""

    def where(self) -> dict:
        return {"pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id()}
