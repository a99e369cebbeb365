"""Coordinator: the Ray shell around CoordinatorCore, the one brain of a Ray run.

It receives each batch's top-of-book stream plus the batch's ``FeedPart`` (every symbol's rows;
an ObjectRef, or the part itself for a small live batch), queues its ingest for every symbol
actor before walking the batch (so a leg is always filled with all data up to its arrival: the
port sends queued batches ahead of any trade or collect), then lets the core decide, dispatch
and settle through the RayExecutionPort.
Trade rows go to the TradeLoggerActor and KPI calls to the KpiActor, one remote call each per batch.
"""

from __future__ import annotations

import math
import os
import time

import ray

from actors.port import RayExecutionPort
from actors.sinks import KpiProxy
from common.engine.build import coordinator_config
from common.engine.coordinator import CoordinatorCore
from common.settings import Settings
from common.strategy.signals import TopBatch
from common.types import BINANCE, UPBIT

#: trade rows and KPI calls go to their actors at most this often (and at the end)
SHIP_EVERY_S = 0.25
#: a snapshot needs this many rows or seconds since the last one, besides the batch count
SNAPSHOT_MIN_ROWS = 200_000
SNAPSHOT_MIN_WALL_S = 5.0


@ray.remote
class Coordinator:
    def __init__(self, run_id: str) -> None:
        self.run_id_ = run_id
        self.core: CoordinatorCore | None = None
        self.metrics = None
        self._sink_refs: list = []
        self.batches = 0
        self.sink_calls = 0
        self._rows_buf: list[dict] = []
        self._last_ship = time.monotonic()
        self._since_snapshot = (0, 0, time.monotonic())  # batches, rows, wall
        #: wall seconds spent in ``process`` and, within it, in the core's walk (settlement
        #: waits included) and in snapshots: where a Ray run's coordinator time goes
        self.timing = {"process_s": 0.0, "core_s": 0.0, "ship_snapshot_s": 0.0}

    def run_id(self) -> str:
        return self.run_id_

    def setup(self, settings: Settings, symbols: list[str], symbol_ids: dict[str, int],
              fx_id: int, handles: dict[str, object], trade_logger, kpi,
              monitoring: bool, lot_steps: dict[str, float] | None = None) -> dict:
        """Wire the core to the actors and take every symbol actor's initial snapshot."""
        self.settings = settings
        self.port = RayExecutionPort(handles)
        self.kpi = KpiProxy(kpi)
        self.trade_logger = trade_logger
        self.core = CoordinatorCore(coordinator_config(settings, lot_steps), symbols, symbol_ids,
                                    fx_id, self.port, self.kpi, session_id=self.run_id_)
        if monitoring:
            from actors.metrics import ArbMetrics

            self.metrics = ArbMetrics(symbols, symbol_ids)
        self.port.start()
        return {"pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id()}

    def process(self, top: TopBatch, parts_ref: list, watermark_ns: int, rows_in: int,
                rejected: dict[str, int], sent_time_ns: int) -> dict:
        """One batch: queue its ingest everywhere, walk the top of book, ship rows and KPI
        calls. ``timing`` adds up where the time went (settlement rounds: the port's
        ``collect_wait_s``)."""
        # the core measures tick-to-fill on this process's perf counter; start it when the feed
        # sent the batch, so time spent queued counts
        t0 = time.perf_counter()
        wall = time.perf_counter_ns() - max(0, time.time_ns() - sent_time_ns)
        self.kpi.add_events(rows_in, rejected)
        self.port.ingest(parts_ref[0], watermark_ns, rows_in)
        rows = self.core.process_batch(top, wall)
        t1 = time.perf_counter()
        self._ship(rows)
        self.batches += 1
        self._maybe_snapshot(rows_in)
        self.timing["core_s"] += t1 - t0
        self.timing["ship_snapshot_s"] += time.perf_counter() - t1
        status = self.status()
        if self.metrics is not None:
            self.metrics.record_batch(top, rows_in, rejected, rows, status)
        status["rows"] = len(rows)
        status["drained"] = self.core.take_drained()
        self.timing["process_s"] += time.perf_counter() - t0
        return status

    def count_events(self, rows_in: int, rejected: dict[str, int]) -> None:
        """Events that came without a batch to walk (frames rejected before any book)."""
        self.kpi.add_events(rows_in, rejected)

    def schedule_universe(self, t_ns: int, members: list[str], symbol_ids: dict[str, int],
                          joiners: dict[str, object]) -> None:
        """A TopN change at event time ``t_ns``; ``joiners``: actors of symbols new to the run."""
        for name, handle in joiners.items():
            self.port.add(name, handle)
        self.core.schedule_universe(t_ns, members, symbol_ids)

    def finish(self) -> dict:
        """End of data (or a stop): settle everything pending, ship it, wait for the sinks."""
        rows = self.core.finish()
        self._ship(rows, force=True)
        self.port.check()
        ray.get(self._sink_refs)
        self._sink_refs = []
        status = self.status()
        if self.metrics is not None:
            self.metrics.record_batch(None, 0, {}, rows, status)
        status["rows"] = len(rows)
        return status

    def report_part(self) -> dict:
        return self.core.report_part()

    def series_tables(self) -> dict:
        """The premium grid and the marks kept for the report (``SeriesRecorder.tables``)."""
        return self.core.series.tables()

    def stats(self) -> dict:
        return {"calls_to_symbols": self.port.calls_sent, "calls_to_sinks": self.sink_calls,
                "recoveries": self.port.recoveries, "snapshots": self.port.snapshots,
                "batches": self.batches, "pid": os.getpid(), **self.timing,
                "collect_wait_s": self.port.collect_wait_s,
                "collect_rounds": self.port.collect_rounds}

    def status(self) -> dict:
        """What the live view shows: per-symbol premium, position and PnL, and the clock."""
        out = {}
        for name, st in self.core.symbols.items():
            c = st.carry
            u_mid, b_mid = (c.u_bid + c.u_ask) * 0.5, (c.b_bid + c.b_ask) * 0.5
            prem = (u_mid / (b_mid * c.fx) - 1.0) * 1e4 if b_mid * c.fx > 0 else math.nan
            out[name] = {"premium_bps": float(prem) if math.isfinite(prem) else math.nan,
                         "position_upbit": float(st.delta[UPBIT]),
                         "position_binance": float(st.delta[BINANCE]),
                         "pnl_usd": float(st.pnl_sampled), "status": st.status}
        return {"clock_ns": int(self.core.clock_ns), "symbols": out}

    def _maybe_snapshot(self, rows_in: int) -> None:
        """Snapshot every SNAPSHOT_EVERY_CHUNKS batches, but not more often than a large batch's
        worth of rows or a few seconds: live batches of a row or two must not snapshot 20 actors
        many times a second."""
        b, r, t0 = self._since_snapshot
        b, r = b + 1, r + rows_in
        if b >= self.settings.snapshot_every_chunks and (
                r >= SNAPSHOT_MIN_ROWS or time.monotonic() - t0 >= SNAPSHOT_MIN_WALL_S):
            self.port.snapshot_all()
            b, r, t0 = 0, 0, time.monotonic()
        self._since_snapshot = (b, r, t0)

    def _ship(self, rows: list[dict], force: bool = False) -> None:
        """Send trade rows and KPI calls to their actors: at most every SHIP_EVERY_S (live
        batches are tiny), at once when many rows wait, and always at the end."""
        self._rows_buf.extend(rows)
        now = time.monotonic()
        if not force and now - self._last_ship < SHIP_EVERY_S and len(self._rows_buf) < 1000:
            return
        self._last_ship = now
        if self._rows_buf:
            self._sink_refs.append(self.trade_logger.log_rows.remote(self._rows_buf))
            self._rows_buf = []
            self.sink_calls += 1
        ref = self.kpi.flush()
        if ref is not None:
            self._sink_refs.append(ref)
            self.sink_calls += 1
        # keep the list short: drop calls that already completed
        if len(self._sink_refs) > 64:
            done, self._sink_refs = ray.wait(self._sink_refs, num_returns=len(self._sink_refs),
                                             timeout=0)
            ray.get(done)
