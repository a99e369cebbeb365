"""The sweep on Ray: a walk-forward sweep run end to end by ``run.py sweep`` on an embedded
cluster, interrupted by Ctrl-C and resumed; a grid sweep over a two-node cluster; each trial's
results equal to the same trial run in one process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

from common.research.driver import SequentialRunner, SweepError, run_sweep
from common.research.plan import build_plan
from common.research.spec import parse_spec
from common.research.store import RESULT
from tests.ray_helpers import stable, two_node_cluster

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]

GRID = """
[data]
source = "mock"
seeds = [1, 2, 3]
duration_s = 1200

[settings]
SYMBOLS = "BTC,ETH,XRP"
MOCK_VOLATILITY = 5

[grid]
ENTRY_MARGIN_BPS = [5, 15]

[objective]
metric = "total_pnl_usd"
min_round_trips = 1

[overfitting]
cscv_blocks = 8
"""

WALK_FORWARD = """
[data]
source = "mock"
seeds = [5]
duration_s = 2400

[settings]
SYMBOLS = "BTC,ETH"
MOCK_VOLATILITY = 5

[grid]
ENTRY_MARGIN_BPS = [5, 20]
EXIT_BAND_BPS = [2, 8]

[objective]
metric = "pnl_per_hour_usd"
min_round_trips = 1

[walk_forward]
in_sample_s = 900
out_of_sample_s = 600
embargo_s = 60

[overfitting]
cscv_blocks = 4
"""


def _env() -> dict:
    e = {k: v for k, v in os.environ.items() if not k.isupper() or k in ("PATH", "HOME")}
    return {**e, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}


def _sweep(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run.py"), "sweep", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=_env())


def _same_as_in_process(text: str, out: Path, tmp: Path) -> None:
    plan = build_plan(parse_spec(text))
    local = run_sweep(plan, tmp, SequentialRunner(), progress=False)
    rows = pq.read_table(out / "sweep_results.parquet").to_pylist()
    assert len(rows) == len(plan.trials) and {r["status"] for r in rows} == {"ok"}
    assert all(r["node"] and r["node"] != "driver" for r in rows)  # ran on Ray workers
    for r in rows:
        kpi = json.loads((out / "trials" / r["trial_key"] / "kpi.json").read_text())
        assert stable(kpi) == stable(local.records[r["trial_key"]]["report"]), r["trial_key"]
        assert r["total_pnl_usd"] == kpi["total_pnl_usd"]
        ray_rows = pq.read_table(out / "trials" / r["trial_key"] / "trades" /
                                 "top20_trade_log.parquet").to_pylist()
        local_rows = pq.read_table(tmp / "trials" / r["trial_key"] / "trades" /
                                   "top20_trade_log.parquet").to_pylist()
        assert stable(ray_rows) == stable(local_rows)


def test_walk_forward_sweep_interrupted_by_ctrl_c_then_resumed(tmp_path):
    spec = tmp_path / "wf.toml"
    spec.write_text(WALK_FORWARD)
    out = tmp_path / "wf"
    p = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "sweep", str(spec), "--out",
                          str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         cwd=ROOT, env=_env())
    deadline = time.monotonic() + 180
    while not list(out.glob(f"trials/*/{RESULT}")):
        assert p.poll() is None, p.communicate()
        assert time.monotonic() < deadline, "no trial finished"
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 130, stderr[-2000:]
    done = len(list(out.glob(f"trials/*/{RESULT}")))
    assert 1 <= done < 16, done
    assert "interrupted" in stdout and f"--resume {out}" in stderr
    assert pq.read_table(out / "sweep_results.parquet").num_rows == 16  # every trial listed

    again = _sweep(str(spec), "--out", str(out))  # a new sweep may not overwrite this one
    assert again.returncode == 2 and "--resume" in again.stderr

    resumed = _sweep("--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resume: {done} of 16 trials already finished" in resumed.stderr
    assert f"-> {16 - done} trials to run" in resumed.stderr
    assert "walk-forward efficiency" in resumed.stdout
    rows = pq.read_table(out / "sweep_results.parquet").to_pylist()
    # 2400 s: folds at IS [0,900) OOS [960,1560), IS [600,1500) OOS [1560,2160)
    assert len(rows) == 4 * 2 * 2  # configurations x folds x (in, out of sample)
    assert {(r["window"], r["fold"], r["window_start_s"], r["window_end_s"]) for r in rows} == {
        ("in_sample", 0, 0, 900), ("out_of_sample", 0, 960, 1560),
        ("in_sample", 1, 600, 1500), ("out_of_sample", 1, 1560, 2160)}
    chosen = [r for r in rows if r["wf_chosen"]]
    assert len(chosen) == 2 and {r["fold"] for r in chosen} == {0, 1}
    summary = json.loads((out / "summary.json").read_text())
    for f in summary["walk_forward"]["folds"]:  # the chosen is the in-sample best
        ins = [r for r in rows if r["window"] == "in_sample" and r["fold"] == f["fold"]]
        assert f["is_objective"] == max(r["pnl_per_hour_usd"] for r in ins)
        oos = next(r for r in chosen if r["fold"] == f["fold"])
        assert f["oos_objective"] == oos["pnl_per_hour_usd"]
    assert summary["overfitting"]["pbo"] is not None
    html = (out / "report.html").read_text()
    assert 'id="sweep-is-oos"' in html and 'id="sweep-heatmap"' in html
    # the plan's first and last trials, run again in this process, equal what the Ray workers
    # made (the grid test below compares every trial of its sweep)
    from common.research.trial import run_trial

    plan = build_plan(parse_spec(WALK_FORWARD))
    for t in (plan.trials[0], plan.trials[-1]):
        local = run_trial(t)
        kpi = json.loads((out / "trials" / t.key / "kpi.json").read_text())
        assert local["status"] == "ok" and stable(kpi) == stable(local["report"]), t.label


@pytest.fixture(scope="module")
def two_nodes():
    with two_node_cluster("sweep-test") as cluster:
        yield cluster


def test_grid_sweep_on_two_nodes_equals_in_process(two_nodes, tmp_path):
    """A grid sweep end to end on Ray: trials on both nodes, a worker killed mid-trial retried,
    each trial equal to its run in one process; and a path a node cannot read is refused with a
    line naming the node."""
    from actors.sweep import RayRunner, check_data_on_nodes

    plan = build_plan(parse_spec(GRID))
    killed: list[int] = []

    def kill_one_trial_worker() -> None:
        # a worker dies mid-trial (as when a node is lost): Ray runs the trial again elsewhere
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            for proc in psutil.process_iter(["pid", "cmdline"]):
                cmd = " ".join(proc.info.get("cmdline") or [])
                if cmd.startswith("ray::trial"):
                    proc.kill()
                    killed.append(proc.info["pid"])
                    return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_one_trial_worker, daemon=True)
    killer.start()
    out = run_sweep(plan, tmp_path / "s", RayRunner(), progress=False)
    killer.join()
    assert killed, "no trial worker was seen running"
    nodes = {r["node"] for r in out.records.values()}
    assert len(nodes) == 2, nodes
    assert all(r["status"] == "ok" for r in out.records.values())
    _same_as_in_process(GRID, tmp_path / "s", tmp_path / "local")
    with pytest.raises(SweepError, match=r"node .* cannot read the data: replay path "
                                         r"/nonexistent/day\.parquet does not exist"):
        check_data_on_nodes(["/nonexistent/day.parquet"])
