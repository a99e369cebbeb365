"""Past runs: list the run folders under a log directory, and compare runs side by side.

A run folder (``<log-dir>/<run_id>/``) is read through its ``kpi.json`` and ``run.json``; a folder
whose files are missing or unreadable is still listed, marked for what it lacks, never an error
that hides the other runs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

#: the figures ``compare`` puts side by side: (label, path in the KPI JSON, unit)
COMPARED: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("events processed", ("events_processed",), ""),
    ("trades executed", ("trades_executed",), ""),
    ("round trips", ("round_trips_completed",), ""),
    ("win rate", ("win_rate_pct",), "%"),
    ("total PnL", ("total_pnl_usd",), "USD"),
    ("realised PnL", ("realized_pnl_usd",), "USD"),
    ("fees", ("fees_usd",), "USD"),
    ("max drawdown", ("max_drawdown_usd",), "USD"),
    ("Sharpe, round trips", ("sharpe_round_trips",), ""),
    ("Sharpe, minutes (ann.)", ("statistics", "sharpe_minute_annualised"), ""),
    ("profit factor", ("profit_factor",), ""),
    ("expectancy", ("statistics", "expectancy_usd"), "USD"),
    ("avg holding", ("statistics", "avg_holding_s"), "s"),
    ("turnover", ("statistics", "turnover_usd"), "USD"),
    ("avg buy slippage", ("avg_buy_slippage_bps",), "bps"),
    ("avg sell slippage", ("avg_sell_slippage_bps",), "bps"),
    ("avg buy fill ratio", ("avg_buy_fill_ratio",), ""),
    ("avg sell fill ratio", ("avg_sell_fill_ratio",), ""),
    ("partial fills", ("partial_fills_count",), ""),
    ("failed fills", ("failed_fills_count",), ""),
    ("FX translation", ("fx_translation_usd",), "USD"),
    ("inventory MTM", ("inventory_mtm_usd",), "USD"),
    ("account value end", ("account_value_end_usd",), "USD"),
    ("wall time", ("wall_seconds",), "s"),
)


class RunFolderError(ValueError):
    """A path that is not a run folder (one line for the user)."""


def read_json(path: Path) -> tuple[dict | None, str | None]:
    """A run folder's JSON file and None, or None and what is wrong (``no kpi.json``,
    ``kpi.json unreadable (JSONDecodeError)``)."""
    try:
        return json.loads(path.read_text()), None
    except FileNotFoundError:
        return None, f"no {path.name}"
    except (OSError, ValueError) as e:
        return None, f"{path.name} unreadable ({type(e).__name__})"


def load_run(run_dir: str | Path) -> dict:
    """A run folder's ``kpi`` and ``info`` (``run.json``), and what is missing (``problems``)."""
    d = Path(run_dir)
    if not d.is_dir():
        raise RunFolderError(f"{d}: not a run folder (no such directory)")
    kpi, p1 = read_json(d / "kpi.json")
    info, p2 = read_json(d / "run.json")
    if kpi is None and info is None and not (d / "trades").is_dir():
        raise RunFolderError(f"{d}: not a run folder (no kpi.json, run.json or trades/)")
    return {"dir": d, "kpi": kpi or {}, "info": info or {},
            "problems": [p for p in (p1, p2) if p]}


def list_runs(log_dir: str | Path) -> list[dict]:
    """Every run folder under ``log_dir``, oldest first (run ids start with their UTC time)."""
    root = Path(log_dir)
    if not root.is_dir():
        raise RunFolderError(f"{root}: no such log directory")
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            out.append(load_run(d))
        except RunFolderError:
            continue  # some other folder
    return out


def kpi_at(d: dict, path: tuple[str, ...]):
    """The value at ``path`` in a KPI JSON (``("statistics", "profit_factor")``), or None."""
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _num(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool) or not isinstance(v, int | float):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if not math.isfinite(v):
        return str(v)
    return f"{v:,.4f}" if abs(v) < 10 else f"{v:,.2f}"


def _source(info: dict, kpi: dict) -> str:
    src = info.get("data_source") or {}
    kind = src.get("kind") or kpi.get("data_source") or "?"
    if kind == "mock":
        # a run folder from before run.json: its effective settings say the same
        settings = kpi.get("settings") or {}
        src = {"seed": settings.get("seed", "?"), "volatility": settings.get("mock_volatility"),
               **src}
        vol = src.get("volatility")
        return f"mock seed {src.get('seed', '?')}" + (f" vol {vol:g}" if vol not in (None, 1.0)
                                                      else "")
    if kind == "replay":
        return f"replay {Path(str(src.get('path', '?'))).name}"
    return kind


def _status_note(info: dict, kpi: dict) -> str:
    status = info.get("status")
    if status == "running":
        return "running (or ended without finishing) "
    return "interrupted " if kpi.get("interrupted") or status == "interrupted" else ""


def format_runs(runs: list[dict]) -> str:
    """The ``runs`` table: id, start, engine, data source, symbols, round trips, PnL, Sharpe."""
    head = ("run id", "started (UTC)", "engine", "data", "symbols", "round trips", "PnL USD",
            "Sharpe rt", "note")
    rows = []
    for r in runs:
        k, i = r["kpi"], r["info"]
        rows.append((r["dir"].name, str(i.get("started_utc", "-")),
                     str(k.get("engine") or i.get("engine") or "-"), _source(i, k),
                     _num(len(k["symbols"])) if "symbols" in k else "-",
                     _num(k.get("round_trips_completed")), _num(k.get("total_pnl_usd")),
                     _num(k.get("sharpe_round_trips")),
                     _status_note(i, k) + ", ".join(r["problems"])))
    if not rows:
        return "no runs"
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in (head, *rows)]
    return "\n".join(lines)


def compare_rows(runs: list[dict]) -> list[tuple[str, list, list]]:
    """(label with unit, each run's value, each run's difference to the first) per figure."""
    out = []
    for label, path, unit in COMPARED:
        vals = [kpi_at(r["kpi"], path) for r in runs]
        base = vals[0]
        diffs = [(v - base) if isinstance(v, int | float) and isinstance(base, int | float)
                 and not isinstance(v, bool) else None for v in vals]
        out.append((f"{label} ({unit})" if unit else label, vals, diffs))
    return out


def format_compare(runs: list[dict]) -> str:
    """The runs' KPIs side by side, each later run with its difference to the first."""
    head = ["figure", runs[0]["dir"].name]
    for r in runs[1:]:
        head += [r["dir"].name, "diff"]
    table = [head]
    for label, vals, diffs in compare_rows(runs):
        row = [label, _num(vals[0])]
        for v, dv in zip(vals[1:], diffs[1:], strict=True):
            row += [_num(v), ("+" if dv is not None and dv > 0 else "") + _num(dv)]
        table.append(row)
    widths = [max(len(row[c]) for row in table) for c in range(len(head))]
    lines = ["  ".join(cell.ljust(w) if c == 0 else cell.rjust(w)
                       for c, (cell, w) in enumerate(zip(row, widths, strict=True)))
             for row in table]
    notes = [f"{r['dir'].name}: {', '.join(r['problems'])}" for r in runs if r["problems"]]
    return "\n".join(lines + notes)
