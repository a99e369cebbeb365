"""The run report and the comparison of runs as one self-contained HTML file each.

Plotly draws the figures (each a ``<div>``; plotly.js is inlined once, so the file opens with no
network), jinja2 lays out the page with autoescaping. Everything shown is read from the run
folder (``analysis.load_run_folder``), so a report can be built for any past run, for a damaged
folder (it says what is missing and shows the rest) and for a run still in progress.

The same inputs give a byte-identical file: no wall-clock time, no random ids; line series are
decimated to a few thousand points (every extreme kept), every trade keeps its marker.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

import numpy as np

from common.engine.storage import write_atomically
from common.reporting.analysis import (
    WATERFALL_STEPS,
    RunData,
    cost_waterfall,
    decimate,
    equity_from_rows,
    leg_distributions,
    load_run_folder,
    trade_markers,
)
from common.reporting.runs import kpi_at
from common.reporting.stats import statistics

#: a line keeps at most this many points (min and max of each bucket)
MAX_LINE_POINTS = 2000
_NS_PER_MS = 1_000_000
_COLORS = {"entry": "#1f77b4", "exit": "#2ca02c", "hedge": "#d62728", "premium": "#4c5a70",
           "level": "#ff7f0e", "equity": "#1f5fbf", "drawdown": "#b42318"}
_SYMBOLS = {"entry": "triangle-up", "exit": "triangle-down", "hedge": "x"}


# -- formatting --------------------------------------------------------------------------------
def fmt(v, unit: str = "", signed: bool = False) -> str:
    """A figure for a person: thousands separators, 2 decimals (4 below 10), a unit; '-' for
    none."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        text = f"{v:+,}" if signed else f"{v:,}"
    elif isinstance(v, float):
        spec = ("+" if signed else "") + (",.4f" if abs(v) < 10 else ",.2f")
        text = format(v, spec)
    else:
        return str(v) + (f" {unit}" if unit else "")
    return f"{text} {unit}".rstrip() if unit else text


def _raw(v) -> str:
    return json.dumps(v, allow_nan=True) if isinstance(v, (int, float, type(None))) else str(v)


def cell(v, unit: str = "", key: str | None = None, signed: bool = False,
         text_cls: bool = False) -> dict:
    """A table cell; with ``key`` it carries the exact value (``data-key``/``data-value``), so a
    test or a script can read the figures back."""
    cls = "text" if text_cls or isinstance(v, str) else ""
    if signed and isinstance(v, (int, float)) and v:
        cls += " pos" if v > 0 else " neg"
    return {"text": fmt(v, unit, signed), "raw": _raw(v), "key": key, "cls": cls.strip()}


def tile(label: str, kpi: dict, path: str, unit: str = "", signed: bool = False) -> dict:
    """A headline figure: the KPI at ``path`` (dotted), with its exact value carried along."""
    c = cell(kpi_at(kpi, tuple(path.split("."))), unit, key=path, signed=signed)
    return {"label": label, "key": path, "raw": c["raw"], "text": c["text"],
            "cls": c["cls"].replace("text", "").strip()}


# -- figures -----------------------------------------------------------------------------------
_LAYOUT = dict(template="none", paper_bgcolor="white", plot_bgcolor="white",
               font=dict(family="-apple-system, Segoe UI, Roboto, Arial, sans-serif", size=12,
                         color="#1d2330"),
               margin=dict(l=60, r=20, t=36, b=40), hovermode="closest",
               legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))
_AXIS = dict(showgrid=True, gridcolor="#eceef2", zeroline=True, zerolinecolor="#c3c8d2",
             linecolor="#c3c8d2", ticks="outside", tickcolor="#c3c8d2")


def _style(fig, height: int, title: str | None = None):
    fig.update_layout(**_LAYOUT, height=height)
    if title:
        fig.update_layout(title=dict(text=title, x=0, xanchor="left", font=dict(size=13)))
    fig.update_xaxes(**_AXIS)
    fig.update_yaxes(**_AXIS)
    return fig


def fig_div(fig, div_id: str) -> str:
    """One figure as a ``<div>`` and its script (plotly.js not included), with a fixed id."""
    import plotly.io as pio

    return pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=div_id,
                       config={"displaylogo": False, "responsive": True})


def _ms(t_ns: np.ndarray) -> np.ndarray:
    """Event times as epoch milliseconds (what a plotly date axis reads)."""
    return np.asarray(t_ns, dtype=np.int64) // _NS_PER_MS


@lru_cache(maxsize=1)
def plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


