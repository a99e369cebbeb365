"""One book snapshot as the exchange parsers produce it, and the builder that turns rows into a
``BookBatch`` (the replay schema's columns, with symbols interned in the run's ``SymbolTable``).

The parsers (``upbit.py``, ``binance.py``) each turn their wire format into ``BookRow``s in one
place; everything after them (validation, recording, the engines) sees only batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.marketdata.batch import BookBatch, SymbolTable

_EMPTY = np.zeros(0, dtype=np.float64)


class FrameError(ValueError):
    """A frame that cannot become a book row; ``reason`` is the rejection reason counted."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class BookRow:
    """One order-book snapshot in the replay schema (levels best first, float64 arrays)."""

    ts_ns: int  # the venue's event time, else recv_ns
    recv_ns: int  # local receive time (time.time_ns())
    venue: int  # common.types.UPBIT / BINANCE
    symbol: str  # base asset (FX book: USDT on upbit)
    bid_px: np.ndarray
    bid_sz: np.ndarray
    ask_px: np.ndarray
    ask_sz: np.ndarray

    def restamped(self, recv_ns: int) -> BookRow:
        """The same book seen again at ``recv_ns`` (re-emitted after a stale period)."""
        return BookRow(self.ts_ns, recv_ns, self.venue, self.symbol, self.bid_px, self.bid_sz,
                       self.ask_px, self.ask_sz)


def rows_to_batch(rows: list[BookRow], symtab: SymbolTable) -> BookBatch:
    """A ``BookBatch`` of ``rows`` in the given order (quotes are right by construction)."""
    n = len(rows)
    bid_off = np.zeros(n + 1, dtype=np.int64)
    ask_off = np.zeros(n + 1, dtype=np.int64)
    if n:
        np.cumsum([r.bid_px.shape[0] for r in rows], out=bid_off[1:])
        np.cumsum([r.ask_px.shape[0] for r in rows], out=ask_off[1:])

    def flat(name: str) -> np.ndarray:
        return np.concatenate([getattr(r, name) for r in rows]) if n else _EMPTY

    return BookBatch(
        ts_ns=np.fromiter((r.ts_ns for r in rows), dtype=np.int64, count=n),
        recv_ns=np.fromiter((r.recv_ns for r in rows), dtype=np.int64, count=n),
        venue=np.fromiter((r.venue for r in rows), dtype=np.int8, count=n),
        sym=np.fromiter((symtab.id_of(r.symbol) for r in rows), dtype=np.int32, count=n),
        quote_ok=np.ones(n, dtype=bool),
        bid_off=bid_off,
        bid_px=flat("bid_px"),
        bid_sz=flat("bid_sz"),
        ask_off=ask_off,
        ask_px=flat("ask_px"),
        ask_sz=flat("ask_sz"),
        symbols=symtab.names,
    )
