"""The sweep on Ray against the same trials one after another in one process.

    flock /tmp/bench.lock python bench/sweep.py [--trials 8] [--symbols 20] [--seconds 3600]
                                                [--overhead-trials 4] [--skip-two-node]

1. Baseline: ``--trials`` mock runs (seeds 1..N, one configuration), one after another in this
   process (``SequentialRunner``: exactly what a trial is, without Ray).
2. The same sweep on an embedded cluster over every core (``RayRunner``: one ``num_cpus=1`` task
   per trial). Prints the speedup over the baseline with and without the cluster's start-up,
   and checks every trial's KPIs and trade rows equal the baseline's.
3. Overhead per trial: ``--overhead-trials`` trials run one at a time on the warm cluster
   (``max_inflight=1``): driver wall minus the time spent inside the trials, per trial
   (scheduling, shipping the result through the object store, writing it to the sweep
   folder), as a share of a one-minute trial.
4. A two-node cluster on this machine (``ray.cluster_utils.Cluster``, one CPU per node): trials
   per node and the speedup.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow.parquet as pq  # noqa: E402
import ray  # noqa: E402
from loguru import logger  # noqa: E402

from actors.sweep import RayRunner  # noqa: E402
from common.research.driver import SequentialRunner, run_sweep  # noqa: E402
from common.research.plan import build_plan  # noqa: E402
from common.research.spec import parse_spec  # noqa: E402
from tests.ray_helpers import stable  # noqa: E402


def spec_text(seeds: list[int], symbols: int, seconds: float) -> str:
    return f"""
[data]
source = "mock"
seeds = {seeds}
duration_s = {seconds}
[settings]
TOPN_SIZE = {symbols}
[grid]
ENTRY_MARGIN_BPS = [5]
"""


def timed_sweep(plan, out: Path, runner) -> tuple[float, object]:
    t0 = time.perf_counter()
    res = run_sweep(plan, out, runner, progress=False)
    return time.perf_counter() - t0, res


def same(a, b, out_a: Path, out_b: Path) -> bool:
    for key, ra in a.records.items():
        rb = b.records[key]
        if stable(ra["report"]) != stable(rb["report"]):
            return False
        ta = pq.read_table(next((out_a / "trials" / key / "trades").glob("*.parquet")))
        tb = pq.read_table(next((out_b / "trials" / key / "trades").glob("*.parquet")))
        if stable(ta.to_pylist()) != stable(tb.to_pylist()):
            return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--symbols", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=3600.0)
    ap.add_argument("--overhead-trials", type=int, default=4)
    ap.add_argument("--skip-two-node", action="store_true")
    args = ap.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    cores = os.cpu_count() or 2
    tmp = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    plan = build_plan(parse_spec(spec_text(list(range(1, args.trials + 1)), args.symbols,
                                           args.seconds)))
    print(f"{args.trials} trials: mock market, {args.symbols} symbols, {args.seconds:g} s each; "
          f"{cores} cores; load average before {os.getloadavg()[0]:.2f}", flush=True)

    # warm this process (imports, first-call costs) as the cluster's workers get warm: untimed
    run_sweep(build_plan(parse_spec(spec_text([0], args.symbols, 60.0))), tmp / "warm",
              SequentialRunner(), progress=False)
    seq_s, seq = timed_sweep(plan, tmp / "seq", SequentialRunner())
    inside = sum(r["trial_wall_s"] for r in seq.records.values())
    print(f"sequential, one process: {seq_s:.2f} s ({inside / args.trials:.2f} s per trial)",
          flush=True)

    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=cores, include_dashboard=False,
             _node_ip_address="127.0.0.1")
    init_s = time.perf_counter() - t0
    par_s, par = timed_sweep(plan, tmp / "ray", RayRunner())
    identical = same(seq, par, tmp / "seq", tmp / "ray")
    print(f"Ray, embedded cluster of {cores} CPUs: start-up {init_s:.2f} s, sweep {par_s:.2f} s; "
          f"speedup {seq_s / par_s:.2f}x without start-up, {seq_s / (par_s + init_s):.2f}x with "
          f"it (target >= {0.9 * cores:.1f}x); per-trial results identical: {identical}",
          flush=True)
    in_tasks = sum(r["trial_wall_s"] for r in par.records.values())
    print(f"  time inside the trials: {in_tasks:.2f} s on Ray vs {inside:.2f} s in one process "
          f"({in_tasks / inside:.2f}x: {cores} trials at once share the machine's memory "
          f"bandwidth and caches)", flush=True)
    # a warm second pass: worker processes already up with everything imported
    warm_s, _ = timed_sweep(plan, tmp / "ray-warm", RayRunner())
    print(f"  the same sweep again on the warm cluster: {warm_s:.2f} s, speedup "
          f"{seq_s / warm_s:.2f}x", flush=True)

    oplan = build_plan(parse_spec(spec_text(list(range(101, 101 + args.overhead_trials)),
                                            args.symbols, args.seconds)))
    one_s, one = timed_sweep(oplan, tmp / "one", RayRunner(max_inflight=1))
    inside_one = sum(r["trial_wall_s"] for r in one.records.values())
    per = (one_s - inside_one) / args.overhead_trials
    print(f"overhead per trial (one at a time on the warm cluster): {1000 * per:.0f} ms = "
          f"{100 * per / 60:.2f}% of a one-minute trial (target < 5%)", flush=True)
    ray.shutdown()

    if not args.skip_two_node:
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True,
                          head_node_args={"num_cpus": 1, "include_dashboard": False})
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        two_s, two = timed_sweep(plan, tmp / "two", RayRunner())
        per_node: dict[str, int] = {}
        for r in two.records.values():
            per_node[r["node"][:8]] = per_node.get(r["node"][:8], 0) + 1
        print(f"two-node cluster (1 CPU each): sweep {two_s:.2f} s, speedup "
              f"{seq_s / two_s:.2f}x; trials per node {per_node}; identical: "
              f"{same(seq, two, tmp / 'seq', tmp / 'two')}", flush=True)
        ray.shutdown()
        cluster.shutdown()
    print(f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