@lru_cache(maxsize=1)
def _template():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(Path(__file__).with_name("templates"))),
        autoescape=jinja2.select_autoescape(["html", "j2"], default=True),
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.get_template("report.html.j2")


def render_page(title: str, heading: str, subtitle: str, status: str, sections: list[dict],
                notices: list[str], footer: str) -> str:
    """The page: a header, a notice per problem, then the sections. A section is a dict with
    ``id``, ``title`` and optionally ``intro``, ``tiles``, ``figures`` (``fig_div`` strings),
    ``tables`` (``columns``, ``rows`` of ``cell``s, ``caption``) and ``placeholder``."""
    from common.engine.report import code_version

    full = [{"intro": "", "tiles": [], "figures": [], "tables": [], "placeholder": "", "nav": "",
             **s}
            for s in sections]
    for s in full:
        s["tables"] = [{"caption": "", "id": "", **t} for t in s["tables"]]
    return _template().render(title=title, heading=heading, subtitle=subtitle, status=status,
                              sections=full, notices=notices, footer=footer,
                              version=code_version()["package"], plotlyjs=plotly_js())


# -- the run report ----------------------------------------------------------------------------
#: headline tiles: (label, KPI JSON path, unit, signed)
HEADLINE = (
    ("total PnL", "total_pnl_usd", "USD", True),
    ("realised PnL", "realized_pnl_usd", "USD", True),
    ("round trips", "round_trips_completed", "", False),
    ("win rate", "win_rate_pct", "%", False),
    ("fees", "fees_usd", "USD", False),
    ("max drawdown", "max_drawdown_usd", "USD", False),
    ("Sharpe, round trips", "statistics.sharpe_round_trips", "", False),
    ("Sharpe, minutes (ann.)", "statistics.sharpe_minute_annualised", "", False),
    ("profit factor", "statistics.profit_factor", "", False),
    ("trades", "trades_executed", "", False),
)

#: statistics rows: (label, key in ``statistics``, unit)
STATISTICS = (
    ("round trips", "round_trips", ""),
    ("Sharpe, round-trip returns", "sharpe_round_trips", ""),
    ("Sortino, round-trip returns", "sortino_round_trips", ""),
    ("Sharpe, per-minute equity (annualised, 365 days)", "sharpe_minute_annualised", ""),
    ("Sortino, per-minute equity (annualised, 365 days)", "sortino_minute_annualised", ""),
    ("max drawdown", "max_drawdown_usd", "USD"),
    ("longest time under a peak", "max_drawdown_duration_s", "s"),
    ("profit factor", "profit_factor", ""),
    ("expectancy per round trip", "expectancy_usd", "USD"),
    ("average holding time", "avg_holding_s", "s"),
    ("longest holding time", "longest_holding_s", "s"),
    ("fees paid", "fees_usd", "USD"),
    ("turnover", "turnover_usd", "USD"),
    ("best round trip", "best_round_trip_usd", "USD"),
    ("worst round trip", "worst_round_trip_usd", "USD"),
    ("trades per hour", "trades_per_hour", ""),
)

#: per-symbol table: (column, key in ``per_symbol[sym]``, unit, signed)
PER_SYMBOL = (
    ("trades", "trades_executed", "", False),
    ("round trips", "round_trips_completed", "", False),
    ("win rate %", "win_rate_pct", "", False),
    ("total PnL", "total_pnl_usd", "", True),
    ("realised PnL", "realized_pnl_usd", "", True),
    ("fees", "fees_usd", "", False),
    ("max DD", "max_drawdown_usd", "", False),
    ("buy slip bps", "avg_buy_slippage_bps", "", False),
    ("sell slip bps", "avg_sell_slippage_bps", "", False),
    ("latency bps", "avg_latency_cost_bps", "", False),
    ("buy fill", "avg_buy_fill_ratio", "", False),
    ("sell fill", "avg_sell_fill_ratio", "", False),
    ("hedges", "hedges_count", "", False),
    ("FX transl.", "fx_translation_usd", "", True),
    ("inventory MTM", "inventory_mtm_usd", "", True),
)


