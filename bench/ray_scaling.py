"""Ray engine vs the local engine on the mock market, for 20, 50 and 100 symbols.

    python bench/ray_scaling.py [--seconds 1800] [--sizes 20,50,100]

For each size it runs the local engine (the baseline, measured in the same run) and the Ray engine
on an embedded 2-CPU cluster with the same settings and seed, checks that both produced the same
trade count, and prints: events/s of each and their ratio, the Ray start-up time (cluster already
up: actor creation and initial snapshots), USS per actor and PSS summed over all the run's actors
(psutil ``memory_full_info`` mid-run), and Ray calls per second during the feed.

The mock universe has 42 assets; for larger sizes the bench adds synthetic ones (``X001``...),
each a copy of a real asset's parameters under a new name with a lower traded value, so TopN
takes the real assets first. The mock market generates them like any other.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402
import ray  # noqa: E402
from loguru import logger  # noqa: E402

from actors.engine import RayOptions, run_ray  # noqa: E402
from common.engine.build import open_source  # noqa: E402
from common.engine.local import run_local  # noqa: E402
from common.marketdata.mock import MOCK_UNIVERSE  # noqa: E402
from common.settings import Settings  # noqa: E402


def widen_universe(n: int) -> None:
    """Make the mock universe hold at least ``n`` assets (synthetic copies after the real ones)."""
    real = sorted(MOCK_UNIVERSE.values(), key=lambda a: (-a.volume_usd, a.name))
    floor = real[-1].volume_usd
    k = 0
    while len(MOCK_UNIVERSE) < n:
        src = real[k % len(real)]
        k += 1
        name = f"X{k:03d}"
        MOCK_UNIVERSE[name] = dataclasses.replace(src, name=name, volume_usd=floor * 0.5 / k)


def actor_memory(handles: dict) -> dict:
    """USS of each actor process and PSS summed over all of them, in MiB."""
    pids = {}
    for name, h in handles.items():
        pids[name] = ray.get(h.where.remote())["pid"] if name.startswith("symbol-") else None
    for name in ("coordinator", "trade-logger", "kpi"):
        if name == "coordinator":
            pids[name] = ray.get(handles[name].stats.remote())["pid"]
        else:
            pids[name] = ray.get(handles[name].pid.remote())
    uss, pss = {}, 0.0
    for name, pid in pids.items():
        info = psutil.Process(pid).memory_full_info()
        uss[name] = info.uss / 2**20
        pss += info.pss / 2**20
    sym = [v for k, v in uss.items() if k.startswith("symbol-")]
    return {"uss_symbol_mean": sum(sym) / len(sym), "uss_symbol_max": max(sym),
            "uss_coordinator": uss["coordinator"], "pss_total": pss, "processes": len(pids)}


def one_size(n: int, seconds: float, tmp: Path) -> dict:
    s = Settings.from_env(overrides={"topn_size": n})
    t = time.perf_counter()
    loc = run_local(s, open_source("mock", s, None, seconds), f"local{n}", tmp, None, n,
                    progress=False)
    local_s = time.perf_counter() - t
    batches = max(1, round(loc["events_processed"] / s.batch_rows))
    mem: dict = {}
    handles: dict = {}

    def on_batch(k: int) -> None:
        if k == batches // 2:
            mem.update(actor_memory(handles))

    run = run_ray(s, open_source("mock", s, None, seconds), f"ray{n}", tmp, None, n,
                  RayOptions(namespace=f"bench-{n}", progress=False, on_batch=on_batch,
                             on_started=handles.update))
    rep = run.report
    assert rep["trades_executed"] == loc["trades_executed"], "engines disagree"
    assert rep["total_pnl_usd"] == loc["total_pnl_usd"], "engines disagree"
    feed_s = run.calls["feed_seconds"]
    calls = run.calls["driver"] + run.calls["to_symbols"] + run.calls["to_sinks"]
    return {"symbols": n, "events": loc["events_processed"], "batches": run.calls["batches"],
            "local_eps": loc["events_processed"] / local_s,
            "ray_eps": rep["events_processed"] / feed_s,
            "ray_eps_with_startup": rep["events_processed"] / rep["wall_seconds"],
            "startup_s": run.startup_s, "calls": calls, "calls_per_s": calls / feed_s, **mem}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3600.0, help="mock event-seconds per run")
    ap.add_argument("--sizes", default="20,50,100")
    a = ap.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    sizes = [int(x) for x in a.sizes.split(",")]
    widen_universe(max(sizes))
    rows = []
    with tempfile.TemporaryDirectory(prefix="ray-scaling-") as tmp:
        for n in sizes:
            rows.append(one_size(n, a.seconds, Path(tmp)))
            r = rows[-1]
            print(f"{n} symbols done: ray/local events/s {r['ray_eps'] / r['local_eps']:.3f}",
                  file=sys.stderr, flush=True)
    ray.shutdown()
    print(f"\nmock market, {a.seconds:g} event-seconds per run, seed 7, 2 CPUs "
          f"(os.cpu_count()={os.cpu_count()}), bench wall {time.perf_counter() - t0:.0f} s\n")
    print("| symbols | events | batches | local events/s | Ray events/s (feed) | Ray/local | "
          "Ray events/s incl. start-up | start-up s | USS/symbol actor MiB (mean/max) | "
          "USS coordinator MiB | PSS all actors MiB | Ray calls | calls/s |")
    print("|" + "---|" * 13)
    for r in rows:
        print(f"| {r['symbols']} | {r['events']:,} | {r['batches']} | {r['local_eps']:,.0f} | "
              f"{r['ray_eps']:,.0f} | {r['ray_eps'] / r['local_eps']:.3f} | "
              f"{r['ray_eps_with_startup']:,.0f} | {r['startup_s']:.1f} | "
              f"{r.get('uss_symbol_mean', float('nan')):.1f} / "
              f"{r.get('uss_symbol_max', float('nan')):.1f} | "
              f"{r.get('uss_coordinator', float('nan')):.1f} | "
              f"{r.get('pss_total', float('nan')):,.0f} | {r['calls']:,} | "
              f"{r['calls_per_s']:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
