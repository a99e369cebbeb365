"""Book validation over whole batches: one int8 reason code per row, no Python loop per row.

Reason codes index ``REJECT_REASONS``; when several rules apply to a row the first one in that
tuple wins. ``BookValidator`` carries state across batches (the highest ``recv_ns`` seen and the
last accepted ``ts_ns`` per (venue, symbol) stream) so that batch boundaries never change a result.

A *straggler* is a book received more than the feed-latency bound after its venue time
(``recv_ns - ts_ns > straggler_ns``). Fills are matched by venue time, and a leg settles once
the engine clock is past its arrival plus that bound; a book that could still turn up after
that would make a fill depend on when it was computed, so it is counted and never used.
"""

from __future__ import annotations

import numpy as np

from common.marketdata.batch import BookBatch
from common.types import VENUE_CODES, VENUE_NAMES

REJECT_REASONS: tuple[str, ...] = (
    "ok",
    "unknown_market",
    "empty",
    "non_finite",
    "non_positive",
    "unsorted",
    "crossed",
    "out_of_order",
    "straggler",
)
REASON_CODE: dict[str, int] = {name: i for i, name in enumerate(REJECT_REASONS)}
OK = 0
UNKNOWN_MARKET = 1
EMPTY = 2
NON_FINITE = 3
NON_POSITIVE = 4
UNSORTED = 5
CROSSED = 6
OUT_OF_ORDER = 7
STRAGGLER = 8

_I64_MIN = np.iinfo(np.int64).min
_N_VENUES = len(VENUE_NAMES)


def count_reasons(codes: np.ndarray) -> dict[str, int]:
    """Rejected rows by reason name (reasons with a zero count and ``ok`` are left out)."""
    counts = np.bincount(np.asarray(codes, dtype=np.int64), minlength=len(REJECT_REASONS))
    return {REJECT_REASONS[i]: int(c) for i, c in enumerate(counts) if i > 0 and c > 0}


