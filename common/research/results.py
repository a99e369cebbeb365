"""A sweep's results: the table (one row per trial and window), the best configuration, the
walk-forward's choices and out-of-sample figures, and the overfitting statistics."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from common.research.overfit import DeflatedSharpe, Pbo, deflated_sharpe, pbo_cscv, sharpe_columns
from common.research.plan import SweepPlan, Trial

_SKIP = {"annualisation"}


def kpi_columns(report: dict | None, derived: dict | None) -> dict[str, Any]:
    """Every scalar KPI of a run under its KPI name: kpi.json's top level, its ``statistics``
    (where the top level has no field of that name) and the sweep's derived ones."""
    if report is None:
        return {}
    out: dict[str, Any] = {}
    for k, v in report.items():
        if isinstance(v, bool) or isinstance(v, (int, float)) or v is None:
            out[k] = v
    for k, v in (report.get("statistics") or {}).items():
        if k not in out and k not in _SKIP and (isinstance(v, (int, float)) or v is None):
            out[k] = v
    out.update(derived or {})
    return out


def _num(v: Any) -> float | None:
    if v is None or isinstance(v, bool):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


@dataclass
class ConfigScore:
    config_id: int
    params: dict[str, Any]
    score: float | None  # the objective, averaged over the data units
    round_trips: int  # fewest round trips of one of its trials
    eligible: bool
    trials_ok: int
    trials: int


@dataclass
class FoldChoice:
    unit: str
    fold: int
    in_sample: tuple[float, float]
    out_of_sample: tuple[float, float]
    config_id: int | None
    params: dict[str, Any]
    is_objective: float | None
    oos_objective: float | None
    is_pnl_per_hour: float | None
    oos_pnl_per_hour: float | None
    oos_key: str | None


@dataclass
class SweepAnalysis:
    metric: str
    direction: str
    min_round_trips: int
    configs: list[ConfigScore]
    best: ConfigScore | None
    n_trials: int  # configurations tried (what the deflation counts)
    n_runs: int  # trials (configuration x data x window) run
    n_failed: int
    grid_periods: int  # minutes on the shared grid the overfitting statistics use
    grid_basis: str
    dsr: DeflatedSharpe | None
    pbo: Pbo | None
    pbo_note: str
    folds: list[FoldChoice] = field(default_factory=list)
    wf_efficiency: float | None = None  # mean OOS PnL/h of the chosen over their mean IS PnL/h
    oos_equity: dict[str, list[float]] = field(default_factory=dict)  # unit -> cumulative USD
    scatter: list[tuple[float, float, int]] = field(default_factory=list)  # IS, OOS, config


def _objective(rec: dict | None, metric: str) -> float | None:
    if not rec or rec.get("status") != "ok":
        return None
    return _num(kpi_columns(rec["report"], rec.get("derived")).get(metric))


def _round_trips(rec: dict | None) -> int:
    if not rec or rec.get("status") != "ok":
        return 0
    return int(rec["report"].get("round_trips_completed") or 0)


def _better(direction: str, a: float, b: float) -> bool:
    return a > b if direction == "max" else a < b


def _pick(direction: str, cands: list[tuple[float, int]]) -> int | None:
    """The config id of the best (objective, config id) pair; ties go to the lower id."""
    best = None
    for v, cid in cands:
        if best is None or _better(direction, v, best[0]):
            best = (v, cid)
    return None if best is None else best[1]


