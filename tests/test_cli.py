"""run.py as a user runs it: exit codes and one-line errors for bad input, a real short run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(args, env=None, cwd=ROOT, timeout=300):
    e = {k: v for k, v in os.environ.items() if not k.isupper() or k in ("PATH", "HOME", "LANG")}
    e.update({"RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}, **(env or {}))
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], capture_output=True,
                          text=True, timeout=timeout, env=e, cwd=cwd)


def one_line_error(p, *words):
    out = (p.stdout + p.stderr).strip()
    assert p.returncode == 2, out
    assert "Traceback" not in out
    lines = out.splitlines()
    assert len(lines) == 1, out
    for w in words:
        assert w.lower() in lines[0].lower(), lines[0]


@pytest.mark.parametrize("args,env,words", [
    (["--topn-size", "0"], {}, ["TOPN_SIZE", ">= 1"]),
    (["--data-source", "foo"], {}, ["--data-source", "foo"]),
    (["--run-duration-seconds", "-5"], {}, ["--run-duration-seconds"]),
    (["--seed", "abc"], {}, ["--seed"]),
    ([], {"FILL_MODEL_SLIPPAGE_ALPHA": "-1"}, ["FILL_MODEL_SLIPPAGE_ALPHA", ">= 0"]),
    ([], {"FILL_MODEL_KIND": "magic"}, ["FILL_MODEL_KIND"]),
    ([], {"SETTLE_MS": "soon"}, ["SETTLE_MS"]),
    (["--data-source", "replay"], {}, ["--replay-path"]),
    (["--data-source", "replay", "--replay-path", "/nonexistent/x.parquet"], {}, ["/nonexistent"]),
    (["--symbols", "NOPE"], {}, ["NOPE"]),
])
def test_bad_input_exits_2_with_one_line(tmp_path, args, env, words):
    one_line_error(run(["--engine", "local", "--log-dir", str(tmp_path), *args], env=env,
                       cwd=tmp_path), *words)


def test_unreadable_env_file_exits_2(tmp_path):
    (tmp_path / ".env.paper").mkdir()  # a directory where the file should be
    one_line_error(run(["--engine", "local"], cwd=tmp_path), ".env.paper")


def test_malformed_replay_file_exits_2(tmp_path):
    bad = tmp_path / "books.parquet"
    bad.write_text("this is not parquet\n")
    one_line_error(run(["--engine", "local", "--data-source", "replay", "--replay-path", str(bad)],
                       cwd=tmp_path), "books.parquet")


def test_env_file_then_environment_then_flags(tmp_path):
    (tmp_path / ".env.paper").write_text("SEED=3\nTOPN_SIZE=4\nTRADE_NOTIONAL_USD=1000\n")
    p = run(["--engine", "local", "--run-duration-seconds", "120", "--topn-size", "2",
             "--kpi-output-path", "k.json", "--quiet"], env={"SEED": "5"}, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    s = json.loads((tmp_path / "k.json").read_text())["settings"]
    assert (s["seed"], s["topn_size"], s["trade_notional_usd"]) == (5, 2, 1000.0)


@pytest.mark.slow
def test_short_mock_run_writes_kpis_and_a_trade_log(tmp_path):
    p = run(["--engine", "local", "--run-duration-seconds", "900", "--kpi-output-path",
             str(tmp_path / "k.json"), "--log-dir", str(tmp_path / "logs")], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "KPI summary" in p.stdout and "win rate" in p.stdout
    k = json.loads((tmp_path / "k.json").read_text())
    logs = list((tmp_path / "logs").glob("*/trades/top20_trade_log.jsonl"))
    assert len(logs) == 1
    assert len(logs[0].read_text().splitlines()) == k["trades_executed"]
    assert k["events_processed"] > 100_000


def test_the_stop_path_and_its_exit_codes():
    """Both engines stop through StopFlag: the first SIGINT or SIGTERM asks for a stop (named),
    a second one aborts; the exit code is 128 + the signal's number."""
    import os
    import signal

    from common.engine.report import exit_code
    from common.engine.stop import StopFlag

    assert (exit_code(None), exit_code("SIGINT"), exit_code("SIGTERM")) == (0, 130, 143)
    for sig in (signal.SIGTERM, signal.SIGINT):
        with StopFlag() as stop:
            os.kill(os.getpid(), sig)
            assert stop.requested and stop.signal == sig.name
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGTERM)
        assert signal.getsignal(sig) is not stop._handle  # handlers restored


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [("SIGINT", 130)])
def test_a_signal_stops_cleanly_with_complete_outputs(tmp_path, sig, code):
    import signal
    import time

    import pyarrow.parquet as pq

    e = {k: v for k, v in os.environ.items() if not k.isupper() or k in ("PATH", "HOME", "LANG")}
    e.update({"RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)})
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), "--engine", "local", "--speed", "600",
         "--kpi-output-path", str(tmp_path / "k.json"), "--log-dir", str(tmp_path / "logs")],
        cwd=tmp_path, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list((tmp_path / "logs").glob("*/trades/*.jsonl")):
        time.sleep(0.2)
    time.sleep(2.0)
    proc.send_signal(getattr(signal, sig))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err  # 128 + the signal's number, as a shell reports it
    assert "Traceback" not in err
    k = json.loads((tmp_path / "k.json").read_text())
    assert k["interrupted"] is True and 0 < k["events_processed"] < 400_000
    assert k["stopped_by"] == sig
    (jsonl,) = (tmp_path / "logs").glob("*/trades/top20_trade_log.jsonl")
    rows = [json.loads(x) for x in jsonl.read_text().splitlines()]
    assert len(rows) == k["trades_executed"]
    assert pq.read_table(jsonl.with_suffix(".parquet")).num_rows == len(rows)
    assert "KPI summary" in out


