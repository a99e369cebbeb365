"""The sweep's research core without Ray: SPEC checks, expansion, windows, trial keys, PBO and
the deflated Sharpe ratio, trials equal to standalone runs, resume, the results and the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from common.marketdata.mock import MockConfig, MockMarket
from common.marketdata.replay import write_replay
from common.research.data import DataUnit, Window, window_batches
from common.research.driver import SequentialRunner, SweepError, run_sweep
from common.research.overfit import (
    deflated_sharpe,
    expected_max_sharpe,
    pbo_cscv,
    sharpe_columns,
)
from common.research.plan import (
    build_plan,
    expand_configs,
    random_configs,
    trial_key,
    walk_forward_windows,
)
from common.research.spec import METRICS, SearchSpace, SpecError, parse_spec
from common.research.store import RESULT, trial_dir
from common.settings import Settings
from tests.ray_helpers import assert_same_run, stable

ROOT = Path(__file__).resolve().parents[1]

ISSUE_SPEC = """
[data]
source = "mock"
seeds = [1, 2]
duration_s = 14400

[grid]
ENTRY_MARGIN_BPS = [5, 15]
UPBIT_LATENCY_MS = [30, 100]

[objective]
metric = "total_pnl_usd"
"""

SMALL = """
[data]
source = "mock"
seeds = [1, 2]
duration_s = 900

[settings]
SYMBOLS = "BTC,ETH"
MOCK_VOLATILITY = 5

[grid]
ENTRY_MARGIN_BPS = [5, 15]

