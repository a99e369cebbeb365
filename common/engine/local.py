"""The local engine: every component in one process, the reference the Ray engine must equal."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from loguru import logger

from common.engine.build import (
    MarketSource,
    book_checks,
    coordinator_config,
    executor_rows,
    fee_schedule,
    fill_model_config,
    validate_batch,
)
from common.engine.checkpoint import CHECKPOINT, save_checkpoint
from common.engine.coordinator import CoordinatorCore
from common.engine.report import (
    ProgressLine,
    build_report,
    finish_run,
    start_run_folder,
    utc_now,
)
from common.engine.stop import StopFlag
from common.execution.executor import ExecutorFactory, PaperExecutor
from common.reporting.kpi import KpiAccumulator
from common.reporting.trade_log import TradeLogger
from common.settings import Settings
from common.types import ExecutionResult, Trade


class LocalExecution:
    """The coordinator's ExecutionPort over in-process PaperExecutors (one per symbol)."""

    def __init__(self, settings: Settings, symbols: list[str]) -> None:
        self._factory = ExecutorFactory(fee_schedule(settings), settings.seed)
        self._fill_cfg = fill_model_config(settings)
        self.executors: dict[str, PaperExecutor] = self._factory.executors
        for s in symbols:
            self.add(s)

    def add(self, symbol: str) -> None:
        """An executor for a symbol (one that joined TopN included; kept if it had one)."""
        self._factory.create_paper_executor(symbol, None, None, self._fill_cfg)

    def ingest(self, vb, symbol_ids: dict[str, int], fx_id: int) -> None:
        """Hand each executor its rows of the batch (``executor_rows``: indices, no copies)."""
        rows, fx_rows = executor_rows(vb, symbol_ids, fx_id)
        for name, ex in self.executors.items():
            ex.ingest_split(vb.batch, vb.top.start_ns, *rows[name], fx_rows)

    def submit(self, symbol: str, trades: list[Trade]) -> None:
        self.executors[symbol].submit(trades)

    def collect(self, symbols: list[str], up_to_ns: int) -> dict[str, list[ExecutionResult]]:
        return {s: self.executors[s].collect(up_to_ns) for s in symbols}


def run_local(settings: Settings, source: MarketSource, run_id: str, log_dir: str | Path,
              kpi_path: str | Path | None, top_n: int, progress: bool = True,
              universe_events: Callable[[], list[tuple[int, list[str]]]] | None = None,
              resume: dict | None = None, started_utc: str | None = None) -> dict:
    """Run the whole paper session in this process; returns the KPI report (also written).

    ``universe_events`` (default: the source's): polled before every batch for TopN membership
    changes ``(event time, members)``; each applies at exactly its event time.

    Every ``CHECKPOINT_INTERVAL_S`` wall seconds (0: after every batch) the whole state goes to
    ``<run-dir>/checkpoint.pkl`` (``common.engine.checkpoint``; mock and replay data only).
    ``resume``: a loaded checkpoint of this run to continue from (the same source, rebuilt).
    """
    if universe_events is None:
        universe_events = source.universe_events
    t0 = time.perf_counter()
    started_utc = started_utc or utc_now()
    run_dir = Path(log_dir) / run_id
    symtab = source.symtab
    fx_id = symtab.fx_id
    if resume is None:
        symbol_ids = {s: symtab.id_of(s) for s in source.symbols}
        port = LocalExecution(settings, source.symbols)
        kpi = KpiAccumulator()
        coord = CoordinatorCore(coordinator_config(settings, source.lot_steps), source.symbols,
                                symbol_ids, fx_id, port, kpi, session_id=run_id)
        validator, depth = book_checks(settings)
        skip_rows, keep_rows = 0, None
    else:
        coord, kpi, validator, depth = (resume["coord"], resume["kpi"], resume["validator"],
                                        resume["depth"])
        port, symbol_ids = coord.port, resume["symbol_ids"]
        skip_rows, keep_rows = resume["rows_done"], resume["rows_written"]
        for name in symbol_ids:  # the symbol table of the rebuilt source, as it was
            symtab.id_of(name)
        if universe_events is not None:
            universe_events()  # a replay's TopN changes: scheduled before the checkpoint
    trade_log = TradeLogger(log_dir, run_id, top_n, keep_rows=keep_rows)
    start_run_folder(run_dir, run_id, "local", settings, source, started_utc)
    checkpoints = source.kind in ("mock", "replay")
    every_s = settings.checkpoint_interval_s
    next_ckpt = time.perf_counter() + every_s
    bar = ProgressLine(source.duration_s, enabled=progress)
    logger.info("run {}: local engine, {}{}", run_id, source.description,
                f", resumed after {skip_rows:,} books ({keep_rows:,} trade rows)"
                if resume else "")
    rows_done = 0  # books taken from the source: a position that does not depend on batching
    with StopFlag() as stop:
        try:
            for batch, pre_rejected in source.batches():
                if rows_done < skip_rows:  # in the checkpoint already
                    if rows_done + len(batch) <= skip_rows:
                        rows_done += len(batch)
                        continue
                    batch = batch.take(np.arange(skip_rows - rows_done, len(batch)))
                    pre_rejected = {}  # counted with the part before the checkpoint
                    rows_done = skip_rows
                if stop.requested:
                    break
                rows_done += len(batch)
                if universe_events is not None:
                    for t_ns, members in universe_events():
                        for name in members:
                            symbol_ids.setdefault(name, symtab.id_of(name))
                        for name in coord.schedule_universe(t_ns, members, symbol_ids):
                            port.add(name)
                if len(batch) == 0:
                    # a batch of nothing but rejects (e.g. the last malformed frames of a live
                    # run) still counts them
                    if pre_rejected:
                        kpi.add_events(sum(pre_rejected.values()), pre_rejected)
                    continue
                wall = time.perf_counter_ns()
                vb = validate_batch(validator, batch, pre_rejected, depth)
                kpi.add_events(vb.rows_in, vb.rejected)
                port.ingest(vb, symbol_ids, fx_id)
                rows = coord.process_batch(vb.top, wall)
                trade_log.log_rows(rows)
                for name in coord.take_drained():
                    if source.on_drained is not None:
                        source.on_drained(name)
                bar.update(coord, kpi, trade_log.rows_written)
                if checkpoints and time.perf_counter() >= next_ckpt:
                    save_checkpoint(run_dir, {
                        "rows_done": rows_done, "rows_written": trade_log.rows_written,
                        "coord": coord, "kpi": kpi, "validator": validator, "depth": depth,
                        "symbol_ids": symbol_ids})
                    next_ckpt = time.perf_counter() + every_s
        finally:
            trade_log.log_rows(coord.finish())
            trade_log.close()
    interrupted = stop.requested
    wall_s = time.perf_counter() - t0
    report = build_report(kpi.report(), coord.report_part(), settings, run_id, wall_s,
                          trade_log.jsonl_path, trade_log.parquet_path, engine="local",
                          data_source=source.kind, interrupted=interrupted,
                          stopped_by=stop.signal)
    # the run folder holds everything about the run; --kpi-output-path writes a copy
    finish_run(report, kpi.equity_table(), source, run_dir, kpi_path,
               started_utc, coord.series.tables())
    if not interrupted:
        (run_dir / CHECKPOINT).unlink(missing_ok=True)  # finished: nothing left to resume
    return report