def kpi_from_rows(rd: RunData, equity: dict[str, np.ndarray]) -> dict:
    """The figures a run folder without ``kpi.json`` (a run in progress, or one that died) can
    still give, from its trade log alone: counts, realised PnL, fees, and the statistics."""
    rows = rd.rows
    closed = [r for r in rows if r.get("round_trip_closed")]
    pnls = [float(r.get("round_trip_pnl_usd") or 0.0) for r in closed]
    times = [int(r["fill_ts_ns"]) for r in rows if r.get("fill_ts_ns") is not None]
    first = min((int(r["decision_ts_ns"]) for r in rows if r.get("decision_ts_ns")), default=-1)
    last = max(times, default=-1)
    s = rd.settings
    account = float(s.get("initial_usdt", 0.0) or 0.0)  # KRW has no FX without the books
    stats = statistics(rows, equity["t_ns"], equity["equity_usd"], first, last, account)
    by_kind: dict[str, int] = {}
    for r in rows:
        by_kind[r.get("leg_kind") or "?"] = by_kind.get(r.get("leg_kind") or "?", 0) + 1
    return {
        "run_id": rd.run_id, "trades_executed": len(rows), "round_trips_completed": len(closed),
        "win_rate_pct": 100.0 * sum(p > 0 for p in pnls) / len(pnls) if pnls else 0.0,
        "realized_pnl_usd": float(sum(pnls)), "total_pnl_usd": None,
        "fees_usd": float(sum(r.get("fees_usd") or 0.0 for r in rows)),
        "max_drawdown_usd": stats["max_drawdown_usd"], "statistics": stats,
        "trades_by_leg_kind": dict(sorted(by_kind.items())),
        "event_time_span_ns": [first, last],
    }


def _equity_section(rd: RunData, equity: dict[str, np.ndarray], from_rows: bool) -> dict:
    sec = {"id": "equity", "nav": "equity",
           "title": "Equity and drawdown",
           "intro": "The run's PnL in USD over event time (every fill's cash flow at its own FX "
                    "plus open positions at executable prices, fees included), and its distance "
                    "below the running peak." + (" Without equity.parquet: realised PnL at each "
                                                 "round trip's close." if from_rows else "")}
    if equity["t_ns"].size == 0:
        sec["placeholder"] = ("No equity samples: the run traded nothing (or ended before its "
                              "first mark).")
        return sec
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.68, 0.32],
                        vertical_spacing=0.05)
    t, y = decimate(equity["t_ns"], equity["equity_usd"], MAX_LINE_POINTS)
    fig.add_trace(go.Scatter(x=_ms(t), y=y, name="equity (USD)", mode="lines",
                             line=dict(color=_COLORS["equity"], width=1.6)), row=1, col=1)
    t, dd = decimate(equity["t_ns"], -equity["drawdown_usd"], MAX_LINE_POINTS)
    fig.add_trace(go.Scatter(x=_ms(t), y=dd, name="drawdown (USD)", mode="lines", fill="tozeroy",
                             line=dict(color=_COLORS["drawdown"], width=1)), row=2, col=1)
    _style(fig, 460)
    fig.update_xaxes(type="date")
    fig.update_yaxes(title_text="USD", row=1, col=1)
    fig.update_yaxes(title_text="drawdown", row=2, col=1)
    sec["figures"] = [fig_div(fig, "fig-equity")]
    return sec


def _waterfall_section(rows: list[dict]) -> dict:
    w = cost_waterfall(rows)
    sec = {"id": "waterfall", "nav": "cost waterfall",
           "title": "Cost waterfall: from signal edge to realised PnL",
           "intro": "Realised PnL of the closed round trips taken apart exactly. Signal edge: "
                    "the premium the decisions saw, on the quantity both legs filled, at the "
                    "decision's best prices. Fees, slippage (fill beyond the best price at "
                    "arrival) and latency cost (how far the best price moved between decision "
                    "and arrival) of every leg, hedges included. Hedges & legging: what the "
                    "unmatched part of a leg and its hedges cost at their decision prices. "
                    "Sub-lot residue: the change in value of a position below one lot."}
    if not w["round_trips"]:
        sec["placeholder"] = "No closed round trip: nothing to take apart yet."
        return sec

    labels = [lbl for _, lbl in WATERFALL_STEPS] + ["realised PnL"]
    values = [w[k] for k, _ in WATERFALL_STEPS] + [w["realised_pnl_usd"]]
    fig = _waterfall(labels, values, ["relative"] * len(WATERFALL_STEPS) + ["total"], 380)
    rows_t = [[cell(lbl), cell(w[k], "USD", key=f"waterfall.{k}", signed=True)]
              for k, lbl in WATERFALL_STEPS]
    rows_t.append([cell("= realised PnL"), cell(w["realised_pnl_usd"], "USD",
                                                key="waterfall.realised_pnl_usd", signed=True)])
    rows_t.append([cell("round trips / rows of open round trips left out"),
                   cell(f"{w['round_trips']:,} / {w['open_rows']:,}")])
    sec["figures"] = [fig_div(fig, "fig-waterfall")]
    sec["tables"] = [{"columns": ["step", "USD"], "rows": rows_t}]
    return sec


