"""The sweep's ``report.html``: the run report's page and figure helpers
(``common.reporting.html``: plotly.js inlined once, figures as divs with fixed ids, an
autoescaping jinja2 page), with the sweep's own figures and tables."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go

from common.reporting.html import cell, fig_div, render_page, tile
from common.research.plan import SweepPlan
from common.research.results import SweepAnalysis, ranking


def _div(fig: go.Figure, div_id: str) -> str:
    fig.update_layout(template="none", paper_bgcolor="white", plot_bgcolor="white", height=440,
                      margin={"l": 60, "r": 20, "t": 36, "b": 50},
                      title={"x": 0, "xanchor": "left", "font": {"size": 13}})
    fig.update_xaxes(showgrid=True, gridcolor="#eceef2")
    fig.update_yaxes(showgrid=True, gridcolor="#eceef2")
    return fig_div(fig, div_id)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "-"
        return f"{v:,.4f}" if abs(v) < 10 else f"{v:,.2f}"
    return str(v)


def heatmap_figure(plan: SweepPlan, an: SweepAnalysis) -> tuple[str, str] | None:
    """The objective over the two parameters with the most values; where more parameters are
    swept, each cell shows the best over the others."""
    params = [p for p in plan.parameters if len({str(c[p]) for c in plan.configs}) > 1]
    if len(params) < 2:
        return None
    params.sort(key=lambda p: -len({str(c[p]) for c in plan.configs}))
    px, py = params[0], params[1]
    scored = [c for c in an.configs if c.score is not None]
    if not scored:
        return None
    xs = sorted({c.params[px] for c in scored}, key=lambda v: (str(type(v)), v))
    ys = sorted({c.params[py] for c in scored}, key=lambda v: (str(type(v)), v))
    z = np.full((len(ys), len(xs)), np.nan)
    for c in scored:
        i, j = ys.index(c.params[py]), xs.index(c.params[px])
        cur = z[i, j]
        if np.isnan(cur) or (c.score > cur if an.direction == "max" else c.score < cur):
            z[i, j] = c.score
    if len(xs) * len(ys) > 4 * len(scored):  # a random search: points, not a sparse grid
        fig = go.Figure(go.Scatter(
            x=[c.params[px] for c in scored], y=[c.params[py] for c in scored], mode="markers",
            marker={"color": [c.score for c in scored], "colorscale": "RdYlGn", "size": 11,
                    "showscale": True, "colorbar": {"title": an.metric}},
            text=[f"#{c.config_id}" for c in scored]))
    else:
        fig = go.Figure(go.Heatmap(x=[str(v) for v in xs], y=[str(v) for v in ys], z=z,
                                   colorscale="RdYlGn", colorbar={"title": an.metric},
                                   hovertemplate=f"{px}=%{{x}}<br>{py}=%{{y}}<br>"
                                                 f"{an.metric}=%{{z:.4g}}<extra></extra>"))
    fig.update_layout(xaxis_title=px, yaxis_title=py, title=f"{an.metric} over {px} x {py}")
    fig.update_xaxes(type="category")
    fig.update_yaxes(type="category")
    rest = params[2:]
    note = (f"{an.metric} averaged over the "
            + ("in-sample windows" if an.folds else "data units")
            + (f"; each cell the best over {', '.join(rest)}" if rest else "") + ".")
    return _div(fig, "sweep-heatmap"), note


def scatter_figure(an: SweepAnalysis) -> tuple[str, str] | None:
    if an.scatter:
        x = [s[0] for s in an.scatter]
        y = [s[1] for s in an.scatter]
        fig = go.Figure(go.Scatter(x=x, y=y, mode="markers", marker={"size": 8, "opacity": 0.7},
                                   text=[f"#{s[2]}" for s in an.scatter]))
        fig.update_layout(xaxis_title=f"in-sample {an.metric}",
                          yaxis_title=f"out-of-sample {an.metric}",
                          title="Every configuration, every walk-forward fold")
        return _div(fig, "sweep-is-oos"), ("Each point: one configuration on one fold, its "
                                            "in-sample against its out-of-sample objective. A "
                                            "cloud with no upward slope: the in-sample ranking "
                                            "does not carry over.")
    if an.pbo is not None:
        fig = go.Figure(go.Scatter(x=an.pbo.is_best_sharpe.tolist(),
                                   y=an.pbo.oos_sharpe.tolist(), mode="markers",
                                   marker={"size": 5, "opacity": 0.5}))
        fig.update_layout(xaxis_title="in-sample Sharpe (per minute) of the in-sample best",
                          yaxis_title="its out-of-sample Sharpe",
                          title="CSCV splits: in- vs out-of-sample")
        return _div(fig, "sweep-is-oos"), ("Each point: one CSCV split of the time grid; the "
                                            "configuration best in sample, its Sharpe ratio in "
                                            "and out of sample.")
    return None


def equity_figure(an: SweepAnalysis, equities: dict[str, dict]) -> tuple[str, str] | None:
    fig = go.Figure()
    for label, eq in equities.items():
        if eq and eq.get("t_ns"):
            t = np.asarray(eq["t_ns"], dtype=np.int64)
            fig.add_trace(go.Scatter(x=((t - t[0]) / 3.6e12).tolist(), y=eq["equity_usd"],
                                     mode="lines", name=f"best, {label}"))
    for label, curve in an.oos_equity.items():
        if curve:
            fig.add_trace(go.Scatter(x=(np.arange(1, len(curve) + 1) / 60.0).tolist(), y=curve,
                                     mode="lines", name=f"walk-forward OOS, {label}"))
    if not fig.data:
        return None
    fig.update_layout(xaxis_title="event hours", yaxis_title="PnL USD",
                      title="Equity: the best configuration, and the walk-forward's "
                            "out-of-sample path")
    return _div(fig, "sweep-equity"), ("The best configuration's equity curve per data unit "
                                        "(total PnL, fees included); with walk-forward, the "
                                        "chosen configurations' PnL over the out-of-sample "
                                        "windows, joined.")


def logit_figure(an: SweepAnalysis) -> tuple[str, str] | None:
    if an.pbo is None:
        return None
    fig = go.Figure(go.Histogram(x=an.pbo.logits.tolist(), nbinsx=40))
    fig.add_vline(x=0.0, line_dash="dash")
    fig.update_layout(xaxis_title="logit of the in-sample best's out-of-sample rank",
                      yaxis_title="splits", title=f"PBO = {an.pbo.pbo:.3f}")
    return _div(fig, "sweep-pbo"), ("Mass left of 0: splits where the in-sample winner ranked "
                                     "in the bottom half out of sample.")


def _tile(label: str, v: Any, key: str) -> dict:
    return tile(label, {key: v}, key)


def render_report(plan: SweepPlan, an: SweepAnalysis, records: dict[str, dict],
                  equities: dict[str, dict], title: str = "Sweep report") -> str:
    best = an.best
    ok = sum(1 for r in records.values() if r.get("status") == "ok")
    tiles = [_tile("configurations", an.n_trials, "configurations"),
             _tile("trials planned", an.n_runs, "trials"), _tile("trials finished", ok, "ok"),
             _tile("failed", an.n_failed, "failed"),
             _tile(f"best {an.metric}", best.score if best else None, "best"),
             _tile("deflated Sharpe of the best", an.dsr.probability if an.dsr else None, "dsr"),
             _tile("PBO (CSCV)", an.pbo.pbo if an.pbo else None, "pbo")]
    if an.wf_efficiency is not None:
        tiles.append(_tile("walk-forward efficiency", an.wf_efficiency, "wf_efficiency"))
    overfit = (f"Overfitting statistics on {an.grid_periods} minutes ({an.grid_basis}). "
               "Deflated Sharpe ratio: the probability that the best configuration's true "
               "Sharpe ratio is above zero once the number of configurations tried, and the "
               "skew and fat tails of its PnL, are accounted for. PBO: how often the "
               "configuration best in one half of the time blocks ranks in the bottom half of "
               "all configurations in the other half.") + (f" {an.pbo_note}." if an.pbo_note
                                                            else "")
    sections: list[dict] = [{"id": "summary", "title": "Summary", "intro": overfit,
                             "tiles": tiles}]
    titles = {"sweep-heatmap": "Objective over two parameters",
              "sweep-is-oos": "In sample vs out of sample", "sweep-equity": "Equity",
              "sweep-pbo": "Probability of backtest overfitting"}
    for div_id, made in (("sweep-heatmap", heatmap_figure(plan, an)),
                         ("sweep-is-oos", scatter_figure(an)),
                         ("sweep-equity", equity_figure(an, equities)),
                         ("sweep-pbo", logit_figure(an))):
        sec = {"id": div_id.removeprefix("sweep-"), "title": titles[div_id]}
        if made is None:
            sec["placeholder"] = {"sweep-heatmap": "Needs two swept parameters with scores.",
                                  "sweep-is-oos": "Needs walk-forward windows or a PBO.",
                                  "sweep-equity": "No eligible best configuration.",
                                  "sweep-pbo": an.pbo_note or "Not computed."}[div_id]
        else:
            sec["figures"], sec["intro"] = [made[0]], made[1]
        sections.append(sec)
    cols = ["config", *plan.parameters, an.metric, "fewest round trips", "eligible"]
    rows = [[cell(f"#{c.config_id}"), *[cell(c.params.get(p)) for p in plan.parameters],
             cell(c.score, key=f"config.{c.config_id}.objective"), cell(c.round_trips),
             cell(c.eligible)] for c in ranking(an)[:25]]
    sections.append({"id": "ranking", "title": "Ranking",
                     "intro": f"Configurations by {an.metric} ({an.direction}), averaged over "
                              f"the data units; eligible ones (at least {an.min_round_trips} "
                              "round trips in every trial) first.",
                     "tables": [{"columns": cols, "rows": rows}]})
    if an.folds:
        fc = ["data", "fold", "in sample (s)", "out of sample (s)", "chosen",
              f"IS {an.metric}", f"OOS {an.metric}", "IS PnL/h", "OOS PnL/h"]
        fr = [[cell(f.unit), cell(f.fold), cell(f"{f.in_sample[0]:g}-{f.in_sample[1]:g}"),
               cell(f"{f.out_of_sample[0]:g}-{f.out_of_sample[1]:g}"),
               cell(" ".join(f"{k}={v}" for k, v in f.params.items()) or "none eligible"),
               cell(f.is_objective), cell(f.oos_objective), cell(f.is_pnl_per_hour),
               cell(f.oos_pnl_per_hour)] for f in an.folds]
        sections.append({"id": "walk-forward", "title": "Walk-forward",
                         "intro": "Per fold, the configuration best in sample (among eligible "
                                  "ones) and how it did out of sample. Efficiency: mean "
                                  "out-of-sample PnL per hour over mean in-sample PnL per hour "
                                  f"= {_fmt(an.wf_efficiency)}.",
                         "tables": [{"columns": fc, "rows": fr}]})
    failed = [(r.get("label", k), r.get("error")) for k, r in records.items()
              if r.get("status") != "ok"]
    if failed:
        sections.append({"id": "failed", "title": "Failed trials",
                         "intro": "Recorded with their error; a resumed sweep runs them again.",
                         "tables": [{"columns": ["trial", "error"],
                                     "rows": [[cell(lab), cell(err)] for lab, err in failed]}]})
    sections.append({"id": "spec", "title": "SPEC", "intro": "The sweep's SPEC as given.",
                     "tables": [{"columns": ["line"],
                                 "rows": [[cell(line, text_cls=True)]
                                          for line in plan.spec.text.strip().splitlines()]}]})
    return render_page(title=f"{title} · kimchi-paper", heading=title,
                       subtitle=f"objective {an.metric} ({an.direction}); "
                                f"{len(plan.units)} data units: "
                                f"{', '.join(u.label for u in plan.units)}",
                       status="interrupted" if len(records) < len(plan.trials) else "finished",
                       sections=sections, notices=[], footer="kimchi-paper sweep report · "
                       "figures from the sweep folder's trials · event times")


def write_report(out_dir: str | Path, plan: SweepPlan, an: SweepAnalysis,
                 records: dict[str, dict], equities: dict[str, dict]) -> Path:
    path = Path(out_dir) / "report.html"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render_report(plan, an, records, equities), encoding="utf-8")
    os.replace(tmp, path)
    return path
