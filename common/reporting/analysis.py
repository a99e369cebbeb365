"""What a run report shows, computed from a run folder's files alone (no plotting, no HTML).

``load_run_folder`` reads whatever a run folder holds, tolerating what a crash, a copy or a run
still in progress leaves (missing files, a torn last trade-log line) and saying what it could
not use. The rest are pure functions of the trade rows and series:

* ``cost_waterfall``: realised PnL taken apart, exactly, into the signal's edge at decision
  prices, fees, slippage, latency cost and hedges;
* ``leg_distributions``: slippage, latency cost and fill ratio per venue and leg kind;
* ``trade_markers``: every entry, exit and hedge at the premium it traded at;
* ``decimate``: a long line cut to a few thousand points keeping every extreme.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from common.reporting.runs import read_json
from common.reporting.series import MARK_COLUMNS
from common.reporting.trade_log import FIELD_NAMES, read_trade_log_tolerant

_QUOTES = ("KRW", "USDT")
LEG_KINDS = ("entry", "exit", "hedge")


@dataclass
class RunData:
    """A run folder's contents; ``notices`` says what was missing or damaged."""

    dir: Path
    kpi: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)
    equity: dict[str, np.ndarray] | None = None
    premium: dict[str, np.ndarray] | None = None
    marks: dict[str, np.ndarray] | None = None
    notices: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        """finished, interrupted, running (a run in progress or one that died), or unknown."""
        if self.info.get("status"):
            return str(self.info["status"])
        if self.kpi:
            return "interrupted" if self.kpi.get("interrupted") else "finished"
        return "unknown"

    @property
    def run_id(self) -> str:
        return str(self.kpi.get("run_id") or self.info.get("run_id") or self.dir.name)


class RunFolderMissing(ValueError):
    """Not a run folder at all (one line for the user)."""


def _json(path: Path, what: str, notices: list[str]) -> dict:
    obj, problem = read_json(path)
    if problem:
        notices.append(f"{problem}: {what}")
        return {}
    if not isinstance(obj, dict):
        notices.append(f"{path.name} is not a JSON object: {what}")
        return {}
    return obj


def _columns(path: Path, names: tuple[str, ...], what: str,
             notices: list[str]) -> dict[str, np.ndarray] | None:
    if not path.exists():
        notices.append(f"no {path.name}: {what}")
        return None
    try:
        table = pq.read_table(path, columns=list(names))
    except (OSError, ValueError, KeyError) as e:
        notices.append(f"{path.name} unreadable ({type(e).__name__}): {what}")
        return None
    return {n: table.column(n).to_numpy(zero_copy_only=False) for n in names}


def read_rows_tolerant(trades_dir: Path, notices: list[str]) -> list[dict]:
    """The trade rows: from the JSONL log (written as the run goes, so it is there while a run
    is in progress), skipping unreadable lines (a torn last line of a crash) and counting them;
    from the Parquet log when the JSONL is missing."""
    jsonl = sorted(trades_dir.glob("*_trade_log.jsonl")) if trades_dir.is_dir() else []
    if jsonl:
        rows, bad = read_trade_log_tolerant(jsonl[0])
        if bad:
            notices.append(f"{jsonl[0].name}: {bad} unreadable line(s) skipped (a torn or "
                           f"truncated trade log); {len(rows)} rows used")
        return rows
    parquet = sorted(trades_dir.glob("*_trade_log.parquet")) if trades_dir.is_dir() else []
    if parquet:
        try:
            rows = pq.read_table(parquet[0]).to_pylist()
        except (OSError, ValueError) as e:
            notices.append(f"{parquet[0].name} unreadable ({type(e).__name__}): no trades shown")
            return []
        notices.append(f"no JSONL trade log: rows read from {parquet[0].name}")
        return rows
    notices.append("no trade log in trades/: no trades shown")
    return []


