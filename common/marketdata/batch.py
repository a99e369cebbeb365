"""Columnar order-book batches: the one in-memory shape market data travels in.

A ``BookBatch`` holds n book snapshots as flat numpy arrays (Arrow list columns become values +
offsets without a Python object per level). Symbols are small integers into a ``SymbolTable``
that only ever grows, so ids are stable for a run and identical across processes that see the
same data in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.types import FX_SYMBOL


class SymbolTable:
    """Maps base-asset names to dense int ids in order of first appearance (deterministic)."""

    def __init__(self, names: tuple[str, ...] | list[str] = ()) -> None:
        self._ids: dict[str, int] = {}
        self._names: list[str] = []
        for n in names:
            self.id_of(n)

    def id_of(self, name: str) -> int:
        i = self._ids.get(name)
        if i is None:
            i = len(self._names)
            self._ids[name] = i
            self._names.append(name)
        return i

    def get(self, name: str) -> int | None:
        return self._ids.get(name)

    def ids_of(self, names) -> np.ndarray:
        return np.fromiter((self.id_of(n) for n in names), dtype=np.int32)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._names)

    @property
    def fx_id(self) -> int:
        return self.id_of(FX_SYMBOL)

    def __len__(self) -> int:
        return len(self._names)


@dataclass(frozen=True, slots=True)
class BookBatch:
    """n order-book snapshots, rows in ``recv_ns`` order.

    Row i's bids are ``bid_px[bid_off[i]:bid_off[i+1]]`` (best first) with sizes from ``bid_sz``
    over the same range; asks likewise with ``ask_off``. ``venue`` holds ``common.types.UPBIT`` /
    ``BINANCE`` (-1: unknown exchange), ``sym`` the id into ``symbols`` (-1: unknown).
    ``quote_ok`` is False where the row's quote currency does not belong to its venue and symbol
    (e.g. a ``BTC`` row on upbit quoted in ``BTC``).
    """

    ts_ns: np.ndarray  # int64 (n,)
    recv_ns: np.ndarray  # int64 (n,)
    venue: np.ndarray  # int8 (n,)
    sym: np.ndarray  # int32 (n,)
    quote_ok: np.ndarray  # bool (n,)
    bid_off: np.ndarray  # int64 (n+1,)
    bid_px: np.ndarray  # float64
    bid_sz: np.ndarray  # float64
    ask_off: np.ndarray  # int64 (n+1,)
    ask_px: np.ndarray  # float64
    ask_sz: np.ndarray  # float64
    symbols: tuple[str, ...]  # the symbol table's names when the batch was built

    def __len__(self) -> int:
        return int(self.recv_ns.shape[0])

    @property
    def n_bid(self) -> np.ndarray:
        return np.diff(self.bid_off)

    @property
    def n_ask(self) -> np.ndarray:
        return np.diff(self.ask_off)

    def best_bid(self) -> np.ndarray:
        """Best bid per row (nan where the row has no bids)."""
        return _first(self.bid_px, self.bid_off)

    def best_ask(self) -> np.ndarray:
        return _first(self.ask_px, self.ask_off)

    def best_bid_sz(self) -> np.ndarray:
        return _first(self.bid_sz, self.bid_off)

    def best_ask_sz(self) -> np.ndarray:
        return _first(self.ask_sz, self.ask_off)

    def take(self, rows: np.ndarray) -> BookBatch:
        """A new batch of the given rows (int indices, ascending), levels copied compactly."""
        rows = np.asarray(rows, dtype=np.int64)
        bid_off, bid_idx = _gather_offsets(self.bid_off, rows)
        ask_off, ask_idx = _gather_offsets(self.ask_off, rows)
        return BookBatch(
            ts_ns=self.ts_ns[rows],
            recv_ns=self.recv_ns[rows],
            venue=self.venue[rows],
            sym=self.sym[rows],
            quote_ok=self.quote_ok[rows],
            bid_off=bid_off,
            bid_px=self.bid_px[bid_idx],
            bid_sz=self.bid_sz[bid_idx],
            ask_off=ask_off,
            ask_px=self.ask_px[ask_idx],
            ask_sz=self.ask_sz[ask_idx],
            symbols=self.symbols,
        )

    def levels(self, row: int, side_is_bid: bool) -> tuple[np.ndarray, np.ndarray]:
        """(prices, sizes) of one side of one row, best first (views, no copy)."""
        if side_is_bid:
            a, b = self.bid_off[row], self.bid_off[row + 1]
            return self.bid_px[a:b], self.bid_sz[a:b]
        a, b = self.ask_off[row], self.ask_off[row + 1]
        return self.ask_px[a:b], self.ask_sz[a:b]

    @staticmethod
    def concat(batches: list[BookBatch]) -> BookBatch:
        """Rows of several batches in the given order (the last batch's symbol table wins)."""
        if len(batches) == 1:
            return batches[0]

        def offs(name: str, vals: str) -> np.ndarray:
            parts = [np.zeros(1, dtype=np.int64)]
            base = 0
            for b in batches:
                o = getattr(b, name)
                parts.append(o[1:] - o[0] + base)
                base += int(o[-1] - o[0])
            return np.concatenate(parts)

        def vals(name: str, off: str) -> np.ndarray:
            return np.concatenate(
                [getattr(b, name)[getattr(b, off)[0] : getattr(b, off)[-1]] for b in batches]
            )

        return BookBatch(
            ts_ns=np.concatenate([b.ts_ns for b in batches]),
            recv_ns=np.concatenate([b.recv_ns for b in batches]),
            venue=np.concatenate([b.venue for b in batches]),
            sym=np.concatenate([b.sym for b in batches]),
            quote_ok=np.concatenate([b.quote_ok for b in batches]),
            bid_off=offs("bid_off", "bid_px"),
            bid_px=vals("bid_px", "bid_off"),
            bid_sz=vals("bid_sz", "bid_off"),
            ask_off=offs("ask_off", "ask_px"),
            ask_px=vals("ask_px", "ask_off"),
            ask_sz=vals("ask_sz", "ask_off"),
            symbols=batches[-1].symbols,
        )


def _first(values: np.ndarray, off: np.ndarray) -> np.ndarray:
    starts = off[:-1]
    nonempty = off[1:] > starts
    out = np.full(starts.shape[0], np.nan)
    out[nonempty] = values[starts[nonempty]]
    return out


def _gather_offsets(off: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """New offsets for ``rows`` and the flat value indices to gather, without a Python loop."""
    starts = off[rows]
    lens = off[rows + 1] - starts
    new_off = np.zeros(rows.shape[0] + 1, dtype=np.int64)
    np.cumsum(lens, out=new_off[1:])
    total = int(new_off[-1])
    if total == 0:
        return new_off, np.zeros(0, dtype=np.int64)
    # index of each output value = its row's start + position within the row
    idx = np.arange(total, dtype=np.int64) - np.repeat(new_off[:-1] - starts, lens)
    return new_off, idx
