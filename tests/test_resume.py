"""run.py --resume: a local run killed (SIGKILL) or stopped (Ctrl-C) mid-way, continued from its
last checkpoint, ends with exactly the uninterrupted run's trade log, KPIs and series."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from common.engine.checkpoint import (
    CheckpointError,
    load_checkpoint,
    resume_plan,
    save_checkpoint,
)
from common.marketdata.mock import MockConfig, MockMarket
from common.marketdata.replay import write_replay
from common.reporting.trade_log import TradeLogger, read_trade_log
from tests.ray_helpers import stable
from tests.test_cli import ROOT, one_line_error, run

pytestmark = pytest.mark.slow

#: a checkpoint every fifth of a wall second: a paced run crosses many
ENV = {"CHECKPOINT_INTERVAL_S": "0.2"}
MOCK = ["--engine", "local", "--volatility", "4", "--run-duration-seconds", "600", "--quiet"]


def start(args: list[str], cwd, env=ENV) -> subprocess.Popen:
    # the environment run() gives (no stray settings variables), plus ``env``
    e = {k: v for k, v in os.environ.items() if not k.isupper() or k in ("PATH", "HOME", "LANG")}
    e.update({"RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}, **env)
    return subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, env=e,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_for_rows(log_dir, n: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = list(log_dir.glob("*/trades/*.jsonl"))
        if logs and logs[0].read_text().count("\n") >= n and \
                list(log_dir.glob("*/checkpoint.pkl")):
            return
        assert proc.poll() is None, "the run ended before it could be interrupted"
        time.sleep(0.2)
    raise AssertionError("no trades in time")


def folder(log_dir):
    (d,) = list(log_dir.iterdir())
    return d


def assert_same_folder(a, b) -> None:
    ka, kb = (json.loads((d / "kpi.json").read_text()) for d in (a, b))
    sa, sb = stable(ka), stable(kb)
    assert [k for k in sa if sa[k] != sb.get(k)] == []
    ra, rb = (read_trade_log(next((d / "trades").glob("*.jsonl"))) for d in (a, b))
    assert len(ra) == len(rb) == ka["trades_executed"] > 0
    assert stable(ra) == stable(rb)
    pa_, pb_ = (pq.read_table(next((d / "trades").glob("*.parquet"))) for d in (a, b))
    assert pa_.drop(["session_id", "tick_to_fill_ms"]).equals(
        pb_.drop(["session_id", "tick_to_fill_ms"]))
    for name in ("equity.parquet", "premium.parquet", "marks.parquet"):
        assert pq.read_table(a / name).equals(pq.read_table(b / name)), name


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, with the same settings."""
    tmp = tmp_path_factory.mktemp("ref")
    p = run([*MOCK, "--log-dir", str(tmp / "logs")], cwd=tmp, env=ENV)
    assert p.returncode == 0, p.stderr
    return folder(tmp / "logs")