def _waterfall(labels: list[str], values: list[float], measures: list[str], height: int):
    """A waterfall of USD steps: gains green, costs red, totals blue, each labelled."""
    import plotly.graph_objects as go

    fig = go.Figure(go.Waterfall(
        x=labels, y=values, measure=measures, text=[fmt(v) for v in values],
        textposition="outside", increasing=dict(marker=dict(color="#2ca02c")),
        decreasing=dict(marker=dict(color="#d62728")),
        totals=dict(marker=dict(color=_COLORS["equity"])),
        connector=dict(line=dict(color="#c3c8d2"))))
    _style(fig, height)
    fig.update_yaxes(title_text="USD")
    fig.update_layout(showlegend=False)
    return fig


def _decomposition_section(kpi: dict) -> dict:
    sec = {"id": "decomposition", "nav": "PnL decomposition",
           "title": "PnL decomposition and the account",
           "intro": "The account's value from start to end (every balance at mids, KRW at the "
                    "KRW-USDT mid) is exactly trading PnL + FX translation (KRW held and moved, "
                    "revalued to the latest FX) + inventory revaluation (pre-funded coins and "
                    "open positions at mids). Only trading PnL is the strategy's."}
    keys = ("account_value_start_usd", "total_pnl_usd", "fx_translation_usd",
            "inventory_mtm_usd", "account_value_end_usd")
    if any(kpi.get(k) is None for k in keys):
        sec["placeholder"] = "Needs kpi.json (the run has not finished writing it)."
        return sec
    labels = ["account at start", "trading PnL", "FX translation", "inventory revaluation",
              "account at end"]
    start, end = kpi["account_value_start_usd"], kpi["account_value_end_usd"]
    fig = _waterfall(labels, [kpi[k] for k in keys],
                     ["absolute", "relative", "relative", "relative", "total"], 340)
    # the account is large against its changes: show the changes, not the axis from 0
    pad = 3 * max(abs(kpi[k]) for k in keys[1:4]) or 1.0
    fig.update_yaxes(range=[min(start, end) - pad, max(start, end) + pad])
    rows_t = [[cell(lbl), cell(kpi[k], "USD", key=k, signed=k not in (keys[0], keys[-1]))]
              for lbl, k in zip(labels, keys, strict=True)]
    rows_t.insert(2, [cell("  of which realised / unrealised"),
                      cell(f"{fmt(kpi.get('realized_pnl_usd'))} / "
                           f"{fmt(kpi.get('unrealized_pnl_usd'))} USD")])
    sec["figures"] = [fig_div(fig, "fig-decomposition")]
    sec["tables"] = [{"columns": ["", "USD"], "rows": rows_t}]
    return sec


def _premium_section(rd: RunData) -> dict:
    sec = {"id": "premium", "nav": "premium & trades",
           "title": "Premium, level and trades per symbol",
           "intro": "Upbit's mid over Binance's mid in USD (bps), the EWMA level entries deviate "
                    "from, and every trade: entries and exits at the premium their decision "
                    "prices gave, hedges on the mid premium. Choose the symbol at the plot's top "
                    "left (the symbols with the most trades first)."}
    markers = trade_markers(rd.rows, rd.premium)
    prem = rd.premium
    names = sorted(set(np.unique(prem["symbol"]).tolist() if prem is not None else [])
                   | set(markers))
    if not names:
        sec["placeholder"] = ("No premium series (premium.parquet) and no trades."
                              if prem is None else "No symbol had a premium yet.")
        return sec
    import plotly.graph_objects as go

    # the symbol with the most trades first
    names.sort(key=lambda n: (-sum(len(m["t_ns"]) for m in markers.get(n, {}).values()), n))
    fig = go.Figure()
    owner: list[str] = []
    for k, name in enumerate(names):
        visible = k == 0
        if prem is not None:
            sel = prem["symbol"] == name
            t = prem["t_ns"][sel]
            for col, label in (("premium_bps", "premium"), ("level_bps", "level")):
                tt, yy = decimate(t, prem[col][sel], MAX_LINE_POINTS)
                fig.add_trace(go.Scatter(
                    x=_ms(tt), y=yy.astype(np.float32), mode="lines", name=f"{label}",
                    visible=visible, line=dict(color=_COLORS[label],
                                               width=1.0 if label == "premium" else 1.8)))
                owner.append(name)
        for kind in ("entry", "exit", "hedge"):
            m = markers.get(name, {}).get(kind)
            if not m:
                continue
            fig.add_trace(go.Scatter(
                x=_ms(np.asarray(m["t_ns"])), y=np.asarray(m["bps"], dtype=np.float32),
                mode="markers", name=f"{kind} ({len(m['t_ns']):,})", visible=visible,
                text=m["text"], hovertemplate="%{text}<br>%{y:.1f} bps<extra></extra>",
                marker=dict(symbol=_SYMBOLS[kind], size=8 if kind != "hedge" else 7,
                            color=_COLORS[kind], line=dict(width=0.5, color="white"))))
            owner.append(name)
    buttons = [dict(label=name, method="restyle", args=[{"visible": [o == name for o in owner]}])
               for name in names]
    _style(fig, 460)
    fig.update_layout(margin=dict(l=60, r=20, t=60, b=40),
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0.14),
                      updatemenus=[dict(buttons=buttons, direction="down", x=0, xanchor="left",
                                        y=1.13, yanchor="top", showactive=True,
                                        bgcolor="white", bordercolor="#c3c8d2")])
    fig.update_xaxes(type="date")
    fig.update_yaxes(title_text="bps")
    sec["figures"] = [fig_div(fig, "fig-premium")]
    return sec


