"""Statistics of a book stream, to calibrate the mock market against recorded books.

Pure functions over ``BookBatch`` streams (numpy only, no Ray). ``book_rows`` reduces a stream
of batches to a few numbers per row (times, venue, symbol, top of book, depth in USD);
``stream_stats`` turns those into figures per (venue, symbol) stream; ``venue_summary``
aggregates the streams of one venue; ``premium_activity`` measures how busy the premium of a
mock (or replayed) market is.

Figures per stream:

* ``rate_per_s``: books per second over the stream's span of ``recv_ns`` (first to last book);
* ``spread_bps``: median relative spread ``(ask - bid) / mid`` of the valid books, in bps;
* ``top_usd`` / ``depth10_usd``: median USD value of the best level / of the best ``depth_levels``
  levels, averaged over the two sides (KRW converted at a constant ``fx_krw_per_usd``);
* ``span10_bps``: median distance from the best level to the last counted level, in bps;
* ``same_top_share``: share of books whose best bid and ask (price and size) equal those of the
  previous book of the stream;
* ``gap_ms_p1/p50/p99``: percentiles of ``recv_ns - ts_ns`` (receive time minus venue time);
* ``same_recv_share``: share of books with the same ``recv_ns`` as the previous book of the
  stream (two books at one instant: a decision is taken on the first).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.marketdata.batch import BookBatch, SymbolTable
from common.marketdata.validate import static_reasons
from common.types import FX_SYMBOL, UPBIT, VENUE_NAMES

__all__ = [
    "BookRows",
    "StreamStats",
    "book_rows",
    "premium_activity",
    "replay_batches",
    "stream_stats",
    "venue_summary",
]


@dataclass(frozen=True, slots=True)
class BookRows:
    """A few numbers per book, in stream order (the order the books were received)."""

    ts_ns: np.ndarray
    recv_ns: np.ndarray
    venue: np.ndarray
    sym: np.ndarray
    quote_ok: np.ndarray
    valid: np.ndarray  # passes the static validation rules (not crossed, finite, sorted, ...)
    bid: np.ndarray
    ask: np.ndarray
    bid_sz: np.ndarray
    ask_sz: np.ndarray
    top_usd: np.ndarray
    depth_usd: np.ndarray
    span_bps: np.ndarray  # distance of the last counted level from the best, bps, mean of sides
    symbols: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.recv_ns.shape[0])


@dataclass(frozen=True, slots=True)
class StreamStats:
    """Figures of one (venue, symbol) stream; see the module docstring."""

    venue: str
    symbol: str
    quote_ok: bool
    books: int
    seconds: float
    rate_per_s: float
    spread_bps: float
    top_usd: float
    depth10_usd: float
    span10_bps: float
    same_top_share: float
    gap_ms_p1: float
    gap_ms_p50: float
    gap_ms_p99: float
    same_recv_share: float


def _side_sum(px: np.ndarray, sz: np.ndarray, off: np.ndarray, levels: int) -> np.ndarray:
    """Per row, sum of price * size over the first ``levels`` levels of one side."""
    n = off.shape[0] - 1
    base = int(off[0])
    lens = np.minimum(np.diff(off), levels)
    total = int(lens.sum())
    if total == 0:
        return np.zeros(n)
    starts = off[:-1] - base
    row = np.repeat(np.arange(n), lens)
    pos = np.arange(total) - np.repeat(np.cumsum(lens) - lens, lens)
    idx = starts[row] + pos
    vals = px[base:][idx] * sz[base:][idx]
    return np.bincount(row, weights=vals, minlength=n)


def _span_bps(px: np.ndarray, off: np.ndarray, levels: int) -> np.ndarray:
    """Per row, |price of level min(levels, n) - best price| / best price in bps (nan if empty)."""
    base = int(off[0])
    lens = np.minimum(np.diff(off), levels)
    out = np.full(lens.shape[0], np.nan)
    has = lens > 0
    first = px[base:][(off[:-1] - base)[has]]
    last = px[base:][(off[:-1] - base + lens - 1)[has]]
    with np.errstate(invalid="ignore", divide="ignore"):
        out[has] = np.abs(last - first) / first * 1e4
    return out


def book_rows(
    batches: Iterable[BookBatch], fx_krw_per_usd: float, depth_levels: int = 10
) -> BookRows:
    """Reduce a stream of batches to ``BookRows`` (USD values: KRW / ``fx_krw_per_usd``)."""
    if not fx_krw_per_usd > 0:
        raise ValueError("fx_krw_per_usd must be > 0")
    parts: list[dict[str, np.ndarray]] = []
    symbols: tuple[str, ...] = ()
    for b in batches:
        if len(b) == 0:
            continue
        symbols = b.symbols
        to_usd = np.where(b.venue == UPBIT, 1.0 / fx_krw_per_usd, 1.0)
        with np.errstate(invalid="ignore"):
            top = 0.5 * (b.best_bid() * b.best_bid_sz() + b.best_ask() * b.best_ask_sz())
            deep = 0.5 * (
                _side_sum(b.bid_px, b.bid_sz, b.bid_off, depth_levels)
                + _side_sum(b.ask_px, b.ask_sz, b.ask_off, depth_levels)
            )
            span = 0.5 * (
                _span_bps(b.bid_px, b.bid_off, depth_levels)
                + _span_bps(b.ask_px, b.ask_off, depth_levels)
            )
        parts.append(
            {
                "ts_ns": b.ts_ns,
                "recv_ns": b.recv_ns,
                "venue": b.venue,
                "sym": b.sym,
                "quote_ok": b.quote_ok,
                "valid": static_reasons(b) == 0,
                "bid": b.best_bid(),
                "ask": b.best_ask(),
                "bid_sz": b.best_bid_sz(),
                "ask_sz": b.best_ask_sz(),
                "top_usd": top * to_usd,
                "depth_usd": deep * to_usd,
                "span_bps": span,
            }
        )
    keys = (
        "ts_ns", "recv_ns", "venue", "sym", "quote_ok", "valid", "bid", "ask", "bid_sz",
        "ask_sz", "top_usd", "depth_usd", "span_bps",
    )
    if not parts:
        empty = {k: np.zeros(0) for k in keys}
        return BookRows(**empty, symbols=symbols)
    return BookRows(**{k: np.concatenate([p[k] for p in parts]) for k in keys}, symbols=symbols)


def replay_batches(path: str | Path, batch_rows: int = 65536) -> list[BookBatch]:
    """Every batch of a replay Parquet file or directory (see ``ReplaySource``)."""
    from common.marketdata.replay import ReplaySource

    src = ReplaySource(path, SymbolTable(), batch_rows=batch_rows)
    return [b for b, _ in src.batches()]


def _median(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(np.median(x)) if x.size else float("nan")


def stream_stats(rows: BookRows, min_books: int = 2) -> list[StreamStats]:
    """Figures per (venue, symbol) stream with at least ``min_books`` books, sorted by venue
    then symbol name."""
    out: list[StreamStats] = []
    key = rows.venue.astype(np.int64) * (1 << 32) + rows.sym.astype(np.int64)
    for k in np.unique(key):
        idx = np.flatnonzero(key == k)  # received order
        if idx.size < min_books:
            continue
        v, s = int(rows.venue[idx[0]]), int(rows.sym[idx[0]])
        recv, ts = rows.recv_ns[idx], rows.ts_ns[idx]
        seconds = float(recv.max() - recv.min()) / 1e9
        ok = rows.valid[idx]
        bid, ask = rows.bid[idx], rows.ask[idx]
        with np.errstate(invalid="ignore", divide="ignore"):
            spread = (ask - bid) / ((ask + bid) / 2.0) * 1e4
        top = np.stack([bid, ask, rows.bid_sz[idx], rows.ask_sz[idx]])
        same_top = np.all(top[:, 1:] == top[:, :-1], axis=0)
        gap = (recv - ts) / 1e6
        p1, p50, p99 = np.percentile(gap, [1, 50, 99])
        out.append(
            StreamStats(
                venue=VENUE_NAMES[v] if 0 <= v < len(VENUE_NAMES) else "unknown",
                symbol=rows.symbols[s] if 0 <= s < len(rows.symbols) else "?",
                quote_ok=bool(rows.quote_ok[idx].all()),
                books=int(idx.size),
                seconds=seconds,
                rate_per_s=(idx.size - 1) / seconds if seconds > 0 else float("nan"),
                spread_bps=_median(spread[ok]),
                top_usd=_median(rows.top_usd[idx][ok]),
                depth10_usd=_median(rows.depth_usd[idx][ok]),
                span10_bps=_median(rows.span_bps[idx][ok]),
                same_top_share=float(same_top.mean()),
                gap_ms_p1=float(p1),
                gap_ms_p50=float(p50),
                gap_ms_p99=float(p99),
                same_recv_share=float(np.mean(np.diff(recv) == 0)),
            )
        )
    out.sort(key=lambda x: (x.venue, x.symbol))
    return out


def venue_summary(
    stats: Iterable[StreamStats],
    venue: str,
    exclude: Iterable[str] = (),
    include_fx: bool = False,
    quote_ok_only: bool = True,
) -> dict[str, float]:
    """Median (and min / max where useful) over the streams of ``venue``.

    Streams of symbols in ``exclude``, the FX book (unless ``include_fx``) and, with
    ``quote_ok_only``, markets in another quote currency (e.g. Upbit BTC-XTZ) are left out.
    The gap and same-recv figures are book-weighted (pooled over the streams' books) by
    weighting each stream's figure with its book count; the others are medians over streams.
    """
    skip = set(exclude)
    sel = [
        s for s in stats
        if s.venue == venue
        and s.symbol not in skip
        and (include_fx or s.symbol != FX_SYMBOL)
        and (s.quote_ok or not quote_ok_only)
    ]
    if not sel:
        return {"streams": 0}

    def col(name: str) -> np.ndarray:
        return np.array([getattr(s, name) for s in sel], dtype=np.float64)

    books = col("books")
    res: dict[str, float] = {"streams": float(len(sel)), "books": float(books.sum())}
    for name in ("rate_per_s", "spread_bps", "top_usd", "depth10_usd", "span10_bps",
                 "same_top_share"):
        c = col(name)
        c = c[np.isfinite(c)]
        res[name] = float(np.median(c)) if c.size else float("nan")
        res[name + "_min"] = float(c.min()) if c.size else float("nan")
        res[name + "_max"] = float(c.max()) if c.size else float("nan")
    for name in ("gap_ms_p1", "gap_ms_p50", "gap_ms_p99", "same_recv_share"):
        res[name] = float(np.sum(col(name) * books) / books.sum())
    return res


def premium_activity(
    rows: BookRows, threshold_bps: float = 48.0, window_s: float = 600.0
) -> dict[str, float]:
    """How busy the premium of each symbol quoted on both venues is, pooled over symbols.

    At every Upbit book of a symbol (with the latest valid Binance book of the symbol and the
    latest valid FX book before it), the mid premium ``upbit / (binance * fx) - 1`` is taken;
    its deviation from a trailing mean over ``window_s`` (a stand-in for the strategy's EWMA
    level) gives ``dev_sd_bps`` (stdev), ``beyond_share`` (share of books with a deviation over
    ``threshold_bps``) and ``crossings_per_h`` (entries into that region per symbol-hour).
    Needs an FX book (``USDT`` on Upbit); returns ``{"symbols": 0}`` without one.
    """
    fx_id = rows.symbols.index(FX_SYMBOL) if FX_SYMBOL in rows.symbols else -1
    ok = rows.valid & rows.quote_ok
    mid = (rows.bid + rows.ask) / 2.0
    fx_rows = np.flatnonzero(ok & (rows.sym == fx_id) & (rows.venue == UPBIT))
    if fx_id < 0 or fx_rows.size == 0:
        return {"symbols": 0}
    devs: list[np.ndarray] = []
    crossings = 0.0
    hours = 0.0
    for s in range(len(rows.symbols)):
        if s == fx_id:
            continue
        u = np.flatnonzero(ok & (rows.sym == s) & (rows.venue == UPBIT))
        b = np.flatnonzero(ok & (rows.sym == s) & (rows.venue != UPBIT))
        if u.size < 10 or b.size < 10:
            continue
        ib = np.searchsorted(rows.recv_ns[b], rows.recv_ns[u], side="right") - 1
        ifx = np.searchsorted(rows.recv_ns[fx_rows], rows.recv_ns[u], side="right") - 1
        have = (ib >= 0) & (ifx >= 0)
        u, ib, ifx = u[have], ib[have], ifx[have]
        if u.size < 10:
            continue
        prem = mid[u] / (mid[b[ib]] * mid[fx_rows[ifx]]) - 1.0
        t = rows.recv_ns[u] / 1e9
        # trailing mean over window_s by cumulative sums
        c = np.concatenate([[0.0], np.cumsum(prem)])
        lo = np.searchsorted(t, t - window_s, side="left")
        n = np.arange(1, t.size + 1) - lo
        level = (c[1:] - c[lo]) / n
        warm = t - t[0] >= min(window_s, 0.5 * (t[-1] - t[0]))
        dev = (prem - level)[warm] * 1e4
        if dev.size < 2:
            continue
        devs.append(dev)
        beyond = np.abs(dev) > threshold_bps
        crossings += float(np.sum(beyond[1:] & ~beyond[:-1]))
        hours += float(t[warm][-1] - t[warm][0]) / 3600.0
    if not devs:
        return {"symbols": 0}
    d = np.concatenate(devs)
    return {
        "symbols": float(len(devs)),
        "dev_sd_bps": float(d.std()),
        "dev_p99_bps": float(np.percentile(np.abs(d), 99)),
        "beyond_share": float(np.mean(np.abs(d) > threshold_bps)),
        "crossings_per_h": crossings / hours if hours > 0 else 0.0,
    }
