"""The sweep on Ray: one ``num_cpus=1`` task per trial running the local engine, its result back
through the object store. The domain (plan, trials, statistics, outputs) is ``common.research``.

Tasks rather than Ray Tune: trials are deterministic replays with nothing to stop early or
checkpoint, Tune on several nodes wants shared storage that ``cluster.yaml`` does not give, and
the overfitting statistics need each trial's whole PnL series, which a task simply returns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import ray
from loguru import logger
from ray.exceptions import RayError, TaskCancelledError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.engine import RayEngineError, RayOptions, ray_init
from common.research.data import replay_file_infos
from common.research.driver import (
    SequentialRunner,
    SweepError,
    SweepOutcome,
    prepare_out_dir,
    run_sweep,
)
from common.research.plan import SweepPlan, Trial
from common.research.store import finished
from common.research.trial import run_trial

NAMESPACE = "sweep"


@ray.remote(num_cpus=1, max_retries=2, retry_exceptions=False)
def trial_task(trial: Trial) -> dict:
    """One trial on whichever node Ray picks. Retried only when its worker or node dies (a trial
    is idempotent: it writes only to a scratch folder); a Python error is its result."""
    # the trial logs to its own run.log, not to the driver's console; imported here because
    # Ray ships this function by value, and with it a copy of a module-level logger
    from loguru import logger as worker_logger

    worker_logger.remove()
    out = run_trial(trial)
    ctx = ray.get_runtime_context()
    out["node"] = ctx.get_node_id()
    out["node_ip"] = ray.util.get_node_ip_address()
    return out


@ray.remote(num_cpus=0)
def _can_read(paths: list[str]) -> list[str]:
    problems = []
    for p in paths:
        try:
            replay_file_infos(p)
        except Exception as e:  # noqa: BLE001 - any reason a node cannot read is the message
            problems.append(str(e))
    return problems


def check_data_on_nodes(paths: list[str]) -> None:
    """Every alive node must read every replay path (a local path only the driver has would
    fail every trial sent elsewhere). Raises SweepError naming the node and the path."""
    if not paths:
        return
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = {n["NodeManagerAddress"] + " (" + n["NodeID"][:8] + ")": _can_read.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False),
        name="sweep: check data").remote(list(paths)) for n in nodes}
    for node, ref in refs.items():
        problems = ray.get(ref, timeout=120)
        if problems:
            raise SweepError(f"node {node} cannot read the data: {problems[0]}; on a cluster, put "
                             "replays on a shared filesystem mounted at the same path on every "
                             "node, or in object storage (s3://bucket/prefix)")


class RayRunner:
    """Submits trials as Ray tasks, at most ``max_inflight`` at once (about two per CPU of the
    cluster: workers stay busy, the object store holds few finished results), and yields each
    result as it arrives."""

    def __init__(self, max_inflight: int | None = None) -> None:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.max_inflight = max_inflight or max(2, 2 * cpus)

    def run(self, trials: list[Trial], should_stop: Callable[[], bool] = lambda: False
            ) -> Iterator[tuple[Trial, dict]]:
        pending = list(reversed(trials))
        inflight: dict[ray.ObjectRef, Trial] = {}
        try:
            while (pending or inflight) and not should_stop():
                while pending and len(inflight) < self.max_inflight:
                    t = pending.pop()
                    ref = trial_task.options(name=t.label[:120]).remote(t)
                    inflight[ref] = t
                # a short wait, so that a stop request is seen within a fraction of a second
                done, _ = ray.wait(list(inflight), num_returns=1, timeout=0.2)
                for ref in done:
                    t = inflight.pop(ref)
                    try:
                        result = ray.get(ref)
                    except TaskCancelledError:
                        continue
                    except RayError as e:  # the worker or node died beyond retries
                        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                        result = {"key": t.key, "label": t.label, "status": "failed",
                                  "error": f"{type(e).__name__}: {first}", "pnl": [],
                                  "files": {}, "report": None, "trial_wall_s": None}
                    yield t, result
        finally:
            for ref in inflight:  # Ctrl-C or an early stop: do not leave trials running
                ray.cancel(ref, force=True)


def run_sweep_on_ray(plan: SweepPlan, out_dir: str, address: str | None = None,
                     resume: bool = False, progress: bool = True,
                     dashboard: bool = False) -> SweepOutcome:
    """Start an embedded cluster on every core (or join ``address``), check the data is
    readable on every node, then run the sweep. Raises SweepError with one line."""
    prepare_out_dir(out_dir, plan.spec.text, resume)  # a bad --out fails before Ray starts
    if resume and len(finished(out_dir, plan.trials)) == len(plan.trials):
        return run_sweep(plan, out_dir, SequentialRunner(), resume=True, progress=progress)
    try:
        started = ray_init(RayOptions(namespace=NAMESPACE, address=address, monitoring=dashboard,
                                      progress=progress))
    except RayEngineError as e:
        raise SweepError(str(e)) from None
    try:
        if plan.spec.source == "replay":
            check_data_on_nodes(list(plan.spec.paths))
        cpus = ray.cluster_resources().get("CPU", 0)
        logger.info("Ray cluster: {} nodes, {:g} CPUs", len([n for n in ray.nodes()
                                                           if n.get("Alive")]), cpus)
        return run_sweep(plan, out_dir, RayRunner(), resume=resume, progress=progress)
    finally:
        if started:
            ray.shutdown()
