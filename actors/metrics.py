"""The run's Prometheus metrics (``ray.util.metrics``, exported by Ray as ``ray_arb_*``)."""

from __future__ import annotations

import math

import numpy as np
from ray.util.metrics import Counter, Gauge, Histogram

from common.types import VENUE_NAMES

_T2F_BOUNDARIES = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]


class ArbMetrics:
    """Recorded by the coordinator actor after each batch, from what the batch produced."""

    def __init__(self, symbols: list[str], symbol_ids: dict[str, int]) -> None:
        self._names = {sid: s for s, sid in symbol_ids.items()}
        self.events = Counter("arb_events", "valid order books processed",
                              tag_keys=("symbol", "exchange"))
        self.rejects = Counter("arb_rejects", "order books rejected, by reason",
                               tag_keys=("reason",))
        self.trades = Counter("arb_trades", "trades settled, by result and leg kind",
                              tag_keys=("symbol", "result", "leg_kind"))
        self.fills = Counter("arb_fill_legs", "legs filled, by exchange and result",
                             tag_keys=("symbol", "exchange", "result"))
        self.pnl = Gauge("arb_pnl_usd", "strategy PnL (realised + marked), USD",
                         tag_keys=("symbol",))
        self.premium = Gauge("arb_premium_bps", "mid premium upbit vs binance*fx, bps",
                             tag_keys=("symbol",))
        self.position = Gauge("arb_position", "strategy coin position", tag_keys=("symbol",
                                                                                   "exchange"))
        self.tick_to_fill = Histogram("arb_tick_to_fill_ms", "wall ms from book to applied fill",
                                      boundaries=_T2F_BOUNDARIES, tag_keys=("symbol",))
        self.clock = Gauge("arb_event_time_seconds", "engine clock (event time), unix seconds")
        self.symbols = symbols

    def record_batch(self, top, rows_in: int, rejected: dict[str, int], rows: list[dict],
                     status: dict) -> None:
        if top is not None and len(top):
            key = top.sym.astype(np.int64) * 2 + top.venue.astype(np.int64)
            keys, counts = np.unique(key, return_counts=True)
            for k, n in zip(keys.tolist(), counts.tolist(), strict=True):
                name = self._names.get(k // 2)
                if name is not None:
                    self.events.inc(n, {"symbol": name, "exchange": VENUE_NAMES[k % 2]})
        for reason, n in rejected.items():
            if n:
                self.rejects.inc(n, {"reason": reason})
        for r in rows:
            self.trades.inc(1, {"symbol": r["symbol"], "result": r["trade_result"],
                                "leg_kind": r["leg_kind"]})
            for side in ("buy", "sell"):
                ex = r[f"{side}_exchange"]
                if ex is not None:
                    ratio = r[f"{side}_fill_ratio"] or 0.0
                    res = "full" if ratio >= 1.0 else "partial" if ratio > 0 else "failed"
                    self.fills.inc(1, {"symbol": r["symbol"], "exchange": ex, "result": res})
            if r["tick_to_fill_ms"] is not None:
                self.tick_to_fill.observe(r["tick_to_fill_ms"], {"symbol": r["symbol"]})
        for s, st in status["symbols"].items():
            tags = {"symbol": s}
            if math.isfinite(st["premium_bps"]):
                self.premium.set(st["premium_bps"], tags)
            self.pnl.set(st["pnl_usd"], tags)
            self.position.set(st["position_upbit"], {"symbol": s, "exchange": "upbit"})
            self.position.set(st["position_binance"], {"symbol": s, "exchange": "binance"})
        if status["clock_ns"] > 0:
            self.clock.set(status["clock_ns"] / 1e9)
