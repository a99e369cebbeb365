"""Premiums and signals over whole batches: as-of joins by searchsorted, a time-decayed EWMA level.

Everything here is vectorised per symbol and batch. A ``SymbolFrame`` holds, for one symbol and
one batch, every event of the symbol (a book update on either venue) with the as-of top of book of
both venues and the FX mid, the mid premium, its EWMA level and the two executable premiums. Index
0 of every array is the carried state from the previous batch, so an as-of lookup never falls off
the front.
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
    def entry_threshold(self) -> float:
        """Required deviation (fraction) for an entry: fees of four legs, expected slippage of four
        legs, the exit band still to be given back, and the margin. Executable premiums already
        pay the spreads."""
        bps = (
            2 * (self.upbit_fee_bps + self.binance_fee_bps)
            + 4 * self.expected_slippage_bps
            + self.exit_band_bps
            + self.entry_margin_bps
        )
        return bps / 1e4


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


class SymbolFrame:
    """All of one symbol's events in one batch, element 0 being the carried state.

    The coordinator attaches its per-batch signal arrays (``cand``, ``dev_sell_u``, ...) to it.
    """

    def __init__(self, top: TopBatch, mine: np.ndarray, carry: CarryState,
                 fx_t: np.ndarray, fx_mid: np.ndarray, cfg: StrategyConfig) -> None:
        """``mine``: this symbol's rows of ``top``, ascending."""
        self.carry_in = carry
        venue = top.venue[mine]
        t = np.concatenate(([carry.t], top.recv_ns[mine]))
        self.t = t
        self.rows = np.concatenate(([-1], mine))
        self.u_bid, self.u_ask = _asof_side(t, mine, venue == UPBIT, top, carry.u_bid, carry.u_ask)
        self.b_bid, self.b_ask = _asof_side(t, mine, venue == BINANCE, top, carry.b_bid, carry.b_ask)
        # FX as of each event: fx_t/fx_mid already carry the previous batch's last FX at index 0
        k = np.searchsorted(fx_t, t, side="right") - 1
        self.fx = np.where(k >= 0, fx_mid[np.maximum(k, 0)], np.nan)
        self.fx[0] = carry.fx
        u_mid = (self.u_bid + self.u_ask) * 0.5
        b_mid = (self.b_bid + self.b_ask) * 0.5
        with np.errstate(invalid="ignore", divide="ignore"):
            self.p_mid = u_mid / (b_mid * self.fx) - 1.0
            self.p_sell_u = self.u_bid / (self.b_ask * self.fx) - 1.0
            self.p_buy_u = self.u_ask / (self.b_bid * self.fx) - 1.0
        self.level, ewma = ewma_level(t, self.p_mid, carry.ewma, cfg.ewma_halflife_s)
        first_t = ewma.first_t
        warm_from = first_t + int(cfg.warmup_s * 1e9) if first_t >= 0 else np.iinfo(np.int64).max
        self.warm = (t >= warm_from) & np.isfinite(self.level)
        self._ewma_out = ewma

    def __len__(self) -> int:
        return int(self.t.shape[0])

    def asof(self, t_ns: int) -> int:
        """Index of the last event at or before ``t_ns`` (0 = the carried state)."""
        return max(0, int(np.searchsorted(self.t, t_ns, side="right")) - 1)

    def carry(self) -> CarryState:
        i = len(self) - 1
        return CarryState(
            t=int(self.t[i]), u_bid=float(self.u_bid[i]), u_ask=float(self.u_ask[i]),
            b_bid=float(self.b_bid[i]), b_ask=float(self.b_ask[i]), fx=float(self.fx[i]),
            ewma=self._ewma_out,
        )


def _asof_side(t, mine, is_venue, top, carry_bid, carry_ask):
    """As-of best bid/ask of one venue at every event time in ``t`` (index 0 = carry)."""
    rows = mine[is_venue]
    vb = np.concatenate(([carry_bid], top.bid[rows]))
    va = np.concatenate(([carry_ask], top.ask[rows]))
    # the venue's own events are in order within t; position of the last venue row at or before
    # each event: the running count of venue rows seen so far
    k = np.concatenate(([0], np.cumsum(is_venue)))
    return vb[k], va[k]


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
