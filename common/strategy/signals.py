"""Premiums and signals over whole batches: as-of joins, a time-decayed EWMA level, entry signals.

A ``SymbolFrame`` holds, for one symbol and one batch, every event of the symbol (a book update
on either venue) with the as-of top of book of both venues and the FX mid, the mid premium, its
EWMA level, the two executable premiums and the entry signals. Index 0 of every array is the
carried state from the previous batch, so an as-of lookup never falls off the front.
``build_frames`` computes the frames of all symbols of a batch together, in one set of array
operations over a flat array of every symbol's events: the fixed cost per batch does not grow with
the number of symbols, which matters for live batches of one or a few books.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from common.types import BINANCE, UPBIT


@dataclass(frozen=True, slots=True)
class StrategyConfig:
    upbit_fee_bps: float = 5.0
    binance_fee_bps: float = 10.0
    expected_slippage_bps: float = 2.0
    entry_margin_bps: float = 5.0
    ewma_halflife_s: float = 600.0
    warmup_s: float = 120.0
    exit_band_bps: float = 5.0
    stop_loss_bps: float = 80.0
    max_holding_s: float = 1800.0
    trade_notional_usd: float = 3000.0

    @property
    def candidate_threshold(self) -> float:
        """The least net deviation (fraction, after the round trip's expected slippage) that can
        pay: fees of four legs plus the margin. Only events beyond it are looked at by the entry
        rule (``common.strategy.costs``), whose other costs (latency, the level's drift, the
        exit deviation) are never negative, so no entry is missed."""
        return (2 * (self.upbit_fee_bps + self.binance_fee_bps) + self.entry_margin_bps) / 1e4


@dataclass(frozen=True, slots=True)
class TopBatch:
    """Top of book of the valid rows of one batch (the coordinator's light stream)."""

    recv_ns: np.ndarray
    venue: np.ndarray
    sym: np.ndarray
    bid: np.ndarray
    ask: np.ndarray
    start_ns: int  # recv_ns of the batch's first row (valid or not)
    end_ns: int  # recv_ns of the batch's last row (valid or not)
    #: rows grouped by symbol: ``sym_order[sym_start[s]:sym_start[s + 1]]`` are symbol s's rows,
    #: ascending (a stable sort); computed once, used by the coordinator and the executors
    sym_order: np.ndarray | None = None
    sym_start: np.ndarray | None = None
    #: expected slippage (bps) of taking one trade's notional from the bids / the asks of each
    #: row (``common.marketdata.depth``); None: unknown (the fallback per leg applies)
    slip_bid: np.ndarray | None = None
    slip_ask: np.ndarray | None = None

    def rows_of(self, sym: int) -> np.ndarray:
        if self.sym_order is None:
            return np.flatnonzero(self.sym == sym)
        if sym < 0 or sym + 1 >= self.sym_start.shape[0]:
            return np.zeros(0, dtype=np.int64)
        return self.sym_order[self.sym_start[sym] : self.sym_start[sym + 1]]

    def __len__(self) -> int:
        return int(self.recv_ns.shape[0])


@dataclass(frozen=True, slots=True)
class EwmaState:
    """A time-decayed EWMA in rebased form: level(t_last) = exp(-lam (t_last - grid)) * acc.

    Keeping the raw accumulator ``acc`` (not the level) and rebasing only at fixed grid times
    makes the result bit-identical however the event stream is cut into batches.
    """

    grid: int = -1  # the rebase time (a multiple of the grid period), ns
    acc: float = math.nan
    t_last: int = -1  # time of the last finite observation
    first_t: int = -1  # time of the first finite observation ever (warm-up starts there)
    last: float = math.nan  # the level after the last observation, exactly as it was computed


@dataclass(slots=True)
class CarryState:
    """A symbol's signal state at the end of the last batch."""

    t: int = -1
    u_bid: float = math.nan
    u_ask: float = math.nan
    b_bid: float = math.nan
    b_ask: float = math.nan
    fx: float = math.nan
    ewma: EwmaState = EwmaState()
    #: expected slippage (bps) of the latest books: upbit bids / asks, binance bids / asks
    slips: tuple[float, float, float, float] = (math.nan, math.nan, math.nan, math.nan)


class SymbolFrame:
    """All of one symbol's events in one batch, element 0 being the carried state.

    Frames are built for all symbols of a batch at once by ``build_frames``; a frame's arrays are
    views into that batch's flat arrays. Besides the as-of books, FX, premiums and EWMA level, a
    frame holds the entry signals: ``dev_sell_u``/``dev_buy_u`` (executable premium minus level,
    each in the direction that pays), ``cand`` (warm and beyond the entry threshold),
    ``cand_idx`` and ``edge_idx`` (indices > 0 of candidates and of fresh crossings).
    """

    __slots__ = ("_flat", "_a", "_b", "carry_in", "_ewma_out", "_cuts")

    def __init__(self, flat: dict, a: int, b: int, carry_in: CarryState, ewma_out: EwmaState,
                 cuts: tuple) -> None:
        self._flat, self._a, self._b = flat, a, b
        self.carry_in = carry_in
        self._ewma_out = ewma_out
        self._cuts = cuts  # (cand_all, c0, c1, edge_all, e0, e1)

    def __len__(self) -> int:
        return self._b - self._a

    @property
    def cand_idx(self) -> np.ndarray:
        c, c0, c1 = self._cuts[:3]
        return c[c0:c1] - self._a

    @property
    def edge_idx(self) -> np.ndarray:
        e, e0, e1 = self._cuts[3:]
        return e[e0:e1] - self._a

    def asof(self, t_ns: int) -> int:
        """Index of the last event at or before ``t_ns`` (0 = the carried state)."""
        t = self._flat["t"][self._a:self._b]
        return max(0, int(t.searchsorted(t_ns, side="right")) - 1)

    def books_at(self, i: int) -> tuple[float, float, float, float]:
        """(upbit bid, upbit ask, binance bid, binance ask) as of event ``i``, read straight
        from the flat arrays (the hot path of marks and risk checks)."""
        f, k = self._flat, self._a + i
        return (float(f["u_bid"][k]), float(f["u_ask"][k]), float(f["b_bid"][k]),
                float(f["b_ask"][k]))

    def carry(self) -> CarryState:
        f, i = self._flat, self._b - 1
        return CarryState(
            t=int(f["t"][i]), u_bid=float(f["u_bid"][i]), u_ask=float(f["u_ask"][i]),
            b_bid=float(f["b_bid"][i]), b_ask=float(f["b_ask"][i]), fx=float(f["fx"][i]),
            ewma=self._ewma_out,
            slips=(float(f["u_sbid"][i]), float(f["u_sask"][i]), float(f["b_sbid"][i]),
                   float(f["b_sask"][i])),
        )


_NEVER = int(np.iinfo(np.int64).max)
_NO_CUTS = (np.zeros(0, dtype=np.int64), 0, 0, np.zeros(0, dtype=np.int64), 0, 0)
_FRAME_ARRAYS = ("t", "rows", "venue", "tie_last", "u_bid", "u_ask", "b_bid", "b_ask", "fx",
                 "p_mid", "p_sell_u", "p_buy_u", "level", "warm", "cand", "dev_sell_u",
                 "dev_buy_u", "u_sbid", "u_sask", "b_sbid", "b_sask", "slip_rt")


def _frame_view(name: str) -> property:
    def get(self: SymbolFrame) -> np.ndarray:
        return self._flat[name][self._a:self._b]

    get.__name__ = name
    return property(get, doc=f"``{name}`` of this symbol's events (a view)")


for _name in _FRAME_ARRAYS:
    setattr(SymbolFrame, _name, _frame_view(_name))
del _name


def build_frames(top: TopBatch, mines: list[np.ndarray], carries: list[CarryState],
                 cand_prev: list[bool], fx_t: np.ndarray, fx_mid: np.ndarray,
                 cfg: StrategyConfig) -> tuple[list[SymbolFrame], int]:
    """The frames of several symbols of one batch, computed in one set of array operations.

    ``mines[j]``: symbol j's rows of ``top`` (ascending); ``carries[j]``/``cand_prev[j]``: its
    state after the previous batch; ``fx_t``/``fx_mid``: the FX series with the carried FX at
    index 0. Every symbol's events sit in one flat array, each segment led by its carried state,
    so as-of joins become one forward fill and the premiums, EWMA and signals run over all
    symbols together: the cost per batch hardly grows with the number of symbols, which is what
    a live feed of one or a few books per batch needs. The values are exactly those of a
    per-symbol computation (same operations per element, sequential sums per segment).

    Returns the frames and the number of events that had both books but no FX (never traded).
    """
    m = len(mines)
    sizes = np.fromiter((x.shape[0] + 1 for x in mines), dtype=np.int64, count=m)
    lo = np.zeros(m, dtype=np.int64)
    np.cumsum(sizes[:-1], out=lo[1:])
    n = int(sizes.sum())
    is_start = np.zeros(n, dtype=bool)
    is_start[lo] = True
    ev = ~is_start  # positions of events (not carries)
    rows = np.full(n, -1, dtype=np.int64)
    if n > m:
        rows[ev] = np.concatenate(mines)
    t = np.empty(n, dtype=np.int64)
    t[ev] = top.recv_ns[rows[ev]]
    t[lo] = [c.t for c in carries]
    venue = np.full(n, -1, dtype=np.int8)
    venue[ev] = top.venue[rows[ev]]
    bid = np.empty(n)
    ask = np.empty(n)
    bid[ev] = top.bid[rows[ev]]
    ask[ev] = top.ask[rows[ev]]
    # books with the same receive time are applied together: only the last event of a tie is
    # a decision point (the feeds never split a tie across batches)
    tie_last = np.ones(n, dtype=bool)
    if n > 1:
        tie_last[:-1] = (t[1:] != t[:-1]) | is_start[1:]
        tie_last[lo] = True  # a carried state is not a decision point of this batch
    out: dict[str, np.ndarray] = {"t": t, "rows": rows, "venue": venue, "tie_last": tie_last}
    carry_books = {"u_bid": [c.u_bid for c in carries], "u_ask": [c.u_ask for c in carries],
                   "b_bid": [c.b_bid for c in carries], "b_ask": [c.b_ask for c in carries]}
    sbid = np.full(n, np.nan)
    sask = np.full(n, np.nan)
    if top.slip_bid is not None:
        sbid[ev] = top.slip_bid[rows[ev]]
        sask[ev] = top.slip_ask[rows[ev]]
    for v, b_name, a_name, sb_name, sa_name, j in ((UPBIT, "u_bid", "u_ask", "u_sbid", "u_sask", 0),
                                                   (BINANCE, "b_bid", "b_ask", "b_sbid", "b_sask",
                                                    2)):
        # as of each event, the venue's last book in the segment (the carry leads every segment)
        vb, va = bid.copy(), ask.copy()
        vb[lo] = carry_books[b_name]
        va[lo] = carry_books[a_name]
        k = _last_marked(is_start | (venue == v))
        out[b_name], out[a_name] = vb[k], va[k]
        vsb, vsa = sbid.copy(), sask.copy()
        vsb[lo] = [c.slips[j] for c in carries]
        vsa[lo] = [c.slips[j + 1] for c in carries]
        out[sb_name], out[sa_name] = vsb[k], vsa[k]
    # the round trip's expected slippage: entry and exit together touch all four book sides
    # (the exit's priced on today's books); an unknown side costs the configured fallback
    fallback = cfg.expected_slippage_bps
    slip_rt = np.zeros(n)
    for name in ("u_sbid", "u_sask", "b_sbid", "b_sask"):
        x = out[name]
        slip_rt += np.where(np.isfinite(x), x, fallback)
    out["slip_rt"] = slip_rt
    # FX as of each event: fx_t/fx_mid already carry the previous batch's last FX at index 0
    k = np.searchsorted(fx_t, t, side="right") - 1
    fx = np.where(k >= 0, fx_mid[np.maximum(k, 0)], np.nan)
    fx[lo] = [c.fx for c in carries]
    out["fx"] = fx
    u_bid, u_ask, b_bid, b_ask = out["u_bid"], out["u_ask"], out["b_bid"], out["b_ask"]
    u_mid = (u_bid + u_ask) * 0.5
    b_mid = (b_bid + b_ask) * 0.5
    with np.errstate(invalid="ignore", divide="ignore"):
        p_mid = u_mid / (b_mid * fx) - 1.0
        p_sell_u = u_bid / (b_ask * fx) - 1.0
        p_buy_u = u_ask / (b_bid * fx) - 1.0
    out.update(p_mid=p_mid, p_sell_u=p_sell_u, p_buy_u=p_buy_u)
    level, ewmas = _ewma_segments(t, p_mid, lo, sizes, ev, [c.ewma for c in carries],
                                  cfg.ewma_halflife_s)
    out["level"] = level
    warm_from = np.fromiter((e.first_t + int(cfg.warmup_s * 1e9) if e.first_t >= 0 else _NEVER
                             for e in ewmas), dtype=np.int64, count=m)
    warm = (t >= np.repeat(warm_from, sizes)) & np.isfinite(level)
    out["warm"] = warm
    # signals: upbit rich -> sell upbit, buy binance; upbit cheap -> buy upbit, sell binance
    thr = cfg.candidate_threshold
    dev_sell_u = p_sell_u - level
    dev_buy_u = level - p_buy_u
    with np.errstate(invalid="ignore"):
        cand = warm & tie_last & (np.fmax(dev_sell_u, dev_buy_u) - slip_rt / 1e4 > thr)
    cand[lo] = cand_prev
    out.update(cand=cand, dev_sell_u=dev_sell_u, dev_buy_u=dev_buy_u)
    # events that had both books but no FX cannot be evaluated: counted, never traded
    no_fx = int(np.count_nonzero(ev & np.isfinite(u_bid) & np.isfinite(b_bid) & ~np.isfinite(fx)))
    edge = cand.copy()
    edge[1:] &= ~cand[:-1]
    cand_all = np.flatnonzero(cand & ev)
    edge_all = np.flatnonzero(edge & ev)
    # frames are views, sliced only when a decision looks at them
    c_cut = np.searchsorted(cand_all, lo).tolist() + [cand_all.shape[0]]
    e_cut = np.searchsorted(edge_all, lo).tolist() + [edge_all.shape[0]]
    lo_l, hi_l = lo.tolist(), (lo + sizes).tolist()
    # symbols without events: the coordinator may reuse their frames for many batches, so they
    # share small copies of their one element each instead of holding this batch's arrays
    idle = np.flatnonzero(sizes == 1)
    idle_at = dict(zip(idle.tolist(), range(idle.shape[0]), strict=True))
    own = {name: arr[lo[idle]] for name, arr in out.items()} if idle.shape[0] else {}
    frames = []
    for j in range(m):
        a, b = lo_l[j], hi_l[j]
        if b - a == 1:
            i = idle_at[j]
            frames.append(SymbolFrame(own, i, i + 1, carries[j], ewmas[j], _NO_CUTS))
        else:
            frames.append(SymbolFrame(out, a, b, carries[j], ewmas[j],
                                      (cand_all, c_cut[j], c_cut[j + 1], edge_all, e_cut[j],
                                       e_cut[j + 1])))
    return frames, no_fx


def _last_marked(marks: np.ndarray) -> np.ndarray:
    """For every element, the index of the last marked element at or before it (0 if none)."""
    k = np.where(marks, np.arange(marks.shape[0]), 0)
    np.maximum.accumulate(k, out=k)
    return k


def _ewma_segments(t: np.ndarray, x: np.ndarray, lo: np.ndarray, sizes: np.ndarray,
                   ev: np.ndarray, states: list[EwmaState],
                   halflife_s: float) -> tuple[np.ndarray, list[EwmaState]]:
    """``ewma_level`` of every segment of a flat array (segment j: ``lo[j]`` for ``sizes[j]``
    elements, its first element the carry; ``ev`` marks the other elements), as one flat array
    of levels and the new states.

    Segments whose observations all fall in the grid period after an earlier observation (the
    common case) are computed together: the same element-wise operations as ``ewma_level`` and
    a sequential running sum per segment (one row of a 2-D cumsum), so the values are identical.
    A segment with its very first observation or crossing a rebase boundary goes through
    ``ewma_level`` itself.
    """
    m = lo.shape[0]
    n = t.shape[0]
    lam = ewma_lambda(halflife_s)
    period = ewma_grid_ns(lam)
    fin = np.flatnonzero(ev & np.isfinite(x))  # never the carry element
    seg = np.repeat(np.arange(m), sizes)
    level = np.empty(n)
    new_states = list(states)
    # the carried level leads each segment; observations overwrite their own element below
    marks = np.zeros(n, dtype=bool)
    marks[lo] = True
    marks[fin] = True
    level[lo] = [s.last for s in states]
    if fin.size == 0:
        return level[_last_marked(marks)], new_states
    fseg = seg[fin]
    tf = t[fin]
    grid = (tf // period) * period
    f_lo = np.searchsorted(fseg, np.arange(m), side="left")
    f_hi = np.searchsorted(fseg, np.arange(m), side="right")
    fast_rows, fast_s0, fast_g = [], [], []
    for j in range(m):
        a, b = int(f_lo[j]), int(f_hi[j])
        if a == b:
            continue
        st = states[j]
        g = int(grid[a])
        if st.t_last < 0 or int(grid[b - 1]) != g:
            s0, e = int(lo[j]), int(lo[j] + sizes[j])
            lv, new_states[j] = ewma_level(t[s0:e], x[s0:e], st, halflife_s)
            level[fin[a:b]] = lv[fin[a:b] - s0]
            continue
        S = st.acc
        if g != st.grid:
            S *= math.exp(-lam * (g - st.grid))
        fast_rows.append(j)
        fast_s0.append(S)
        fast_g.append(g)
    if fast_rows:
        rows_ = np.asarray(fast_rows)
        sel_seg = np.zeros(m, dtype=bool)
        sel_seg[rows_] = True
        sel = np.flatnonzero(sel_seg[fseg])
        s_of = fseg[sel]
        ts = tf[sel]
        g_of = np.zeros(m, dtype=np.int64)
        g_of[rows_] = fast_g
        G = g_of[s_of]
        first = np.ones(sel.shape[0], dtype=bool)
        first[1:] = s_of[1:] != s_of[:-1]
        prev = np.empty_like(ts)
        prev[1:] = ts[:-1]
        t_last = np.zeros(m, dtype=np.int64)
        t_last[rows_] = [states[j].t_last for j in fast_rows]
        prev[first] = t_last[s_of[first]]
        a_ = -np.expm1(-lam * (ts - prev).astype(np.float64))
        w = a_ * x[fin[sel]] * np.exp(lam * (ts - G).astype(np.float64))
        # one row per segment: [S0, w...], zero-padded; cumsum along the row is sequential
        row_of = np.zeros(m, dtype=np.int64)
        row_of[rows_] = np.arange(rows_.shape[0])
        r = row_of[s_of]
        start_in_sel = np.flatnonzero(first)
        counts = np.diff(np.append(start_in_sel, sel.shape[0]))
        col = np.arange(sel.shape[0]) - np.repeat(start_in_sel, counts) + 1
        buf = np.zeros((rows_.shape[0], int(counts.max()) + 1))
        buf[:, 0] = fast_s0
        buf[r, col] = w
        np.cumsum(buf, axis=1, out=buf)
        acc = buf[r, col]
        lv = np.exp(-lam * (ts - G).astype(np.float64)) * acc
        level[fin[sel]] = lv
        last_i = start_in_sel + counts - 1
        for q, j in enumerate(fast_rows):
            i = int(last_i[q])
            new_states[j] = EwmaState(fast_g[q], float(acc[i]), int(ts[i]), states[j].first_t,
                                      float(lv[i]))
    # forward-fill onto every element (events without a finite premium keep the last level)
    return level[_last_marked(marks)], new_states


def ewma_lambda(halflife_s: float) -> float:
    """Decay rate per nanosecond."""
    return math.log(2.0) / (halflife_s * 1e9)


def ewma_grid_ns(lam: float) -> int:
    """Rebase period: an hour, or less when the decay is fast (exp() stays below e^50)."""
    return int(min(3600e9, 50.0 / lam))


def ewma_level(t: np.ndarray, x: np.ndarray, state: EwmaState,
               halflife_s: float) -> tuple[np.ndarray, EwmaState]:
    """Time-decayed EWMA of ``x`` at times ``t`` (nan values skipped; element 0 is the carry).

    Each finite observation j moves the level by a_j = 1 - exp(-lam * (t_j - t_{j-1})), so
    L_j = exp(-lam dt_j) L_{j-1} + a_j x_j. Writing L_j = exp(-lam (t_j - G)) S_j gives
    S_j = S_{j-1} + a_j x_j exp(lam (t_j - G)): a running sum, evaluated with a sequential
    cumsum, rebased (S scaled, G moved) only when an observation falls in a new grid period.
    Returns the level at every element and the state after the last observation.
    """
    n = t.shape[0]
    lam = ewma_lambda(halflife_s)
    period = ewma_grid_ns(lam)
    fin = np.flatnonzero(np.isfinite(x))
    fin = fin[fin > 0]
    if fin.size == 0:
        return np.full(n, state.last), state
    tf = t[fin]
    xf = x[fin]
    grid = (tf // period) * period
    lv = np.empty(fin.size)
    G, S, t_last, first_t = state.grid, state.acc, state.t_last, state.first_t
    i = 0
    m = fin.size
    if t_last < 0:  # the very first observation: the level starts at it
        G, t_last, first_t = int(grid[0]), int(tf[0]), int(tf[0])
        S = float(xf[0]) * math.exp(lam * (t_last - G))
        lv[0] = float(xf[0])
        i = 1
    while i < m:
        g = int(grid[i])
        j = int(np.searchsorted(grid, g, side="right"))
        if g != G:
            S *= math.exp(-lam * (g - G))
            G = g
        seg_t = tf[i:j]
        prev = np.concatenate(([t_last], seg_t[:-1]))
        a = -np.expm1(-lam * (seg_t - prev).astype(np.float64))
        w = a * xf[i:j] * np.exp(lam * (seg_t - G).astype(np.float64))
        acc = np.cumsum(np.concatenate(([S], w)))[1:]
        lv[i:j] = np.exp(-lam * (seg_t - G).astype(np.float64)) * acc
        S, t_last = float(acc[-1]), int(seg_t[-1])
        i = j
    # forward-fill onto every element (events without a finite premium keep the last level)
    idx = np.full(n, -1, dtype=np.int64)
    idx[fin] = np.arange(fin.size)
    np.maximum.accumulate(idx, out=idx)
    out = np.where(idx >= 0, lv[np.maximum(idx, 0)], state.last)
    return out, EwmaState(G, S, t_last, first_t, float(lv[-1]))


def fx_series(top: TopBatch, fx_sym: int, carry_t: int, carry_mid: float) -> tuple[np.ndarray, np.ndarray]:
    """(times, mids) of the FX book in this batch, with the carried FX at index 0."""
    rows = np.flatnonzero((top.sym == fx_sym) & (top.venue == UPBIT))
    t = np.concatenate(([carry_t], top.recv_ns[rows]))
    mid = np.concatenate(([carry_mid], (top.bid[rows] + top.ask[rows]) * 0.5))
    return t, mid