def test_driver_killed_then_resumed_equals_the_uninterrupted_run(reference, tmp_path):
    logs = tmp_path / "logs"
    proc = start([*MOCK, "--speed", "120", "--log-dir", str(logs)], tmp_path)
    try:
        wait_for_rows(logs, 40, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    d = folder(logs)
    assert json.loads((d / "run.json").read_text())["status"] == "running"
    assert not (d / "kpi.json").exists()
    state = load_checkpoint(d)
    assert 0 < state["rows_written"] and 0 < state["rows_done"]
    p = run(["--resume", str(d), "--quiet"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "KPI summary" in p.stdout
    assert_same_folder(reference, d)
    info = json.loads((d / "run.json").read_text())
    assert info["status"] == "finished" and not (d / "checkpoint.pkl").exists()
    assert "resumed after" in (d / "run.log").read_text()


def test_ctrl_c_then_resumed_equals_the_uninterrupted_run(reference, tmp_path):
    logs = tmp_path / "logs"
    proc = start([*MOCK, "--speed", "120", "--log-dir", str(logs)], tmp_path)
    wait_for_rows(logs, 40, proc)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    d = folder(logs)
    # the stop settled what was pending and wrote an interrupted run's KPIs
    assert json.loads((d / "kpi.json").read_text())["interrupted"] is True
    assert json.loads((d / "run.json").read_text())["status"] == "interrupted"
    p = run(["--resume", str(d), "--quiet", "--report"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert_same_folder(reference, d)
    assert (d / "report.html").exists()


def test_a_replay_resumed_equals_the_uninterrupted_replay(tmp_path):
    market = MockMarket(MockConfig(seed=5, symbols=("BTC", "ETH", "XRP", "SOL"), volatility=4))
    path = tmp_path / "books.parquet"
    write_replay(path, market.batches(900, batch_rows=5000))
    args = ["--engine", "local", "--data-source", "replay", "--replay-path", str(path),
            "--quiet"]
    env = {**ENV, "ENTRY_MARGIN_BPS": "0"}
    p = run([*args, "--log-dir", str(tmp_path / "ref")], cwd=tmp_path, env=env)
    assert p.returncode == 0, p.stderr
    logs = tmp_path / "cut"
    proc = start([*args, "--speed", "80", "--log-dir", str(logs)], tmp_path, env)
    try:
        wait_for_rows(logs, 20, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    p = run(["--resume", str(folder(logs)), "--quiet"], cwd=tmp_path, env=env)
    assert p.returncode == 0, p.stderr
    assert_same_folder(folder(tmp_path / "ref"), folder(logs))


def resume_refusal(capsys, *args) -> str:
    """``run.py --resume ...`` in this process (no interpreter start per case): exit 2 and one
    line on stderr, which is returned."""
    import run as cli

    assert cli.main(["--resume", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("run.py: error: "), err
    return err


def test_what_cannot_be_resumed_is_refused_in_one_line(reference, tmp_path, capsys):
    assert "finished" in resume_refusal(capsys, str(reference))
    assert "not a run folder" in resume_refusal(capsys, str(tmp_path / "nope"))
    err = resume_refusal(capsys, str(reference), "--seed", "3", "--engine", "ray")
    assert "--engine ray" in err and "--seed" in err
    d = tmp_path / "ray-run"
    d.mkdir()
    (d / "trades").mkdir()
    (d / "trades" / "top20_trade_log.jsonl").write_text("")
    info = json.loads((reference / "run.json").read_text())
    (d / "settings.json").write_text((reference / "settings.json").read_text())
    (d / "run.json").write_text(json.dumps({**info, "status": "running", "engine": "ray"}))
    assert "ray engine" in resume_refusal(capsys, str(d))
    (d / "run.json").write_text(json.dumps({**info, "status": "running"}))
    assert "no checkpoint.pkl" in resume_refusal(capsys, str(d))
    (d / "checkpoint.pkl").write_bytes(b"\x80\x05torn")
    assert "unreadable checkpoint" in resume_refusal(capsys, str(d))
    (d / "run.json").write_text(json.dumps({**info, "status": "running",
                                            "data_source": {"kind": "real"}}))
    assert "cannot be replayed" in resume_refusal(capsys, str(d))
    # and through the real command line, once
    one_line_error(run(["--resume", str(reference)], cwd=tmp_path), "finished")


def test_checkpoint_files_are_whole_and_versioned(tmp_path):
    size = save_checkpoint(tmp_path, {"rows_done": 3, "rows_written": 1, "x": [1.5, "a"]})
    assert (tmp_path / "checkpoint.pkl").stat().st_size == size
    assert not (tmp_path / "checkpoint.pkl.tmp").exists()
    assert load_checkpoint(tmp_path)["x"] == [1.5, "a"]
    (tmp_path / "checkpoint.pkl").write_bytes(pickle.dumps({"format": 99}))
    with pytest.raises(CheckpointError, match="another version"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="not a run folder"):
        resume_plan(tmp_path / "nope")


def test_trade_log_reopened_keeps_only_the_checkpoints_rows(tmp_path):
    log = TradeLogger(tmp_path, "r", 3)
    rows = [{"trade_id": f"A-E-{k}", "symbol": "A"} for k in range(5)]
    from common.reporting.trade_log import FIELD_NAMES

    full = [{**dict.fromkeys(FIELD_NAMES), **r} for r in rows]
    log.log_rows(full)
    log._jsonl.flush()
    log._jsonl.write('{"trade_id": "A-E-5", "sym')  # a torn last line
    log._jsonl.close()
    again = TradeLogger(tmp_path, "r", 3, keep_rows=2)
    assert again.rows_written == 2
    assert again.log_rows(full[1:4]) == 2  # A-E-1 was kept; A-E-2 and A-E-3 are new again
    again.close()
    assert [r["trade_id"] for r in read_trade_log(again.jsonl_path)] == \
        ["A-E-0", "A-E-1", "A-E-2", "A-E-3"]
    assert pq.read_table(again.parquet_path).column("trade_id").to_pylist() == \
        ["A-E-0", "A-E-1", "A-E-2", "A-E-3"]
