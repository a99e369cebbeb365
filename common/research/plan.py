"""From a SPEC to the list of trials: parameter configurations (grid or random search), data
units, walk-forward windows, each trial's Settings and its key (what resume goes by)."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.marketdata.replay import DataSourceError
from common.research.data import DataUnit, Window, fingerprint, is_uri, replay_span_s
from common.research.spec import SearchSpace, SpecError, SweepSpec
from common.settings import Settings, SettingsError


@dataclass(frozen=True)
class Trial:
    """One run of the local engine: a configuration on a data unit's window."""

    key: str
    config_id: int
    params: dict[str, Any]  # NAME -> value, the swept parameters only
    unit: DataUnit
    window: Window
    settings: Settings

    @property
    def label(self) -> str:
        ps = " ".join(f"{k}={v}" for k, v in self.params.items())
        w = "" if self.window.role == "full" else \
            f" {self.window.role} {self.window.fold} [{self.window.start_s:g},{self.window.end_s:g})s"
        return f"trial {self.key[:8]} {self.unit.label}{w} {ps}"


@dataclass(frozen=True)
class SweepPlan:
    spec: SweepSpec
    parameters: list[str]
    configs: list[dict[str, Any]]
    units: list[DataUnit]
    windows: dict[int, list[Window]]  # per unit index
    trials: list[Trial]


def grid_configs(grid: dict[str, tuple]) -> list[dict[str, Any]]:
    """The cartesian product of the grid, in the SPEC's order (the last parameter fastest)."""
    names = list(grid)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*grid.values())]


def _draw(rng: np.random.Generator, sp: SearchSpace) -> Any:
    if sp.choices is not None:
        return sp.choices[int(rng.integers(len(sp.choices)))]
    if sp.log:
        v = math.exp(rng.uniform(math.log(sp.low), math.log(sp.high)))
    else:
        v = rng.uniform(sp.low, sp.high)
    if sp.integer:
        return int(min(max(round(v), math.ceil(sp.low)), math.floor(sp.high)))
    return float(f"{v:.6g}")  # six significant digits: readable, and the same on every machine


def random_configs(space: dict[str, SearchSpace], trials: int, seed: int) -> list[dict[str, Any]]:
    """``trials`` draws from the space (seeded), duplicates dropped (a small discrete space may
    give fewer)."""
    rng = np.random.default_rng(seed)
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for _ in range(trials * 20):
        if len(out) == trials:
            break
        cfg = {name: _draw(rng, sp) for name, sp in space.items()}
        k = json.dumps(cfg, sort_keys=True)
        if k not in seen:
            seen.add(k)
            out.append(cfg)
    return out


def expand_configs(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every configuration: the grid; or the random search's draws; or, with both, every grid
    point with every draw."""
    grid = grid_configs(spec.grid) if spec.grid else [{}]
    if not spec.search:
        return grid
    draws = random_configs(spec.search, spec.search_trials, spec.search_seed)
    return [{**g, **d} for g in grid for d in draws]


def walk_forward_windows(span_s: float, in_s: float, out_s: float, embargo_s: float = 0.0,
                         anchored: bool = False) -> list[Window]:
    """Fold k: in sample ``[start_k, t_k)`` with ``t_k = in_s + k * out_s`` and ``start_k`` 0
    (anchored) or ``k * out_s`` (rolling); out of sample ``[t_k + embargo, t_k + embargo +
    out_s)``. Folds go on while the out-of-sample window fits in the span."""
    out: list[Window] = []
    k = 0
    while True:
        t = in_s + k * out_s
        lo = t + embargo_s
        hi = lo + out_s
        if hi > span_s + 1e-9:
            break
        start = 0.0 if anchored else k * out_s
        out += [Window("in_sample", k, start, t), Window("out_of_sample", k, lo, hi)]
        k += 1
    return out


def trial_key(settings: Settings, unit: DataUnit, window: Window) -> str:
    """The hash of everything that decides a trial's result: its effective settings, its data
    and its window."""
    doc = {"settings": settings.effective(), "data": unit.identity(),
           "window": [window.role, window.fold, window.start_s, window.end_s]}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _units(spec: SweepSpec) -> list[DataUnit]:
    if spec.source == "mock":
        return [DataUnit("mock", seed=s, duration_s=spec.duration_s, span_s=spec.duration_s or 0)
                for s in spec.seeds]
    units = []
    for p in spec.paths:
        if not is_uri(p):  # workers do not share the driver's working directory
            p = str(Path(p.removeprefix("file://")).expanduser().resolve())
        try:
            fp = fingerprint(p)
            span = replay_span_s(p)
        except DataSourceError as e:
            raise SpecError(f"[data] paths: {e}") from None
        if spec.duration_s is not None:
            span = min(span, spec.duration_s)
        units.append(DataUnit("replay", path=p, duration_s=spec.duration_s, fingerprint=fp,
                              span_s=span))
    return units


def build_plan(spec: SweepSpec, env_file: str | None = None) -> SweepPlan:
    """Every trial of the SPEC with its Settings (defaults < env file < environment < [settings]
    < the trial's parameters < the mock's seed). Raises SpecError (one line) for a value a
    setting refuses, unreadable data, or windows that do not fit the data."""
    configs = expand_configs(spec)
    if not configs:
        raise SpecError("nothing to run: the parameters expand to no configuration")
    units = _units(spec)
    windows: dict[int, list[Window]] = {}
    for i, u in enumerate(units):
        if spec.walk_forward is None:
            windows[i] = [Window("full", -1, 0.0, u.span_s)]
            continue
        wf = spec.walk_forward
        ws = walk_forward_windows(u.span_s, wf.in_sample_s, wf.out_of_sample_s, wf.embargo_s,
                                  wf.anchored)
        if not ws:
            raise SpecError(f"[walk_forward]: {u.label} spans {u.span_s:g} s, too short for "
                            f"in_sample_s + embargo_s + out_of_sample_s = "
                            f"{wf.in_sample_s + wf.embargo_s + wf.out_of_sample_s:g} s")
        windows[i] = ws
    trials: list[Trial] = []
    for ci, cfg in enumerate(configs):
        overrides: dict[str, Any] = {k.lower(): v for k, v in spec.fixed.items()}
        overrides.update({k.lower(): v for k, v in cfg.items()})
        for ui, u in enumerate(units):
            if u.kind == "mock":
                overrides["seed"] = u.seed
            try:
                s = Settings.from_env(overrides=overrides, env_file=env_file)
            except SettingsError as e:
                where = " ".join(f"{k}={v}" for k, v in cfg.items())
                raise SpecError(f"{e} (configuration {where})") from None
            for w in windows[ui]:
                trials.append(Trial(trial_key(s, u, w), ci, dict(cfg), u, w, s))
    return SweepPlan(spec, spec.parameters, configs, units, windows, trials)