def test_version_names_the_package():
    p = run(["--version"])
    assert p.returncode == 0 and p.stdout.startswith("kimchi-paper ")


@pytest.mark.parametrize("flags", [["--ray-address", "127.0.0.1:6379"], ["--namespace", "x"],
                                   ["--monitoring-enabled"], ["--metrics-export-port", "9999"],
                                   ["--ray-address", "auto", "--monitoring-enabled"]])
def test_ray_only_flags_are_refused_with_the_local_engine(tmp_path, flags):
    one_line_error(run(["--engine", "local", *flags], cwd=tmp_path), flags[0], "--engine ray")


def test_the_run_folder_holds_everything_about_the_run(tmp_path):
    import pyarrow.parquet as pq

    p = run(["--engine", "local", "--run-duration-seconds", "900", "--volatility", "4",
             "--quiet", "--log-dir", str(tmp_path / "logs")], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    (run_dir,) = list((tmp_path / "logs").iterdir())
    names = {x.name for x in run_dir.iterdir()}
    assert {"trades", "kpi.json", "settings.json", "run.json", "equity.parquet",
            "run.log"} <= names
    kpi = json.loads((run_dir / "kpi.json").read_text())
    info = json.loads((run_dir / "run.json").read_text())
    assert info["run_id"] == kpi["run_id"] == run_dir.name and info["engine"] == "local"
    assert info["data_source"]["kind"] == "mock" and info["data_source"]["seed"] == 7
    assert info["data_source"]["volatility"] == 4.0
    first, last = info["event_time_span_ns"]
    assert 0 < first < last and (last - first) / 1e9 == pytest.approx(900, abs=1)
    assert info["code_version"]["package"]
    assert json.loads((run_dir / "settings.json").read_text()) == kpi["settings"]
    eq = pq.read_table(run_dir / "equity.parquet").to_pydict()
    assert kpi["trades_executed"] > 0 and len(eq["t_ns"]) > 1
    assert eq["equity_usd"][-1] == pytest.approx(kpi["total_pnl_usd"], abs=1e-9)
    assert max(eq["drawdown_usd"]) == pytest.approx(kpi["max_drawdown_usd"], abs=1e-9)
    log = (run_dir / "run.log").read_text()
    assert run_dir.name in log and "KPI summary" in log
    # the statistics recomputed from the folder's files alone equal the run's own
    import numpy as np

    from common.reporting.stats import statistics
    from common.reporting.trade_log import read_trade_log

    (jsonl,) = list((run_dir / "trades").glob("*.jsonl"))
    again = statistics(read_trade_log(jsonl), np.array(eq["t_ns"]), np.array(eq["equity_usd"]),
                       first, last, kpi["account_value_start_usd"])
    assert again == kpi["statistics"] and again["round_trips"] == kpi["round_trips_completed"]
    assert again["max_drawdown_usd"] == pytest.approx(kpi["max_drawdown_usd"], abs=1e-9)
    assert again["sharpe_round_trips"] == pytest.approx(kpi["sharpe_round_trips"], rel=1e-9)
    assert again["profit_factor"] == pytest.approx(kpi["profit_factor"], rel=1e-9)
    assert "Sharpe / Sortino" in p.stdout and "profit factor" in p.stdout


def test_progress_goes_to_the_run_log_and_stays_off_a_terminal_that_is_not_one(tmp_path):
    # captured output is not a terminal: no progress lines there, but run.log has them, with
    # the event time of the total and an ETA
    p = run(["--engine", "local", "--run-duration-seconds", "7200", "--log-dir",
             str(tmp_path / "logs")], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "event time +" not in p.stderr
    (run_dir,) = list((tmp_path / "logs").iterdir())
    progress = [x for x in (run_dir / "run.log").read_text().splitlines() if "event time +" in x]
    assert progress and all("of 7,200s" in x and "events/s" in x for x in progress)


def test_a_directory_a_run_cannot_write_is_refused_before_it_starts(tmp_path):
    from common.engine.storage import StorageError, check_writable_dir

    afile = tmp_path / "afile"
    afile.write_text("x")
    one_line_error(run(["--engine", "local", "--log-dir", str(afile / "logs")], cwd=tmp_path),
                   "--log-dir", "cannot write there")
    one_line_error(run(["--engine", "local", "--kpi-output-path", str(afile / "k.json")],
                       cwd=tmp_path), "--kpi-output-path", "is a file, not a directory")
    assert not list(tmp_path.glob("logs/*"))  # no run started
    assert check_writable_dir(tmp_path / "new" / "dir", "--log-dir").is_dir()
    with pytest.raises(StorageError, match="MB free on its disk"):
        check_writable_dir(tmp_path, "--log-dir", min_free_mb=1e15)
