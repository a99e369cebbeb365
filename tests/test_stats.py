"""Run statistics from a run's files: hand-checked figures, and equality with the run's own."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common.reporting.stats import (
    MINUTES_PER_YEAR,
    drawdown,
    minute_equity,
    round_trips,
    statistics,
)

M = 60_000_000_000  # a minute in ns


def leg_row(rt, kind, t, pnl=None, qty=1.0, px=100.0, fees=0.1):
    return {"round_trip_id": rt, "leg_kind": kind, "decision_ts_ns": t, "fill_ts_ns": t + 5,
            "buy_filled_qty": qty, "buy_vwap": px, "buy_usd_per_quote": 1.0,
            "sell_filled_qty": qty, "sell_vwap": px, "sell_usd_per_quote": 1.0,
            "fees_usd": fees, "round_trip_closed": pnl is not None,
            "round_trip_pnl_usd": pnl}


def test_round_trips_and_their_figures():
    rows = [leg_row("A", "entry", 0), leg_row("A", "hedge", 10), leg_row("A", "exit", 60e9, 4.0),
            leg_row("B", "entry", 70e9), leg_row("B", "exit", 190e9, -2.0),
            leg_row("C", "entry", 200e9)]  # still open: not a round trip yet
    trips = round_trips(rows)
    assert [t["round_trip_id"] for t in trips] == ["A", "B"]
    assert trips[0]["notional_usd"] == 200.0 and trips[0]["return"] == 0.02
    st = statistics(rows, np.array([0, 60e9, 190e9], dtype=np.int64), np.array([0.0, 4.0, 2.0]),
                    0, int(240e9), 1000.0)
    assert st["round_trips"] == 2
    assert st["profit_factor"] == 2.0 and st["expectancy_usd"] == 1.0
    assert st["best_round_trip_usd"] == 4.0 and st["worst_round_trip_usd"] == -2.0
    # entry decision to the closing fill (5 ns after its decision)
    assert st["avg_holding_s"] == pytest.approx(90.0) and st["longest_holding_s"] == 120.000000005
    assert st["fees_usd"] == pytest.approx(0.6) and st["turnover_usd"] == pytest.approx(1200.0)
    assert st["trades_per_hour"] == pytest.approx(6 / (240 / 3600))
    r = np.array([0.02, -0.01])
    assert st["sharpe_round_trips"] == pytest.approx(r.mean() / r.std(ddof=1))
    assert st["sortino_round_trips"] == pytest.approx(r.mean() / math.sqrt(0.01 ** 2 / 2))


def test_minute_equity_and_its_annualised_sharpe():
    t = np.array([30e9, 90e9, 150e9], dtype=np.int64)
    eq = np.array([1.0, 3.0, 2.0])
    assert minute_equity(t, eq, 0, int(240e9)).tolist() == [1.0, 3.0, 2.0, 2.0]
    st = statistics([], t, eq, 0, int(240e9), 100.0)
    steps = np.array([1.0, 2.0, -1.0, 0.0]) / 100.0
    assert st["sharpe_minute_annualised"] == pytest.approx(
        steps.mean() / steps.std(ddof=1) * math.sqrt(MINUTES_PER_YEAR))
    assert st["round_trips"] == 0 and st["profit_factor"] is None


def test_drawdown_depth_and_longest_time_under_a_peak():
    t = np.array([1, 2, 3, 4, 5, 6], dtype=np.int64) * 10**9
    eq = np.array([5.0, 2.0, 6.0, 4.0, 3.0, 3.5])
    depth, seconds = drawdown(t, eq, end_ns=10 * 10**9)
    assert depth == 3.0  # 5 -> 2 and 6 -> 3
    assert seconds == 6.0  # under the peak of 6 from t=4 s to the end at 10 s
    assert drawdown(np.zeros(0, dtype=np.int64), np.zeros(0), 0) == (0.0, 0.0)