def analyse(plan: SweepPlan, records: dict[str, dict]) -> SweepAnalysis:
    spec = plan.spec
    obj = spec.objective
    by_cfg: dict[int, list[Trial]] = {}
    for t in plan.trials:
        by_cfg.setdefault(t.config_id, []).append(t)
    scoring_role = "full" if spec.walk_forward is None else "in_sample"

    configs: list[ConfigScore] = []
    for cid, cfg in enumerate(plan.configs):
        ts = [t for t in by_cfg.get(cid, []) if t.window.role == scoring_role]
        vals = [_objective(records.get(t.key), obj.metric) for t in ts]
        rts = [_round_trips(records.get(t.key)) for t in ts]
        ok = sum(1 for t in by_cfg.get(cid, []) if (records.get(t.key) or {}).get("status") == "ok")
        score = float(np.mean(vals)) if vals and all(v is not None for v in vals) else None
        fewest = min(rts) if rts else 0
        configs.append(ConfigScore(cid, cfg, score, fewest,
                                   score is not None and fewest >= obj.min_round_trips,
                                   ok, len(by_cfg.get(cid, []))))
    best_id = _pick(obj.direction, [(c.score, c.config_id) for c in configs if c.eligible])
    best = configs[best_id] if best_id is not None else None

    # the shared grid: without walk-forward every unit's full window; with it, the out-of-sample
    # windows (disjoint in time), so no minute counts twice
    basis_role = "full" if spec.walk_forward is None else "out_of_sample"
    complete = [c.config_id for c in configs
                if all((records.get(t.key) or {}).get("status") == "ok"
                       for t in by_cfg.get(c.config_id, []) if t.window.role == basis_role)]
    segments: list[np.ndarray] = []
    segs_keys: list[tuple] = []
    for ui, u in enumerate(plan.units):
        for w in plan.windows[ui]:
            if w.role != basis_role:
                continue
            cols = []
            for cid in complete:
                t = next(t for t in by_cfg[cid] if t.unit == u and t.window == w)
                cols.append(np.asarray(records[t.key].get("pnl") or [], dtype=float))
            if cols:
                n = min(len(c) for c in cols)
                segments.append(np.column_stack([c[:n] for c in cols]) if n else
                                np.zeros((0, len(cols))))
                segs_keys.append((ui, w))
    matrix = np.concatenate(segments, axis=0) if segments else np.zeros((0, len(complete)))
    dsr = None
    pbo = None
    note = ""
    if best is not None and best.config_id in complete and matrix.shape[0] >= 3:
        srs = sharpe_columns(matrix)
        dsr = deflated_sharpe(matrix[:, complete.index(best.config_id)], srs)
    if len(complete) < 2:
        note = "PBO needs two configurations or more with every trial finished"
    elif matrix.shape[0] < 2 * spec.cscv_blocks:
        note = (f"PBO needs at least {2 * spec.cscv_blocks} minutes on the grid "
                f"(got {matrix.shape[0]})")
    else:
        # CSCV ranks the configurations by the Sharpe ratio of their per-minute PnL
        pbo = pbo_cscv(matrix, spec.cscv_blocks)

    an = SweepAnalysis(obj.metric, obj.direction, obj.min_round_trips, configs, best,
                       len(plan.configs), len(plan.trials),
                       sum(1 for r in records.values() if r.get("status") != "ok"),
                       int(matrix.shape[0]),
                       "per-minute PnL, every unit's full window" if basis_role == "full" else
                       "per-minute PnL, the out-of-sample windows", dsr, pbo, note)
    if spec.walk_forward is not None:
        _walk_forward(plan, records, by_cfg, an)
    return an


def _walk_forward(plan: SweepPlan, records: dict[str, dict], by_cfg: dict[int, list[Trial]],
                  an: SweepAnalysis) -> None:
    obj = plan.spec.objective
    is_rates, oos_rates = [], []
    for ui, u in enumerate(plan.units):
        ws = plan.windows[ui]
        oos_pnl: list[float] = []
        for k in sorted({w.fold for w in ws}):
            wi = next(w for w in ws if w.fold == k and w.role == "in_sample")
            wo = next(w for w in ws if w.fold == k and w.role == "out_of_sample")
            cands = []
            pair = {}
            for cid, ts in by_cfg.items():
                ti = next(t for t in ts if t.unit == u and t.window == wi)
                to = next(t for t in ts if t.unit == u and t.window == wo)
                pair[cid] = (ti, to)
                v_is = _objective(records.get(ti.key), obj.metric)
                v_oos = _objective(records.get(to.key), obj.metric)
                if v_is is not None and v_oos is not None:
                    an.scatter.append((v_is, v_oos, cid))
                if v_is is not None and _round_trips(records.get(ti.key)) >= obj.min_round_trips:
                    cands.append((v_is, cid))
            cid = _pick(obj.direction, cands)
            if cid is None:
                an.folds.append(FoldChoice(u.label, k, (wi.start_s, wi.end_s),
                                           (wo.start_s, wo.end_s), None, {}, None, None, None,
                                           None, None))
                continue
            ti, to = pair[cid]
            ri, ro = records.get(ti.key), records.get(to.key)
            is_rate = _num(kpi_columns(ri["report"], ri.get("derived")).get("pnl_per_hour_usd"))
            oos_rate = _objective(ro, "pnl_per_hour_usd")
            an.folds.append(FoldChoice(u.label, k, (wi.start_s, wi.end_s), (wo.start_s, wo.end_s),
                                       cid, plan.configs[cid], _objective(ri, obj.metric),
                                       _objective(ro, obj.metric), is_rate, oos_rate, to.key))
            if is_rate is not None and oos_rate is not None:
                is_rates.append(is_rate)
                oos_rates.append(oos_rate)
            if ro and ro.get("status") == "ok":
                oos_pnl.extend(ro.get("pnl") or [])
        an.oos_equity[u.label] = np.cumsum(oos_pnl).tolist()
    if is_rates and np.mean(is_rates) != 0:
        an.wf_efficiency = float(np.mean(oos_rates) / np.mean(is_rates))


