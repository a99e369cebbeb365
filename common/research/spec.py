"""The sweep SPEC: a small TOML file read and checked in full before any trial starts.

Every problem is one ``SpecError`` whose text is a single line naming the table, the key and
what is wrong, so ``run.py sweep`` can print it and exit with code 2.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.settings import Settings

SOURCES = ("mock", "replay")
SEARCH_METHODS = ("random",)
DIRECTIONS = ("max", "min")
#: settings a sweep may not vary or fix: they select the env file, or the mock's seeds (which
#: are ``[data] seeds``)
RESERVED = {"ARBITRAGE_ENV": "it selects the env file (use run.py sweep --env-file)"}
_TABLES = {"data", "settings", "grid", "search", "objective", "walk_forward", "overfitting"}
_DATA_KEYS = {"source", "seeds", "duration_s", "paths"}
_OBJECTIVE_KEYS = {"metric", "direction", "min_round_trips"}
_WF_KEYS = {"in_sample_s", "out_of_sample_s", "embargo_s", "anchored"}
_SEARCH_KEYS = {"method", "trials", "seed", "space"}
_OVERFIT_KEYS = {"cscv_blocks"}
#: scalar KPIs (kpi.json top level, its ``statistics`` and the sweep's derived ones) an
#: objective can name; tests check every one is in a real trial's results row
METRICS = (
    "total_pnl_usd", "realized_pnl_usd", "unrealized_pnl_usd", "round_trips_completed",
    "win_rate_pct", "fees_usd", "max_drawdown_usd", "profit_factor", "sharpe_round_trips",
    "trades_executed", "hedges_count", "partial_fills_count", "failed_fills_count",
    "avg_buy_slippage_bps", "avg_sell_slippage_bps", "avg_buy_fill_ratio", "avg_sell_fill_ratio",
    "avg_latency_cost_bps", "entries_declined_by_cost", "fx_translation_usd",
    "inventory_mtm_usd", "account_value_end_usd", "sortino_round_trips",
    "sharpe_minute_annualised", "sortino_minute_annualised", "max_drawdown_duration_s",
    "expectancy_usd", "avg_holding_s", "turnover_usd", "best_round_trip_usd",
    "worst_round_trip_usd", "trades_per_hour", "net_edge_bps", "predicted_edge_bps",
    "pnl_per_hour_usd",
)


class SpecError(ValueError):
    """A SPEC that cannot run; ``str()`` is one line for the user."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


@dataclass(frozen=True, slots=True)
class Objective:
    metric: str = "total_pnl_usd"
    direction: str = "max"
    min_round_trips: int = 10

    def better(self, a: float, b: float) -> bool:
        return a > b if self.direction == "max" else a < b


@dataclass(frozen=True, slots=True)
class WalkForward:
    in_sample_s: float
    out_of_sample_s: float
    embargo_s: float = 0.0
    anchored: bool = False


@dataclass(frozen=True, slots=True)
class SearchSpace:
    """One parameter of a random search: a list to choose from, or a range ``[low, high]``
    (log-uniform with ``log``, whole numbers with ``int``)."""

    choices: tuple | None = None
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    integer: bool = False


@dataclass(frozen=True)
class SweepSpec:
    source: str
    seeds: tuple[int, ...] = ()
    duration_s: float | None = None
    paths: tuple[str, ...] = ()
    fixed: dict[str, Any] = field(default_factory=dict)  # [settings]: NAME -> value
    grid: dict[str, tuple] = field(default_factory=dict)  # NAME -> values
    search: dict[str, SearchSpace] = field(default_factory=dict)
    search_trials: int = 0
    search_seed: int = 0
    objective: Objective = Objective()
    walk_forward: WalkForward | None = None
    cscv_blocks: int = 16
    text: str = ""  # the SPEC as written (kept in the sweep folder)

    @property
    def parameters(self) -> list[str]:
        return list(self.grid) + [k for k in self.search if k not in self.grid]


