"""One trial: an ordinary run of the local engine with the trial's settings on its data window,
in a scratch folder; returns its KPIs, its PnL on the shared minute grid and its run folder's
files, so the result can travel (through Ray's object store) to the machine that keeps it."""

from __future__ import annotations

import shutil
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from loguru import logger

from common.engine.local import run_local
from common.reporting.stats import minute_equity
from common.research.plan import Trial

MINUTE_NS = 60_000_000_000


def run_id_of(trial: Trial) -> str:
    """Deterministic per trial: a rerun of the same trial writes the same folder name."""
    return f"trial-{trial.key}"


def minute_pnl(t_ns: np.ndarray, equity: np.ndarray, start_ns: int, end_ns: int) -> np.ndarray:
    """PnL of every whole minute from the run's first event (the shared grid every trial of the
    same data window has): the per-minute changes of the equity curve sampled each minute."""
    m = minute_equity(np.asarray(t_ns, dtype=np.int64), np.asarray(equity, dtype=float),
                      int(start_ns), int(end_ns))
    return np.diff(np.concatenate(([0.0], m))) if m.size else np.zeros(0)


def derived_kpis(report: dict, hours: float) -> dict:
    """Scalar KPIs a sweep ranks by, beside kpi.json's: realised and predicted net edge per
    round trip (round-trip weighted over the entry buckets) and PnL per hour of the window."""
    buckets = report.get("edge_by_entry_bucket") or {}
    n = sum(b.get("round_trips", 0) for b in buckets.values())
    net = sum(b["realised_net_bps"] * b["round_trips"] for b in buckets.values()) / n if n else None
    pred = sum(b["predicted_net_bps"] * b["round_trips"] for b in buckets.values()) / n \
        if n else None
    return {"net_edge_bps": net, "predicted_edge_bps": pred,
            "pnl_per_hour_usd": report["total_pnl_usd"] / hours if hours > 0 else None}


def run_trial(trial: Trial, scratch: str | Path | None = None) -> dict:
    """Run ``trial``; never raises for a failing run (the result says ``failed`` and why)."""
    from common.research.data import open_trial_source

    t0 = time.perf_counter()
    run_id = run_id_of(trial)
    tmp = Path(tempfile.mkdtemp(prefix="kimchi-trial-", dir=scratch))
    run_dir = tmp / run_id
    sink = logger.add(run_dir / "run.log", level="DEBUG",
                      format="{time:YYYY-MM-DD HH:mm:ss.SSS} {level: <7} {name}:{line} {message}")
    out: dict = {"key": trial.key, "label": trial.label}
    try:
        source = open_trial_source(trial.unit, trial.window, trial.settings)
        report = run_local(trial.settings, source, run_id, tmp, None, trial.settings.topn_size,
                           progress=False)
        if report.get("interrupted"):
            # a signal stopped the run early: its figures cover part of the window only, so
            # the trial is not finished (a resumed sweep runs it again)
            raise InterruptedError("the run was stopped by a signal before its window ended")
        eq = pq.read_table(run_dir / "equity.parquet").to_pydict()
        first, last = report.get("event_time_span_ns", [-1, -1])
        pnl = minute_pnl(np.asarray(eq["t_ns"]), np.asarray(eq["equity_usd"]), first, last)
        logger.remove(sink)
        sink = None
        files = {str(p.relative_to(run_dir)): p.read_bytes()
                 for p in sorted(run_dir.rglob("*")) if p.is_file()}
        out.update(status="ok", error=None, report=report, pnl=pnl.tolist(), grid_start_ns=first,
                   derived=derived_kpis(report, trial.window.hours), files=files,
                   equity={"t_ns": list(eq["t_ns"]), "equity_usd": list(eq["equity_usd"])})
    except Exception as e:  # a failing trial is recorded and the sweep goes on
        logger.opt(exception=True).error("{} failed", trial.label)
        out.update(status="failed", error=f"{type(e).__name__}: {' '.join(str(e).split())}",
                   traceback=traceback.format_exc(), report=None, pnl=[], files={})
    finally:
        if sink is not None:
            logger.remove(sink)
        shutil.rmtree(tmp, ignore_errors=True)
    out["trial_wall_s"] = time.perf_counter() - t0
    return out
