"""Replay throughput: the local engine against pyarrow's decode floor and a bare Python loop.

    python bench/replay_throughput.py [--rows 1000000] [--symbols 20] [--keep]

Generates a replay file (mock market: 20 symbols, 10 levels per side) and measures, in this run:
  1. decode floor    pyarrow reading and decoding the whole file, nothing else
  2. bare loop       pyarrow + a plain Python loop over the top of book making the same kind of
                     decisions (as-of books, FX, mid premium, EWMA level, entry thresholds)
  3. engine e2e      `python run.py --engine local --data-source replay ...`, process wall time
  4. engine alone    the local engine on batches already in memory (no decode), events/s
Ratios are against figures measured in the same run, because this machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from common.marketdata.mock import MockConfig, MockMarket, mock_universe_topn  # noqa: E402
from common.marketdata.replay import write_replay  # noqa: E402


def make_file(path: Path, rows: int, n_symbols: int) -> None:
    market = MockMarket(MockConfig(seed=11, symbols=mock_universe_topn(n_symbols), levels=10))
    per_hour = n_symbols * (3600 / 0.25 + 3600 / 0.5) + 3600
    seconds = rows / per_hour * 3600 * 1.05

    def first_rows():
        left = rows
        for b in market.batches(seconds, batch_rows=65536):
            if len(b) >= left:
                yield b.take(np.arange(left))
                return
            left -= len(b)
            yield b

    write_replay(path, first_rows())


def decode_floor(path: Path) -> float:
    t = time.perf_counter()
    table = pq.read_table(path)
    for col in table.columns:  # make sure every column is really materialised
        col.combine_chunks()
    return time.perf_counter() - t


def bare_loop(path: Path, halflife_s: float = 600.0, threshold: float = 0.0048) -> tuple[float, int]:
    """What one would write without the engine: pyarrow for the columns, Python for the rows."""
    t0 = time.perf_counter()
    lam = math.log(2) / (halflife_s * 1e9)
    books: dict[tuple[str, str], tuple[float, float]] = {}
    level: dict[str, tuple[float, int]] = {}
    fx = math.nan
    signals = 0
    pf = pq.ParquetFile(path)
    for rb in pf.iter_batches(batch_size=65536):
        recv = rb.column("recv_ns").to_numpy()
        ex = rb.column("exchange").to_pylist()
        sym = rb.column("symbol").to_pylist()
        bid = _best(rb.column("bid_px"))
        ask = _best(rb.column("ask_px"))
        for i in range(len(recv)):
            b, a = bid[i], ask[i]
            if not (b > 0 and a > b):
                continue
            if sym[i] == "USDT":
                fx = (b + a) / 2
                continue
            books[(ex[i], sym[i])] = (b, a)
            u = books.get(("upbit", sym[i]))
            n = books.get(("binance", sym[i]))
            if u is None or n is None or not fx > 0:
                continue
            p_mid = (u[0] + u[1]) / 2 / ((n[0] + n[1]) / 2 * fx) - 1
            lv, lt = level.get(sym[i], (p_mid, recv[i]))
            lv += (1 - math.exp(-lam * (recv[i] - lt))) * (p_mid - lv)
            level[sym[i]] = (lv, recv[i])
            if u[0] / (n[1] * fx) - 1 - lv > threshold or lv - (u[1] / (n[0] * fx) - 1) > threshold:
                signals += 1
    return time.perf_counter() - t0, signals


def _best(col) -> np.ndarray:
    """First element of each list (nan for an empty one)."""
    off = col.offsets.to_numpy()
    vals = col.values.to_numpy(zero_copy_only=False)
    out = np.full(len(col), np.nan)
    ok = off[1:] > off[:-1]
    out[ok] = vals[off[:-1][ok]]
    return out


def engine_e2e(path: Path, tmp: Path, tag: str = "kpi",
               env: dict | None = None) -> tuple[float, dict]:
    """``run.py --engine local`` on the file as a process (extra environment ``env``):
    (wall seconds, KPI report)."""
    import json
    import os

    kpi = tmp / f"{tag}.json"
    t = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "run.py"), "--engine", "local", "--data-source",
                    "replay", "--replay-path", str(path), "--kpi-output-path", str(kpi),
                    "--log-dir", str(tmp / "logs"), "--quiet"], check=True,
                   stdout=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    return time.perf_counter() - t, json.loads(kpi.read_text())


def engine_alone(path: Path, tmp: Path, overrides: dict | None = None) -> tuple[float, int, dict]:
    """The engine on batches already decoded into memory: what bounds it is its own work.
    Returns (seconds, rows, the KPI report)."""
    import dataclasses

    from common.engine.build import open_source
    from common.engine.local import run_local
    from common.settings import Settings

    settings = Settings.from_env(overrides=overrides)
    source = open_source("replay", settings, str(path), None)
    batches = list(source.batches())
    rows = sum(len(b) for b, _ in batches)
    source = dataclasses.replace(source, _batches=iter(batches))
    # a fresh folder each time: a trade log reopened on an old run's rows would reload them
    # (and drop every new row as a duplicate of the old ones)
    out = Path(tempfile.mkdtemp(prefix="alone-", dir=tmp))
    t = time.perf_counter()
    rep = run_local(settings, source, "bench", out, None, settings.topn_size, progress=False)
    return time.perf_counter() - t, rows, rep


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--symbols", type=int, default=20)
    ap.add_argument("--keep", action="store_true", help="keep the generated file")
    a = ap.parse_args()
    from loguru import logger

    logger.remove()
    tmp = Path(tempfile.mkdtemp(prefix="replay-bench-"))
    path = tmp / "books.parquet"
    t = time.perf_counter()
    make_file(path, a.rows, a.symbols)
    rows = pq.ParquetFile(path).metadata.num_rows
    print(f"generated {rows:,} rows, {a.symbols} symbols, 10 levels in "
          f"{time.perf_counter() - t:.1f} s ({path.stat().st_size / 1e6:.0f} MB)")

    floor = min(decode_floor(path) for _ in range(2))
    bare, signals = bare_loop(path)
    e2e, kpi = engine_e2e(path, tmp)
    alone, n, _ = min((engine_alone(path, tmp) for _ in range(2)), key=lambda x: x[0])
    print()
    print(f"{'figure':<34}{'seconds':>9}{'rows/s':>14}{'vs floor':>10}")
    for name, secs in (("1 decode floor (pyarrow)", floor), ("2 bare pyarrow + Python loop", bare),
                       ("3 engine end to end (process)", e2e), ("4 engine alone (in memory)", alone)):
        print(f"{name:<34}{secs:>9.2f}{rows / secs:>14,.0f}{secs / floor:>9.2f}x")
    print()
    print(f"engine e2e vs bare loop: {bare / e2e:.2f}x faster (target >= 1.0x)")
    print(f"engine alone: {n / alone / 1e6:.2f} M snapshots/s (target >= 2 M/s)")
    print(f"bare loop signal events: {signals:,}; engine trades: {kpi['trades_executed']}, "
          f"events rejected {kpi['events_rejected']}, tick-to-fill p50/p99 "
          f"{kpi['tick_to_fill_ms']['p50']}/{kpi['tick_to_fill_ms']['p99']} ms")
    if not a.keep:
        path.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
