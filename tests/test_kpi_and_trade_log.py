"""KPI accumulator merges exactly; the trade log writes JSONL and Parquet once per id."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from common.reporting.kpi import FixedHistogram, KpiAccumulator
from common.reporting.trade_log import FIELD_NAMES, TradeLogEntry, TradeLogger, iso_ns


def test_histogram_percentiles_and_exact_merge():
    a, b, both = FixedHistogram(), FixedHistogram(), FixedHistogram()
    for i, v in enumerate([0.5, 1.0, 2.0, 3.0, 50.0, 0.0005, 1e9]):
        (a if i % 2 else b).add(v)
        both.add(v)
    a.merge(b)
    assert (a.counts == both.counts).all() and a.count == 7
    h = FixedHistogram()
    for _ in range(99):
        h.add(1.0)
    h.add(100.0)
    assert 1.0 <= h.percentile(50) <= 1.13  # upper edge of the bucket holding 1.0
    assert h.percentile(99) <= 1.13 and h.percentile(100) >= 100.0


def test_drawdown_from_the_merged_equity_series_not_the_sum_of_parts():
    # A: +10 at t1, -10 at t2;  B: -10 at t1, +10 at t3. Each alone draws down 10;
    # merged: 0 at t1, -10 at t2, 0 at t3 -> drawdown 10, total 0.
    k = KpiAccumulator()
    k.add_equity("A", 1, 10.0)
    k.add_equity("A", 2, -10.0)
    k.add_equity("B", 1, -10.0)
    k.add_equity("B", 3, 10.0)
    rep = k.report()
    assert rep["max_drawdown_usd"] == pytest.approx(10.0)
    assert rep["total_pnl_usd"] == 0.0
    # splitting into two accumulators and merging gives the same report
    k1, k2 = KpiAccumulator(), KpiAccumulator()
    k1.add_equity("A", 1, 10.0)
    k1.add_equity("A", 2, -10.0)
    k2.add_equity("B", 1, -10.0)
    k2.add_equity("B", 3, 10.0)
    k1.merge(k2)
    assert k1.report() == rep


def test_round_trip_statistics():
    k = KpiAccumulator()
    for i, pnl in enumerate([10.0, -5.0, 20.0, -5.0]):
        k.add_round_trip("A" if i % 2 else "B", pnl, 1000.0, i, i + 1)
    rep = k.report()
    assert rep["round_trips_completed"] == 4 and rep["win_rate_pct"] == 50.0
    assert rep["realized_pnl_usd"] == 20.0
    assert rep["profit_factor"] == pytest.approx(30.0 / 10.0)
    rets = [0.01, -0.005, 0.02, -0.005]
    import statistics
    assert rep["sharpe_round_trips"] == pytest.approx(statistics.mean(rets) / statistics.stdev(rets))


def row(tid, ts, sym="BTC"):
    r = dict.fromkeys(FIELD_NAMES)
    r.update(trade_id=tid, symbol=sym, fill_ts_ns=ts, timestamp=iso_ns(ts), quantity=1.0,
             round_trip_closed=False)
    return r


def test_trade_log_once_per_id_and_parquet_twin(tmp_path):
    log = TradeLogger(tmp_path, "run-1", 20)
    assert log.log_rows([row("BTC-E-1", 1), row("BTC-H-2", 2)]) == 2
    assert log.log_rows([row("BTC-E-1", 1), row("BTC-X-3", 3)]) == 1  # a redelivery
    log.log_trade(TradeLogEntry(**row("ETH-E-1", 4, "ETH")))
    log.close()
    assert log.jsonl_path == tmp_path / "run-1" / "trades" / "top20_trade_log.jsonl"
    lines = [json.loads(x) for x in log.jsonl_path.read_text().splitlines()]
    assert [x["trade_id"] for x in lines] == ["BTC-E-1", "BTC-H-2", "BTC-X-3", "ETH-E-1"]
    assert pq.read_table(log.parquet_path).to_pylist() == lines
    assert log.duplicates_dropped == 1


def test_trade_log_reopened_after_a_crash_keeps_rows_once(tmp_path):
    log = TradeLogger(tmp_path, "run-2", 5)
    log.log_rows([row("BTC-E-1", 1), row("BTC-H-2", 2)])
    log._jsonl.write('{"trade_id": "BTC-X-3", "torn')  # a crash mid-line; no close()
    log._jsonl.flush()
    again = TradeLogger(tmp_path, "run-2", 5)
    assert again.log_rows([row("BTC-H-2", 2), row("BTC-X-3", 3)]) == 1
    again.close()
    ids = [json.loads(x)["trade_id"] for x in again.jsonl_path.read_text().splitlines()]
    assert ids == ["BTC-E-1", "BTC-H-2", "BTC-X-3"]
    assert pq.read_table(again.parquet_path).column("trade_id").to_pylist() == ids


def test_iso_timestamp_keeps_nanoseconds():
    assert iso_ns(1_767_225_600_123_456_789) == "2026-01-01T00:00:00.123456789Z"
