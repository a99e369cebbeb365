"""Chaos on the local engine: kill the driver (SIGKILL) several times at random moments of one
run, resume it each time, and compare the end with the undisturbed run.

    python bench/chaos.py [--kills 5] [--seconds 1800] [--speed 60] [--seed 1]

The undisturbed run is made first, with the same settings (the baseline). The disturbed run is
paced (``--speed``) so that kills land mid-run; each kill comes 1-4 s (seeded) after the run
(or its last resume) wrote its first checkpoint. Printed: a row per kill (trade rows on disk
when killed, rows the checkpoint kept to resume from), and for each start the
seconds from the process start to its first new checkpoint (start-up and restore included: the
recovery time), then rows lost, rows doubled and whether the trade log and KPIs equal the
baseline's.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.reporting.trade_log import read_trade_log_tolerant  # noqa: E402
from tests.ray_helpers import stable  # noqa: E402

ENV = {"CHECKPOINT_INTERVAL_S": "0.5", "RAY_USAGE_STATS_ENABLED": "0"}


def env() -> dict:
    e = {k: v for k, v in os.environ.items() if not k.isupper() or k in ("PATH", "HOME", "LANG")}
    return {**e, "PYTHONPATH": str(ROOT), **ENV}


def rows_of(run_dir: Path) -> list[dict]:
    logs = list((run_dir / "trades").glob("*.jsonl"))
    return read_trade_log_tolerant(logs[0])[0] if logs else []  # a torn last line skipped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=1800.0)
    ap.add_argument("--speed", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    tmp = Path(tempfile.mkdtemp(prefix="chaos-"))
    base = ["--engine", "local", "--volatility", "4", "--run-duration-seconds", str(a.seconds),
            "--quiet"]
    run_py = [sys.executable, str(ROOT / "run.py")]
    subprocess.run([*run_py, *base, "--log-dir", str(tmp / "ref")], check=True, env=env(),
                   stdout=subprocess.DEVNULL)
    (ref,) = list((tmp / "ref").iterdir())

    cmd = [*run_py, *base, "--speed", str(a.speed), "--log-dir", str(tmp / "cut")]
    table = []
    run_dir = None
    for k in range(a.kills + 1):
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if run_dir is None:
            while not list((tmp / "cut").glob("*/run.json")):
                time.sleep(0.05)
            (run_dir,) = list((tmp / "cut").iterdir())
        ckpt = run_dir / "checkpoint.pkl"
        mtime0 = ckpt.stat().st_mtime_ns if ckpt.exists() else 0
        while p.poll() is None and (not ckpt.exists() or ckpt.stat().st_mtime_ns == mtime0):
            time.sleep(0.02)
        back = time.perf_counter() - t0 if p.poll() is None else None
        if k == a.kills or p.poll() is not None:
            p.wait()
            table.append((k, "ran to the end", None, back))
            break
        time.sleep(rng.uniform(1.0, 4.0))
        if p.poll() is not None:
            table.append((k, "ended before the kill", None, back))
            break
        on_disk = len(rows_of(run_dir))
        p.send_signal(signal.SIGKILL)
        p.wait()
        kept = pickle.loads(ckpt.read_bytes())["rows_written"]
        table.append((k, f"killed, {on_disk:,} rows on disk", kept, back))
        cmd = [*run_py, "--resume", str(run_dir), "--quiet", "--speed", str(a.speed)]
    print(f"undisturbed: {ref.name}; disturbed: {run_dir.name} ({a.kills} kills planned, "
          f"speed {a.speed:g}, checkpoints every {ENV['CHECKPOINT_INTERVAL_S']} s)")
    print(f"{'#':>2}  {'start':<8}{'outcome':<30}{'rows kept to resume':>21}"
          f"{'back at work after s':>22}")
    for k, what, kept, back in table:
        print(f"{k:>2}  {'run' if k == 0 else 'resume':<8}{what:<30}"
              f"{'-' if kept is None else f'{kept:,}':>21}"
              f"{'-' if back is None else f'{back:.2f}':>22}")
    ra, rb = rows_of(ref), rows_of(run_dir)
    ids_a, ids_b = [r["trade_id"] for r in ra], [r["trade_id"] for r in rb]
    lost = len(set(ids_a) - set(ids_b))
    doubled = len(ids_b) - len(set(ids_b))
    ka = json.loads((ref / "kpi.json").read_text())
    kb = json.loads((run_dir / "kpi.json").read_text())
    same_kpis = stable(ka) == stable(kb)
    print(f"rows: {len(ra):,} undisturbed, {len(rb):,} after the kills; lost {lost}, "
          f"doubled {doubled}; trade rows equal: {stable(ra) == stable(rb)}; "
          f"KPIs equal: {same_kpis}")


if __name__ == "__main__":
    main()
