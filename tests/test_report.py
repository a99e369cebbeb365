"""The run report (report.html), the comparison page and what they compute, on real run folders:
every section with the run's own numbers, exact sums, byte-identical rebuilds, damaged folders,
runs in progress and runs without trades."""

from __future__ import annotations

import html
import json
import re
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from common.reporting.analysis import (
    WATERFALL_STEPS,
    cost_waterfall,
    decimate,
    leg_distributions,
    load_run_folder,
    trade_markers,
)
from common.reporting.html import build_compare_report, build_run_report
from common.reporting.series import SeriesRecorder
from common.reporting.stats import statistics
from common.reporting.trade_log import read_trade_log, read_trade_log_tolerant
from tests.test_cli import one_line_error, run

SECTIONS = ("headline", "equity", "waterfall", "decomposition", "premium", "execution", "edge",
            "balances", "risk", "symbols", "statistics", "config")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two real local runs of a busy mock market: the first with --report."""
    tmp = tmp_path_factory.mktemp("report")
    logs = tmp / "logs"
    for seed, extra in (("7", ["--report"]), ("8", [])):
        p = run(["--engine", "local", "--run-duration-seconds", "900", "--volatility", "4",
                 "--seed", seed, "--quiet", "--log-dir", str(logs), *extra], cwd=tmp)
        assert p.returncode == 0, p.stderr
    dirs = sorted(logs.iterdir())
    assert "report: " in p.stdout or (dirs[0] / "report.html").exists()
    return tmp, dirs


def data_values(page: str) -> dict[str, object]:
    """Every ``data-key`` with its exact ``data-value`` in a page."""
    pairs = re.findall(r'data-key="([^"]+)" data-value="([^"]*)"', page)
    return {html.unescape(k): json.loads(html.unescape(v)) for k, v in pairs}


def kpi_at(kpi: dict, path: str):
    for part in path.split("."):
        kpi = kpi[part]
    return kpi


def test_report_has_every_section_with_the_runs_own_numbers(runs):
    _, dirs = runs
    d = dirs[0]
    page = (d / "report.html").read_text()
    kpi = json.loads((d / "kpi.json").read_text())
    assert kpi["trades_executed"] > 300 and kpi["round_trips_completed"] > 50
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in page, sid
    assert 'class="placeholder"' not in page  # a full run fills every section
    values = data_values(page)
    checked = 0
    for key, v in values.items():
        if key.startswith("waterfall."):
            continue
        assert v == kpi_at(kpi, key), key  # the exact figure of kpi.json
        checked += 1
    assert checked > 100
    for key in ("total_pnl_usd", "realized_pnl_usd", "round_trips_completed",
                "statistics.sharpe_round_trips", "statistics.profit_factor",
                "account_value_start_usd", "fx_translation_usd", "inventory_mtm_usd",
                "refusals", "statistics.turnover_usd") + tuple(
            f"per_symbol.{s}.total_pnl_usd" for s in kpi["per_symbol"]):
        assert key in values or key == "refusals", key
    # the waterfall sums exactly to the realised PnL of kpi.json
    steps = [values[f"waterfall.{k}"] for k, _ in WATERFALL_STEPS]
    assert values["waterfall.realised_pnl_usd"] == pytest.approx(kpi["realized_pnl_usd"],
                                                                 abs=1e-9)
    assert sum(steps) == pytest.approx(kpi["realized_pnl_usd"], abs=1e-6)
    assert values["waterfall.fees_usd"] < 0 and values["waterfall.signal_edge_usd"] > 0
    # self-contained: plotly.js inlined once, nothing fetched from a network
    assert page.count("<script type=\"text/javascript\">") == 1
    assert re.search(r"<script[^>]+src=", page) is None
    assert re.search(r"<link[^>]+href=", page) is None
    assert page.count('class="plotly-graph-div"') >= 8
    assert "365 days" in page


def test_report_is_byte_identical_when_built_again(runs, tmp_path):
    _, dirs = runs
    a = (dirs[0] / "report.html").read_bytes()
    out, notices = build_run_report(dirs[0], tmp_path / "again.html")
    assert notices == [] and out.read_bytes() == a


def test_every_trade_keeps_its_marker(runs):
    _, dirs = runs
    rd = load_run_folder(dirs[0])
    marks = trade_markers(rd.rows, rd.premium)
    assert sum(len(m["t_ns"]) for sym in marks.values() for m in sym.values()) == len(rd.rows)
    # an entry or exit sits at the premium of its own decision prices
    r = next(r for r in rd.rows if r["leg_kind"] == "entry" and r["buy_exchange"] == "upbit")
    i = marks[r["symbol"]]["entry"]["t_ns"].index(r["decision_ts_ns"])
    want = (r["buy_price"] * r["buy_usd_per_quote"]) / r["sell_price"] - 1.0
    assert marks[r["symbol"]]["entry"]["bps"][i] == pytest.approx(want * 1e4, rel=1e-12)


def test_run_folder_series_for_the_plots(runs):
    _, dirs = runs
    d = dirs[0]
    kpi = json.loads((d / "kpi.json").read_text())
    prem = pq.read_table(d / "premium.parquet").to_pydict()
    assert set(prem["symbol"]) == set(kpi["symbols"])
    assert all(t % 5_000_000_000 == 0 for t in prem["t_ns"])  # SERIES_INTERVAL_S grid
    first, last = kpi["event_time_span_ns"]
    per_symbol = len(prem["t_ns"]) / len(kpi["symbols"])
    assert (last - first) / 5e9 - 3 <= per_symbol <= (last - first) / 5e9 + 1
    marks = pq.read_table(d / "marks.parquet").to_pydict()
    assert len(marks["t_ns"]) >= 900 // 60 and marks["t_ns"] == sorted(set(marks["t_ns"]))
    # the last mark is the end of the run: balances valued as the account's end value
    end = (marks["upbit_krw_usd"][-1] + marks["upbit_coins_usd"][-1]
           + marks["binance_usdt_usd"][-1] + marks["binance_coins_usd"][-1])
    assert end == pytest.approx(kpi["account_value_end_usd"], rel=1e-9)
    assert all(u <= g + 1e-9 or u <= 2 * g + 1e-9
               for u, g in zip(marks["unhedged_usd"], marks["gross_exposure_usd"], strict=True))


def test_statistics_recomputed_from_the_folder_equal_the_runs(runs):
    _, dirs = runs
    d = dirs[1]
    kpi = json.loads((d / "kpi.json").read_text())
    eq = pq.read_table(d / "equity.parquet").to_pydict()
    (jsonl,) = list((d / "trades").glob("*.jsonl"))
    first, last = kpi["event_time_span_ns"]
    again = statistics(read_trade_log(jsonl), np.array(eq["t_ns"]), np.array(eq["equity_usd"]),
                       first, last, kpi["account_value_start_usd"])
    assert again == kpi["statistics"]


def test_a_damaged_folder_reports_what_is_there_and_says_what_is_not(runs, tmp_path):
    _, dirs = runs
    d = tmp_path / "damaged"
    shutil.copytree(dirs[0], d)
    for name in ("kpi.json", "equity.parquet", "premium.parquet", "report.html"):
        (d / name).unlink()
    (jsonl,) = list((d / "trades").glob("*.jsonl"))
    text = jsonl.read_text()
    cut = text[: len(text) - 40]  # a torn last line
    jsonl.write_text(cut)
    rows_whole = cut.count("\n")
    p = run(["report", str(d)], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    err = p.stderr
    assert "no kpi.json" in err and "no equity.parquet" in err and "no premium.parquet" in err
    assert "1 unreadable line(s) skipped" in err
    page = (d / "report.html").read_text()
    assert "no kpi.json" in page and 'class="placeholder"' in page
    values = data_values(page)
    # the headline is recomputed from the rows that are whole
    assert values["trades_executed"] == rows_whole
    rows, bad = read_trade_log_tolerant(jsonl)
    assert bad == 1 and len(rows) == rows_whole
    assert values["round_trips_completed"] == sum(1 for r in rows if r["round_trip_closed"])
    assert values["realized_pnl_usd"] == pytest.approx(
        sum(r["round_trip_pnl_usd"] for r in rows if r["round_trip_closed"]), abs=1e-9)


def test_a_run_in_progress_is_reported_as_such(runs, tmp_path):
    _, dirs = runs
    d = tmp_path / "live"
    (d / "trades").mkdir(parents=True)
    info = json.loads((dirs[0] / "run.json").read_text())
    info.update(status="running", wall_seconds=None)
    (d / "run.json").write_text(json.dumps(info))
    shutil.copy(dirs[0] / "settings.json", d / "settings.json")
    (jsonl,) = list((dirs[0] / "trades").glob("*.jsonl"))
    lines = jsonl.read_text().splitlines(keepends=True)
    (d / "trades" / jsonl.name).write_text("".join(lines[: len(lines) // 2]))
    out, notices = build_run_report(d)
    page = out.read_text()
    assert "still in progress" in page and 'class="status running"' in page
    assert data_values(page)["trades_executed"] == len(lines) // 2
    assert any("no kpi.json" in n for n in notices)
    # and `runs` lists it as running
    p = run(["runs", "--log-dir", str(tmp_path)], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    line = next(x for x in p.stdout.splitlines() if x.startswith("live"))
    assert "running" in line and "no kpi.json" in line


def test_a_run_without_trades_renders_placeholders(tmp_path):
    # 60 s of mock market: still warming up, so no trade at all
    p = run(["--engine", "local", "--run-duration-seconds", "60", "--quiet", "--report",
             "--log-dir", str(tmp_path / "logs")], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    (d,) = list((tmp_path / "logs").iterdir())
    assert json.loads((d / "kpi.json").read_text())["trades_executed"] == 0
    page = (d / "report.html").read_text()
    assert "No closed round trip" in page and "No legs sent" in page
    assert data_values(page)["trades_executed"] == 0


def test_a_run_of_only_failed_legs_renders(runs, tmp_path):
    _, dirs = runs
    d = tmp_path / "failed"
    shutil.copytree(dirs[0], d)
    (jsonl,) = list((d / "trades").glob("*.jsonl"))
    rows = read_trade_log(jsonl)[:20]
    for r in rows:
        for side in ("buy", "sell"):
            if r[f"{side}_exchange"]:
                r.update({f"{side}_filled_qty": 0.0, f"{side}_vwap": 0.0,
                          f"{side}_fill_ratio": 0.0, f"{side}_fee": 0.0,
                          f"{side}_slippage_bps": 0.0, f"{side}_latency_cost_bps": 0.0})
        r.update(trade_result="failed", cash_flow_usd=0.0, fees_usd=0.0, coin_delta_upbit=0.0,
                 coin_delta_binance=0.0, round_trip_closed=False, round_trip_pnl_usd=None)
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "kpi.json").unlink()
    out, _ = build_run_report(d)
    page = out.read_text()
    assert "No closed round trip" in page
    dist = leg_distributions(rows)
    assert all(v["p50"] == 0.0 for v in dist["fill_ratio"].values())
    assert dist["slippage_bps"] == {}


def test_compare_writes_a_page_with_both_equity_curves(runs, tmp_path):
    tmp, dirs = runs
    p = run(["compare", str(dirs[0]), str(dirs[1]), "--html", str(tmp_path / "c.html")],
            cwd=tmp)
    assert p.returncode == 0, p.stderr
    assert f"comparison: {tmp_path / 'c.html'}" in p.stdout
    page = (tmp_path / "c.html").read_text()
    for d in dirs:
        assert page.count(d.name) >= 2
    values = data_values(page)
    for k, d in enumerate(dirs):
        kpi = json.loads((d / "kpi.json").read_text())
        assert values[f"{k}.total_pnl_usd"] == kpi["total_pnl_usd"]
        assert values[f"{k}.statistics.sharpe_minute_annualised"] == \
            kpi["statistics"]["sharpe_minute_annualised"]
    body = page.split("</head>", 1)[1]
    assert f'"name":"A: {dirs[0].name}"' in body and f'"name":"B: {dirs[1].name}"' in body
    out, _ = build_compare_report(dirs, tmp_path / "c2.html")
    assert out.read_bytes() == (tmp_path / "c.html").read_bytes()


def test_report_refuses_what_is_no_run_folder(tmp_path):
    one_line_error(run(["report", str(tmp_path / "nope")], cwd=tmp_path), "not a run folder")
    (tmp_path / "empty").mkdir()
    one_line_error(run(["report", str(tmp_path / "empty")], cwd=tmp_path), "not a run folder")


# -- the pure parts --------------------------------------------------------------------------
def _leg(side, ex, qty, price, vwap, lat_bps, fee, fee_asset, u):
    return {f"{side}_exchange": ex, f"{side}_price": price, f"{side}_filled_qty": qty,
            f"{side}_vwap": vwap, f"{side}_latency_cost_bps": lat_bps, f"{side}_fee": fee,
            f"{side}_fee_asset": fee_asset, f"{side}_usd_per_quote": u,
            f"{side}_fill_ratio": 1.0, f"{side}_slippage_bps": 0.0}


def test_cost_waterfall_by_hand():
    u_krw = 1 / 1400.0
    # entry: buy 10 on Binance (coin fee 0.01), sell 9 on Upbit (partial); a hedge sells 0.99
    entry = {"round_trip_id": "X-RT-1", "leg_kind": "entry", "sell_exchange": "upbit",
             **_leg("buy", "binance", 10.0, 100.0, 100.1, 5.0, 0.01, "X", 1.0),
             **_leg("sell", "upbit", 9.0, 145_000.0, 144_900.0, 0.0, 130.41, "KRW", u_krw),
             "coin_delta_binance": 9.99, "coin_delta_upbit": -9.0}
    entry["cash_flow_usd"] = -10 * 100.1 + (9 * 144_900.0 - 130.41) * u_krw
    hedge = {"round_trip_id": "X-RT-1", "leg_kind": "hedge", "buy_exchange": None,
             **_leg("sell", "binance", 0.99, 99.0, 99.0, 0.0, 0.099, "USDT", 1.0),
             "coin_delta_binance": -0.99, "coin_delta_upbit": 0.0}
    hedge["cash_flow_usd"] = 0.99 * 99.0 - 0.099
    exit_ = {"round_trip_id": "X-RT-1", "leg_kind": "exit",
             **_leg("buy", "upbit", 9.0, 143_000.0, 143_000.0, 0.0, 128.7, "KRW", u_krw),
             **_leg("sell", "binance", 9.0, 101.0, 101.0, 0.0, 0.909, "USDT", 1.0),
             "coin_delta_upbit": 9.0, "coin_delta_binance": -9.0, "round_trip_closed": True}
    exit_["cash_flow_usd"] = -(9 * 143_000.0 + 128.7) * u_krw + 9 * 101.0 - 0.909
    cash = entry["cash_flow_usd"] + hedge["cash_flow_usd"] + exit_["cash_flow_usd"]
    exit_["round_trip_pnl_usd"] = cash - 0.25  # a sub-lot residue revalued by -0.25
    w = cost_waterfall([entry, hedge, exit_, {"round_trip_id": "Y-RT-1", "leg_kind": "entry"}])
    # signal edge: what both legs filled (9 of the entry, 9 of the exit) at decision prices
    signal = 9 * (145_000.0 * u_krw - 100.0) + 9 * (101.0 - 143_000.0 * u_krw)
    assert w["signal_edge_usd"] == pytest.approx(signal, rel=1e-12)
    assert w["latency_cost_usd"] == pytest.approx(-9.99 * 100.0 * 5e-4, rel=1e-12)
    p_arrival = 100.0 * (1 + 5e-4)
    assert w["slippage_usd"] == pytest.approx(-9.99 * (100.1 - p_arrival)
                                              + 9 * (144_900.0 - 145_000.0) * u_krw, rel=1e-12)
    assert w["fees_usd"] == pytest.approx(-(0.01 * 100.1 + 130.41 * u_krw + 0.099
                                            + 128.7 * u_krw + 0.909), rel=1e-12)
    # the unmatched 0.99 bought at its decision price, then hedged at the hedge's
    assert w["hedges_usd"] == pytest.approx(-0.99 * 100.0 + 0.99 * 99.0, rel=1e-9)
    assert w["residue_usd"] == pytest.approx(-0.25, abs=1e-9)
    assert w["sum_of_steps_usd"] == pytest.approx(exit_["round_trip_pnl_usd"], abs=1e-9)
    assert w["round_trips"] == 1 and w["open_rows"] == 1


def test_decimate_keeps_every_extreme_and_both_ends():
    rng = np.random.default_rng(3)
    t = np.arange(100_000, dtype=np.int64)
    y = np.cumsum(rng.normal(size=t.size))
    tt, yy = decimate(t, y, 2000)
    assert tt.size <= 2002 and tt[0] == 0 and tt[-1] == t[-1]
    assert yy.max() == y.max() and yy.min() == y.min()
    assert np.all(np.diff(tt) > 0) and np.array_equal(yy, y[tt])
    short_t, short_y = decimate(t[:50], y[:50], 2000)
    assert short_t.size == 50


class _Frame:
    def __init__(self, t, p, lv):
        self.t, self.p_mid, self.level = np.asarray(t), np.asarray(p), np.asarray(lv)

    def __len__(self):
        return self.t.size


def test_series_recorder_samples_as_of_each_grid_time():
    rec = SeriesRecorder(interval_s=1.0)
    s = 1_000_000_000
    # index 0 is the carried state; events at 0.5 s, 1.5 s and 3.2 s
    rec.sample_premiums({"A": _Frame([0, s // 2, 3 * s // 2], [np.nan, 0.01, 0.02],
                                     [np.nan, 0.011, 0.012])}, 2 * s)
    rec.sample_premiums({"A": _Frame([3 * s // 2, 32 * s // 10], [0.02, 0.03],
                                     [0.012, 0.013])}, 4 * s)
    tab = rec.premium_table().to_pydict()
    assert tab["t_ns"] == [s, 2 * s, 3 * s, 4 * s]
    assert tab["premium_bps"] == pytest.approx([100.0, 200.0, 200.0, 300.0])
    assert tab["level_bps"] == pytest.approx([110.0, 120.0, 120.0, 130.0])
    rec.mark(5, {k: 1.0 for k in ("upbit_krw_usd", "upbit_coins_usd", "binance_usdt_usd",
                                  "binance_coins_usd", "unhedged_usd", "gross_exposure_usd",
                                  "open_round_trips")})
    rec.mark(5, {})  # the final mark repeating the last one is dropped
    assert rec.marks_table().num_rows == 1
    with pytest.raises(ValueError):
        SeriesRecorder(0)


def test_live_view_draws_a_table_a_trader_can_read():
    import io

    from actors.view import LiveView, coins

    assert [coins(x) for x in (4.5e-13, -4.01e-05, -1.3294e8, 8628.59, -0.0309443)] == \
        ["0", "-0.0000401", "-132,940,000", "8,628.59", "-0.0309443"]

    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    view = LiveView(600.0, live=True, stream=out, max_rows=2)
    status = {"clock_ns": 10**18, "rows": 3, "symbols": {
        "BTC": {"premium_bps": 157.13, "position_upbit": 0.03094, "position_binance": -0.0309443,
                "pnl_usd": -10.94, "status": "open"},
        "SHIB": {"premium_bps": 276.16, "position_upbit": -1.3294e8,
                 "position_binance": 1.32936e8, "pnl_usd": 110.77, "status": "open"},
        "ETH": {"premium_bps": float("nan"), "position_upbit": 0.0, "position_binance": 4e-13,
                "pnl_usd": 1.0, "status": "flat"}}}
    view.update(status, 1000, 2)
    view.draw()
    text = out.getvalue()
    lines = [x.replace("\x1b[K", "") for x in text.split("\n")]
    assert lines[0].startswith("event time +0s of 600s") and "trades 3" in lines[0]
    assert lines[2].split()[:3] == ["SHIB", "276.16", "-132,940,000"]
    assert lines[3].split()[:4] == ["BTC", "157.13", "0.03094", "-0.0309443"]
    assert "1 more symbols" in lines[4] and "e+" not in text and "e-" not in text


def test_quiet_turns_the_live_view_off_too():
    import io

    from actors.view import LiveView

    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    view = LiveView(600.0, live=True, enabled=False, stream=out)
    view.update({"clock_ns": 10**18, "rows": 1, "symbols": {}}, 10, 0)
    view.draw()
    assert not view.tty and out.getvalue() == ""


@pytest.mark.slow
def test_report_of_a_run_while_it_runs(tmp_path):
    """A paced run (150 event-seconds per wall second) reported mid-way: its folder already
    has run.json (running), settings.json and the trade log written so far."""
    import subprocess
    import sys
    import time

    from tests.test_cli import ROOT

    logs = tmp_path / "logs"
    env = {"RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}
    import os

    proc = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "--engine", "local",
                             "--volatility", "4", "--run-duration-seconds", "600", "--speed",
                             "150", "--quiet", "--log-dir", str(logs)], cwd=tmp_path,
                            env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        rows = 0
        while time.monotonic() < deadline and rows < 20:
            time.sleep(0.5)
            logs_now = list(logs.glob("*/trades/*.jsonl"))
            rows = logs_now[0].read_text().count("\n") if logs_now else 0
        assert rows >= 20, "the run wrote no trades in time"
        assert proc.poll() is None, "the run ended before it could be reported mid-way"
        (run_dir,) = list(logs.iterdir())
        out, notices = build_run_report(run_dir)
        page = out.read_text()
        assert 'class="status running"' in page and "still in progress" in page
        assert data_values(page)["trades_executed"] >= 20
        assert any("no kpi.json" in n for n in notices)
    finally:
        proc.wait(timeout=120)
    assert proc.returncode == 0, proc.stderr.read().decode()
    # once it has finished, the same command reports the whole run
    out, notices = build_run_report(run_dir)
    assert notices == [] and 'class="status finished"' in out.read_text()
