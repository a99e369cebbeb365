"""The end-of-run KPI report, its JSON file, the summary table and the progress line."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from loguru import logger

from common.engine.storage import write_atomically
from common.reporting.kpi import KpiAccumulator, SymbolKpi
from common.reporting.series import write_series
from common.reporting.stats import statistics
from common.reporting.trade_log import read_trade_log
from common.settings import Settings


def build_report(kpi_report: dict, coord_part: dict, settings: Settings, run_id: str,
                 wall_s: float, jsonl_path, parquet_path, engine: str, data_source: str,
                 interrupted: bool, stopped_by: str | None = None) -> dict:
    """The KPI JSON: the KPI accumulator's figures, the coordinator's (balances, refusals,
    marks; ``CoordinatorCore.report_part``) and the run's own fields."""
    rep = dict(kpi_report)
    coord_part = dict(coord_part)
    per_account = coord_part.pop("account_per_symbol", {})
    rep.update(coord_part)
    rep["per_symbol"] = {s: dict(p) for s, p in rep.get("per_symbol", {}).items()}
    for sym, acct in per_account.items():
        part = rep["per_symbol"].setdefault(sym, SymbolKpi().report())
        part["fx_translation_usd"] = acct["fx_translation_usd"]
        part["inventory_mtm_usd"] = acct["inventory_mtm_usd"]
    rep.update({
        "unrealized_pnl_usd": rep["total_pnl_usd"] - rep["realized_pnl_usd"],
        "engine": engine,
        "data_source": data_source,
        "interrupted": interrupted,
        "stopped_by": stopped_by,  # SIGINT / SIGTERM when a signal ended the run
        "settle_ms": settings.settle_ms,
        "events_per_second": rep["events_processed"] / wall_s if wall_s > 0 else 0.0,
        "wall_seconds": wall_s,
        "run_id": run_id,
        "trade_log_path": str(jsonl_path),
        "trade_log_parquet_path": str(parquet_path),
        "settings": settings.effective(),
    })
    return rep


def finish_run(report: dict, equity: dict[str, list], source,
               run_dir: str | Path, kpi_path: str | Path | None, started_utc: str,
               series: dict | None = None) -> dict:
    """What both engines do with a finished run's report: add its statistics, write the run
    folder (``write_run_folder``, and the plot series of ``SeriesRecorder.tables``) and the
    ``--kpi-output-path`` copy. ``source`` is the run's ``MarketSource``."""
    add_statistics(report, equity)
    write_run_folder(run_dir, report, source.kind, source.description, source.origin,
                     equity, started_utc)
    if series:
        write_series(run_dir, series)
    if kpi_path:
        write_kpi(report, kpi_path)
    return report


def add_statistics(report: dict, equity: dict[str, list]) -> dict:
    """Put the run's statistics (``common.reporting.stats``) into its report, computed from its
    trade log file and equity series exactly as a later re-analysis of the run folder does."""
    rows = read_trade_log(report["trade_log_path"])
    first, last = report.get("event_time_span_ns", [-1, -1])
    report["statistics"] = statistics(rows, np.asarray(equity["t_ns"], dtype=np.int64),
                                      np.asarray(equity["equity_usd"], dtype=float), first, last,
                                      report["account_value_start_usd"])
    return report


#: the exit code of a run a signal stopped: 128 + the signal's number, as a shell reports it
EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


def exit_code(stopped_by: str | None) -> int:
    """0 for a run that ended by itself; 130 after SIGINT (Ctrl-C), 143 after SIGTERM."""
    return EXIT_CODES.get(stopped_by or "", 0)


def utc_now() -> str:
    """The wall-clock time now, ISO-8601 UTC (a run's start in its folder)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def code_version() -> dict:
    """The package version and, in a git checkout, the commit (and whether the tree differs)."""
    from importlib import metadata

    try:
        version = metadata.version("kimchi-paper")
    except metadata.PackageNotFoundError:
        version = "unknown"
    out: dict = {"package": version, "git_commit": None, "git_dirty": None}
    root = Path(__file__).resolve().parents[2]
    if (root / ".git").exists():
        try:
            head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"],
                                  capture_output=True, text=True, timeout=5)
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                    "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.SubprocessError):
            return out
        if head.returncode == 0:
            out["git_commit"] = head.stdout.strip()
            out["git_dirty"] = bool(dirty.stdout.strip()) if dirty.returncode == 0 else None
    return out


def start_run_folder(run_dir: str | Path, run_id: str, engine: str, settings: Settings, source,
                     started_utc: str) -> None:
    """The run folder at the start of a run: ``settings.json`` and a ``run.json`` whose
    ``status`` is ``running`` (``write_run_folder`` completes both at the end), so a report or a
    listing of a run still in progress knows what it is looking at."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_json(run_dir / "settings.json", settings.effective())
    _write_json(run_dir / "run.json", _run_info(run_id, engine, started_utc, "running", None,
                                                source.kind, source.description, source.origin,
                                                [-1, -1], list(source.symbols)))