_METRICS = (("slippage_bps", "Slippage (bps, beyond the best price at arrival)"),
            ("latency_cost_bps", "Latency cost (bps, best price moved decision to arrival)"),
            ("fill_ratio", "Fill ratio (filled / ordered)"))


def _execution_section(rows: list[dict]) -> dict:
    sec = {"id": "execution", "nav": "execution",
           "title": "Execution quality per venue and leg",
           "intro": "Distributions over the legs sent, per venue and leg kind: boxes from the "
                    "25th to the 75th percentile with the median, whiskers at the 5th and 95th, "
                    "the mean dashed. Slippage and latency cost count filled legs only."}
    dist = leg_distributions(rows)
    if not any(dist[m] for m, _ in _METRICS):
        sec["placeholder"] = "No legs sent: no execution to show."
        return sec
    import plotly.graph_objects as go

    figs, tables = [], []
    for metric, title in _METRICS:
        d = {k: v for k, v in dist[metric].items() if v["n"]}
        if not d:
            continue
        cats = list(d)
        fig = go.Figure(go.Box(
            x=cats, q1=[d[c]["p25"] for c in cats], median=[d[c]["p50"] for c in cats],
            q3=[d[c]["p75"] for c in cats], lowerfence=[d[c]["p5"] for c in cats],
            upperfence=[d[c]["p95"] for c in cats], mean=[d[c]["mean"] for c in cats],
            boxmean=True, marker_color="#1f5fbf", name=metric, showlegend=False))
        _style(fig, 300, title)
        if metric == "fill_ratio":
            fig.update_yaxes(range=[0, 1.05])
        figs.append(fig_div(fig, f"fig-{metric.replace('_', '-')}"))
        tables.append({"caption": title, "columns": ["venue leg", "n", "mean", "p50", "p90",
                                                     "p99", "max"],
                       "rows": [[cell(c), cell(d[c]["n"]), cell(d[c]["mean"]), cell(d[c]["p50"]),
                                 cell(d[c]["p90"]), cell(d[c]["p99"]), cell(d[c]["max"])]
                                for c in cats]})
    sec["figures"] = figs
    sec["tables"] = tables
    return sec


def _edge_section(kpi: dict) -> dict:
    sec = {"id": "edge", "nav": "predicted vs realised",
           "title": "Predicted vs realised edge by entry bucket",
           "intro": "Round trips grouped by how far the entry's premium deviated from its level "
                    "(bps): the net edge the entry rule predicted against what the round trip "
                    "realised, both in bps of one leg's notional."}
    buckets = kpi.get("edge_by_entry_bucket") or {}
    if not buckets:
        sec["placeholder"] = "No entry of this run recorded a prediction (or kpi.json is missing)."
        return sec
    import plotly.graph_objects as go

    labels = sorted(buckets, key=lambda b: float(b.split("-")[0].rstrip("+")))
    fig = go.Figure()
    for key, name, color in (("predicted_net_bps", "predicted", "#9aa5b8"),
                             ("realised_net_bps", "realised", "#1f5fbf")):
        fig.add_trace(go.Bar(x=labels, y=[buckets[b][key] for b in labels], name=name,
                             marker_color=color,
                             text=[f"{buckets[b]['round_trips']} RT" for b in labels]))
    _style(fig, 320)
    fig.update_layout(barmode="group")
    fig.update_xaxes(title_text="entry deviation from level (bps)", type="category")
    fig.update_yaxes(title_text="net bps")
    sec["figures"] = [fig_div(fig, "fig-edge")]
    sec["tables"] = [{"columns": ["bucket", "round trips", "predicted bps", "realised bps"],
                      "rows": [[cell(b), cell(buckets[b]["round_trips"],
                                               key=f"edge_by_entry_bucket.{b}.round_trips"),
                                cell(buckets[b]["predicted_net_bps"], signed=True),
                                cell(buckets[b]["realised_net_bps"], signed=True)]
                               for b in labels]}]
    return sec