def result_rows(plan: SweepPlan, records: dict[str, dict], an: SweepAnalysis | None = None
                ) -> list[dict[str, Any]]:
    """One row per trial and window, in plan order: ids, data and window, every parameter under
    its variable name, status, every scalar KPI, wall time and node."""
    chosen = {f.oos_key for f in (an.folds if an else []) if f.oos_key}
    elig = {c.config_id: c.eligible for c in (an.configs if an else [])}
    best_id = an.best.config_id if an and an.best else None
    rows = []
    for t in plan.trials:
        rec = records.get(t.key) or {}
        row: dict[str, Any] = {
            "trial_key": t.key, "config_id": t.config_id,
            "data": t.unit.label, "seed": t.unit.seed if t.unit.kind == "mock" else None,
            "path": t.unit.path, "window": t.window.role, "fold": t.window.fold,
            "window_start_s": t.window.start_s, "window_end_s": t.window.end_s,
        }
        row.update(t.params)
        row.update({"status": rec.get("status", "not_run"), "error": rec.get("error"),
                    "eligible": elig.get(t.config_id), "best": t.config_id == best_id,
                    "wf_chosen": t.key in chosen if t.window.role == "out_of_sample" else None,
                    "trial_wall_s": rec.get("trial_wall_s"), "node": rec.get("node"),
                    "node_ip": rec.get("node_ip")})
        for k, v in kpi_columns(rec.get("report"), rec.get("derived")).items():
            row.setdefault(k, v)
        rows.append(row)
    return rows


def _column(values: list[Any]) -> pa.Array:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pa.array(values, pa.bool_())
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pa.array(values, pa.int64())
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    return pa.array([None if v is None else str(v) for v in values], pa.string())


def results_table(rows: list[dict[str, Any]]) -> pa.Table:
    names: list[str] = []
    for r in rows:
        names.extend(k for k in r if k not in names)
    return pa.table({n: _column([r.get(n) for r in rows]) for n in names})


def write_results(out_dir: str | Path, rows: list[dict[str, Any]]) -> pa.Table:
    """``sweep_results.parquet`` and ``sweep_results.csv`` (each written atomically)."""
    out = Path(out_dir)
    table = results_table(rows)
    tmp = out / "sweep_results.parquet.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, out / "sweep_results.parquet")
    tmp = out / "sweep_results.csv.tmp"
    pacsv.write_csv(table, tmp)
    os.replace(tmp, out / "sweep_results.csv")
    return table


