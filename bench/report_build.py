"""Report build: the time and size of report.html for a big run, against reading the folder.

    python bench/report_build.py [--seconds 14400] [--volatility 5] [--run-dir DIR] [--keep]

Makes a busy run first (``run.py --engine local`` on the mock market, entry margin 0, so that
it trades thousands of times over millions of events) unless ``--run-dir`` names one, then
measures in this one run (the machine is shared and noisy):

  1. baseline   reading the run folder (``load_run_folder``: the trade log, equity, series)
  2. report     ``build_run_report`` (reads the folder too), best of two
  3. again      the second build's bytes equal the first's

Targets (issue 12): at most 10 MB and 60 s for a run of 1 M events and 10 k trades; every
trade keeps its marker; byte-identical rebuilds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.reporting.analysis import load_run_folder, trade_markers  # noqa: E402
from common.reporting.html import build_run_report  # noqa: E402


def make_run(log_dir: Path, seconds: float, volatility: float) -> Path:
    env = dict(os.environ, ENTRY_MARGIN_BPS="0", RAY_USAGE_STATS_ENABLED="0")
    subprocess.run([sys.executable, str(ROOT / "run.py"), "--engine", "local", "--quiet",
                    "--run-duration-seconds", str(seconds), "--volatility", str(volatility),
                    "--log-dir", str(log_dir)], check=True, env=env, stdout=subprocess.DEVNULL)
    (run_dir,) = list(log_dir.iterdir())
    return run_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=14400.0)
    ap.add_argument("--volatility", type=float, default=5.0)
    ap.add_argument("--run-dir")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-report-"))
    if args.run_dir:
        run_dir = Path(args.run_dir)
    else:
        t = time.perf_counter()
        run_dir = make_run(tmp / "logs", args.seconds, args.volatility)
        print(f"made the run in {time.perf_counter() - t:.1f} s: {run_dir}")
    kpi = json.loads((run_dir / "kpi.json").read_text())
    t = time.perf_counter()
    rd = load_run_folder(run_dir)
    load_s = time.perf_counter() - t
    builds = []
    outs = []
    for k in range(2):
        t = time.perf_counter()
        out, _ = build_run_report(run_dir, tmp / f"report{k}.html")
        builds.append(time.perf_counter() - t)
        outs.append(out.read_bytes())
    markers = sum(len(m["t_ns"]) for s in trade_markers(rd.rows, rd.premium).values()
                  for m in s.values())
    size_mb = len(outs[0]) / 1e6
    best = min(builds)
    print(f"run: {kpi['events_processed']:,} events, {kpi['trades_executed']:,} trades, "
          f"{len(kpi['symbols'])} symbols, {kpi['round_trips_completed']:,} round trips")
    print(f"{'step':<28}{'seconds':>10}{'x baseline':>12}")
    print(f"{'read the folder (baseline)':<28}{load_s:>10.2f}{1.0:>12.2f}")
    print(f"{'build report.html (best)':<28}{best:>10.2f}{best / load_s:>12.2f}")
    print(f"report.html: {size_mb:.2f} MB (target <= 10), built in {best:.1f} s (target <= 60); "
          f"trade markers {markers:,} of {kpi['trades_executed']:,}; "
          f"byte-identical rebuild: {outs[0] == outs[1]}")
    if not args.keep:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
