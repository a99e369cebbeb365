"""Run statistics recomputed from a run's files alone: its trade log and its equity series.

Everything here is a pure function of the trade rows (``trade_log.read_trade_log``) and the
equity table (``equity.parquet``: ``t_ns``, ``equity_usd``), so any past run can be re-analysed,
and the engines compute the run's own figures with these same functions from the same files:
the two always agree.

Annualisation uses 365 days (crypto trades every day). Round-trip returns are PnL over the
notional of the entry's two legs (as ``KpiAccumulator`` keeps them); the equity curve's returns
are its per-minute changes in USD over the account's start value.
"""

from __future__ import annotations

import math

import numpy as np

MINUTES_PER_YEAR = 365 * 24 * 60
_MINUTE_NS = 60_000_000_000


def round_trips(rows: list[dict]) -> list[dict]:
    """One record per closed round trip: opened / closed event times, PnL, entry notional and
    return, in closing order."""
    opened: dict[str, int] = {}
    notional: dict[str, float] = {}
    out = []
    for r in rows:
        rt = r.get("round_trip_id") or ""
        if r.get("leg_kind") == "entry" and rt:
            opened.setdefault(rt, int(r["decision_ts_ns"]))
            notional[rt] = notional.get(rt, 0.0) + sum(
                (r.get(f"{s}_filled_qty") or 0.0) * (r.get(f"{s}_vwap") or 0.0)
                * (r.get(f"{s}_usd_per_quote") or 0.0) for s in ("buy", "sell"))
        if r.get("round_trip_closed"):
            n = notional.get(rt, 0.0)
            pnl = float(r["round_trip_pnl_usd"])
            out.append({"round_trip_id": rt, "opened_ns": opened.get(rt, int(r["fill_ts_ns"])),
                        "closed_ns": int(r["fill_ts_ns"]), "pnl_usd": pnl, "notional_usd": n,
                        "return": pnl / n if n > 0 else 0.0})
    return out


def _sharpe(x: np.ndarray) -> float | None:
    if x.size < 2:
        return None
    sd = float(x.std(ddof=1))
    return float(x.mean()) / sd if sd > 0 else None


def _sortino(x: np.ndarray) -> float | None:
    if x.size < 2:
        return None
    downside = math.sqrt(float(np.mean(np.minimum(x, 0.0) ** 2)))
    return float(x.mean()) / downside if downside > 0 else None


def minute_equity(t_ns: np.ndarray, equity: np.ndarray, start_ns: int, end_ns: int) -> np.ndarray:
    """The equity curve sampled at the end of every whole minute of the run (0 before its first
    point), so that runs of any sampling compare."""
    if end_ns <= start_ns:
        return np.zeros(0)
    grid = np.arange(start_ns + _MINUTE_NS, end_ns + 1, _MINUTE_NS, dtype=np.int64)
    k = np.searchsorted(t_ns, grid, side="right") - 1
    return np.where(k >= 0, equity[np.maximum(k, 0)], 0.0) if t_ns.size else np.zeros(grid.size)


def drawdown(t_ns: np.ndarray, equity: np.ndarray, end_ns: int) -> tuple[float, float]:
    """(max drawdown USD, its longest duration in seconds): the deepest fall from a running
    peak (the start counts as a peak at 0), and the longest time spent below a peak before
    getting back to it (or until the end of the run)."""
    if t_ns.size == 0:
        return 0.0, 0.0
    peak = np.maximum.accumulate(np.maximum(equity, 0.0))
    dd = peak - equity
    depth = float(dd.max())
    longest = 0
    under_since = None
    for t, d in zip(t_ns.tolist(), dd.tolist(), strict=True):
        if d > 0 and under_since is None:
            under_since = t
        elif d <= 0 and under_since is not None:
            longest = max(longest, t - under_since)
            under_since = None
    if under_since is not None:
        longest = max(longest, end_ns - under_since)
    return depth, longest / 1e9


def statistics(rows: list[dict], t_ns: np.ndarray, equity: np.ndarray, start_ns: int,
               end_ns: int, account_value_usd: float) -> dict:
    """The run's statistics from its trade rows and equity series (see the module docstring)."""
    trips = round_trips(rows)
    pnl = np.array([x["pnl_usd"] for x in trips], dtype=float)
    ret = np.array([x["return"] for x in trips], dtype=float)
    hold = np.array([(x["closed_ns"] - x["opened_ns"]) / 1e9 for x in trips], dtype=float)
    gross_win = float(pnl[pnl > 0].sum())
    gross_loss = float(-pnl[pnl < 0].sum())
    minute = minute_equity(np.asarray(t_ns, dtype=np.int64), np.asarray(equity, dtype=float),
                           start_ns, end_ns)
    steps = np.diff(np.concatenate(([0.0], minute))) / account_value_usd \
        if minute.size and account_value_usd > 0 else np.zeros(0)
    annual = math.sqrt(MINUTES_PER_YEAR)
    sharpe_m, sortino_m = _sharpe(steps), _sortino(steps)
    dd, dd_s = drawdown(np.asarray(t_ns, dtype=np.int64), np.asarray(equity, dtype=float), end_ns)
    turnover = sum((r.get(f"{s}_filled_qty") or 0.0) * (r.get(f"{s}_vwap") or 0.0)
                   * (r.get(f"{s}_usd_per_quote") or 0.0) for r in rows for s in ("buy", "sell"))
    hours = (end_ns - start_ns) / 3.6e12 if end_ns > start_ns else 0.0
    return {
        "round_trips": len(trips),
        "sharpe_round_trips": _sharpe(ret),
        "sortino_round_trips": _sortino(ret),
        "sharpe_minute_annualised": sharpe_m * annual if sharpe_m is not None else None,
        "sortino_minute_annualised": sortino_m * annual if sortino_m is not None else None,
        "max_drawdown_usd": dd,
        "max_drawdown_duration_s": dd_s,
        "profit_factor": gross_win / gross_loss if gross_loss > 0 else None,
        "expectancy_usd": float(pnl.mean()) if pnl.size else None,
        "avg_holding_s": float(hold.mean()) if hold.size else None,
        "longest_holding_s": float(hold.max()) if hold.size else None,
        "fees_usd": float(sum(r.get("fees_usd") or 0.0 for r in rows)),
        "turnover_usd": float(turnover),
        "best_round_trip_usd": float(pnl.max()) if pnl.size else None,
        "worst_round_trip_usd": float(pnl.min()) if pnl.size else None,
        "trades_per_hour": len(rows) / hours if hours > 0 else None,
        "annualisation": "365 days of 1,440 minutes (crypto trades every day)",
    }
