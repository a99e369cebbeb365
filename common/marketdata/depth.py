"""Expected slippage from the visible depth: what taking one trade's notional from a book costs.

For every valid book of a batch and each side, the VWAP of taking a fixed USD notional from the
visible levels (asks for a buy, bids for a sell), in bps against the best price. It is computed
over whole batches (one cumulative sum over every level of the batch, one ``searchsorted``), so
the entry rule can price its slippage per event without a Python loop per book. A book whose
visible depth is smaller than the notional costs ``cap_bps`` (the order's limit distance: the
rest would fill beyond the visible book, or not at all).

Upbit books are quoted in KRW: their notional is converted at the latest KRW-USDT mid received at
or before the book (carried across batches, so batch boundaries never change a figure).
"""

from __future__ import annotations

import math

import numpy as np

from common.marketdata.batch import BookBatch
from common.types import FX_SYMBOL, UPBIT


class DepthCost:
    """Per-row expected slippage (bps) of taking ``notional_usd`` from each side of a book."""

    def __init__(self, notional_usd: float, cap_bps: float) -> None:
        if not (notional_usd > 0 and math.isfinite(notional_usd)):
            raise ValueError(f"notional_usd must be a finite number > 0 (got {notional_usd})")
        self.notional_usd = float(notional_usd)
        self.cap_bps = float(cap_bps)
        self._fx_t = -1
        self._fx_mid = math.nan  # the latest KRW-USDT mid of earlier batches

    def slippage(self, batch: BookBatch, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(sell into the bids, buy from the asks) expected slippage in bps per valid row;
        nan where the notional cannot be priced (an Upbit book before any FX)."""
        n = valid.shape[0]
        if n == 0:
            return np.zeros(0), np.zeros(0)
        venue = batch.venue[valid]
        recv = batch.recv_ns[valid]
        names = batch.symbols
        fx_id = names.index(FX_SYMBOL) if FX_SYMBOL in names else -2
        is_fx = (batch.sym[valid] == fx_id) & (venue == UPBIT)
        fx_rows = valid[is_fx]
        fx_t = np.concatenate(([self._fx_t], batch.recv_ns[fx_rows]))
        fx_mid = np.concatenate(([self._fx_mid], (batch.bid_px[batch.bid_off[fx_rows]]
                                                   + batch.ask_px[batch.ask_off[fx_rows]]) * 0.5))
        k = np.searchsorted(fx_t, recv, side="right") - 1
        fx = np.where(k >= 0, fx_mid[np.maximum(k, 0)], np.nan)
        notional = np.where(venue == UPBIT, self.notional_usd * fx, self.notional_usd)
        if fx_rows.shape[0]:
            self._fx_t, self._fx_mid = int(fx_t[-1]), float(fx_mid[-1])
        bid = _side_slippage(batch.bid_px, batch.bid_sz, batch.bid_off, valid, notional, -1,
                             self.cap_bps)
        ask = _side_slippage(batch.ask_px, batch.ask_sz, batch.ask_off, valid, notional, 1,
                             self.cap_bps)
        return bid, ask

    def get_state(self) -> dict:
        return {"fx_t": self._fx_t, "fx_mid": self._fx_mid}

    def set_state(self, state: dict) -> None:
        self._fx_t, self._fx_mid = int(state["fx_t"]), float(state["fx_mid"])


#: levels looked at per book side: a notional the first this many levels cannot fill costs the cap
MAX_LEVELS = 50


def _side_slippage(px: np.ndarray, sz: np.ndarray, off: np.ndarray, rows: np.ndarray,
                   notional: np.ndarray, side: int, cap_bps: float) -> np.ndarray:
    """VWAP slippage in bps of taking ``notional[r]`` (quote) from the levels of each row.

    A walk level by level, vectorised over the rows still short of their notional (most are done
    after a level or two, so the work follows the depth actually walked). Each row's sums are its
    own, so a row's figure never depends on which other rows share its batch."""
    m = rows.shape[0]
    starts = off[rows]
    lens = np.minimum(off[rows + 1] - starts, MAX_LEVELS)
    out = np.full(m, np.nan)
    live = np.flatnonzero((lens > 0) & np.isfinite(notional))
    if live.size == 0:
        return out
    best = px[starts[live]]
    z0 = sz[starts[live]]
    top = best * z0
    need0 = notional[live]
    # the common case: the best level alone holds the notional (the VWAP is the best price)
    deep = np.flatnonzero(top < need0)
    out[live] = 0.0
    if deep.size == 0:
        return out
    live, best = live[deep], best[deep]
    qty = z0[deep].astype(np.float64, copy=True)
    cost = top[deep].astype(np.float64, copy=True)
    need = need0[deep] - cost
    at = np.arange(live.size)  # positions (into live) of the rows still walking
    for j in range(1, int(lens[live].max())):
        at = at[lens[live[at]] > j]
        if at.size == 0:
            break
        pos = starts[live[at]] + j
        p = px[pos]
        z = sz[pos]
        with np.errstate(invalid="ignore"):
            # only levels within the order's limit can fill
            ok = (p / best[at] - 1.0) * side * 1e4 <= cap_bps + 1e-9
        at = at[ok]
        if at.size == 0:
            break
        p, z = p[ok], z[ok]
        val = p * z
        n = need[at]
        part = val >= n  # this level completes the notional
        take = np.where(part, n / p, z)
        qty[at] += take
        cost[at] += np.where(part, n, val)
        need[at] = np.where(part, 0.0, n - val)
        at = at[~part]
    with np.errstate(invalid="ignore", divide="ignore"):
        slip = np.maximum((cost / qty / best - 1.0) * side * 1e4, 0.0)
    out[live] = np.minimum(slip, cap_bps)
    return out
