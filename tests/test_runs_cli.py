"""run.py's subcommands on real run folders: runs, compare, show-config; --env-file."""

from __future__ import annotations

import json
import shutil
from importlib import metadata

import pytest

from tests.test_cli import ROOT, one_line_error, run


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two real local runs (seeds 7 and 8) in one log directory, plus a damaged folder."""
    tmp = tmp_path_factory.mktemp("runs")
    logs = tmp / "logs"
    for seed in ("7", "8"):
        p = run(["--engine", "local", "--run-duration-seconds", "600", "--volatility", "4",
                 "--seed", seed, "--quiet", "--log-dir", str(logs)], cwd=tmp)
        assert p.returncode == 0, p.stderr
    dirs = sorted(logs.iterdir())
    broken = logs / "20991231T000000Z-broken"
    shutil.copytree(dirs[0], broken)
    (broken / "kpi.json").write_text("{ truncated")
    return tmp, logs, dirs


def test_runs_lists_every_run_folder_with_its_figures(two_runs):
    tmp, logs, dirs = two_runs
    p = run(["runs", "--log-dir", str(logs)], cwd=tmp)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert lines[0].startswith("run id") and len(lines) == 4
    for d, seed in zip(dirs, ("7", "8"), strict=True):
        kpi = json.loads((d / "kpi.json").read_text())
        line = next(x for x in lines if x.startswith(d.name))
        assert f"mock seed {seed} vol 4" in line and "local" in line
        assert f"{kpi['round_trips_completed']:,}" in line
        assert f"{kpi['total_pnl_usd']:,.2f}" in line
    # the damaged folder is listed, with what is wrong, not hidden and not a crash
    assert "kpi.json unreadable" in lines[-1]


def test_compare_puts_kpis_side_by_side_with_differences(two_runs):
    tmp, _, dirs = two_runs
    p = run(["compare", str(dirs[0]), str(dirs[1])], cwd=tmp)
    assert p.returncode == 0, p.stderr
    a, b = (json.loads((d / "kpi.json").read_text()) for d in dirs)
    pnl = next(x for x in p.stdout.splitlines() if x.startswith("total PnL"))
    diff = b["total_pnl_usd"] - a["total_pnl_usd"]
    assert f"{a['total_pnl_usd']:,.2f}" in pnl and f"{b['total_pnl_usd']:,.2f}" in pnl
    assert f"{diff:,.2f}".lstrip("-") in pnl
    trips = next(x for x in p.stdout.splitlines() if x.startswith("round trips"))
    assert f"{b['round_trips_completed'] - a['round_trips_completed']:,}".lstrip("-") in trips


def test_compare_and_runs_refuse_what_is_not_there(tmp_path):
    one_line_error(run(["compare", str(tmp_path / "nope"), str(tmp_path)], cwd=tmp_path),
                   "not a run folder")
    one_line_error(run(["compare", str(tmp_path)], cwd=tmp_path), "two run folders")
    one_line_error(run(["runs", "--log-dir", str(tmp_path / "none")], cwd=tmp_path),
                   "no such log directory")


def test_show_config_says_where_each_setting_came_from(tmp_path):
    env_file = tmp_path / "my.env"
    env_file.write_text("SETTLE_MS=300\nENTRY_MARGIN_BPS=7\n")
    p = run(["show-config", "--env-file", str(env_file)], env={"ENTRY_MARGIN_BPS": "9"},
            cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    lines = {x.split("=")[0].strip(): x for x in p.stdout.splitlines() if "=" in x}
    assert "300" in lines["SETTLE_MS"] and str(env_file) in lines["SETTLE_MS"]
    assert "9" in lines["ENTRY_MARGIN_BPS"] and "environment" in lines["ENTRY_MARGIN_BPS"]
    assert "default" in lines["UPBIT_LATENCY_MS"]
    one_line_error(run(["show-config", "--env-file", str(tmp_path / "missing.env")],
                       cwd=tmp_path), "missing.env")


def test_env_file_flag_is_used_by_a_run(tmp_path):
    env_file = tmp_path / "my.env"
    env_file.write_text("SETTLE_MS=333\n")
    p = run(["--engine", "local", "--env-file", str(env_file), "--run-duration-seconds", "60",
             "--quiet", "--kpi-output-path", str(tmp_path / "k.json"), "--log-dir",
             str(tmp_path / "logs")], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert json.loads((tmp_path / "k.json").read_text())["settle_ms"] == 333


def test_help_shows_examples_and_the_subcommands():
    p = run(["--help"])
    assert p.returncode == 0
    for word in ("runs", "compare", "show-config", "examples", "MOCK_VOLATILITY"):
        assert word in p.stdout


def test_a_console_script_stands_beside_run_py():
    try:
        eps = metadata.entry_points(group="console_scripts")
    except Exception:  # noqa: BLE001
        pytest.skip("package metadata not available")
    names = {e.name: e.value for e in eps}
    if "kimchi-paper" not in names:
        # an older editable install: the declaration is what matters
        text = (ROOT / "pyproject.toml").read_text()
        assert 'kimchi-paper = "run:cli"' in text
    else:
        assert names["kimchi-paper"] == "run:cli"