[objective]
metric = "total_pnl_usd"
min_round_trips = 1
"""


# -- the SPEC ----------------------------------------------------------------------------------
def test_the_issue_example_parses_and_expands():
    spec = parse_spec(ISSUE_SPEC)
    assert spec.source == "mock" and spec.seeds == (1, 2) and spec.duration_s == 14400
    plan = build_plan(spec)
    assert len(plan.configs) == 4 and len(plan.units) == 2 and len(plan.trials) == 8
    t = plan.trials[0]
    assert t.settings.entry_margin_bps == 5 and t.settings.upbit_latency_ms == 30
    assert t.settings.seed == 1 and t.window.role == "full" and t.window.end_s == 14400
    assert len({x.key for x in plan.trials}) == 8


@pytest.mark.parametrize("text,words", [
    (ISSUE_SPEC.replace("UPBIT_LATENCY_MS", "UPBIT_LATENCY"), ["[grid] UPBIT_LATENCY",
                                                              "unknown parameter"]),
    (ISSUE_SPEC.replace("[5, 15]", "[]"), ["[grid] ENTRY_MARGIN_BPS", "empty"]),
    ('[data]\nsource = "mock"\n[grid]\n', ["[grid]", "empty"]),
    ('[data]\nsource = "mock"\n', ["nothing to sweep"]),
    ("[data\nsource = 1", ["not valid TOML"]),
    (ISSUE_SPEC.replace('"total_pnl_usd"', '"pnl"'), ["[objective] metric", "unknown KPI"]),
    (ISSUE_SPEC.replace('"mock"', '"csv"'), ["[data] source"]),
    (ISSUE_SPEC + "[extra]\n", ["unknown table [extra]"]),
    (ISSUE_SPEC.replace("seeds = [1, 2]", "seeds = []"), ["[data] seeds", "empty"]),
    (ISSUE_SPEC.replace("[grid]", "[grid]\nSEED = [1, 2]"), ["SEED", "[data] seeds"]),
    (ISSUE_SPEC.replace("[grid]", "[grid]\nARBITRAGE_ENV = ['a']"), ["ARBITRAGE_ENV"]),
    (ISSUE_SPEC.replace("[5, 15]", "{start = 5, stop = 1, step = 1}"), ["below start"]),
    (ISSUE_SPEC + "[walk_forward]\nin_sample_s = 10\n", ["out_of_sample_s", "missing"]),
    (ISSUE_SPEC + "[overfitting]\ncscv_blocks = 7\n", ["cscv_blocks", "even"]),
    ('[data]\nsource = "replay"\npaths = ["/nonexistent/day1.parquet"]\n[grid]\n'
     'ENTRY_MARGIN_BPS = [1, 2]\n', ["/nonexistent/day1.parquet", "does not exist"]),
    (ISSUE_SPEC.replace("[5, 15]", "[5, -1]"), ["ENTRY_MARGIN_BPS", ">= 0"]),
    (ISSUE_SPEC + "[walk_forward]\nin_sample_s = 10000\nout_of_sample_s = 5000\n",
     ["[walk_forward]", "too short"]),
])
def test_bad_specs_are_one_line(text, words):
    with pytest.raises(SpecError) as e:
        build_plan(parse_spec(text))
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w.lower() in msg.lower(), msg


def test_bad_spec_on_the_command_line_exits_2_before_anything_starts(tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text(ISSUE_SPEC.replace("UPBIT_LATENCY_MS", "UPBIT_LATENCY"))
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.isupper() or k in ("PATH", "HOME")}
    p = subprocess.run([sys.executable, str(ROOT / "run.py"), "sweep", str(spec), "--out",
                        str(out)], capture_output=True, text=True, timeout=120, cwd=ROOT,
                       env={**env, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 2
    lines = (p.stdout + p.stderr).strip().splitlines()
    assert len(lines) == 1 and "UPBIT_LATENCY" in lines[0] and "unknown parameter" in lines[0]
    assert not out.exists()  # nothing started, nothing written
    p = subprocess.run([sys.executable, str(ROOT / "run.py"), "sweep", str(tmp_path / "no.toml"),
                        "--out", str(out)], capture_output=True, text=True, timeout=120,
                       cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 2 and "cannot read the SPEC" in p.stderr and not out.exists()


# -- expansion, windows, keys ------------------------------------------------------------------
def test_grid_ranges_and_random_search():
    spec = parse_spec(ISSUE_SPEC.replace("[5, 15]", "{start = 2, stop = 3, step = 0.25}"))
    assert spec.grid["ENTRY_MARGIN_BPS"] == (2.0, 2.25, 2.5, 2.75, 3.0)
    assert len(expand_configs(spec)) == 10
    space = {"ENTRY_MARGIN_BPS": SearchSpace(low=1.0, high=30.0),
             "UPBIT_LATENCY_MS": SearchSpace(choices=(30, 60, 100)),
             "MAX_OPEN_ROUND_TRIPS": SearchSpace(low=1, high=8, integer=True),
             "EWMA_HALFLIFE_S": SearchSpace(low=60, high=3600, log=True)}
    a = random_configs(space, 25, seed=3)
    assert a == random_configs(space, 25, seed=3) and a != random_configs(space, 25, seed=4)
    assert len(a) == 25 and len({json.dumps(c, sort_keys=True) for c in a}) == 25
    for c in a:
        assert 1 <= c["ENTRY_MARGIN_BPS"] <= 30 and c["UPBIT_LATENCY_MS"] in (30, 60, 100)
        assert isinstance(c["MAX_OPEN_ROUND_TRIPS"], int) and 1 <= c["MAX_OPEN_ROUND_TRIPS"] <= 8
        assert 60 <= c["EWMA_HALFLIFE_S"] <= 3600
    text = ISSUE_SPEC.replace("[grid]\nENTRY_MARGIN_BPS = [5, 15]\nUPBIT_LATENCY_MS = [30, 100]\n",
                              '[search]\nmethod = "random"\ntrials = 6\nseed = 1\n'
                              '[search.space]\nENTRY_MARGIN_BPS = {low = 0, high = 20}\n'
                              'UPBIT_LATENCY_MS = [30, 100]\n')
    plan = build_plan(parse_spec(text))
    assert len(plan.configs) == 6 and len(plan.trials) == 12
    assert all(0 <= t.settings.entry_margin_bps <= 20 for t in plan.trials)


def test_walk_forward_windows_rolling_anchored_and_embargo():
    w = walk_forward_windows(10_000, 3000, 1000, embargo_s=200)
    assert [(x.role, x.fold, x.start_s, x.end_s) for x in w[:4]] == [
        ("in_sample", 0, 0, 3000), ("out_of_sample", 0, 3200, 4200),
        ("in_sample", 1, 1000, 4000), ("out_of_sample", 1, 4200, 5200)]
    assert w[-1].end_s <= 10_000 and len(w) == 2 * 6
    a = walk_forward_windows(10_000, 3000, 1000, embargo_s=200, anchored=True)
    assert all(x.start_s == 0 for x in a if x.role == "in_sample")
    assert a[2].end_s == 4000
    for k in range(len(w) // 2):  # no out-of-sample window overlaps its in-sample + embargo
        ins, oos = w[2 * k], w[2 * k + 1]
        assert oos.start_s - ins.end_s == 200
    assert walk_forward_windows(1000, 3000, 1000) == []


def test_trial_key_is_a_hash_of_settings_data_and_window():
    s = Settings.from_env(overrides={"entry_margin_bps": 5})
    u = DataUnit("mock", seed=1, duration_s=600.0)
    w = Window("full", -1, 0.0, 600.0)
    k = trial_key(s, u, w)
    assert k == trial_key(Settings.from_env(overrides={"entry_margin_bps": 5}), u, w)
    assert k != trial_key(Settings.from_env(overrides={"entry_margin_bps": 6}), u, w)
    assert k != trial_key(s, DataUnit("mock", seed=2, duration_s=600.0), w)
    assert k != trial_key(s, u, Window("in_sample", 0, 0.0, 300.0))


def test_window_batches_cut_by_receive_time():
    m = MockMarket(MockConfig(seed=1, symbols=("BTC",)))
    full = np.concatenate([b.recv_ns for b in m.batches(300, batch_rows=500)])
    t0 = int(full[0])
    m = MockMarket(MockConfig(seed=1, symbols=("BTC",)))
    cut = np.concatenate([b.recv_ns for b, _ in window_batches(
        ((b, {}) for b in m.batches(300, batch_rows=500)), 100.0, 200.0)])
    want = full[(full >= t0 + 100_000_000_000) & (full < t0 + 200_000_000_000)]
    assert np.array_equal(cut, want) and len(want) > 100


# -- overfitting statistics --------------------------------------------------------------------
def test_pbo_of_pure_noise_is_near_one_half():
    pbos = [pbo_cscv(np.random.default_rng(seed).normal(size=(600, 30)), 12).pbo
            for seed in range(12)]
    assert 0.38 < float(np.mean(pbos)) < 0.62, pbos


def test_pbo_of_an_injected_edge_is_low():
    rng = np.random.default_rng(5)
    m = rng.normal(size=(600, 30))
    m[:, 7] += 0.25  # one strategy with a real edge among noise
    p = pbo_cscv(m, 12)
    assert p.pbo < 0.1 and p.prob_oos_loss < 0.05
    assert p.splits == 924 and p.blocks == 12 and len(p.logits) == 924


def test_deflated_sharpe():
    rng = np.random.default_rng(1)
    noise = rng.normal(size=(1000, 50))
    srs = sharpe_columns(noise)
    d = deflated_sharpe(noise[:, int(srs.argmax())], srs)
    assert d.n_trials == 50 and d.periods == 1000
    assert d.sharpe_threshold > 0 and d.probability < 0.9  # the luckiest of 50 is no discovery
    edge = noise.copy()
    edge[:, 3] += 0.2
    s2 = sharpe_columns(edge)
    assert deflated_sharpe(edge[:, 3], s2).probability > 0.95
    # more trials tried, a higher bar
    assert expected_max_sharpe(100, 0.01) > expected_max_sharpe(10, 0.01) > 0
    assert expected_max_sharpe(1, 0.01) == 0.0


# -- trials ------------------------------------------------------------------------------------
def _cli(args, env):
    e = {k: v for k, v in os.environ.items() if not k.isupper() or k in ("PATH", "HOME")}
    e.update({"PYTHONPATH": str(ROOT), **env})
    p = subprocess.run([sys.executable, str(ROOT / "run.py"), *args], capture_output=True,
                       text=True, timeout=300, env=e, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-2000:]


def test_a_trial_equals_the_standalone_run(tmp_path):
    plan = build_plan(parse_spec(SMALL.replace("seeds = [1, 2]", "seeds = [4]")))
    trial = next(t for t in plan.trials if t.params["ENTRY_MARGIN_BPS"] == 15)
    out = run_sweep(plan, tmp_path / "sweep", SequentialRunner(), progress=False)
    rec = out.records[trial.key]
    assert rec["status"] == "ok" and rec["report"]["trades_executed"] > 0
    _cli(["--engine", "local", "--symbols", "BTC,ETH", "--seed", "4", "--volatility", "5",
          "--run-duration-seconds", "900", "--quiet", "--log-dir", str(tmp_path / "logs"),
          "--kpi-output-path", str(tmp_path / "k.json")], {"ENTRY_MARGIN_BPS": "15"})
    standalone = json.loads((tmp_path / "k.json").read_text())
    assert_same_run(standalone, rec["report"])
    # the trial's folder holds the whole run folder, as a standalone run leaves it
    d = trial_dir(tmp_path / "sweep", trial.key)
    for f in ("kpi.json", "equity.parquet", "run.json", "settings.json", "run.log", RESULT):
        assert (d / f).exists(), f
    assert pq.read_table(d / "trades" / "top20_trade_log.parquet").num_rows == \
        standalone["trades_executed"]


def _replay_file(path: Path, seconds: float = 1500.0) -> Path:
    m = MockMarket(MockConfig(seed=9, symbols=("BTC", "ETH"), volatility=5.0))
    write_replay(path, m.batches(seconds, batch_rows=20_000))
    return path


def test_a_replay_window_equals_a_standalone_run_of_that_slice(tmp_path):
    import pyarrow.compute as pc

    data = _replay_file(tmp_path / "day.parquet")
    spec = parse_spec(f"""