def load_run_folder(run_dir: str | Path) -> RunData:
    """Everything a report needs from a run folder; never raises for a damaged folder (the
    damage is in ``notices``), only for a path that is no run folder at all."""
    d = Path(run_dir)
    if not d.is_dir():
        raise RunFolderMissing(f"{d}: not a run folder (no such directory)")
    if not any((d / n).exists() for n in ("kpi.json", "run.json", "trades")):
        raise RunFolderMissing(f"{d}: not a run folder (no kpi.json, run.json or trades/)")
    rd = RunData(dir=d)
    n = rd.notices
    rd.info = _json(d / "run.json", "engine, data source and status unknown", n)
    running = rd.info.get("status") == "running"
    rd.kpi = _json(d / "kpi.json", "the run is still in progress (or ended without finishing); "
                   "figures recomputed from the trade log" if running else
                   "figures recomputed from the trade log", n)
    rd.settings = _json(d / "settings.json", "configuration not shown", n)
    rd.rows = read_rows_tolerant(d / "trades", n)
    rd.equity = _columns(d / "equity.parquet", ("t_ns", "equity_usd", "drawdown_usd"),
                         "equity drawn from closed round trips only", n)
    rd.premium = _columns(d / "premium.parquet", ("t_ns", "symbol", "premium_bps", "level_bps"),
                          "no premium plots", n)
    rd.marks = _columns(d / "marks.parquet", ("t_ns", *MARK_COLUMNS),
                        "no balance and exposure plots", n)
    unknown = {k for r in rd.rows[:1] for k in r} - set(FIELD_NAMES)
    if unknown:
        n.append(f"trade log has columns this version does not know: {sorted(unknown)}")
    return rd


# -- equity ----------------------------------------------------------------------------------
def equity_from_rows(rows: list[dict]) -> dict[str, np.ndarray]:
    """Cumulative realised PnL at each round trip's close: the equity a folder without
    ``equity.parquet`` can still show (open positions unmarked)."""
    closed = [(int(r["fill_ts_ns"]), float(r["round_trip_pnl_usd"])) for r in rows
              if r.get("round_trip_closed") and r.get("round_trip_pnl_usd") is not None]
    closed.sort()
    t = np.array([c[0] for c in closed], dtype=np.int64)
    eq = np.cumsum([c[1] for c in closed]) if closed else np.zeros(0)
    peak = np.maximum.accumulate(np.concatenate(([0.0], eq)))[1:] if closed else np.zeros(0)
    return {"t_ns": t, "equity_usd": eq, "drawdown_usd": peak - eq}


# -- legs --------------------------------------------------------------------------------------
def _legs(row: dict):
    """(side name, +1 buy / -1 sell, exchange) of each leg a row has."""
    for side, sign in (("buy", 1), ("sell", -1)):
        ex = row.get(f"{side}_exchange")
        if ex:
            yield side, sign, ex


def _f(x, default: float = 0.0) -> float:
    return default if x is None else float(x)


def leg_fee_usd(row: dict, side: str) -> float:
    """One leg's fee in USD (a coin fee valued at the leg's own fill price), as the engine does."""
    fee = _f(row.get(f"{side}_fee"))
    u = _f(row.get(f"{side}_usd_per_quote"), 1.0)
    if row.get(f"{side}_fee_asset") in _QUOTES:
        return fee * u
    return fee * _f(row.get(f"{side}_vwap")) * u


#: the waterfall's steps, in order, with their labels (``cost_waterfall`` keys)
WATERFALL_STEPS = (("signal_edge_usd", "signal edge"), ("fees_usd", "fees"),
                   ("slippage_usd", "slippage"), ("latency_cost_usd", "latency cost"),
                   ("hedges_usd", "hedges & legging"), ("residue_usd", "sub-lot residue"))


