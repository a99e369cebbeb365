"""The Ray engine's driver: start or join a cluster, create the actors, feed them, report.

The driver reads the source, validates each batch once, puts it in the object store once (with
each symbol's row indices: its executor's rows of the batch, see ``split_rows``) and
hands the coordinator the top of book plus that ObjectRef, with at most ``max_inflight_batches``
batches in flight.
Everything a symbol actor receives comes from the coordinator, in order.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import ray
from loguru import logger
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.coordinator import Coordinator
from actors.sinks import KpiActor, TradeLoggerActor
from actors.symbol import FeedPart, SymbolActor
from actors.view import LiveView
from common.engine.build import (
    MarketSource,
    book_checks,
    executor_rows,
    fee_schedule,
    fill_model_config,
    validate_batch,
)
from common.engine.report import (
    build_report,
    finish_run,
    start_run_folder,
    utc_now,
)
from common.engine.stop import StopFlag
from common.marketdata.batch import BookBatch
from common.settings import Settings

PROJECT_ROOT = Path(__file__).resolve().parents[1]
COORDINATOR, TRADE_LOGGER, KPI = "coordinator", "trade-logger", "kpi"
#: a symbol actor is light: fractional CPU so that 100 of them fit on a 2-core machine
SYMBOL_CPUS = 0.01
SERVICE_CPUS = 0.01
#: batches of at most this many rows go to the actors by value, larger ones through one put
INLINE_ROWS = 256
#: working-dir upload for ``--ray-address``: the code, not the outputs
_UPLOAD_EXCLUDES = [".git", "logs", "bench/data", ".venv", ".hypothesis", ".pytest_cache",
                    ".ruff_cache", ".benchmarks", "**/__pycache__", "*.parquet", "*.jsonl"]


class RayEngineError(Exception):
    """A problem starting the Ray run, with a one-line message for the user."""


def symbol_actor_name(symbol: str) -> str:
    return f"symbol-{symbol}"


@dataclass
class RayRun:
    """What a Ray run leaves behind: the KPI report and how it went."""

    report: dict
    stopped_by: str | None = None  # "SIGINT" / "SIGTERM" when a signal ended the feed
    startup_s: float = 0.0
    calls: dict = field(default_factory=dict)
    pids: dict = field(default_factory=dict)


#: the embedded cluster's system config when monitoring is off (``RayOptions.lean``): no
#: per-event statistics, no task events (the dashboard's task view and timeline), Ray's own
#: metrics reported every 60 s instead of every 10 s
LEAN_SYSTEM_CONFIG = {"event_stats": False, "task_events_report_interval_ms": 0,
                      "metrics_report_interval_ms": 60_000}


@dataclass
class RayOptions:
    namespace: str = "arbitrage"
    address: str | None = None
    monitoring: bool = False
    metrics_export_port: int | None = None
    progress: bool = True
    #: with monitoring off, start the embedded cluster with ``LEAN_SYSTEM_CONFIG`` (RAY_LEAN)
    lean: bool = True
    #: test and bench hooks: called after batch k was handed to the coordinator, and once all
    #: actors are up (with the dict of their handles)
    on_batch: Callable[[int], None] | None = None
    on_started: Callable[[dict], None] | None = None


def ray_init(opts: RayOptions) -> bool:
    """Start an embedded cluster or join one. True if this run started (and must stop) it."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if opts.address:
        kwargs: dict = {"address": opts.address, "namespace": opts.namespace}
        if "RAY_JOB_CONFIG_JSON_ENV_VAR" not in os.environ:
            # a plain driver joining a cluster ships the project; a `ray job submit` driver
            # already runs in the job's working_dir
            kwargs["runtime_env"] = {"working_dir": str(PROJECT_ROOT),
                                     "excludes": _UPLOAD_EXCLUDES}
        if "RAY_AUTH_MODE" not in os.environ:
            # Ray only picks up the auth token by itself for address "auto"; with an explicit
            # address, use the token this machine has (~/.ray/auth_token or RAY_AUTH_TOKEN*)
            from ray._private.authentication.authentication_token_setup import (
                maybe_enable_token_auth_if_token_available,
            )

            maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise RayEngineError(f"--ray-address {opts.address}: cannot join the cluster "
                                 f"({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                                 ) from None
        return False
    # address "local": always a new cluster, never one a stale /tmp/ray file points at
    kwargs = {"address": "local", "num_cpus": os.cpu_count() or 2, "namespace": opts.namespace,
              "include_dashboard": opts.monitoring, "dashboard_host": "127.0.0.1",
              "_node_ip_address": "127.0.0.1"}
    if opts.lean and not opts.monitoring:
        # nobody looks at the task view, the timeline or the metrics: Ray's bookkeeping for
        # them is idle CPU in every process (bench/ray_idle.py)
        kwargs["_system_config"] = dict(LEAN_SYSTEM_CONFIG)
    if opts.monitoring and opts.metrics_export_port:
        kwargs["_metrics_export_port"] = opts.metrics_export_port
    ctx = ray.init(**kwargs)
    if opts.monitoring:
        port = ray._private.worker.global_worker.node.metrics_export_port
        print(f"Ray dashboard: http://{ctx.dashboard_url}", flush=True)
        print(f"Prometheus metrics: http://127.0.0.1:{port}/metrics", flush=True)
    return True


def _existing_run(namespace: str) -> str | None:
    try:
        h = ray.get_actor(COORDINATOR, namespace=namespace)
    except ValueError:
        return None
    try:
        return ray.get(h.run_id.remote(), timeout=30)
    except Exception:  # noqa: BLE001 - a coordinator that does not answer is still there
        return "(not answering)"


def _already_there(namespace: str, run_id: str | None, what: str) -> RayEngineError:
    return RayEngineError(f"namespace '{namespace}' on this cluster already has run {run_id} "
                          f"({what}); wait for it to end or pass another --namespace")


def split_rows(vb, symbol_ids: dict[str, int], fx_id: int) -> FeedPart:
    """Each symbol's part of a validated batch, as indices into the one shared batch: the rows
    its executor takes (``executor_rows``, as in the local engine, so results are equal).

    Only indices are split per symbol (a few KiB each); the rows themselves travel once per
    batch, whatever the number of symbols."""
    rows, fx_rows = executor_rows(vb, symbol_ids, fx_id)
    return FeedPart.split(vb.batch, rows, fx_rows)


class _SourceFailed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_END = object()


def coalesced(batches, max_rows: int, stop, poll_s: float = 0.2):
    """The source's non-empty batches, read ahead by a thread; what arrived while the previous
    batch was in flight is merged (up to ``max_rows`` rows) into one batch.

    A paced source delivers small slices (a quarter event-second each); one Ray round per slice
    would cap a fast replay at the rate of Ray calls. Where the stream is cut into batches never
    changes results. The read-ahead holds at most about two batches' worth of rows. Stops early
    when ``stop.signal`` is set; a source error is re-raised here.
    """
    q: queue.SimpleQueue = queue.SimpleQueue()
    halt = threading.Event()
    room = threading.Condition()
    queued = [0]  # rows read ahead and not yet taken

    def put(item, rows: int) -> bool:
        with room:
            while queued[0] >= 2 * max_rows and not halt.is_set():
                room.wait(poll_s)
            if halt.is_set():
                return False
            queued[0] += rows
        q.put(item)
        return True

    def take(block: bool):
        item = q.get(timeout=poll_s) if block else q.get_nowait()
        if isinstance(item, tuple):
            with room:
                queued[0] -= len(item[0])
                room.notify()
        return item

    def produce() -> None:
        try:
            for item in batches:
                # a batch without rows still carries reject counts (the end of a live run)
                if (len(item[0]) or item[1]) and not put(item, len(item[0])):
                    break
            else:
                q.put(_END)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            q.put(_SourceFailed(e))
        finally:
            # stopped early: close the source here, in the thread that runs it (a live source
            # stops its connections and closes its recording when closed)
            close = getattr(batches, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="feed-source", daemon=True)
    thread.start()
    held = None
    try:
        while stop.signal is None:
            if held is not None:
                item, held = held, None
            else:
                try:
                    item = take(block=True)
                except queue.Empty:
                    continue
            if item is _END:
                return
            if isinstance(item, _SourceFailed):
                raise item.exc
            if len(item[0]) == 0:
                yield item  # reject counts alone: never merged with rows
                continue
            parts, rows = [item], len(item[0])
            while rows < max_rows:
                try:
                    nxt = take(block=False)
                except queue.Empty:
                    break
                if (not isinstance(nxt, tuple) or rows + len(nxt[0]) > max_rows
                        or len(nxt[0]) == 0):
                    held = nxt
                    break
                parts.append(nxt)
                rows += len(nxt[0])
            if len(parts) == 1:
                yield item
                continue
            rejects: dict[str, int] = {}
            for _, r in parts:
                for k, v in r.items():
                    rejects[k] = rejects.get(k, 0) + v
            yield BookBatch.concat([b for b, _ in parts]), rejects
    finally:
        halt.set()
        with room:
            room.notify_all()
        thread.join(timeout=5)


def run_ray(settings: Settings, source: MarketSource, run_id: str, log_dir: str | Path,
            kpi_path: str | Path | None, top_n: int, opts: RayOptions | None = None) -> RayRun:
    """Run the paper session on Ray; the KPI report is returned (and written to ``kpi_path``)."""
    opts = opts or RayOptions()
    t0 = time.perf_counter()
    started_utc = utc_now()
    started = ray_init(opts)
    start_run_folder(Path(log_dir) / run_id, run_id, "ray", settings, source, started_utc)
    ns = opts.namespace
    handles: dict[str, object] = {}
    try:
        with StopFlag() as stop:
            run = _run(settings, source, run_id, Path(log_dir).resolve(), kpi_path, top_n, opts,
                       ns, handles, stop, t0, started_utc)
    finally:
        for h in handles.values():
            try:
                ray.kill(h, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        if started:
            ray.shutdown()
        else:
            _wait_names_released(ns, list(handles))
    return run


def _wait_names_released(namespace: str, names: list[str], timeout_s: float = 10.0) -> None:
    """Wait (a little) until the killed actors' names are free on a cluster we joined.

    ``ray.kill`` only asks the GCS; for a moment the names may still resolve, and a next run
    in the same namespace would then be refused as if this one were still there."""
    deadline = time.monotonic() + timeout_s
    for name in names:
        while time.monotonic() < deadline:
            try:
                ray.get_actor(name, namespace=namespace)
            except Exception:  # noqa: BLE001 - ValueError: gone; anything else: nothing to wait for
                break
            time.sleep(0.05)


def _run(settings, source, run_id, log_dir, kpi_path, top_n, opts, ns, handles, stop, t0,
         started_utc):
    there = _existing_run(ns)
    if there is not None:
        raise _already_there(ns, there, f"actor '{COORDINATOR}'")
    symtab = source.symtab
    symbols = list(source.symbols)
    symbol_ids = {s: symtab.id_of(s) for s in symbols}
    fx_id = symtab.fx_id
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    try:
        coord = Coordinator.options(name=COORDINATOR, namespace=ns, num_cpus=SERVICE_CPUS,
                                    max_restarts=0, scheduling_strategy=here).remote(run_id)
    except ValueError:
        raise _already_there(ns, _existing_run(ns), f"actor '{COORDINATOR}'") from None
    handles[COORDINATOR] = coord
    sym_handles = {}

    def new_symbol_actor(s: str):
        try:
            h = SymbolActor.options(
                name=symbol_actor_name(s), namespace=ns, num_cpus=SYMBOL_CPUS,
                scheduling_strategy="SPREAD", max_restarts=-1, max_task_retries=0,
            ).remote(s, fill_model_config(settings), fee_schedule(settings), settings.seed)
        except ValueError:
            raise _already_there(ns, _existing_run(ns), f"actor '{symbol_actor_name(s)}'") from None
        handles[symbol_actor_name(s)] = sym_handles[s] = h
        return h

    for s in symbols:
        new_symbol_actor(s)
    # the trade log lands on the driver's machine; the logger is idempotent by trade_id, so a
    # restarted logger (it reloads what it wrote) may safely be sent a call again
    try:
        tlog = TradeLoggerActor.options(
            name=TRADE_LOGGER, namespace=ns, num_cpus=SERVICE_CPUS, max_restarts=-1,
            max_task_retries=-1, scheduling_strategy=here).remote(str(log_dir), run_id, top_n)
        handles[TRADE_LOGGER] = tlog
        kpi = KpiActor.options(name=KPI, namespace=ns, num_cpus=SERVICE_CPUS, max_restarts=0,
                               scheduling_strategy=here).remote()
        handles[KPI] = kpi
    except ValueError:
        raise _already_there(ns, _existing_run(ns), f"actor '{TRADE_LOGGER}' or '{KPI}'") from None
    ray.get(coord.setup.remote(settings, symbols, symbol_ids, fx_id, sym_handles, tlog,
                               kpi, opts.monitoring, source.lot_steps))
    startup_s = time.perf_counter() - t0
    logger.info("run {}: Ray engine, {} symbol actors, namespace '{}', {} (started in {:.1f} s)",
                run_id, len(symbols), ns, source.description, startup_s)
    if opts.on_started is not None:
        opts.on_started(dict(handles))

    view = LiveView(source.duration_s, live=opts.monitoring, enabled=opts.progress)
    validator, depth = book_checks(settings)
    inflight: deque = deque()
    # live books come a row or two at a time: pipelining them only queues them (measured: p50
    # tick-to-fill 115 ms with one batch in flight, 230-300 ms with four)
    limit = 1 if source.kind == "real" else settings.max_inflight_batches
    driver_calls = 0
    k = 0
    t_feed = time.perf_counter()

    def take(ref) -> None:
        status = ray.get(ref)
        for name in status.pop("drained", ()):
            if source.on_drained is not None:
                source.on_drained(name)
        view.update(status, *inflight_meta.popleft())

    def membership() -> None:
        """TopN changes: actors for the joiners, then the change, in call order before the
        batch that follows (the coordinator applies it at its exact event time)."""
        nonlocal driver_calls
        for t_ns, members in source.universe_events():
            joiners = {}
            for m in members:
                if m not in sym_handles:
                    symbol_ids[m] = symtab.id_of(m)
                    joiners[m] = new_symbol_actor(m)
            ray.get(coord.schedule_universe.remote(t_ns, members, dict(symbol_ids), joiners))
            driver_calls += 1

    inflight_meta: deque = deque()
    #: where the driver's feed time goes (wall seconds): waiting for the source, validating,
    #: putting the batch in the object store, waiting for the coordinator
    feed_t = {"source_s": 0.0, "validate_s": 0.0, "put_s": 0.0, "wait_s": 0.0}
    tick = time.perf_counter()
    for batch, pre_rejected in coalesced(source.batches(), settings.batch_rows, stop):
        t1 = time.perf_counter()
        feed_t["source_s"] += t1 - tick
        if source.universe_events is not None:
            membership()
        if len(batch) == 0:
            # only reject counts: to the KPIs, in call order before the batches that follow
            coord.count_events.remote(sum(pre_rejected.values()), pre_rejected)
            driver_calls += 1
            tick = time.perf_counter()
            continue
        vb = validate_batch(validator, batch, pre_rejected, depth)
        view.start(vb.top.start_ns)
        t2 = time.perf_counter()
        # one object for every symbol actor (each reads its rows from shared memory); wrapped in
        # a list so Ray passes the reference on to the coordinator instead of resolving it there
        part = split_rows(vb, symbol_ids, fx_id)
        # a live batch of a few books travels by value inside the calls (Ray inlines small
        # arguments); a put costs a few milliseconds of object-store round trips per batch
        parts = [part if len(batch) <= INLINE_ROWS else ray.put(part)]
        inflight.append(coord.process.remote(vb.top, parts, vb.top.start_ns, vb.rows_in,
                                             vb.rejected, time.time_ns()))
        inflight_meta.append((vb.rows_in, sum(vb.rejected.values())))
        driver_calls += 1
        t3 = time.perf_counter()
        while len(inflight) >= limit:
            take(inflight.popleft())
        if opts.on_batch is not None:
            opts.on_batch(k)
        k += 1
        tick = time.perf_counter()
        feed_t["validate_s"] += t2 - t1
        feed_t["put_s"] += t3 - t2
        feed_t["wait_s"] += tick - t3
    t3 = time.perf_counter()
    while inflight:
        take(inflight.popleft())
    feed_t["wait_s"] += time.perf_counter() - t3
    last = ray.get(coord.finish.remote())
    view.update(last, 0, 0)
    if view.enabled:
        view.draw()
    feed_s = time.perf_counter() - t_feed
    closed = ray.get(tlog.close.remote())
    kpi_report, coord_part, cstats, series = ray.get([
        kpi.report.remote(), coord.report_part.remote(), coord.stats.remote(),
        coord.series_tables.remote()])
    driver_calls += 6
    wall_s = time.perf_counter() - t0
    report = build_report(kpi_report, coord_part, settings, run_id, wall_s, closed["jsonl_path"],
                          closed["parquet_path"], engine="ray", data_source=source.kind,
                          interrupted=stop.signal is not None, stopped_by=stop.signal)
    # the run folder holds everything about the run; --kpi-output-path writes a copy
    finish_run(report, ray.get(kpi.equity_table.remote()), source,
               Path(log_dir) / run_id, kpi_path, started_utc, series)
    calls = {"driver": driver_calls, "to_symbols": cstats["calls_to_symbols"],
             "to_sinks": cstats["calls_to_sinks"], "recoveries": cstats["recoveries"],
             "snapshots": cstats["snapshots"], "batches": cstats["batches"],
             "feed_seconds": feed_s, "driver_timing": feed_t,
             "coordinator_timing": {k: cstats[k] for k in ("process_s", "core_s",
                                                           "ship_snapshot_s", "collect_wait_s",
                                                           "collect_rounds")}}
    return RayRun(report, stop.signal, startup_s, calls, {"coordinator": cstats["pid"]})