def _balances_section(rd: RunData) -> dict:
    sec = {"id": "balances", "nav": "balances & exposure",
           "title": "Balances and unhedged exposure",
           "intro": "Each venue's balances in USD at every mark (KRW at the KRW-USDT mid, coins "
                    "at their venue's mid), and the strategy's exposure: unhedged is the two "
                    "venues' coin positions netted (what a price move costs), gross the larger "
                    "leg."}
    m = rd.marks
    if m is None or m["t_ns"].size == 0:
        sec["placeholder"] = "No marks (marks.parquet): the run ended before its first mark."
        return sec
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.6, 0.4],
                        vertical_spacing=0.06)
    x = _ms(m["t_ns"])
    for col, label, color in (("upbit_krw_usd", "Upbit KRW", "#0b5cad"),
                              ("upbit_coins_usd", "Upbit coins", "#79a6dc"),
                              ("binance_usdt_usd", "Binance USDT", "#b8860b"),
                              ("binance_coins_usd", "Binance coins", "#f0c36d")):
        fig.add_trace(go.Scatter(x=x, y=m[col], name=label, mode="lines", stackgroup="bal",
                                 line=dict(width=0.6, color=color)), row=1, col=1)
    fig.add_trace(go.Scatter(x=x, y=m["gross_exposure_usd"], name="gross exposure",
                             mode="lines", line=dict(color="#6b7280", width=1.2)), row=2, col=1)
    fig.add_trace(go.Scatter(x=x, y=m["unhedged_usd"], name="unhedged", mode="lines",
                             line=dict(color=_COLORS["hedge"], width=1.6)), row=2, col=1)
    _style(fig, 460)
    fig.update_xaxes(type="date")
    fig.update_yaxes(title_text="USD", row=1, col=1)
    fig.update_yaxes(title_text="exposure USD", row=2, col=1)
    sec["figures"] = [fig_div(fig, "fig-balances")]
    return sec


def _counts_table(caption: str, counts: dict, key: str) -> dict:
    rows = [[cell(k), cell(v, key=f"{key}.{k}")] for k, v in sorted(counts.items())]
    return {"caption": caption, "columns": ["reason", "count"],
            "rows": rows or [[cell("none"), cell(0)]]}


def _risk_section(kpi: dict) -> dict:
    sec = {"id": "risk", "nav": "refusals & rejects",
           "title": "Risk refusals and rejected events",
           "intro": "Entries the risk limits refused, entries the cost model declined, sizes "
                    "clipped, and the market events rejected before any decision (by reason)."}
    if not kpi or "refusals" not in kpi:
        sec["placeholder"] = "Needs kpi.json (the run has not finished writing it)."
        return sec
    sec["tiles"] = [
        tile("events processed", kpi, "events_processed"),
        tile("events rejected", kpi, "events_rejected"),
        tile("entries declined by cost", kpi, "entries_declined_by_cost"),
        {**tile("partial / failed fills", kpi, "failed_fills_count"),
         "text": f"{fmt(kpi.get('partial_fills_count'))} / {fmt(kpi.get('failed_fills_count'))}"},
    ]
    sec["tables"] = [
        _counts_table("risk refusals", kpi.get("refusals") or {}, "refusals"),
        _counts_table("size clips", kpi.get("clips") or {}, "clips"),
        _counts_table("rejected events", kpi.get("events_rejected_by_reason") or {},
                      "events_rejected_by_reason"),
        _counts_table("signals skipped", kpi.get("signals_skipped_by_reason") or {},
                      "signals_skipped_by_reason"),
    ]
    return sec


