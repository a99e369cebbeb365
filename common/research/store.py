"""The sweep folder: the SPEC, one folder per finished trial (its run folder plus
``result.json``, written last, so a trial counts as done only once all of it is on disk)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from common.research.plan import Trial

RESULT = "result.json"


def trial_dir(out_dir: str | Path, key: str) -> Path:
    return Path(out_dir) / "trials" / key


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save_result(out_dir: str | Path, trial: Trial, result: dict) -> dict:
    """Write a trial's run folder and its ``result.json``; returns the record as kept (what
    ``load_results`` gives back). Paths in the KPIs point into the sweep folder."""
    d = trial_dir(out_dir, trial.key)
    for rel, data in (result.get("files") or {}).items():
        _write_atomic(d / rel, data)
    report = result.get("report")
    if report is not None:
        for k in ("trade_log_path", "trade_log_parquet_path"):
            if report.get(k):
                report[k] = str(d / "trades" / Path(report[k]).name)
    record = {k: v for k, v in result.items() if k not in ("files", "report", "equity")}
    record.update(params=trial.params, config_id=trial.config_id, data=trial.unit.identity(),
                  window={"role": trial.window.role, "fold": trial.window.fold,
                          "start_s": trial.window.start_s, "end_s": trial.window.end_s})
    _write_atomic(d / RESULT, json.dumps(record, sort_keys=True, default=str).encode())
    return {**record, "report": report, "equity": result.get("equity")}


def load_result(out_dir: str | Path, key: str) -> dict | None:
    """A finished trial's record, with its KPI report (``kpi.json``) and its equity curve; None
    if the trial has not finished."""
    d = trial_dir(out_dir, key)
    try:
        record = json.loads((d / RESULT).read_text())
    except (OSError, ValueError):
        return None
    record["report"] = None
    record["equity"] = None
    if record.get("status") == "ok":
        try:
            report = json.loads((d / "kpi.json").read_text())
        except (OSError, ValueError):
            return None
        for k in ("trade_log_path", "trade_log_parquet_path"):
            if report.get(k):
                report[k] = str(d / "trades" / Path(report[k]).name)
        record["report"] = report
    return record


def load_equity(out_dir: str | Path, key: str) -> dict | None:
    import pyarrow.parquet as pq

    p = trial_dir(out_dir, key) / "equity.parquet"
    return pq.read_table(p).to_pydict() if p.exists() else None


def finished(out_dir: str | Path, trials: list[Trial]) -> dict[str, dict]:
    """The trials of this plan already finished successfully in ``out_dir`` (resume skips them;
    a failed one runs again)."""
    out = {}
    for t in trials:
        r = load_result(out_dir, t.key)
        if r is not None and r.get("status") == "ok":
            out[t.key] = r
    return out


def has_results(out_dir: str | Path) -> bool:
    return any((Path(out_dir) / "trials").glob(f"*/{RESULT}"))