def _where(table: str, key: str | None = None) -> str:
    return f"[{table}] {key}" if key else f"[{table}]"


def _number(v: Any, where: str, positive: bool = False, integer: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise SpecError(f"{where}: must be a number (got {v!r})")
    if integer and int(v) != v:
        raise SpecError(f"{where}: must be a whole number (got {v!r})")
    if positive and v <= 0:
        raise SpecError(f"{where}: must be > 0 (got {v!r})")
    return v


def _unknown(table: str, got: dict, known: set[str]) -> None:
    extra = sorted(set(got) - known)
    if extra:
        raise SpecError(f"{_where(table, extra[0])}: unknown key (known: {', '.join(sorted(known))})")


def _setting_name(name: str, table: str) -> str:
    upper = str(name).upper()
    if upper.lower() not in Settings.model_fields:
        raise SpecError(f"{_where(table, name)}: unknown parameter (parameters are the settings' "
                        "environment variables, e.g. ENTRY_MARGIN_BPS; see run.py show-config)")
    if upper in RESERVED:
        raise SpecError(f"{_where(table, name)}: cannot be swept: {RESERVED[upper]}")
    return upper


def _scalar(v: Any, where: str) -> Any:
    if isinstance(v, (bool, int, str)) or (isinstance(v, float) and math.isfinite(v)):
        return v
    raise SpecError(f"{where}: values must be numbers, booleans or strings (got {v!r})")


def _range_values(t: dict, where: str) -> tuple:
    missing = [k for k in ("start", "stop", "step") if k not in t]
    if missing or set(t) - {"start", "stop", "step"}:
        raise SpecError(f"{where}: a range is {{start = A, stop = B, step = C}} (got {t!r})")
    a = _number(t["start"], where)
    b = _number(t["stop"], where)
    step = _number(t["step"], where, positive=True)
    if b < a:
        raise SpecError(f"{where}: stop {b!r} is below start {a!r}")
    n = int(math.floor((b - a) / step + 1e-9)) + 1
    if n > 10_000:
        raise SpecError(f"{where}: the range has {n} values (at most 10000)")
    whole = all(isinstance(x, int) for x in (t["start"], t["stop"], t["step"]))
    return tuple(int(a + i * step) if whole else round(a + i * step, 12) for i in range(n))


def _grid_values(name: str, v: Any) -> tuple:
    where = _where("grid", name)
    if isinstance(v, dict):
        values = _range_values(v, where)
    elif isinstance(v, list):
        values = tuple(_scalar(x, where) for x in v)
    else:
        values = (_scalar(v, where),)
    if not values:
        raise SpecError(f"{where}: empty list of values (give at least one)")
    if len(set(values)) != len(values):
        raise SpecError(f"{where}: a value is listed twice ({list(values)})")
    return values


def _space(name: str, v: Any) -> SearchSpace:
    where = _where("search.space", name)
    if isinstance(v, list):
        if not v:
            raise SpecError(f"{where}: empty list of choices")
        return SearchSpace(choices=tuple(_scalar(x, where) for x in v))
    if not isinstance(v, dict) or not {"low", "high"} <= set(v) or set(v) - {"low", "high", "log",
                                                                              "int"}:
        raise SpecError(f"{where}: give a list of choices or {{low = A, high = B}} "
                        f"(optional log = true, int = true) (got {v!r})")
    lo, hi = _number(v["low"], where), _number(v["high"], where)
    if hi <= lo:
        raise SpecError(f"{where}: high must be above low (got {lo!r}..{hi!r})")
    log, integer = bool(v.get("log", False)), bool(v.get("int", False))
    if log and lo <= 0:
        raise SpecError(f"{where}: a log range needs low > 0 (got {lo!r})")
    return SearchSpace(low=float(lo), high=float(hi), log=log, integer=integer)


def parse_spec(text: str, origin: str = "SPEC") -> SweepSpec:
    """Parse and check a SPEC's text (structure and names; values are checked by building every
    trial's Settings, ``plan.build_plan``)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{origin}: not valid TOML ({e})") from None
    _unknown_tables = sorted(set(doc) - _TABLES)
    if _unknown_tables:
        raise SpecError(f"{origin}: unknown table [{_unknown_tables[0]}] (known: "
                        f"{', '.join(f'[{t}]' for t in sorted(_TABLES))})")
    for t in _TABLES & set(doc):
        if not isinstance(doc[t], dict):
            raise SpecError(f"{origin}: {t} must be a table [{t}]")

    data = doc.get("data")
    if data is None:
        raise SpecError("[data]: missing (source = \"mock\" with seeds, or \"replay\" with paths)")
    _unknown("data", data, _DATA_KEYS)
    source = data.get("source", "mock")
    if source not in SOURCES:
        raise SpecError(f"[data] source: must be one of {', '.join(SOURCES)} (got {source!r})")
    duration = data.get("duration_s")
    if duration is not None:
        duration = float(_number(duration, "[data] duration_s", positive=True))
    seeds: tuple[int, ...] = ()
    paths: tuple[str, ...] = ()
    if source == "mock":
        if "paths" in data:
            raise SpecError("[data] paths: only a replay has paths (the mock has seeds)")
        raw = data.get("seeds", [7])
        raw = raw if isinstance(raw, list) else [raw]
        if not raw:
            raise SpecError("[data] seeds: empty list (give at least one seed)")
        seeds = tuple(int(_number(s, "[data] seeds", integer=True)) for s in raw)
        if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
            raise SpecError(f"[data] seeds: must be distinct and >= 0 (got {list(seeds)})")
        if duration is None:
            duration = 3600.0
    else:
        if "seeds" in data:
            raise SpecError("[data] seeds: a replay has no seeds (set SEED in [settings] or "
                            "[grid] for latency jitter and fills)")
        raw = data.get("paths")
        raw = raw if isinstance(raw, list) else [raw] if raw is not None else []
        if not raw or not all(isinstance(p, str) and p for p in raw):
            raise SpecError("[data] paths: give the replay files or directories as a list of "
                            "strings (local paths or URIs such as s3://bucket/day)")
        if len(set(raw)) != len(raw):
            raise SpecError("[data] paths: a path is listed twice")
        paths = tuple(raw)

    fixed: dict[str, Any] = {}
    for k, v in doc.get("settings", {}).items():
        name = _setting_name(k, "settings")
        if isinstance(v, list):
            v = ",".join(str(x) for x in v)  # SYMBOLS = ["BTC", "ETH"]
        fixed[name] = _scalar(v, _where("settings", k))
    if source == "mock" and "SEED" in fixed:
        raise SpecError("[settings] SEED: the mock's seeds are [data] seeds")

    grid = {}
    for k, v in doc.get("grid", {}).items():
        name = _setting_name(k, "grid")
        if name in fixed:
            raise SpecError(f"[grid] {k}: also fixed in [settings]; keep one")
        if source == "mock" and name == "SEED":
            raise SpecError("[grid] SEED: the mock's seeds are [data] seeds")
        grid[name] = _grid_values(k, v)
    if "grid" in doc and not grid:
        raise SpecError("[grid]: empty (give at least one parameter with its values)")

    search: dict[str, SearchSpace] = {}
    trials, search_seed = 0, 0
    if "search" in doc:
        s = doc["search"]
        _unknown("search", s, _SEARCH_KEYS)
        method = s.get("method", "random")
        if method not in SEARCH_METHODS:
            raise SpecError(f"[search] method: must be one of {', '.join(SEARCH_METHODS)} "
                            f"(got {method!r})")
        trials = int(_number(s.get("trials"), "[search] trials", positive=True, integer=True)) \
            if "trials" in s else 0
        if trials < 1:
            raise SpecError("[search] trials: give the trial budget, e.g. trials = 50")
        search_seed = int(_number(s.get("seed", 0), "[search] seed", integer=True))
        space = s.get("space")
        if not isinstance(space, dict) or not space:
            raise SpecError("[search.space]: empty (give each parameter a list or "
                            "{low = A, high = B})")
        for k, v in space.items():
            name = _setting_name(k, "search.space")
            if name in fixed or name in grid:
                raise SpecError(f"[search.space] {k}: also in [settings] or [grid]; keep one")
            if source == "mock" and name == "SEED":
                raise SpecError("[search.space] SEED: the mock's seeds are [data] seeds")
            search[name] = _space(k, v)
    if not grid and not search:
        raise SpecError(f"{origin}: nothing to sweep: give a [grid] or a [search] with "
                        "parameters")

    obj = doc.get("objective", {})
    _unknown("objective", obj, _OBJECTIVE_KEYS)
    metric = obj.get("metric", "total_pnl_usd")
    if metric not in METRICS:
        raise SpecError(f"[objective] metric: unknown KPI {metric!r} (scalar KPIs: "
                        f"{', '.join(METRICS)})")
    direction = obj.get("direction", "max")
    if direction not in DIRECTIONS:
        raise SpecError(f"[objective] direction: must be max or min (got {direction!r})")
    min_rt = int(_number(obj.get("min_round_trips", 10), "[objective] min_round_trips",
                         integer=True))
    if min_rt < 0:
        raise SpecError(f"[objective] min_round_trips: must be >= 0 (got {min_rt})")

    wf = None
    if "walk_forward" in doc:
        w = doc["walk_forward"]
        _unknown("walk_forward", w, _WF_KEYS)
        for k in ("in_sample_s", "out_of_sample_s"):
            if k not in w:
                raise SpecError(f"[walk_forward] {k}: missing")
        embargo = float(_number(w.get("embargo_s", 0.0), "[walk_forward] embargo_s"))
        if embargo < 0:
            raise SpecError(f"[walk_forward] embargo_s: must be >= 0 (got {embargo})")
        anchored = w.get("anchored", False)
        if not isinstance(anchored, bool):
            raise SpecError(f"[walk_forward] anchored: must be true or false (got {anchored!r})")
        wf = WalkForward(float(_number(w["in_sample_s"], "[walk_forward] in_sample_s", True)),
                         float(_number(w["out_of_sample_s"], "[walk_forward] out_of_sample_s",
                                       True)), embargo, anchored)
        if source == "replay" and "SYMBOLS" not in fixed and "SYMBOLS" not in grid \
                and "SYMBOLS" not in search:
            raise SpecError("[walk_forward]: a replay's windows need a fixed universe: set "
                            "SYMBOLS in [settings] or [grid] (TopN over the whole replay would "
                            "choose symbols with out-of-sample data)")

    over = doc.get("overfitting", {})
    _unknown("overfitting", over, _OVERFIT_KEYS)
    blocks = int(_number(over.get("cscv_blocks", 16), "[overfitting] cscv_blocks",
                         positive=True, integer=True))
    if blocks % 2 or not 2 <= blocks <= 24:
        raise SpecError(f"[overfitting] cscv_blocks: must be even, 2..24 (got {blocks})")

    return SweepSpec(source=source, seeds=seeds, duration_s=duration, paths=paths, fixed=fixed,
                     grid=grid, search=search, search_trials=trials, search_seed=search_seed,
                     objective=Objective(metric, direction, min_rt), walk_forward=wf,
                     cscv_blocks=blocks, text=text)


def load_spec(path: str | Path) -> SweepSpec:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"{p}: cannot read the SPEC ({e.__class__.__name__}: "
                        f"{getattr(e, 'strerror', None) or e})") from None
    return parse_spec(text, origin=str(p))