def _run_info(run_id: str, engine: str, started_utc: str, status: str, wall_s: float | None,
              source_kind: str, description: str, origin: dict, span: list,
              symbols: list) -> dict:
    return {"run_id": run_id, "engine": engine, "started_utc": started_utc, "status": status,
            "wall_seconds": wall_s, "interrupted": status == "interrupted",
            "code_version": code_version(),
            "data_source": {"kind": source_kind, "description": description, **origin},
            "event_time_span_ns": span, "symbols": symbols}


def write_run_folder(run_dir: str | Path, report: dict, source_kind: str, description: str,
                     origin: dict, equity: dict[str, list], started_utc: str) -> None:
    """Everything about a finished run in its folder, beside ``trades/``, ``run.log`` and the
    ``settings.json`` of ``start_run_folder``: ``kpi.json``, ``run.json`` (engine, code
    version, data source, event-time span and ``status``: finished or interrupted) and
    ``equity.parquet`` (equity and drawdown)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_kpi(report, run_dir / "kpi.json")
    first, last = report.get("event_time_span_ns", [-1, -1])
    _write_json(run_dir / "run.json", _run_info(
        report["run_id"], report["engine"], started_utc,
        "interrupted" if report["interrupted"] else "finished", report["wall_seconds"],
        source_kind, description, origin, [first, last], report.get("symbols", [])))
    table = pa.table({"t_ns": pa.array(equity["t_ns"], pa.int64()),
                      "equity_usd": pa.array(equity["equity_usd"], pa.float64()),
                      "drawdown_usd": pa.array(equity["drawdown_usd"], pa.float64())})
    tmp = run_dir / "equity.parquet.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, run_dir / "equity.parquet")


def _write_json(path: Path, obj: dict) -> None:
    write_atomically(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False,
                                      default=_json_default))


def write_kpi(report: dict, path: str | Path) -> None:
    """Write the KPI JSON atomically (a reader never sees half a file)."""
    path = Path(path)
    if path.parent != Path(""):
        path.parent.mkdir(parents=True, exist_ok=True)
    _write_json(path, report)


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _fmt(v, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.4f}{unit}" if abs(v) < 10 else f"{v:,.2f}{unit}"
    return f"{v:,}{unit}"


def format_summary(rep: dict) -> str:
    """The seed's final summary, as a two-column table."""
    t2f = rep.get("tick_to_fill_ms") or {}
    lines = [
        ("run_id", rep["run_id"]),
        ("engine / data", f"{rep['engine']} / {rep['data_source']}"),
        ("symbols", f"{len(rep['symbols'])}"),
        ("events processed", _fmt(rep["events_processed"])),
        ("events rejected", _fmt(rep["events_rejected"]) + (
            "  " + ", ".join(f"{k} {v}" for k, v in rep["events_rejected_by_reason"].items())
            if rep["events_rejected"] else "")),
        ("trades executed", _fmt(rep["trades_executed"]) + "  " + ", ".join(
            f"{k} {v}" for k, v in rep["trades_by_leg_kind"].items())),
        ("round trips completed", _fmt(rep["round_trips_completed"])),
        ("win rate", _fmt(rep["win_rate_pct"], " %")),
        ("total PnL", _fmt(rep["total_pnl_usd"], " USD")),
        ("  realised / unrealised", f"{_fmt(rep['realized_pnl_usd'])} / "
                                    f"{_fmt(rep['unrealized_pnl_usd'])} USD"),
        ("fees", _fmt(rep["fees_usd"], " USD")),
        ("max drawdown", _fmt(rep["max_drawdown_usd"], " USD")),
        ("FX translation (apart)", _fmt(rep["fx_translation_usd"], " USD")),
        ("inventory MTM (apart)", _fmt(rep["inventory_mtm_usd"], " USD")),
        ("account value start / end", f"{_fmt(rep['account_value_start_usd'])} / "
                                      f"{_fmt(rep['account_value_end_usd'])} USD"),
        ("avg slippage buy / sell", f"{_fmt(rep['avg_buy_slippage_bps'])} / "
                                    f"{_fmt(rep['avg_sell_slippage_bps'])} bps"),
        ("avg fill ratio buy / sell", f"{_fmt(rep['avg_buy_fill_ratio'])} / "
                                      f"{_fmt(rep['avg_sell_fill_ratio'])}"),
        ("partial / failed fills", f"{rep['partial_fills_count']} / {rep['failed_fills_count']}"),
        ("risk refusals", ", ".join(f"{k} {v}" for k, v in rep["refusals"].items()) or "0"),
        ("tick-to-fill p50 / p99", f"{_fmt(t2f.get('p50'))} / {_fmt(t2f.get('p99'))} ms"),
        ("events / s", _fmt(rep["events_per_second"])),
        ("wall time", _fmt(rep["wall_seconds"], " s")),
        ("trade log", rep["trade_log_path"]),
    ]
    st = rep.get("statistics") or {}
    if st:
        at = next(i for i, (k, _) in enumerate(lines) if k == "fees")
        lines[at:at] = [
            ("Sharpe / Sortino, round trips", f"{_fmt(st['sharpe_round_trips'])} / "
                                              f"{_fmt(st['sortino_round_trips'])}"),
            ("Sharpe / Sortino, minutes (ann.)", f"{_fmt(st['sharpe_minute_annualised'])} / "
                                                 f"{_fmt(st['sortino_minute_annualised'])}"
                                                 "  (365-day year)"),
            ("profit factor / expectancy", f"{_fmt(st['profit_factor'])} / "
                                           f"{_fmt(st['expectancy_usd'], ' USD')}"),
            ("best / worst round trip", f"{_fmt(st['best_round_trip_usd'])} / "
                                        f"{_fmt(st['worst_round_trip_usd'])} USD"),
            ("holding avg / longest", f"{_fmt(st['avg_holding_s'])} / "
                                      f"{_fmt(st['longest_holding_s'])} s"),
            ("turnover / trades per hour", f"{_fmt(st['turnover_usd'], ' USD')} / "
                                           f"{_fmt(st['trades_per_hour'])}"),
        ]
        at = next(i for i, (k, _) in enumerate(lines) if k == "max drawdown")
        lines[at] = ("max drawdown", f"{_fmt(rep['max_drawdown_usd'], ' USD')}, longest "
                                     f"{_fmt(st['max_drawdown_duration_s'])} s under a peak")
    buckets = rep.get("edge_by_entry_bucket") or {}
    if buckets:
        at = next(i for i, (k, _) in enumerate(lines) if k == "risk refusals")
        extra = [("edge by entry bucket", "entry deviation bps: round trips, predicted / "
                                          "realised net bps")]
        for label in sorted(buckets, key=lambda b: float(b.split("-")[0].rstrip("+"))):
            b = buckets[label]
            extra.append((f"  {label}", f"{b['round_trips']}: {b['predicted_net_bps']:+.2f} / "
                                        f"{b['realised_net_bps']:+.2f}"))
        lines[at:at] = extra
    width = max(len(k) for k, _ in lines)
    bar = "-" * (width + 40)
    body = "\n".join(f"{k.ljust(width)}  {v}" for k, v in lines)
    return f"{bar}\nKPI summary\n{bar}\n{body}\n{bar}"