def _symbols_section(kpi: dict) -> dict:
    sec = {"id": "symbols", "nav": "per symbol",
           "title": "Per symbol"}
    per = kpi.get("per_symbol") or {}
    if not per:
        sec["placeholder"] = "No per-symbol figures (kpi.json missing, or nothing traded)."
        return sec
    names = sorted(per, key=lambda n: (-(per[n].get("total_pnl_usd") or 0.0), n))
    rows = [[cell(n)] + [cell(per[n].get(k), key=f"per_symbol.{n}.{k}", signed=sg)
                         for _, k, _, sg in PER_SYMBOL] for n in names]
    sec["intro"] = "USD unless marked; sorted by total PnL."
    sec["tables"] = [{"id": "per-symbol", "columns": ["symbol"] + [c for c, *_ in PER_SYMBOL],
                      "rows": rows}]
    return sec


def _statistics_section(kpi: dict) -> dict:
    st = kpi.get("statistics") or {}
    sec = {"id": "statistics", "nav": "statistics",
           "title": "Statistics",
           "intro": "From the trade log and the equity curve alone (any past run gives the same). "
                    "Round-trip returns are PnL over the entry's notional; per-minute returns are "
                    "equity changes over the account's start value, annualised with 365 days "
                    "(crypto trades every day)."}
    if not st:
        sec["placeholder"] = "No statistics."
        return sec
    t2f = kpi.get("tick_to_fill_ms") or {}
    rows = [[cell(lbl), cell(st.get(k), unit, key=f"statistics.{k}")]
            for lbl, k, unit in STATISTICS]
    rows += [[cell("tick-to-fill p50 / p99 (wall)"),
              cell(f"{fmt(t2f.get('p50'))} / {fmt(t2f.get('p99'))} ms")]] if t2f else []
    sec["tables"] = [{"columns": ["statistic", "value"], "rows": rows}]
    return sec


def _config_section(rd: RunData) -> dict:
    sec = {"id": "config", "nav": "configuration",
           "title": "Configuration and data",
           "intro": "The effective settings of the run (settings.json) by their environment "
                    "variable names, and where its data came from (run.json)."}
    info = rd.info
    src = info.get("data_source") or {}
    cv = info.get("code_version") or {}
    meta = [("run id", rd.run_id), ("status", rd.status), ("engine", info.get("engine")),
            ("started (UTC)", info.get("started_utc")), ("wall seconds", info.get("wall_seconds")),
            ("code", f"{cv.get('package', '?')} {(cv.get('git_commit') or '')[:12]}"
                     f"{' (modified)' if cv.get('git_dirty') else ''}".strip())]
    meta += [(f"data: {k}", v if not isinstance(v, (list, dict)) else json.dumps(v))
             for k, v in sorted(src.items())]
    tables = [{"caption": "run", "columns": ["field", "value"],
               "rows": [[cell(k), cell(v, text_cls=True)] for k, v in meta]}]
    if rd.settings:
        tables.append({"caption": "settings", "columns": ["variable", "value"], "rows": [
            [cell(k.upper()), cell(v if not isinstance(v, (list, dict)) else json.dumps(v),
                                   text_cls=True)]
            for k, v in sorted(rd.settings.items())]})
    else:
        sec["placeholder"] = "No settings.json."
    sec["tables"] = tables
    return sec


def _subtitle(rd: RunData, kpi: dict) -> str:
    info = rd.info
    src = (info.get("data_source") or {}).get("description") or kpi.get("data_source") or "?"
    span = info.get("event_time_span_ns") or kpi.get("event_time_span_ns") or [-1, -1]
    parts = [f"engine {info.get('engine') or kpi.get('engine') or '?'}", str(src)]
    if span and span[0] > 0 and span[1] > span[0]:
        from common.reporting.trade_log import iso_ns

        parts.append(f"event time {iso_ns(span[0])[:19]}Z to {iso_ns(span[1])[:19]}Z "
                     f"({(span[1] - span[0]) / 1e9:,.0f} s)")
    return " · ".join(parts)


