"""Ray's fixed cost per actor: start-up and idle CPU of an embedded cluster with N empty actors,
with Ray's default system config against the lean one the engine uses when monitoring is off.

    python bench/ray_idle.py [--actors 50] [--idle-seconds 20]

For each config, in this one run (the machine is shared and noisy, so the two are measured
minutes apart at most): start ``ray.init(address="local")``, start N actors of 0.01 CPU (as the
symbol actors are) and time until all answer; wait 5 s, then sum the CPU seconds every process
of the cluster (the driver's children: GCS, raylet, agents, workers) uses over ``--idle-seconds``
of idleness. Printed: start-up seconds, idle CPU in % of one core (total, per actor, and the
workers' share), and the lean config against the default.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
import ray  # noqa: E402

from actors.engine import LEAN_SYSTEM_CONFIG  # noqa: E402


def cpu_seconds(procs: list[psutil.Process]) -> tuple[float, float]:
    """(all processes, the workers only) CPU seconds so far; gone processes count 0."""
    total = workers = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            s = t.user + t.system
            total += s
            if "ray::" in " ".join(p.cmdline()[:1]) or p.name().startswith("ray::"):
                workers += s
        except psutil.Error:
            continue
    return total, workers


def measure(n: int, idle_s: float, system_config: dict | None) -> dict:
    t0 = time.perf_counter()
    kwargs = {"address": "local", "num_cpus": os.cpu_count() or 2, "include_dashboard": False,
              "_node_ip_address": "127.0.0.1"}
    if system_config:
        kwargs["_system_config"] = system_config
    ray.init(**kwargs)

    @ray.remote(num_cpus=0.01)
    class Empty:
        def ping(self) -> int:
            return 1

    handles = [Empty.remote() for _ in range(n)]
    ray.get([h.ping.remote() for h in handles])
    startup = time.perf_counter() - t0
    time.sleep(5.0)
    procs = psutil.Process().children(recursive=True)
    a_total, a_workers = cpu_seconds(procs)
    t1 = time.perf_counter()
    time.sleep(idle_s)
    b_total, b_workers = cpu_seconds(procs)
    wall = time.perf_counter() - t1
    ray.shutdown()
    return {"startup_s": startup, "idle_pct": 100 * (b_total - a_total) / wall,
            "workers_pct": 100 * (b_workers - a_workers) / wall, "processes": len(procs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--actors", type=int, default=50)
    ap.add_argument("--idle-seconds", type=float, default=20.0)
    a = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    default = measure(a.actors, a.idle_seconds, None)
    lean = measure(a.actors, a.idle_seconds, dict(LEAN_SYSTEM_CONFIG))
    print(f"{a.actors} empty actors of 0.01 CPU, {a.idle_seconds:g} s idle; "
          f"lean = {LEAN_SYSTEM_CONFIG}")
    print(f"{'config':<10}{'start-up s':>12}{'idle % core':>13}{'per actor %':>13}"
          f"{'workers %':>11}{'processes':>11}")
    for name, r in (("default", default), ("lean", lean)):
        print(f"{name:<10}{r['startup_s']:>12.1f}{r['idle_pct']:>13.1f}"
              f"{r['idle_pct'] / a.actors:>13.3f}{r['workers_pct']:>11.1f}{r['processes']:>11}")
    print(f"lean vs default: idle CPU x{lean['idle_pct'] / default['idle_pct']:.2f}, "
          f"Ray's own processes x{(lean['idle_pct'] - lean['workers_pct']) / max(default['idle_pct'] - default['workers_pct'], 1e-9):.2f}, "
          f"start-up x{lean['startup_s'] / default['startup_s']:.2f}")


if __name__ == "__main__":
    main()
