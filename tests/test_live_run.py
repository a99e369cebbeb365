"""End to end: ``python run.py --data-source real`` against the loopback fake exchanges trades,
writes KPIs, survives drops / gaps / malformed frames, and its recording replays the same trades.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.fakes.exchanges import FakeExchanges

ROOT = Path(__file__).resolve().parents[1]
EXEMPT = {"run_id", "session_id", "wall_seconds", "events_per_second", "tick_to_fill_ms"}
pytestmark = pytest.mark.slow


def trader_env(fakes: FakeExchanges) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.isupper() or k in ("PATH", "HOME", "LANG")}
    e.update(fakes.env())
    e.update({"RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT), "WARMUP_S": "3",
              "EWMA_HALFLIFE_S": "60", "STALE_MS": "2000"})
    return e


def run_py(args, env, timeout=180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT)


def trade_rows(kpi: dict) -> list[dict]:
    with open(kpi["trade_log_path"]) as f:
        return [json.loads(line) for line in f]


def comparable(row: dict) -> dict:
    return {k: v for k, v in row.items()
            if k not in EXEMPT and not k.endswith(("_wall", "_path", "_dir"))}


def test_real_run_trades_records_and_replays_the_same(tmp_path):
    rec = tmp_path / "rec"
    with FakeExchanges() as fakes:
        env = trader_env(fakes)
        live = run_py(["--engine", "local", "--data-source", "real", "--topn-size", "5",
                       "--run-duration-seconds", "20", "--record-path", str(rec),
                       "--kpi-output-path", str(tmp_path / "live.json"),
                       "--log-dir", str(tmp_path / "logs"), "--quiet"], env)
    assert live.returncode == 0, live.stderr[-3000:]
    kpi = json.loads((tmp_path / "live.json").read_text())
    assert kpi["data_source"] == "real" and kpi["engine"] == "local"
    assert kpi["symbols"] == ["BTC", "XRP", "ETH", "SOL", "DOGE"]
    assert kpi["trades_executed"] > 0 and kpi["round_trips_completed"] > 0
    rows = trade_rows(kpi)
    btc = [r for r in rows if r["symbol"] == "BTC" and r["leg_kind"] == "entry"]
    # traded on the fakes' prices: Binance BTC around 95,000 USDT, Upbit at a ~2 % premium
    for r in btc:
        binance_px = r["buy_price"] if r["buy_exchange"] == "binance" else r["sell_price"]
        upbit_px = r["sell_price"] if r["buy_exchange"] == "binance" else r["buy_price"]
        assert 94_000 < binance_px < 96_000
        assert 1.0 < upbit_px / (binance_px * 1400) < 1.04
    # quantities are whole multiples of Binance's stepSize (the fake's BTC step is 0.0001, ten
    # times the lot a 1 USD lot value alone would give)
    assert btc
    for r in btc:
        assert abs(r["quantity"] / 1e-4 - round(r["quantity"] / 1e-4)) < 1e-6, r["quantity"]
    assert sorted(p.name for p in rec.glob("part-*.parquet"))
    assert not list(rec.glob(".part-*"))

    replay = run_py(["--engine", "local", "--data-source", "replay", "--replay-path", str(rec),
                     "--kpi-output-path", str(tmp_path / "replay.json"),
                     "--log-dir", str(tmp_path / "logs"), "--quiet"], env)
    assert replay.returncode == 0, replay.stderr[-3000:]
    kpi2 = json.loads((tmp_path / "replay.json").read_text())
    assert kpi2["symbols"] == kpi["symbols"]  # the recorded universe, not a rescan
    assert [comparable(r) for r in trade_rows(kpi2)] == [comparable(r) for r in rows]
    for k in ("trades_executed", "total_pnl_usd", "round_trips_completed", "fees_usd"):
        assert kpi2[k] == kpi[k], k


@pytest.mark.parametrize("feed_process", ["true"])
def test_real_run_survives_drops_gaps_and_malformed_frames(tmp_path, feed_process):
    """A whole live run, with the books received in a process of their own (the default,
    LIVE_FEED_PROCESS), survives the chaos and counts every reason. The thread variant
    (LIVE_FEED_PROCESS=false) meets the same faults source-side in test_live_source.py
    (drops, gaps, malformed frames: its [thread] cases), which keeps this 20-second wall-clock
    run to one."""
    btc = 95000.0 * 1400 * 1.02
    crossed = json.dumps({"type": "orderbook", "code": "KRW-BTC", "timestamp": 0,
                          "orderbook_units": [{"ask_price": btc, "bid_price": btc * 1.01,
                                               "ask_size": 1.0, "bid_size": 1.0}]})
    zero = crossed.replace(str(btc * 1.01), "0.0")
    marks: dict[str, int] = {}

    def chaos(fakes: FakeExchanges, stop: threading.Event) -> None:
        if stop.wait(8.0):
            return
        marks["drop"] = time.time_ns()
        fakes.drop("upbit")
        fakes.drop("binance")
        if stop.wait(3.0):
            return
        fakes.gap("XRPUSDT")
        now_ms = str(int(time.time() * 1000) + 500)
        fakes.inject("upbit", b"\x00\x01garbage\xff")
        fakes.inject("upbit", crossed.replace('"timestamp": 0', f'"timestamp": {now_ms}').encode())
        fakes.inject("upbit", zero.replace('"timestamp": 0', f'"timestamp": {now_ms}').encode())
        fakes.inject("upbit", b'{"type":"orderbook","code":"KRW-ETH"}')
        fakes.inject("binance", "{{{ not json")
        fakes.inject("binance", '{"stream":"ethusdt@depth@100ms","data":{"e":"depthUpdate",'
                                '"E":1,"s":"ETHUSDT","U":1,"u":2,"b":[["NaN","1.0"]],"a":[]}}')

    with FakeExchanges() as fakes:
        stop = threading.Event()
        t = threading.Thread(target=chaos, args=(fakes, stop), daemon=True)
        t.start()
        res = run_py(["--engine", "local", "--data-source", "real", "--topn-size", "5",
                      "--run-duration-seconds", "20", "--kpi-output-path",
                      str(tmp_path / "k.json"), "--log-dir", str(tmp_path / "logs"), "--quiet"],
                     {**trader_env(fakes), "LIVE_FEED_PROCESS": feed_process})
        stop.set()
        t.join()
    assert res.returncode == 0, res.stderr[-3000:]
    kpi = json.loads((tmp_path / "k.json").read_text())
    by_reason = kpi["events_rejected_by_reason"]
    for reason in ("malformed", "crossed", "non_positive", "non_finite", "sequence_gap"):
        assert by_reason.get(reason, 0) >= 1, (reason, by_reason)
    assert by_reason["malformed"] >= 3
    assert kpi["events_rejected"] >= sum(by_reason.values()) - by_reason.get("stale", 0)
    # the client reconnected and resynced, and trading went on after the drop
    assert "reconnecting" in res.stderr and "resync" in res.stderr
    later = [r for r in trade_rows(kpi) if r["decision_ts_ns"] > marks["drop"]]
    assert later, "no trade after the connections were dropped"


def test_ctrl_c_stops_a_real_run_cleanly_with_a_readable_recording(tmp_path):
    rec = tmp_path / "rec"
    with FakeExchanges() as fakes:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "run.py"), "--engine", "local", "--data-source", "real",
             "--topn-size", "3", "--record-path", str(rec), "--kpi-output-path",
             str(tmp_path / "k.json"), "--log-dir", str(tmp_path / "logs"), "--quiet"],
            env=trader_env(fakes), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        deadline = time.monotonic() + 60
        while not list(rec.glob(".part-*")) and time.monotonic() < deadline:
            time.sleep(0.2)  # wait until books are being recorded
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    kpi = json.loads((tmp_path / "k.json").read_text())
    assert kpi["interrupted"] is True and kpi["events_processed"] > 0
    parts = sorted(rec.glob("part-*.parquet"))
    assert parts and not list(rec.glob(".part-*"))
    assert sum(pq.read_metadata(p).num_rows for p in parts) > 0


def test_binance_451_ends_the_run_with_one_clear_line():
    with FakeExchanges() as fakes:
        fakes.binance_451 = True
        res = run_py(["--engine", "local", "--data-source", "real"], trader_env(fakes))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "HTTP 451" in lines[0] and "region" in lines[0]


def test_topn_change_live_leaver_exits_only_joiner_trades_and_replay_matches(tmp_path,
                                                                            monkeypatch):
    """LINK is promoted mid-run: it joins TopN and trades; XRP leaves: it enters no more, exits
    until flat and is drained (the live source stops streaming it). The recording, replayed,
    applies the same change at the same event time and makes the same decisions."""
    import dataclasses

    from common.engine.build import open_source
    from common.engine.local import run_local
    from common.marketdata.record import read_topn_events
    from common.reporting.trade_log import read_trade_log
    from common.settings import Settings

    rec = tmp_path / "rec"
    with FakeExchanges() as fakes:
        for k, v in trader_env(fakes).items():
            if k.isupper():
                monkeypatch.setenv(k, v)
        settings = Settings.from_env(overrides={"topn_size": 2, "topn_refresh_s": 1.0})

        def promote():
            fakes.assets = tuple(
                dataclasses.replace(a, upbit_value_usd=5e10, binance_value_usd=5e10)
                if a.symbol == "LINK" else a for a in fakes.assets)

        timer = threading.Timer(8.0, promote)
        timer.start()
        try:
            source = open_source("real", settings, None, 20.0, record_path=str(rec))
            live = run_local(settings, source, "live", tmp_path / "logs", None, 2,
                             progress=False)
        finally:
            timer.cancel()
    rows = read_trade_log(live["trade_log_path"])
    assert live["symbols"] == ["BTC", "XRP", "LINK"]
    changes = [e for e in read_topn_events(rec) if e.get("event") == "topn"][1:]
    assert len(changes) == 1
    change = changes[0]
    assert change["removed"] == ["XRP"] and change["added"] == ["LINK"]
    assert any(e["event"] == "drained" and e["symbols"] == ["XRP"] for e in read_topn_events(rec))
    t_change = change["recv_ns"]
    assert not [r for r in rows if r["symbol"] == "XRP" and r["leg_kind"] == "entry"
                and r["decision_ts_ns"] > t_change]
    assert [r for r in rows if r["symbol"] == "LINK" and r["leg_kind"] == "entry"]
    assert all(r["decision_ts_ns"] > t_change for r in rows if r["symbol"] == "LINK")

    replay_src = open_source("replay", Settings.from_env(overrides={"topn_size": 2}), str(rec),
                             None)
    again = run_local(settings, replay_src, "replay", tmp_path / "logs2", None, 2,
                      progress=False)
    assert again["symbols"] == live["symbols"]
    assert [comparable(r) for r in read_trade_log(again["trade_log_path"])] == \
        [comparable(r) for r in rows]


@pytest.mark.ray
def test_topn_change_on_the_ray_engine_creates_the_joiners_actor_and_replays_the_same(tmp_path):
    import dataclasses

    from common.marketdata.record import read_topn_events

    rec = tmp_path / "rec"
    with FakeExchanges() as fakes:
        env = trader_env(fakes)
        env.update({"TOPN_REFRESH_S": "1"})

        def promote():
            fakes.assets = tuple(
                dataclasses.replace(a, upbit_value_usd=5e10, binance_value_usd=5e10)
                if a.symbol == "LINK" else a for a in fakes.assets)

        timer = threading.Timer(25.0, promote)  # Ray start-up takes a while on 2 cores
        timer.start()
        try:
            live = run_py(["--engine", "ray", "--data-source", "real", "--topn-size", "2",
                           "--run-duration-seconds", "25", "--record-path", str(rec),
                           "--kpi-output-path", str(tmp_path / "live.json"),
                           "--log-dir", str(tmp_path / "logs"), "--quiet",
                           "--namespace", "topn-test"], env, timeout=300)
        finally:
            timer.cancel()
    assert live.returncode == 0, live.stderr[-3000:]
    kpi = json.loads((tmp_path / "live.json").read_text())
    changes = [e for e in read_topn_events(rec) if e.get("event") == "topn"][1:]
    if not changes:
        pytest.skip("the live run ended before the TopN refresh (machine too slow)")
    assert kpi["symbols"] == ["BTC", "XRP", "LINK"]
    rows = trade_rows(kpi)
    t_change = changes[0]["recv_ns"]
    assert not [r for r in rows if r["symbol"] == "XRP" and r["leg_kind"] == "entry"
                and r["decision_ts_ns"] > t_change]
    replay = run_py(["--engine", "local", "--data-source", "replay", "--replay-path", str(rec),
                     "--kpi-output-path", str(tmp_path / "replay.json"),
                     "--log-dir", str(tmp_path / "logs"), "--quiet"], env)
    assert replay.returncode == 0, replay.stderr[-3000:]
    kpi2 = json.loads((tmp_path / "replay.json").read_text())
    assert kpi2["symbols"] == kpi["symbols"]
    assert [comparable(r) for r in trade_rows(kpi2)] == [comparable(r) for r in rows]
