"""Live latency: receive -> decision and receive -> fill of the local engine on live WebSocket data.

The loopback fake exchanges (tests/fakes, started as their own process so they do not share this
process's GIL) stream 20 symbols x 2 venues plus the FX book at a realistic rate (every book 10
times a second, like Binance's @100ms diff stream) and at 10x that. The trader's real live
source (WebSocket clients, parsers, TopN, staleness gate, batching) feeds the local engine's
components, run exactly as ``run_local`` runs them, with two probes on the execution port:

* receive -> decision: wall clock (``time.time_ns``) when a trade is dispatched minus the
  ``recv_ns`` of the book that triggered it (the engine clock is ``recv_ns``, the socket's
  receive time);
* tick -> fill: wall clock when a trade's fill is computed minus the ``recv_ns`` of the book tick
  that let it settle (the first book received at or after its settlement time);
* feed: wall clock when a book reaches the engine minus its ``recv_ns`` (parse, gate, batching).

Leg latencies are the default simulated ones (Upbit 30 ms, Binance 120 ms, 10 ms jitter): they
set when a fill becomes due, not the wall-clock processing measured. Prints a table and the
10x / 1x ratio.

    python bench/live_latency.py [--seconds 40] [--symbols 20] [--rates 10,100]
                                 [--feeds thread,process] [--engines local,ray]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loguru import logger  # noqa: E402

from common.engine.build import (  # noqa: E402
    book_checks,
    coordinator_config,
    validate_batch,
)
from common.engine.coordinator import CoordinatorCore  # noqa: E402
from common.engine.local import LocalExecution  # noqa: E402
from common.marketdata.live import LiveConfig, LiveSource  # noqa: E402
from common.marketdata.live_process import LiveFeedProcess  # noqa: E402
from common.reporting.kpi import KpiAccumulator  # noqa: E402
from common.settings import Settings  # noqa: E402


class ProbedExecution(LocalExecution):
    """LocalExecution that timestamps dispatches and fills (wall clock, ns)."""

    def __init__(self, settings, symbols) -> None:
        super().__init__(settings, symbols)
        self.current = None
        self.decide_ns: list[int] = []
        self.fill_ns: list[int] = []
        self.measuring = True

    def submit(self, symbol, trades) -> None:
        now = time.time_ns()
        if self.measuring:
            self.decide_ns.extend(now - t.decision_ts_ns for t in trades)
        super().submit(symbol, trades)

    def collect(self, symbols, up_to_ns):
        out = super().collect(symbols, up_to_ns)
        now = time.time_ns()
        b = self.current
        if self.measuring and b is not None and len(b):
            i = int(np.searchsorted(b.recv_ns, up_to_ns, side="left"))
            if i < len(b):
                n = sum(len(v) for v in out.values())
                self.fill_ns.extend([now - int(b.recv_ns[i])] * n)
        return out


def start_fakes(symbols: int, rate_hz: float) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.fakes.exchanges", "--symbols",
                             str(symbols), "--rate-hz", str(rate_hz)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    env = json.loads(proc.stdout.readline())
    return proc, env


def pct(values: list[int], p: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64) / 1e6, p)) if values else float("nan")


FEEDS = {"process": LiveFeedProcess, "thread": LiveSource}


def run_once(symbols: int, rate_hz: float, seconds: float, feed_kind: str = "process") -> dict:
    proc, env = start_fakes(symbols, rate_hz)
    try:
        s = Settings.from_env(overrides={
            "topn_size": symbols, "warmup_s": 3, "ewma_halflife_s": 60,
            "upbit_rest_url": env["UPBIT_REST_URL"], "upbit_ws_url": env["UPBIT_WS_URL"],
            "binance_rest_url": env["BINANCE_REST_URL"], "binance_ws_url": env["BINANCE_WS_URL"],
        })
        src = FEEDS[feed_kind](LiveConfig.from_settings(s), duration_s=seconds)
        src.start()
        names = list(src.symbols)
        ids = {n: src.symtab.id_of(n) for n in names}
        port = ProbedExecution(s, names)
        kpi = KpiAccumulator()
        coord = CoordinatorCore(coordinator_config(s, src.lot_steps), names, ids,
                                src.symtab.fx_id, port, kpi, session_id="bench")
        validator, depth = book_checks(s)
        feed: list[int] = []
        engine: list[int] = []  # engine time per batch: validate + executors + coordinator
        rows = batches = 0
        t0 = time.monotonic()
        for batch, pre in src.batches():
            if len(batch) == 0:
                continue
            now = time.time_ns()
            feed.extend((now - batch.recv_ns).tolist())
            rows += len(batch)
            batches += 1
            port.current = batch
            t_eng = time.perf_counter_ns()
            vb = validate_batch(validator, batch, pre, depth)
            kpi.add_events(vb.rows_in, vb.rejected)
            port.ingest(vb, ids, src.symtab.fx_id)
            coord.process_batch(vb.top, t_eng)
            engine.append(time.perf_counter_ns() - t_eng)
        wall = time.monotonic() - t0
        port.measuring = False
        coord.finish()
        return {
            "feed": feed_kind, "symbols": len(names), "rate_hz": rate_hz,
            "books_per_s": rows / wall,
            "rows_per_batch": rows / max(batches, 1), "trades": len(port.decide_ns),
            "feed_p50": pct(feed, 50), "feed_p99": pct(feed, 99),
            "decide_p50": pct(port.decide_ns, 50), "decide_p99": pct(port.decide_ns, 99),
            "fill_p50": pct(port.fill_ns, 50), "fill_p99": pct(port.fill_ns, 99),
            "fills": len(port.fill_ns), "reconnects": src.stats["reconnects"],
            "engine_batch_p50": pct(engine, 50), "engine_batch_p99": pct(engine, 99),
            "engine_busy": sum(engine) / 1e9 / wall,
        }
    finally:
        proc.terminate()
        proc.wait(10)


def run_cli(engine: str, symbols: int, rate_hz: float, seconds: float) -> dict:
    """``python run.py --data-source real`` with ``engine``; latency from its trade log.

    Each row's ``tick_to_fill_ms`` is the engine's wall time from the start of the batch that
    held the deciding book to the applied fill; minus the simulated wait (the settlement chunk
    end after the last leg's arrival, minus the decision time) it is the processing overhead,
    measured the same way for both engines (it leaves out the queueing before a batch starts
    and includes the time until the next book after the settlement time arrives)."""
    proc, env = start_fakes(symbols, rate_hz)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            e = {**os.environ, **env, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0",
                 "WARMUP_S": "3", "EWMA_HALFLIFE_S": "60"}
            kpi_path = Path(tmp) / "k.json"
            res = subprocess.run([sys.executable, str(ROOT / "run.py"), "--engine", engine,
                                  "--data-source", "real", "--topn-size", str(symbols),
                                  "--run-duration-seconds", str(seconds), "--kpi-output-path",
                                  str(kpi_path), "--log-dir", tmp, "--quiet"], env=e, cwd=ROOT,
                                 capture_output=True, text=True, timeout=seconds + 300)
            if res.returncode != 0:
                return {"engine": engine, "rate_hz": rate_hz, "error": res.stderr[-500:]}
            kpi = json.loads(kpi_path.read_text())
            settle_ns = int(kpi["settle_ms"] * 1_000_000)
            over = []
            with open(kpi["trade_log_path"]) as f:
                for line in f:
                    r = json.loads(line)
                    arrivals = [r[k] for k in ("buy_arrival_ns", "sell_arrival_ns")
                                if r.get(k) is not None]
                    if r.get("tick_to_fill_ms") is None or not arrivals:
                        continue
                    settle_at = (max(arrivals) // settle_ns + 1) * settle_ns
                    over.append(r["tick_to_fill_ms"] - (settle_at - r["decision_ts_ns"]) / 1e6)
            arr = np.asarray(over)
            return {"engine": engine, "rate_hz": rate_hz, "trades": len(over),
                    "events_per_s": kpi["events_processed"] / kpi["wall_seconds"],
                    "over_p50": float(np.percentile(arr, 50)) if len(arr) else float("nan"),
                    "over_p99": float(np.percentile(arr, 99)) if len(arr) else float("nan")}
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=40.0,
                   help="per case; ~15 fills a second at 20 symbols, so 40 s gives ~600: "
                        "shorter runs make the p99 one or two samples")
    p.add_argument("--symbols", type=int, default=20)
    p.add_argument("--rates", default="10,100", help="book updates per second per stream")
    p.add_argument("--feeds", default="thread,process",
                   help="live sources compared: 'thread' (clients in a thread of the engine's "
                        "process: the baseline) and 'process' (their own process: the default)")
    p.add_argument("--engines", default="local,ray",
                   help="engines also run end to end through run.py (empty: none)")
    args = p.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    feeds = [f for f in args.feeds.split(",") if f]
    results = [run_once(args.symbols, float(r), args.seconds, f)
               for r in args.rates.split(",") for f in feeds]
    print(f"{'feed':>7} {'rate/stream':>11} {'books/s':>8} {'rows/batch':>10} {'fills':>6} "
          f"{'feed p50/p99 ms':>16} {'decide p50/p99 ms':>18} {'tick->fill p50/p99 ms':>22} "
          f"{'engine/batch p50/p99 ms':>24} {'busy':>5}")
    for r in results:
        print(f"{r['feed']:>7} {r['rate_hz']:>9g}Hz {r['books_per_s']:>8.0f} {r['rows_per_batch']:>10.1f} "
              f"{r['fills']:>6} {r['feed_p50']:>7.2f} / {r['feed_p99']:<6.2f} "
              f"{r['decide_p50']:>8.2f} / {r['decide_p99']:<7.2f} "
              f"{r['fill_p50']:>10.2f} / {r['fill_p99']:<8.2f}  "
              f"{r['engine_batch_p50']:>10.2f} / {r['engine_batch_p99']:<9.2f} "
              f"{r['engine_busy']:>5.0%}")
    for f in feeds:
        mine = [r for r in results if r["feed"] == f]
        if len(mine) > 1:
            base, top = mine[0], mine[-1]
            print(f"{f}: ratio {top['rate_hz']:g}Hz / {base['rate_hz']:g}Hz: tick->fill p50 "
                  f"{top['fill_p50'] / base['fill_p50']:.2f}x, p99 "
                  f"{top['fill_p99'] / base['fill_p99']:.2f}x")
    if len(feeds) > 1:
        for r in args.rates.split(","):
            base, new = (next(x for x in results if x["feed"] == f and x["rate_hz"] == float(r))
                         for f in (feeds[0], feeds[-1]))
            print(f"{float(r):g}Hz: tick->fill {feeds[-1]} / {feeds[0]}: p50 "
                  f"{new['fill_p50'] / base['fill_p50']:.2f}x, p99 "
                  f"{new['fill_p99'] / base['fill_p99']:.2f}x")
    for f in feeds:
        ok = all(r["fill_p50"] < 2.0 and r["fill_p99"] < 10.0 for r in results if r["feed"] == f)
        print(f"{f}: targets (local p50 < 2 ms, p99 < 10 ms): {'met' if ok else 'NOT met'}")
    cli = [run_cli(eng, args.symbols, float(r), args.seconds)
           for eng in filter(None, args.engines.split(",")) for r in args.rates.split(",")]
    if cli:
        print("\nend to end through run.py: engine-reported tick_to_fill minus the simulated "
              "wait (ms)")
        print(f"{'engine':>6} {'rate/stream':>11} {'trades':>6} {'events/s':>8} "
              f"{'overhead p50 / p99':>19}")
        for r in cli:
            if "error" in r:
                print(f"{r['engine']:>6} {r['rate_hz']:>9g}Hz  failed: {r['error']}")
                continue
            print(f"{r['engine']:>6} {r['rate_hz']:>9g}Hz {r['trades']:>6} "
                  f"{r['events_per_s']:>8.0f} {r['over_p50']:>8.2f} / {r['over_p99']:<8.2f}")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(json.dumps(results + cli))


if __name__ == "__main__":
    main()
