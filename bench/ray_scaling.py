"""Ray engine vs the local engine on the mock market, for 20, 50 and 100 symbols.

    python bench/ray_scaling.py [--seconds 1800] [--sizes 20,50,100] [--startup-floor 100]

For each size it runs the local engine (the baseline, measured in the same run) and the Ray engine
on an embedded 2-CPU cluster with the same settings and seed, checks that both produced the same
trade count, and prints: events/s of each and their ratio, the Ray start-up time (cluster already
up: actor creation and initial snapshots), USS per actor and PSS summed over all the run's actors
(psutil ``memory_full_info`` mid-run), and Ray calls per second during the feed.

Below the table it prints where the feed time went: the driver's wall seconds (waiting for the
source, validating, putting batches in the object store, waiting for the coordinator) and the
coordinator's (inside ``process``; within it, settlement rounds and snapshots), and the CPU
seconds each kind of process used during the Ray run (sampled with psutil).

``--startup-floor N`` first creates N trivial actors, then N SymbolActors, on the same cluster
with the same options, and prints how long each took and the CPU seconds per worker process:
the part of the start-up that is Ray's own (one worker process per actor) against ours.

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
import threading
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


class CpuSampler:
    """CPU seconds (user + system) used by groups of processes since ``start``, sampled in a
    thread until ``stop`` (actor processes are gone once the run ends: the last sample counts)."""

    def __init__(self) -> None:
        self.groups: dict[str, list[psutil.Process]] = {}
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _cpu(procs: list[psutil.Process]) -> float | None:
        total = 0.0
        for p in procs:
            try:
                t = p.cpu_times()
            except psutil.Error:
                return None
            total += t.user + t.system
        return total

    def start(self, groups: dict[str, list[psutil.Process]]) -> None:
        self.groups = groups
        self.first = {k: self._cpu(v) or 0.0 for k, v in groups.items()}
        self.last = dict(self.first)
        self._thread.start()

    def _run(self) -> None:
        while not self._halt.wait(0.05):
            now = {k: self._cpu(v) for k, v in self.groups.items()}
            if any(v is None for v in now.values()):
                return
            self.last = now

    def stop(self) -> dict[str, float]:
        self._halt.set()
        if self._thread.is_alive():
            self._thread.join()
        return {k: self.last[k] - self.first[k] for k in self.groups}


def _ray_system_processes() -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "raylet" in cmd or "gcs_server" in cmd:
            out.append(p)
    return out


def one_size(n: int, seconds: float, tmp: Path) -> dict:
    s = Settings.from_env(overrides={"topn_size": n})
    t = time.perf_counter()
    loc = run_local(s, open_source("mock", s, None, seconds), f"local{n}", tmp, None, n,
                    progress=False)
    local_s = time.perf_counter() - t
    batches = max(1, round(loc["events_processed"] / s.batch_rows))
    mem: dict = {}
    handles: dict = {}
    cpu = CpuSampler()

    def on_started(h: dict) -> None:
        handles.update(h)
        sym = [psutil.Process(ray.get(v.where.remote())["pid"]) for k, v in h.items()
               if k.startswith("symbol-")]
        coord = psutil.Process(ray.get(h["coordinator"].stats.remote())["pid"])
        cpu.start({"driver": [psutil.Process()], "coordinator": [coord], "symbol actors": sym,
                   "raylet+gcs": _ray_system_processes()})

    def on_batch(k: int) -> None:
        if k == batches // 2:
            t = time.perf_counter()
            mem.update(actor_memory(handles))
            # the driver is held up here, not by the engine: this is taken out of the feed time
            mem["memory_probe_s"] = time.perf_counter() - t

    run = run_ray(s, open_source("mock", s, None, seconds), f"ray{n}", tmp, None, n,
                  RayOptions(namespace=f"bench-{n}", progress=False, on_batch=on_batch,
                             on_started=on_started))
    cpu_s = cpu.stop()
    rep = run.report
    assert rep["trades_executed"] == loc["trades_executed"], "engines disagree"
    assert rep["total_pnl_usd"] == loc["total_pnl_usd"], "engines disagree"
    feed_s = run.calls["feed_seconds"] - mem.get("memory_probe_s", 0.0)
    calls = run.calls["driver"] + run.calls["to_symbols"] + run.calls["to_sinks"]
    return {"symbols": n, "events": loc["events_processed"], "batches": run.calls["batches"],
            "local_eps": loc["events_processed"] / local_s,
            "ray_eps": rep["events_processed"] / feed_s,
            "ray_eps_with_startup": rep["events_processed"] / rep["wall_seconds"],
            "startup_s": run.startup_s, "calls": calls, "calls_per_s": calls / feed_s,
            "feed_s": feed_s, "driver_timing": run.calls["driver_timing"],
            "coordinator_timing": run.calls["coordinator_timing"], "cpu_s": cpu_s,
            "load": os.getloadavg()[0], **mem}


def startup_floor(n: int) -> None:
    """N trivial actors, then N SymbolActors (engine options, then the coordinator's ``start``
    call each): wall time and mean CPU seconds per worker process."""
    from actors.engine import SYMBOL_CPUS
    from actors.symbol import SymbolActor
    from common.engine.build import fee_schedule, fill_model_config

    s = Settings.from_env()

    @ray.remote
    class Trivial:
        def where(self) -> dict:
            return {"pid": os.getpid()}

    def measure(label: str, make, first_call) -> None:
        t = time.perf_counter()
        hs = [make(i) for i in range(n)]
        pids = [x["pid"] for x in ray.get([h.where.remote() for h in hs])]
        up = time.perf_counter() - t
        ray.get([first_call(h) for h in hs])
        total = time.perf_counter() - t
        cpu = [sum(psutil.Process(p).cpu_times()[:2]) for p in pids]
        print(f"start-up floor: {n} {label}: up in {up:.1f} s, {total:.1f} s with the first "
              f"call; CPU per worker process {sum(cpu) / len(cpu):.2f} s (load "
              f"{os.getloadavg()[0]:.1f})", flush=True)
        for h in hs:
            ray.kill(h, no_restart=True)
        time.sleep(5)  # let the killed workers exit before the next measurement

    measure("trivial actors", lambda i: Trivial.options(num_cpus=SYMBOL_CPUS).remote(),
            lambda h: h.where.remote())
    measure("SymbolActors", lambda i: SymbolActor.options(
        num_cpus=SYMBOL_CPUS, scheduling_strategy="SPREAD", max_restarts=-1,
        max_task_retries=0).remote(f"S{i:03d}", fill_model_config(s), fee_schedule(s), s.seed),
        lambda h: h.start.remote())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3600.0, help="mock event-seconds per run")
    ap.add_argument("--sizes", default="20,50,100")
    ap.add_argument("--startup-floor", type=int, default=0, metavar="N",
                    help="first time N trivial actors against N SymbolActors")
    a = ap.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    if a.startup_floor:
        startup_floor(a.startup_floor)
    sizes = [int(x) for x in a.sizes.split(",") if x]
    if not sizes:
        ray.shutdown()
        return 0
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
    print("\nwhere the Ray feed time went (wall s), and CPU s per kind of process during the run:")
    for r in rows:
        d, c = r["driver_timing"], r["coordinator_timing"]
        print(f"- {r['symbols']} symbols, feed {r['feed_s']:.2f} s (memory probe of "
              f"{r.get('memory_probe_s', 0.0):.2f} s taken out; load {r['load']:.1f}): driver "
              f"source {d['source_s']:.2f} / validate {d['validate_s']:.2f} / put+send "
              f"{d['put_s']:.2f} / waiting {d['wait_s']:.2f}; coordinator process "
              f"{c['process_s']:.2f}, of which {c['collect_rounds']} settlement rounds "
              f"{c['collect_wait_s']:.2f} and ship+snapshots {c['ship_snapshot_s']:.2f}; CPU "
              + ", ".join(f"{k} {v:.2f}" for k, v in r["cpu_s"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