def summary_dict(an: SweepAnalysis) -> dict:
    """The analysis as JSON (``summary.json``)."""
    def cfg(c: ConfigScore | None) -> dict | None:
        return None if c is None else {"config_id": c.config_id, "params": c.params,
                                       "objective": c.score, "fewest_round_trips": c.round_trips,
                                       "eligible": c.eligible}
    return {
        "objective": {"metric": an.metric, "direction": an.direction,
                      "min_round_trips": an.min_round_trips},
        "configurations": an.n_trials, "trials": an.n_runs, "failed": an.n_failed,
        "best": cfg(an.best),
        "ranking": [cfg(c) for c in ranking(an)],
        "overfitting": {
            "grid": an.grid_basis, "periods": an.grid_periods,
            "deflated_sharpe": None if an.dsr is None else {
                "probability": an.dsr.probability, "sharpe_per_minute": an.dsr.sharpe,
                "expected_max_sharpe_per_minute": an.dsr.sharpe_threshold,
                "n_trials": an.dsr.n_trials, "periods": an.dsr.periods,
                "skewness": an.dsr.skewness, "kurtosis": an.dsr.kurtosis},
            "pbo": None if an.pbo is None else {
                "pbo": an.pbo.pbo, "splits": an.pbo.splits, "blocks": an.pbo.blocks,
                "degradation_slope": an.pbo.degradation_slope,
                "prob_oos_loss": an.pbo.prob_oos_loss},
            "pbo_note": an.pbo_note,
        },
        "walk_forward": None if not an.folds else {
            "efficiency": an.wf_efficiency,
            "folds": [{"data": f.unit, "fold": f.fold, "in_sample_s": list(f.in_sample),
                       "out_of_sample_s": list(f.out_of_sample), "config_id": f.config_id,
                       "params": f.params, "is_objective": f.is_objective,
                       "oos_objective": f.oos_objective, "is_pnl_per_hour": f.is_pnl_per_hour,
                       "oos_pnl_per_hour": f.oos_pnl_per_hour} for f in an.folds]},
    }


def write_summary(out_dir: str | Path, an: SweepAnalysis) -> None:
    path = Path(out_dir) / "summary.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(summary_dict(an), indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def ranking(an: SweepAnalysis) -> list[ConfigScore]:
    """Configurations with a score, best first (eligible ones before the rest)."""
    scored = [c for c in an.configs if c.score is not None]
    sign = -1.0 if an.direction == "max" else 1.0
    return sorted(scored, key=lambda c: (not c.eligible, sign * c.score, c.config_id))


def _f(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def format_summary(an: SweepAnalysis, top: int = 5) -> str:
    """The printed summary: best configurations, overfitting statistics, walk-forward."""
    lines = [f"sweep: {an.n_trials} configurations, {an.n_runs} trials"
             f"{f', {an.n_failed} failed' if an.n_failed else ''}; objective {an.metric} "
             f"({an.direction}), eligible with >= {an.min_round_trips} round trips"]
    lines.append("best configurations (" + ("mean over the in-sample windows" if an.folds else
                                            "mean over the data units") + "):")
    for c in ranking(an)[:top]:
        ps = " ".join(f"{k}={v}" for k, v in c.params.items())
        lines.append(f"  #{c.config_id:<4} {an.metric} {_f(c.score, 4):>14}  round trips >= "
                     f"{c.round_trips:<5} {'' if c.eligible else '(not eligible) '}{ps}")
    if an.best is None:
        lines.append("  no configuration is eligible as best")
    if an.dsr is not None:
        lines.append(f"deflated Sharpe ratio of the best: {an.dsr.probability:.3f} (per-minute "
                     f"Sharpe {an.dsr.sharpe:.4f} vs {an.dsr.sharpe_threshold:.4f} expected from "
                     f"the best of {an.dsr.n_trials} skill-less trials; {an.dsr.periods} minutes)")
    if an.pbo is not None:
        lines.append(f"probability of backtest overfitting (CSCV, {an.pbo.blocks} blocks, "
                     f"{an.pbo.splits} splits): {an.pbo.pbo:.3f}; OOS loss in "
                     f"{100 * an.pbo.prob_oos_loss:.0f}% of splits, IS->OOS slope "
                     f"{an.pbo.degradation_slope:+.2f}")
    elif an.pbo_note:
        lines.append(f"probability of backtest overfitting: not computed ({an.pbo_note})")
    if an.folds:
        lines.append("walk-forward (chosen on in-sample, evaluated out of sample):")
        for f in an.folds:
            ps = " ".join(f"{k}={v}" for k, v in f.params.items()) or "no eligible configuration"
            lines.append(f"  {f.unit} fold {f.fold}: IS {an.metric} {_f(f.is_objective)} -> "
                         f"OOS {_f(f.oos_objective)}; PnL/h IS {_f(f.is_pnl_per_hour)} OOS "
                         f"{_f(f.oos_pnl_per_hour)}  [{ps}]")
        lines.append(f"  walk-forward efficiency (OOS / IS PnL per hour): "
                     f"{_f(an.wf_efficiency, 3)}")
    return "\n".join(lines)