def cost_waterfall(rows: list[dict]) -> dict:
    """Realised PnL of the closed round trips taken apart, exactly (up to float rounding):

        signal edge + fees + slippage + latency cost + hedges & legging + residue = realised

    Every leg with net coin change ``n`` (its fill less a coin fee) at its quote's USD rate
    ``u`` has the cash flow ``-n * VWAP * u - fee``, which telescopes into

    * at the decision's best price, ``-n * P_decision * u``: for an entry or exit, the part the
      two legs matched (``m = min(bought, sold)``) is the **signal edge**, the premium the
      decision saw on what both legs filled; the unmatched rest, and every hedge leg at its own
      decision price, is **hedges & legging**, what the imbalance cost until hedged;
    * **latency cost**: how far the best price moved by the order's arrival,
      ``-n * (P_arrival - P_decision) * u``;
    * **slippage**: what the fill paid beyond the arrival's best price, ``-n * (VWAP -
      P_arrival) * u``;
    * **fees**: the fee in USD (a coin fee at the fill's price).

    Latency, slippage and fees include the hedge legs'. A round trip's PnL is its cash flows
    plus the change in the value of a position smaller than one lot (which cannot trade) between
    its open and its close: that is the **sub-lot residue**. Costs come out negative. Rows of
    round trips still open are left out (``open_rows`` counts them)."""
    closed = {r.get("round_trip_id") for r in rows if r.get("round_trip_closed")}
    closed.discard(None)
    closed.discard("")
    out = dict.fromkeys((k for k, _ in WATERFALL_STEPS), 0.0)
    realised = cash = 0.0
    open_rows = 0
    for r in rows:
        if r.get("round_trip_id") not in closed:
            open_rows += 1
            continue
        if r.get("round_trip_closed") and r.get("round_trip_pnl_usd") is not None:
            realised += float(r["round_trip_pnl_usd"])
        cash += _f(r.get("cash_flow_usd"))
        hedge = r.get("leg_kind") == "hedge"
        legs = [(side, sign, _f(r.get(f"coin_delta_{ex}"))) for side, sign, ex in _legs(r)]
        bought = sum(n for _, sign, n in legs if sign > 0)
        sold = -sum(n for _, sign, n in legs if sign < 0)
        matched = 0.0 if hedge or len(legs) < 2 else max(0.0, min(bought, sold))
        for side, sign, n in legs:
            u = _f(r.get(f"{side}_usd_per_quote"), 1.0)
            p_d = _f(r.get(f"{side}_price"))
            p_a = p_d + sign * _f(r.get(f"{side}_latency_cost_bps")) * p_d / 1e4
            vwap = _f(r.get(f"{side}_vwap"))
            m = sign * matched
            out["signal_edge_usd"] += -m * p_d * u
            out["hedges_usd"] += -(n - m) * p_d * u
            out["latency_cost_usd"] += -n * (p_a - p_d) * u
            out["slippage_usd"] += -n * (vwap - p_a) * u
            out["fees_usd"] += -leg_fee_usd(r, side)
    out["residue_usd"] = realised - cash
    out["realised_pnl_usd"] = realised
    out["sum_of_steps_usd"] = sum(out[k] for k, _ in WATERFALL_STEPS)
    out["round_trips"] = len(closed)
    out["open_rows"] = open_rows
    return out


def _stats(x: np.ndarray) -> dict:
    if x.size == 0:
        return {"n": 0}
    q = np.percentile(x, [5, 25, 50, 75, 90, 95, 99])
    return {"n": int(x.size), "mean": float(x.mean()), "p5": float(q[0]), "p25": float(q[1]),
            "p50": float(q[2]), "p75": float(q[3]), "p90": float(q[4]), "p95": float(q[5]),
            "p99": float(q[6]), "min": float(x.min()), "max": float(x.max())}