def build_run_report(run_dir: str | Path, out: str | Path | None = None) -> tuple[Path, list[str]]:
    """Write ``<run_dir>/report.html`` (or ``out``); returns its path and the notices (what the
    folder lacked). Raises ``RunFolderMissing`` only for a path that is no run folder."""
    rd = load_run_folder(run_dir)
    equity = rd.equity
    from_rows = equity is None
    if from_rows:
        equity = equity_from_rows(rd.rows)
    kpi = rd.kpi or kpi_from_rows(rd, equity)
    notices = list(rd.notices)
    if rd.status == "running":
        notices.insert(0, "This run is still in progress (or stopped without finishing): the "
                          "report shows what its folder holds now; build it again for more.")
    tiles = [tile(label, kpi, path, unit, signed) for label, path, unit, signed in HEADLINE]
    sections = [
        {"id": "headline", "title": "Summary", "tiles": tiles},
        _equity_section(rd, equity, from_rows),
        _waterfall_section(rd.rows),
        _decomposition_section(kpi),
        _premium_section(rd),
        _execution_section(rd.rows),
        _edge_section(kpi),
        _balances_section(rd),
        _risk_section(kpi),
        _symbols_section(kpi),
        _statistics_section(kpi),
        _config_section(rd),
    ]
    html = render_page(
        title=f"{rd.run_id} · kimchi-paper run report", heading=f"Run {rd.run_id}",
        subtitle=_subtitle(rd, kpi), status=rd.status, sections=sections, notices=notices,
        footer="kimchi-paper run report · figures from the run folder's files · times are event "
               "times (UTC) · annualised with 365 days")
    path = Path(out) if out else rd.dir / "report.html"
    return write_atomically(path, html), notices


# -- comparing runs ----------------------------------------------------------------------------
def build_compare_report(run_dirs: list[str | Path], out: str | Path) -> tuple[Path, list[str]]:
    """One HTML page comparing runs: their equity curves overlaid (event time since each run's
    start, so runs over different periods line up) and their KPIs side by side with the
    differences to the first run."""
    from common.reporting.runs import COMPARED

    runs = [load_run_folder(d) for d in run_dirs]
    notices = [f"{rd.run_id}: {n}" for rd in runs for n in rd.notices]
    import plotly.graph_objects as go

    fig = go.Figure()
    for k, rd in enumerate(runs):
        eq = rd.equity if rd.equity is not None else equity_from_rows(rd.rows)
        if eq["t_ns"].size == 0:
            continue
        span = (rd.info.get("event_time_span_ns") or rd.kpi.get("event_time_span_ns")
                or [int(eq["t_ns"][0])])
        t0 = span[0] if span and span[0] > 0 else int(eq["t_ns"][0])
        t, y = decimate(eq["t_ns"], eq["equity_usd"], MAX_LINE_POINTS)
        fig.add_trace(go.Scatter(x=(t - t0) / 60e9, y=y, mode="lines",
                                 name=f"{chr(65 + k) if k < 26 else k}: {rd.run_id}"))
    _style(fig, 420)
    fig.update_xaxes(title_text="minutes since the run's first event")
    fig.update_yaxes(title_text="equity (USD)")
    header = ["figure"] + [f"{chr(65 + k) if k < 26 else k}" for k in range(len(runs))]
    rows = []
    for label, path, unit in COMPARED:
        vals = [kpi_at(rd.kpi, path) for rd in runs]
        row = [cell(f"{label}{f' ({unit})' if unit else ''}")]
        base = vals[0]
        for k, v in enumerate(vals):
            c = cell(v, key=f"{k}.{'.'.join(path)}")
            if k and isinstance(v, (int, float)) and isinstance(base, (int, float)) \
                    and not isinstance(v, bool):
                c["text"] += f"  ({fmt(v - base, signed=True)})"
            row.append(c)
        rows.append(row)
    legend = [[cell(f"{chr(65 + k) if k < 26 else k}"), cell(rd.run_id),
               cell((rd.info.get("data_source") or {}).get("description") or "?"),
               cell(str(rd.dir))] for k, rd in enumerate(runs)]
    sections = [
        {"id": "equity", "title": "Equity curves",
         "intro": "Each run's equity over event time since its own first event.",
         "figures": [fig_div(fig, "fig-compare-equity")]},
        {"id": "kpis", "title": "KPIs side by side",
         "intro": "Differences in brackets are to run A.",
         "tables": [{"id": "compare", "columns": header, "rows": rows}]},
        {"id": "runs", "title": "Runs", "tables": [{"columns": ["", "run id", "data", "folder"],
                                                    "rows": legend}]},
    ]
    html = render_page(title="kimchi-paper run comparison",
                       heading=f"{len(runs)} runs compared",
                       subtitle=" vs ".join(rd.run_id for rd in runs), status="compare",
                       sections=sections, notices=notices,
                       footer="kimchi-paper comparison · figures from each run folder's files")
    return write_atomically(Path(out), html), notices


__all__ = ["MAX_LINE_POINTS", "build_compare_report", "build_run_report", "cell", "fig_div",
           "fmt", "kpi_from_rows", "plotly_js", "render_page", "tile"]