def _compact(values: np.ndarray, off: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values covered by ``off``, offsets rebased to 0): batches may use offsets not at 0."""
    base = int(off[0])
    if base == 0 and values.shape[0] == int(off[-1]):
        return values, off
    return values[base : int(off[-1])], off - base


def _row_any(flag: np.ndarray, off: np.ndarray) -> np.ndarray:
    """Per row: is any flagged value in its segment (empty segments give False).

    Flags are rare, so the flagged positions are mapped to their rows by a binary search on the
    offsets: far cheaper than a cumulative count over every level (and, unlike
    ``np.logical_or.reduceat``, right for empty segments).
    """
    return _row_any_at(np.flatnonzero(flag), off)


def _row_any_at(pos: np.ndarray, off: np.ndarray) -> np.ndarray:
    """Per row: does any of the flat positions ``pos`` fall in its segment."""
    out = np.zeros(off.shape[0] - 1, dtype=bool)
    if pos.shape[0]:
        out[np.searchsorted(off, pos, side="right") - 1] = True
    return out


def _side_flags(px: np.ndarray, sz: np.ndarray, off: np.ndarray, bids: bool):
    """Per row (non_finite, non_positive, unsorted) for one side."""
    sz, _ = _compact(sz, off)
    px, off = _compact(px, off)
    with np.errstate(invalid="ignore"):
        # one pass finds every suspicious level (NaN, inf, zero or negative: ``0 < x < inf`` is
        # False for all of them); the reasons are then sorted out on those few levels only
        ok = (px > 0) & (px < np.inf) & (sz > 0) & (sz < np.inf)
        if ok.all():
            n = off.shape[0] - 1
            non_finite = non_positive = np.zeros(n, dtype=bool)
        else:
            pos = np.flatnonzero(~ok)
            bp, bs = px[pos], sz[pos]
            fin = np.isfinite(bp) & np.isfinite(bs)
            non_finite = _row_any_at(pos[~fin], off)
            non_positive = _row_any_at(pos[(bp <= 0) | (bs <= 0)], off)
        m = px.shape[0]
        pair_bad = np.zeros(m, dtype=bool)
        if m > 1:
            # pair (j, j+1) is out of order; only pairs inside one row count
            pair_bad[:-1] = (px[1:] >= px[:-1]) if bids else (px[1:] <= px[:-1])
            starts = off[1:-1]
            starts = starts[(starts > 0) & (starts < m)]
            pair_bad[starts - 1] = False
        unsorted = _row_any(pair_bad, off)
    return non_finite, non_positive, unsorted


def static_reasons(batch: BookBatch) -> np.ndarray:
    """Reason codes of every rule that looks at one row alone (everything but out_of_order)."""
    n = len(batch)
    venue = batch.venue.astype(np.int64)
    sym = batch.sym.astype(np.int64)
    unknown = (venue < 0) | (venue >= _N_VENUES) | (sym < 0) | (sym >= len(batch.symbols))
    unknown |= ~batch.quote_ok.astype(bool)
    empty = (batch.n_bid == 0) | (batch.n_ask == 0)
    bf, bp, bu = _side_flags(batch.bid_px, batch.bid_sz, batch.bid_off, bids=True)
    af, ap, au = _side_flags(batch.ask_px, batch.ask_sz, batch.ask_off, bids=False)
    with np.errstate(invalid="ignore"):
        crossed = batch.best_bid() >= batch.best_ask()
    codes = np.zeros(n, dtype=np.int8)
    # lowest priority first, so that higher-priority reasons overwrite
    for code, mask in (
        (CROSSED, crossed),
        (UNSORTED, bu | au),
        (NON_POSITIVE, bp | ap),
        (NON_FINITE, bf | af),
        (EMPTY, empty),
        (UNKNOWN_MARKET, unknown),
    ):
        codes[mask] = code
    return codes


class BookValidator:
    """Validates batches in stream order; stateful across batches (see ``get_state``)."""

    def __init__(self, straggler_ns: int | None = None) -> None:
        #: books received more than this after their venue time are stragglers (None: no bound)
        self.straggler_ns = straggler_ns
        self._max_recv = _I64_MIN
        self._seen_any = False
        #: last accepted ts_ns per stream, at ``symbol id * venues + venue`` of the symbol table
        #: ``_syms`` (which only grows in a run); _I64_MIN where nothing was accepted yet
        self._syms: tuple[str, ...] = ()
        self._floor = np.zeros(0, dtype=np.int64)

    def validate(self, batch: BookBatch) -> np.ndarray:
        """int8 reason code per row (0 = valid); advances the state past this batch."""
        codes = static_reasons(batch)
        n = codes.shape[0]
        if n == 0:
            return codes
        recv = batch.recv_ns.astype(np.int64, copy=False)
        ts = batch.ts_ns.astype(np.int64, copy=False)

        # recv_ns: against the max of every earlier row, rejected ones included
        prev_max = np.empty(n, dtype=np.int64)
        prev_max[0] = self._max_recv
        if n > 1:
            np.maximum.accumulate(recv[:-1], out=prev_max[1:])
            np.maximum(prev_max[1:], self._max_recv, out=prev_max[1:])
        late = recv < prev_max
        if self.straggler_ns is not None:
            codes[(codes == OK) & ~late & (recv - ts > self.straggler_ns)] = STRAGGLER

        cand = np.flatnonzero((codes == OK) & ~late)
        accepted = np.zeros(n, dtype=bool)
        if cand.shape[0]:
            self._align(batch.symbols)
            key = batch.sym[cand].astype(np.int64) * _N_VENUES + batch.venue[cand]
            ok = self._stream_in_order(key, ts[cand])
            accepted[cand] = ok
            # advance the state: accepted ts never decrease within a stream
            np.maximum.at(self._floor, key[ok], ts[cand[ok]])
        codes[(codes == OK) & ~accepted] = OUT_OF_ORDER
        self._max_recv = max(self._max_recv, int(recv.max()))
        self._seen_any = True
        return codes

    def _align(self, symbols: tuple[str, ...]) -> None:
        """Index the state by ``symbols`` (a table that grew: extend; another one: re-key)."""
        have = self._syms
        if len(symbols) == len(have) and (symbols is have or symbols == have):
            return
        if symbols[:len(have)] == have:
            grown = np.full(len(symbols) * _N_VENUES, _I64_MIN, dtype=np.int64)
            grown[:self._floor.shape[0]] = self._floor
            self._floor = grown
        else:
            last = self._last_by_stream()
            self._floor = np.full(len(symbols) * _N_VENUES, _I64_MIN, dtype=np.int64)
            for i, name in enumerate(symbols):
                for v in range(_N_VENUES):
                    self._floor[i * _N_VENUES + v] = last.get((v, name), _I64_MIN)
        self._syms = tuple(symbols)

    def _last_by_stream(self) -> dict[tuple[int, str], int]:
        """(venue code, symbol name) -> last accepted ts_ns."""
        out = {}
        for k in np.flatnonzero(self._floor != _I64_MIN).tolist():
            out[(k % _N_VENUES, self._syms[k // _N_VENUES])] = int(self._floor[k])
        return out

    def _stream_in_order(self, key: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Which candidate rows keep their stream's ts_ns non-decreasing.

        A candidate is accepted iff its ts_ns is >= the stream's last accepted ts_ns from earlier
        batches and >= the ts_ns of every earlier candidate of its stream in this batch (an
        earlier candidate with a larger ts_ns was either accepted, or rejected because of an even
        larger accepted one): a segmented running maximum, no sequential loop.
        """
        m = key.shape[0]
        ok_state = ts >= self._floor[key]
        if m == 1:
            return ok_state
        # keys are small ints: a 16-bit stable sort is a radix sort, linear in m
        order = np.argsort(key.astype(np.int16) if key.max() < 32768 else key, kind="stable")
        ks = key[order]
        tso = ts[order]
        same = ks[1:] == ks[:-1]
        if not (same & (tso[1:] < tso[:-1])).any():
            return ok_state  # the common case: every stream already in ts_ns order
        _, rank = np.unique(ts[order], return_inverse=True)  # dense rank: ties stay ties
        seg = np.zeros(m, dtype=np.int64)
        np.cumsum(ks[1:] != ks[:-1], out=seg[1:])
        comb = seg * (m + 1) + rank.reshape(-1)
        ok_sorted = np.maximum.accumulate(comb) == comb
        ok = np.empty(m, dtype=bool)
        ok[order] = ok_sorted
        return ok & ok_state

    def validate_and_filter(self, batch: BookBatch) -> tuple[BookBatch, dict[str, int]]:
        """The valid rows of ``batch`` and the rejected counts by reason."""
        codes = self.validate(batch)
        good = np.flatnonzero(codes == OK)
        kept = batch if good.shape[0] == len(batch) else batch.take(good)
        return kept, count_reasons(codes)

    def get_state(self) -> dict:
        """A plain (picklable, JSON-able) snapshot of the state."""
        last: dict[str, dict[str, int]] = {name: {} for name in VENUE_NAMES}
        for (venue, sym), ts in sorted(self._last_by_stream().items()):
            last[VENUE_NAMES[venue]][sym] = ts
        return {
            "max_recv_ns": self._max_recv if self._seen_any else None,
            "last_ts_ns": last,
        }

    def set_state(self, state: dict) -> None:
        """Restore a snapshot made by ``get_state``."""
        mr = state.get("max_recv_ns")
        self._seen_any = mr is not None
        self._max_recv = int(mr) if mr is not None else _I64_MIN
        last = {(VENUE_CODES[venue], sym): int(ts)
                for venue, per_sym in state.get("last_ts_ns", {}).items()
                for sym, ts in per_sym.items()}
        names = tuple(dict.fromkeys(sym for _, sym in sorted(last, key=lambda k: k[1])))
        self._syms = names
        self._floor = np.full(len(names) * _N_VENUES, _I64_MIN, dtype=np.int64)
        for (v, sym), ts in last.items():
            self._floor[names.index(sym) * _N_VENUES + v] = ts