def leg_distributions(rows: list[dict]) -> dict[str, dict[str, dict]]:
    """Per metric (``slippage_bps``, ``latency_cost_bps``, ``fill_ratio``) and per
    ``"<venue> <leg kind>"`` (e.g. ``upbit entry``): count, mean and percentiles over the legs
    sent. Slippage and latency cost count filled legs only (a leg that met no book has neither);
    fill ratio counts every leg sent."""
    acc: dict[str, dict[str, list]] = {"slippage_bps": {}, "latency_cost_bps": {},
                                       "fill_ratio": {}}
    for r in rows:
        kind = r.get("leg_kind") or "?"
        for side, _, ex in _legs(r):
            key = f"{ex} {kind}"
            ratio = r.get(f"{side}_fill_ratio")
            if ratio is not None:
                acc["fill_ratio"].setdefault(key, []).append(float(ratio))
            if _f(r.get(f"{side}_filled_qty")) > 0:
                for m in ("slippage_bps", "latency_cost_bps"):
                    v = r.get(f"{side}_{m}")
                    if v is not None and math.isfinite(v):
                        acc[m].setdefault(key, []).append(float(v))
    order = {k: i for i, k in enumerate(LEG_KINDS)}

    def sort_key(k: str):
        venue, kind = k.split(" ", 1)
        return (order.get(kind, 9), venue)

    return {m: {k: _stats(np.asarray(v[k], dtype=float)) for k in sorted(v, key=sort_key)}
            for m, v in acc.items()}


def trade_markers(rows: list[dict], premium: dict[str, np.ndarray] | None) -> dict[str, dict]:
    """Every trade as a marker on its symbol's premium plot: ``{symbol: {kind: {t_ns, bps,
    text}}}``. An entry or exit sits at the premium its decision prices gave (Upbit's price
    over Binance's, both in USD); a hedge (one leg) at the symbol's mid premium as of its
    decision (the last grid sample), or 0 without a premium series."""
    grid: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if premium is not None and premium["t_ns"].size:
        sym = premium["symbol"]
        for name in np.unique(sym):
            sel = sym == name
            grid[str(name)] = (premium["t_ns"][sel], premium["premium_bps"][sel])
    out: dict[str, dict] = {}
    for r in rows:
        kind = r.get("leg_kind") or "?"
        name = r.get("symbol") or "?"
        t = int(r.get("decision_ts_ns") or 0)
        px = {}
        for side, _, ex in _legs(r):
            p, u = r.get(f"{side}_price"), r.get(f"{side}_usd_per_quote")
            if p is not None and u is not None and p > 0 and u > 0:
                px[ex] = p * u
        if "upbit" in px and "binance" in px:
            bps = (px["upbit"] / px["binance"] - 1.0) * 1e4
        elif name in grid and grid[name][0].size:
            ts, ps = grid[name]
            k = int(np.searchsorted(ts, t, side="right")) - 1
            bps = float(ps[max(k, 0)])
        else:
            bps = 0.0
        m = out.setdefault(name, {}).setdefault(kind, {"t_ns": [], "bps": [], "text": []})
        m["t_ns"].append(t)
        m["bps"].append(bps)
        m["text"].append(f"{r.get('trade_id')} {r.get('trade_result')} "
                         f"{r.get('reason') or ''}".strip())
    return out


# -- lines -------------------------------------------------------------------------------------
def decimate(t: np.ndarray, y: np.ndarray, max_points: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """At most ~``max_points`` points of a line, keeping its shape: the series is cut into
    ``max_points // 2`` buckets of equal count and each keeps its minimum and maximum (in time
    order), plus the first and last points. Shorter series come back unchanged."""
    n = t.size
    if n <= max_points:
        return t, y
    buckets = max(1, max_points // 2)
    edges = np.linspace(0, n, buckets + 1).astype(np.int64)
    keep = [0, n - 1]
    yy = np.where(np.isfinite(y), y, np.nan)
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        if b <= a:
            continue
        seg = yy[a:b]
        if np.isnan(seg).all():
            keep.append(int(a))
            continue
        keep.append(int(a + np.nanargmin(seg)))
        keep.append(int(a + np.nanargmax(seg)))
    idx = np.unique(np.asarray(keep, dtype=np.int64))
    return t[idx], y[idx]


__all__ = ["LEG_KINDS", "WATERFALL_STEPS", "RunData", "RunFolderMissing", "cost_waterfall",
           "decimate",
           "equity_from_rows", "leg_distributions", "leg_fee_usd", "load_run_folder",
           "read_rows_tolerant", "trade_markers"]
