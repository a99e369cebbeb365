"""Trade cost: what each trade adds to a replay, and the engine against the bare loop on a busy file.

    python bench/trade_cost.py [--rows 1000000] [--symbols 20] [--volatility 5] [--keep]

Generates a many-trade replay file with the mock's busy setting (``--volatility``), then measures
in this one run (the machine is shared and noisy, so every figure is against a baseline taken
minutes apart at most):

  1. bare loop          pyarrow + a plain Python loop making the same kind of decisions
                        (``bench/replay_throughput.py``'s), no fills at all
  2. engine, trading    ``run.py --engine local`` on the file, process wall time
  3. engine, no trading the same command with trading off (an entry margin no deviation reaches:
                        every book still validated, priced and framed, no entry ever considered)
  4. in memory          2 and 3 again on batches already decoded, best of two each

Per-trade cost = (wall with trading - wall without) / trades, end to end and in memory.
Targets (issue 11): per-trade cost <= 100 us; engine end to end >= 1.0x the bare loop.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from bench.replay_throughput import bare_loop, engine_alone, engine_e2e  # noqa: E402
from common.marketdata.mock import MockConfig, MockMarket, mock_universe_topn  # noqa: E402
from common.marketdata.replay import write_replay  # noqa: E402

#: an entry margin no premium deviation reaches: trading off, everything else the same
NO_TRADING = {"ENTRY_MARGIN_BPS": "1000000"}


def make_file(path: Path, rows: int, n_symbols: int, volatility: float) -> float:
    market = MockMarket(MockConfig(seed=11, symbols=mock_universe_topn(n_symbols), levels=10,
                                   volatility=volatility))
    left = rows

    def first_rows():
        nonlocal left
        for b in market.batches(10 * 24 * 3600.0, batch_rows=65536):
            if len(b) >= left:
                yield b.take(np.arange(left))
                left = 0
                return
            left -= len(b)
            yield b

    write_replay(path, first_rows())
    t = pq.read_table(path, columns=["recv_ns"]).column("recv_ns").to_numpy()
    return (t[-1] - t[0]) / 1e9


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--symbols", type=int, default=20)
    ap.add_argument("--volatility", type=float, default=5.0)
    ap.add_argument("--keep", action="store_true", help="keep the generated file")
    a = ap.parse_args()
    from loguru import logger

    logger.remove()
    tmp = Path(tempfile.mkdtemp(prefix="trade-cost-"))
    path = tmp / "busy.parquet"
    t = time.perf_counter()
    span = make_file(path, a.rows, a.symbols, a.volatility)
    print(f"generated {a.rows:,} rows ({span / 3600:.2f} h of {a.symbols} symbols, volatility "
          f"{a.volatility:g}) in {time.perf_counter() - t:.1f} s")

    bare, signals = bare_loop(path)
    on, k_on = engine_e2e(path, tmp, "on")
    off, k_off = engine_e2e(path, tmp, "off", NO_TRADING)
    trades = k_on["trades_executed"]
    assert k_off["trades_executed"] == 0
    mem_on, _, r_on = min((engine_alone(path, tmp) for _ in range(2)), key=lambda x: x[0])
    mem_off, _, _ = min((engine_alone(path, tmp, {"entry_margin_bps": 1e6}) for _ in range(2)),
                        key=lambda x: x[0])
    print()
    print(f"{'figure':<40}{'seconds':>9}{'rows/s':>14}")
    for name, secs in (("1 bare pyarrow + Python loop", bare),
                       ("2 engine end to end, trading", on),
                       ("3 engine end to end, trading off", off),
                       ("4a engine in memory, trading", mem_on),
                       ("4b engine in memory, trading off", mem_off)):
        print(f"{name:<40}{secs:>9.2f}{a.rows / secs:>14,.0f}")
    print()
    print(f"trades {trades:,} ({r_on['round_trips_completed']:,} round trips, "
          f"{r_on['entries_declined_by_cost']:,} entries declined by the cost model); "
          f"bare-loop signal events {signals:,}")
    print(f"per-trade cost, end to end: {(on - off) / trades * 1e6:,.0f} us "
          f"(target <= 100 us)")
    print(f"per-trade cost, in memory:  {(mem_on - mem_off) / trades * 1e6:,.0f} us")
    print(f"engine end to end vs bare loop: {bare / on:.2f}x (target >= 1.0x)")
    if not a.keep:
        path.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
