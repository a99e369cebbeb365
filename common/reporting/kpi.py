"""KPIs, accumulated per symbol and mergeable across symbols and processes with exact totals.

Every figure is kept as sums, counts, fixed-bucket histograms or event lists, never as a
pre-computed average, so that merging the per-symbol parts gives the same totals as one global
accumulator: drawdown comes from the merged equity series, percentiles from summed histograms.
An accumulator is idempotent by ``trade_id``: a result delivered twice counts once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from common.strategy.costs import bucket_label
from common.types import LEG_HEDGE, RESULT_FAILED, RESULT_PARTIAL, ExecutionResult

# fixed log-spaced buckets from 1 microsecond to ~100 s, 20 per decade: exact merge by adding
_BUCKETS_PER_DECADE = 20
_LO_MS = 1e-3
_N_BUCKETS = 8 * _BUCKETS_PER_DECADE


class FixedHistogram:
    """A histogram over fixed log-spaced buckets (ms); percentiles are bucket upper edges."""

    def __init__(self) -> None:
        self.counts = np.zeros(_N_BUCKETS + 2, dtype=np.int64)  # [underflow, buckets..., overflow]

    @staticmethod
    def edges() -> np.ndarray:
        return _LO_MS * 10.0 ** (np.arange(_N_BUCKETS + 1) / _BUCKETS_PER_DECADE)

    def add(self, value_ms: float) -> None:
        if not math.isfinite(value_ms):
            return
        if value_ms < _LO_MS:
            self.counts[0] += 1
            return
        k = int(math.floor(math.log10(value_ms / _LO_MS) * _BUCKETS_PER_DECADE)) + 1
        self.counts[min(k, _N_BUCKETS + 1)] += 1

    def merge(self, other: FixedHistogram) -> None:
        self.counts += other.counts

    @property
    def count(self) -> int:
        return int(self.counts.sum())

    def percentile(self, p: float) -> float | None:
        n = self.count
        if n == 0:
            return None
        rank = max(1, math.ceil(p / 100.0 * n))
        k = int(np.searchsorted(np.cumsum(self.counts), rank))
        edges = self.edges()
        if k == 0:
            return float(_LO_MS)
        return float(edges[min(k, _N_BUCKETS)])

    def summary(self) -> dict:
        return {"p50": self.percentile(50), "p99": self.percentile(99), "count": self.count}


@dataclass
class SymbolKpi:
    """One symbol's sums; ``merge`` adds another symbol's (or process's) part."""

    trades: int = 0
    by_leg_kind: dict = field(default_factory=dict)
    by_result: dict = field(default_factory=dict)
    partial: int = 0
    failed: int = 0
    fees_usd: float = 0.0
    cash_flow_usd: float = 0.0
    # notional-weighted slippage: sum(slippage_bps * filled notional) / sum(filled notional)
    buy_slip_w: float = 0.0
    buy_fill_notional: float = 0.0
    sell_slip_w: float = 0.0
    sell_fill_notional: float = 0.0
    # notional-weighted fill ratio, weights = requested notional (a failed leg counts with 0)
    buy_ratio_w: float = 0.0
    buy_req_notional: float = 0.0
    sell_ratio_w: float = 0.0
    sell_req_notional: float = 0.0
    latency_cost_w: float = 0.0
    round_trips: list = field(default_factory=list)  # (closed_ns, pnl_usd, return)
    equity: list = field(default_factory=list)  # (t_ns, delta_pnl_usd)
    #: closed round trips' (entry deviation bps, predicted net bps, realised net bps)
    edges: list = field(default_factory=list)
    tick_to_fill: FixedHistogram = field(default_factory=FixedHistogram)

    def merge(self, o: SymbolKpi) -> None:
        for name in ("trades", "partial", "failed", "fees_usd", "cash_flow_usd", "buy_slip_w",
                     "buy_fill_notional", "sell_slip_w", "sell_fill_notional", "buy_ratio_w",
                     "buy_req_notional", "sell_ratio_w", "sell_req_notional", "latency_cost_w"):
            setattr(self, name, getattr(self, name) + getattr(o, name))
        for name in ("by_leg_kind", "by_result"):
            d = getattr(self, name)
            for k, v in getattr(o, name).items():
                d[k] = d.get(k, 0) + v
        self.round_trips = self.round_trips + o.round_trips
        self.equity = self.equity + o.equity
        self.edges = self.edges + o.edges
        self.tick_to_fill.merge(o.tick_to_fill)

    def equity_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """(event times ns, total PnL USD) of the equity curve: samples at the same instant
        (e.g. every symbol at a mark) are one point."""
        eq = self.equity
        if not eq:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        times, inv = np.unique(np.array([t for t, _ in eq], dtype=np.int64), return_inverse=True)
        step = np.zeros(times.size)
        np.add.at(step, inv, np.array([d for _, d in eq], dtype=float))
        return times, np.cumsum(step)

    def report(self) -> dict:
        rts = sorted(self.round_trips)
        pnls = np.array([p for _, p, _ in rts], dtype=float)
        rets = np.array([r for _, _, r in rts], dtype=float)
        wins = int((pnls > 0).sum())
        gross_win = float(pnls[pnls > 0].sum())
        gross_loss = float(-pnls[pnls < 0].sum())
        eq = self.equity
        _, curve = self.equity_curve()
        peak = np.maximum.accumulate(np.concatenate(([0.0], curve)))
        drawdown = float((peak - np.concatenate(([0.0], curve))).max()) if eq else 0.0
        return {
            "trades_executed": self.trades,
            "round_trips_completed": len(rts),
            "win_rate_pct": 100.0 * wins / len(rts) if rts else 0.0,
            "realized_pnl_usd": float(pnls.sum()),
            "total_pnl_usd": float(curve[-1]) if eq else 0.0,
            "avg_buy_slippage_bps": _div(self.buy_slip_w, self.buy_fill_notional),
            "avg_sell_slippage_bps": _div(self.sell_slip_w, self.sell_fill_notional),
            "avg_buy_fill_ratio": _div(self.buy_ratio_w, self.buy_req_notional),
            "avg_sell_fill_ratio": _div(self.sell_ratio_w, self.sell_req_notional),
            "avg_latency_cost_bps": _div(self.latency_cost_w,
                                         self.buy_fill_notional + self.sell_fill_notional),
            "partial_fills_count": self.partial,
            "failed_fills_count": self.failed,
            "hedges_count": self.by_leg_kind.get(LEG_HEDGE, 0),
            "trades_by_leg_kind": dict(sorted(self.by_leg_kind.items())),
            "trades_by_result": dict(sorted(self.by_result.items())),
            "fees_usd": self.fees_usd,
            "max_drawdown_usd": drawdown,
            "sharpe_round_trips": (float(rets.mean() / rets.std(ddof=1))
                                   if len(rets) > 1 and rets.std(ddof=1) > 0 else None),
            "profit_factor": (gross_win / gross_loss if gross_loss > 0 else None),
            "tick_to_fill_ms": self.tick_to_fill.summary(),
            "edge_by_entry_bucket": _edge_buckets(self.edges),
        }


def _edge_buckets(edges: list) -> dict:
    """Predicted vs realised net edge (bps of one leg's notional) by entry-deviation bucket."""
    groups: dict[str, list] = {}
    for dev, pred, real in sorted(edges):
        groups.setdefault(bucket_label(dev), []).append((pred, real))
    return {label: {"round_trips": len(v),
                    "predicted_net_bps": sum(p for p, _ in v) / len(v),
                    "realised_net_bps": sum(r for _, r in v) / len(v)}
            for label, v in groups.items()}


def _div(a: float, b: float) -> float:
    return a / b if b > 0 else 0.0


class KpiAccumulator:
    """Per-symbol KPI parts plus the run-wide counters (events, sim latency)."""

    def __init__(self) -> None:
        self.per_symbol: dict[str, SymbolKpi] = {}
        self.seen: set[str] = set()
        self.events_processed = 0
        self.events_rejected: dict[str, int] = {}
        self.sim_latency: dict[str, FixedHistogram] = {}
        self.duplicates_dropped = 0
        self.signals_skipped: dict[str, int] = {}

    def add_skipped(self, reason: str, n: int) -> None:
        """Events that were valid books but could not be evaluated (e.g. no FX yet)."""
        self.signals_skipped[reason] = self.signals_skipped.get(reason, 0) + n

    def _sym(self, symbol: str) -> SymbolKpi:
        s = self.per_symbol.get(symbol)
        if s is None:
            s = self.per_symbol[symbol] = SymbolKpi()
        return s

    def add_events(self, processed: int, rejected: dict[str, int]) -> None:
        self.events_processed += processed
        for k, v in rejected.items():
            self.events_rejected[k] = self.events_rejected.get(k, 0) + v

    def add_sim_latency(self, items: list[tuple[str, int]]) -> None:
        for venue, ns in items:
            self.sim_latency.setdefault(venue, FixedHistogram()).add(ns / 1e6)

    def add_result(self, res: ExecutionResult, row: dict) -> bool:
        """Count one result (its trade row carries the USD figures). False if seen before."""
        if res.trade_id in self.seen:
            self.duplicates_dropped += 1
            return False
        self.seen.add(res.trade_id)
        s = self._sym(res.symbol)
        s.trades += 1
        kind = res.trade.leg_kind
        s.by_leg_kind[kind] = s.by_leg_kind.get(kind, 0) + 1
        s.by_result[res.trade_result] = s.by_result.get(res.trade_result, 0) + 1
        s.partial += res.trade_result == RESULT_PARTIAL
        s.failed += res.trade_result == RESULT_FAILED
        s.fees_usd += row["fees_usd"]
        s.cash_flow_usd += row["cash_flow_usd"]
        for leg, side in ((res.buy, "buy"), (res.sell, "sell")):
            if leg is None:
                continue
            filled, req = leg.notional_usd, leg.requested_notional_usd
            setattr(s, f"{side}_slip_w", getattr(s, f"{side}_slip_w") + leg.slippage_bps * filled)
            setattr(s, f"{side}_fill_notional", getattr(s, f"{side}_fill_notional") + filled)
            if math.isfinite(req):
                setattr(s, f"{side}_ratio_w", getattr(s, f"{side}_ratio_w") + leg.fill_ratio * req)
                setattr(s, f"{side}_req_notional", getattr(s, f"{side}_req_notional") + req)
            s.latency_cost_w += leg.latency_cost_bps * filled
        if row.get("tick_to_fill_ms") is not None:
            s.tick_to_fill.add(row["tick_to_fill_ms"])
        return True

    def add_round_trip(self, symbol: str, pnl_usd: float, notional_usd: float, opened_ns: int,
                       closed_ns: int) -> None:
        ret = pnl_usd / notional_usd if notional_usd > 0 else 0.0
        self._sym(symbol).round_trips.append((closed_ns, pnl_usd, ret))

    def add_edge(self, symbol: str, deviation_bps: float, predicted_bps: float,
                 realised_bps: float) -> None:
        self._sym(symbol).edges.append((deviation_bps, predicted_bps, realised_bps))

    def add_equity(self, symbol: str, t_ns: int, delta_usd: float) -> None:
        self._sym(symbol).equity.append((t_ns, delta_usd))

    def merge(self, other: KpiAccumulator) -> None:
        for sym, part in other.per_symbol.items():
            self._sym(sym).merge(part)
        self.seen |= other.seen
        self.add_events(other.events_processed, other.events_rejected)
        for k, v in other.signals_skipped.items():
            self.add_skipped(k, v)
        for v, h in other.sim_latency.items():
            self.sim_latency.setdefault(v, FixedHistogram()).merge(h)

    def totals(self) -> SymbolKpi:
        total = SymbolKpi()
        for sym in sorted(self.per_symbol):
            total.merge(self.per_symbol[sym])
        return total

    def equity_table(self) -> dict[str, list]:
        """The run's equity and drawdown series as columns (``t_ns``, ``equity_usd``,
        ``drawdown_usd``): what the run folder's ``equity.parquet`` holds."""
        t, curve = self.totals().equity_curve()
        peak = np.maximum.accumulate(np.maximum(curve, 0.0)) if curve.size else curve
        return {"t_ns": t.tolist(), "equity_usd": curve.tolist(),
                "drawdown_usd": (peak - curve).tolist()}

    def report(self) -> dict:
        """The KPI figures (run-level fields such as wall time are added by the engine)."""
        out = self.totals().report()
        out["events_processed"] = self.events_processed
        out["events_rejected"] = sum(self.events_rejected.values())
        out["events_rejected_by_reason"] = dict(sorted(self.events_rejected.items()))
        out["signals_skipped_by_reason"] = dict(sorted(self.signals_skipped.items()))
        out["sim_latency_ms"] = {v: h.summary() for v, h in sorted(self.sim_latency.items())}
        out["per_symbol"] = {s: self.per_symbol[s].report() for s in sorted(self.per_symbol)}
        return out