[data]
source = "replay"
paths = ["{data}"]
[settings]
SYMBOLS = "BTC,ETH"
[grid]
ENTRY_MARGIN_BPS = [5]
[walk_forward]
in_sample_s = 600
out_of_sample_s = 300
embargo_s = 60
""")
    plan = build_plan(spec)
    assert [(t.window.role, t.window.start_s, t.window.end_s) for t in plan.trials] == [
        ("in_sample", 0, 600), ("out_of_sample", 660, 960),
        ("in_sample", 300, 900), ("out_of_sample", 960, 1260)]
    trial = plan.trials[1]
    out = run_sweep(plan, tmp_path / "sweep", SequentialRunner(), progress=False)
    rec = out.records[trial.key]
    assert rec["status"] == "ok" and rec["report"]["trades_executed"] > 0, rec.get("error")
    table = pq.read_table(data)
    t0 = table.column("recv_ns")[0].as_py()
    keep = pc.and_(pc.greater_equal(table.column("recv_ns"), t0 + 660 * 10**9),
                   pc.less(table.column("recv_ns"), t0 + 960 * 10**9))
    pq.write_table(table.filter(keep), tmp_path / "slice.parquet")
    _cli(["--engine", "local", "--data-source", "replay", "--replay-path",
          str(tmp_path / "slice.parquet"), "--symbols", "BTC,ETH", "--quiet", "--log-dir",
          str(tmp_path / "logs"), "--kpi-output-path", str(tmp_path / "k.json")],
         {"ENTRY_MARGIN_BPS": "5"})
    assert_same_run(json.loads((tmp_path / "k.json").read_text()), rec["report"])


def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    plan = build_plan(parse_spec(SMALL))
    bad = plan.trials[1].key
    import common.research.data as data

    real = data.open_trial_source

    def flaky(unit, window, settings):
        if settings.entry_margin_bps == 5 and unit.seed == 2:
            raise OSError("disk on fire")
        return real(unit, window, settings)

    monkeypatch.setattr(data, "open_trial_source", flaky)
    out = run_sweep(plan, tmp_path / "s", SequentialRunner(), progress=False)
    assert out.records[bad]["status"] == "failed"
    assert "disk on fire" in out.records[bad]["error"]
    assert sum(r["status"] == "ok" for r in out.records.values()) == 3
    rows = pq.read_table(tmp_path / "s" / "sweep_results.parquet").to_pylist()
    assert [r["status"] for r in rows].count("failed") == 1
    # the config with a failed trial is not eligible; the other is the best
    assert out.analysis.best is not None and out.analysis.best.params["ENTRY_MARGIN_BPS"] == 15
    # resume runs the failed one again, and nothing else
    monkeypatch.setattr(data, "open_trial_source", real)
    ran = []

    class Counting(SequentialRunner):
        def run(self, trials, should_stop=lambda: False):
            ran.extend(t.key for t in trials)
            yield from super().run(trials, should_stop)

    out = run_sweep(plan, tmp_path / "s", Counting(), resume=True, progress=False)
    assert ran == [bad] and out.skipped == 3 and out.analysis.n_failed == 0


def test_resume_after_an_interruption_skips_finished_trials(tmp_path):
    plan = build_plan(parse_spec(SMALL))

    class Interrupted(SequentialRunner):
        def run(self, trials, should_stop=lambda: False):
            for i, item in enumerate(super().run(trials, should_stop)):
                if i == 2:
                    raise KeyboardInterrupt
                yield item

    first = run_sweep(plan, tmp_path / "s", Interrupted(), progress=False)
    assert first.interrupted and len(first.records) == 2
    assert pq.read_table(tmp_path / "s" / "sweep_results.parquet").num_rows == 4  # all listed
    with pytest.raises(SweepError, match="--resume"):
        run_sweep(plan, tmp_path / "s", SequentialRunner(), progress=False)
    ran = []

    class Counting(SequentialRunner):
        def run(self, trials, should_stop=lambda: False):
            ran.extend(t.key for t in trials)
            yield from super().run(trials, should_stop)

    second = run_sweep(plan, tmp_path / "s", Counting(), resume=True, progress=False)
    assert sorted(ran) == sorted(t.key for t in plan.trials[2:])
    assert second.skipped == 2 and len(second.records) == 4 and not second.interrupted
    # the same results as an uninterrupted sweep
    whole = run_sweep(plan, tmp_path / "w", SequentialRunner(), progress=False)
    for k, r in whole.records.items():
        assert stable(r["report"]) == stable(second.records[k]["report"])


def test_results_table_summary_and_report(tmp_path):
    plan = build_plan(parse_spec(SMALL + "[overfitting]\ncscv_blocks = 8\n"))
    out = run_sweep(plan, tmp_path / "s", SequentialRunner(), progress=False)
    rows = pq.read_table(tmp_path / "s" / "sweep_results.parquet").to_pylist()
    assert len(rows) == 4 and (tmp_path / "s" / "sweep_results.csv").exists()
    for r in rows:
        assert r["status"] == "ok" and r["seed"] in (1, 2) and r["node"] == "driver"
        assert r["ENTRY_MARGIN_BPS"] in (5, 15) and r["trial_wall_s"] > 0
        missing = [m for m in METRICS if m not in r]
        assert not missing, missing
        rec = out.records[r["trial_key"]]
        assert r["total_pnl_usd"] == rec["report"]["total_pnl_usd"]
        assert r["sortino_round_trips"] == rec["report"]["statistics"]["sortino_round_trips"]
    # every trial's PnL on the shared minute grid: 14 whole minutes of a 900 s run
    assert {len(r["pnl"]) for r in out.records.values()} == {14}
    for r in out.records.values():
        assert abs(sum(r["pnl"]) - r["report"]["total_pnl_usd"]) < 1e-6 * max(
            1.0, abs(r["report"]["total_pnl_usd"])) or len(r["pnl"]) < 15
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["configurations"] == 2 and summary["trials"] == 4
    assert summary["best"]["config_id"] == out.analysis.best.config_id
    assert "best configurations" in out.summary
    html = (tmp_path / "s" / "report.html").read_text()
    assert html.count("<script type=\"text/javascript\">") >= 1
    divs = [d for d in ("sweep-is-oos", "sweep-equity", "sweep-pbo") if f'id="{d}"' in html]
    assert divs == ["sweep-is-oos", "sweep-equity", "sweep-pbo"]
    offline = "<script src=" not in html  # plotly.js inlined: the page opens with no network
    assert offline
    assert out.analysis.pbo is not None and out.analysis.pbo.blocks == 8
    assert out.analysis.dsr is not None and out.analysis.dsr.n_trials == 2
    assert summary["overfitting"]["pbo"]["splits"] == 70


def test_object_storage_paths_are_staged_once_per_node(tmp_path, monkeypatch):
    """A replay on object storage (here a local directory behind a fake ``s3://`` URI) is read
    through pyarrow.fs into the node's cache once, then opened like a local replay."""
    import pyarrow.fs as pafs

    import common.research.data as data

    src = tmp_path / "bucket" / "day"
    src.mkdir(parents=True)
    _replay_file(src / "part-00000.parquet", 120.0)
    _replay_file(src / "part-00001.parquet", 60.0)

    def fake_fs(path):
        assert path.startswith("s3://bucket/")
        return pafs.LocalFileSystem(), str(tmp_path / "bucket" / path.removeprefix("s3://bucket/"))

    monkeypatch.setattr(data, "_fs", fake_fs)
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))
    local = Path(data.local_path("s3://bucket/day"))
    assert local.is_dir() and sorted(p.name for p in local.iterdir()) == [
        "part-00000.parquet", "part-00001.parquet"]
    assert local.is_relative_to(tmp_path / "cache")
    assert data.local_path("s3://bucket/day") == str(local)  # the second trial reuses the copy
    assert data.replay_span_s("s3://bucket/day") > 0
    with pytest.raises(data.DataSourceError, match="does not exist"):
        data.replay_file_infos("s3://bucket/nope")
