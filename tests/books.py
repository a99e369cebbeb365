"""Test helpers: build small order-book batches by hand and run the engine on them."""

from __future__ import annotations

import pyarrow as pa

from common.marketdata.arrow import REPLAY_SCHEMA, batch_from_arrow
from common.marketdata.batch import BookBatch, SymbolTable

S = 1_000_000_000  # one second in ns
T0 = 1_767_225_600 * S  # 2026-01-01T00:00:00Z


def book(t_s: float, exchange: str, symbol: str, bids, asks, quote: str | None = None,
         recv_s: float | None = None) -> dict:
    """One replay-schema row; bids/asks are [(price, size), ...] best first."""
    if quote is None:
        quote = "KRW" if exchange == "upbit" else "USDT"
    recv = T0 + int(round((t_s if recv_s is None else recv_s) * S))
    return {
        "ts_ns": T0 + int(round(t_s * S)), "recv_ns": recv, "exchange": exchange,
        "symbol": symbol, "quote": quote,
        "bid_px": [float(p) for p, _ in bids], "bid_sz": [float(q) for _, q in bids],
        "ask_px": [float(p) for p, _ in asks], "ask_sz": [float(q) for _, q in asks],
    }


def fx(t_s: float, mid: float = 1400.0, half_spread: float = 0.5, size: float = 1e7) -> dict:
    return book(t_s, "upbit", "USDT", [(mid - half_spread, size)], [(mid + half_spread, size)])


def table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(sorted(rows, key=lambda r: r["recv_ns"]), schema=REPLAY_SCHEMA)


def to_batch(rows: list[dict], symtab: SymbolTable | None = None) -> BookBatch:
    symtab = symtab or SymbolTable(("USDT",))
    batch, _ = batch_from_arrow(table(rows), symtab)
    return batch


def run_rows(rows: list[dict], symbols: list[str], batch_rows: int = 1000, tmp_path=None,
             universe: list[tuple[float, list[str]]] | None = None, **overrides):
    """Run the local engine over hand-built rows; returns (report, trade rows)."""
    import tempfile

    from common.engine.build import MarketSource
    from common.engine.local import run_local
    from common.reporting.trade_log import read_trade_log
    from common.settings import Settings

    base = {"warmup_s": 0.0, "ewma_halflife_s": 1e6, "latency_jitter_ms": 0.0}
    base.update(overrides)
    settings = Settings.from_env(overrides=base)
    symtab = SymbolTable(("USDT",))
    tbl = table(rows)

    def gen():
        for rb in tbl.to_batches(max_chunksize=batch_rows):
            yield batch_from_arrow(rb, symtab)

    source = MarketSource("replay", list(symbols), symtab, gen(), "test rows", None)
    log_dir = tmp_path or tempfile.mkdtemp(prefix="books-")
    pending = [(T0 + round(t * S), members) for t, members in (universe or [])]

    def poll():  # every change is known up front, as in the replay of a recording
        out = list(pending)
        pending.clear()
        return out

    report = run_local(settings, source, "test-run", log_dir, None, settings.topn_size,
                       progress=False, universe_events=poll if universe else None)
    return report, read_trade_log(report["trade_log_path"])


def premium_rows(symbol: str, premiums: list[tuple[float, float]], b_mid: float = 100.0,
                 fx_mid: float = 1400.0, b_half_spread: float = 0.01,
                 u_half_spread_bps: float = 1.0, size: float = 1000.0, levels: int = 5,
                 u_sizes: list[float] | None = None, b_sizes: list[float] | None = None,
                 fx_every_s: float = 1.0, end_s: float | None = None) -> list[dict]:
    """Books whose mid premium follows ``premiums`` [(from_t_s, premium)], one update per
    second per venue, plus an FX book. Level i has size ``size`` unless sizes are given."""
    rows = []
    end = end_s if end_s is not None else premiums[-1][0] + 60
    t = 0.0
    k = 0
    while t <= end:
        while k + 1 < len(premiums) and premiums[k + 1][0] <= t:
            k += 1
        p = premiums[k][1]
        u_mid = b_mid * fx_mid * (1 + p)
        du = u_mid * u_half_spread_bps / 1e4
        us = u_sizes or [size] * levels
        bs = b_sizes or [size] * levels
        rows.append(book(t + 0.1, "binance", symbol,
                         [(b_mid - b_half_spread - i * 0.01, bs[i]) for i in range(len(bs))],
                         [(b_mid + b_half_spread + i * 0.01, bs[i]) for i in range(len(bs))]))
        rows.append(book(t + 0.2, "upbit", symbol,
                         [(u_mid - du - i * 1.0, us[i]) for i in range(len(us))],
                         [(u_mid + du + i * 1.0, us[i]) for i in range(len(us))]))
        t += 1.0
    f = 0.0
    while f <= end:
        rows.append(fx(f, fx_mid))
        f += fx_every_s
    return rows