def progress_text(event_s: float, duration_s: float | None, events: int, rejected: int,
                  trades: int, pnl_usd: float, wall_s: float) -> str:
    """One progress line: event time done (of the total, with an ETA at the current pace),
    events, trades, PnL and events per wall second."""
    done = f"event time +{event_s:,.0f}s"
    if duration_s:
        done += f" of {duration_s:,.0f}s ({100 * event_s / duration_s:.0f}%"
        pace = event_s / wall_s if wall_s > 0 else 0.0
        if pace > 0 and event_s < duration_s:
            done += f", ETA {(duration_s - event_s) / pace:,.0f}s"
        done += ")"
    return (f"{done} | events {events:,} (rejected {rejected:,}) | trades {trades:,} | "
            f"PnL {pnl_usd:,.2f} USD | {events / max(wall_s, 1e-9):,.0f} events/s")


class ProgressLine:
    """Logs one progress line every few wall seconds during a long run."""

    def __init__(self, duration_s: float | None, enabled: bool = True, every_s: float = 2.0) -> None:
        self.duration_s = duration_s
        self.enabled = enabled
        self.every_s = every_s
        self._t0 = time.perf_counter()
        self._next = self._t0 + every_s
        self._start_ns: int | None = None

    def update(self, coord, kpi: KpiAccumulator, rows: int) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if self._start_ns is None and coord.clock_ns > 0:
            self._start_ns = coord.clock_ns
        if now < self._next:
            return
        self._next = now + self.every_s
        ev_s = (coord.clock_ns - (self._start_ns or coord.clock_ns)) / 1e9
        pnl = sum(st.pnl_sampled for st in coord.symbols.values())
        # bound as progress: the terminal shows it only when it is one (run.log always)
        logger.bind(progress=True).info(progress_text(
            ev_s, self.duration_s, kpi.events_processed, sum(kpi.events_rejected.values()),
            rows, pnl, now - self._t0))


__all__ = ["EXIT_CODES", "ProgressLine", "add_statistics", "build_report", "code_version",
           "exit_code", "finish_run",
           "format_summary", "progress_text", "start_run_folder", "utc_now", "write_kpi",
           "write_run_folder"]
