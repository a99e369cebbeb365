"""TradeLoggerActor and KpiActor (Ray shells around TradeLogger and KpiAccumulator), and the
buffering proxy that lets CoordinatorCore talk to the KpiActor in one remote call per batch."""

from __future__ import annotations

import os

import ray

from common.reporting.kpi import KpiAccumulator
from common.reporting.trade_log import TradeLogger

#: the KpiAccumulator methods CoordinatorCore and the feed call
KPI_METHODS = ("add_result", "add_round_trip", "add_edge", "add_equity", "add_sim_latency",
               "add_skipped", "add_events")


@ray.remote
class TradeLoggerActor:
    """Writes the trade log; idempotent by trade_id (a restarted logger reloads the ids)."""

    def __init__(self, log_dir: str, run_id: str, top_n: int) -> None:
        self.log = TradeLogger(log_dir, run_id, top_n)

    def log_rows(self, rows: list[dict]) -> int:
        return self.log.log_rows(rows)

    def close(self) -> dict:
        self.log.close()
        return {"jsonl_path": str(self.log.jsonl_path),
                "parquet_path": str(self.log.parquet_path),
                "rows_written": self.log.rows_written,
                "duplicates_dropped": self.log.duplicates_dropped}

    def pid(self) -> int:
        return os.getpid()


@ray.remote
class KpiActor:
    """Accumulates the KPIs; applies the coordinator's buffered calls in order."""

    def __init__(self) -> None:
        self.kpi = KpiAccumulator()

    def apply(self, calls: list[tuple[str, tuple]]) -> None:
        for name, args in calls:
            getattr(self.kpi, name)(*args)

    def report(self) -> dict:
        return self.kpi.report()

    def equity_table(self) -> dict:
        return self.kpi.equity_table()

    def pid(self) -> int:
        return os.getpid()


class KpiProxy:
    """Stands in for a KpiAccumulator: buffers every call, ``flush`` sends them as one call."""

    def __init__(self, kpi_actor) -> None:
        self._actor = kpi_actor
        self._calls: list[tuple[str, tuple]] = []
        self.calls_sent = 0

    def __getattr__(self, name: str):
        if name not in KPI_METHODS:
            raise AttributeError(name)

        def record(*args):
            self._calls.append((name, args))
            return True

        return record

    def flush(self):
        """Send what was buffered; returns the call's ObjectRef (None if nothing to send)."""
        if not self._calls:
            return None
        calls, self._calls = self._calls, []
        self.calls_sent += 1
        return self._actor.apply.remote(calls)
