"""Compare the mock market with the recorded 2021 books and write docs/mock_calibration.md.

    python scripts/calibrate_mock.py [--recordings PATH] [--out docs/mock_calibration.md]

The recordings are ``../shared/data/exchange-recordings/real_books_all.parquet`` (every recorded
book in the replay schema; see that folder's README for provenance and licence). The mock runs
``--seconds`` (default 600) of the 20 default symbols for a few seeds, at volatility 1 (the
calibrated market) and at a busy setting.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.marketdata.calibration import (  # noqa: E402
    book_rows,
    premium_activity,
    replay_batches,
    stream_stats,
    venue_summary,
)
from common.marketdata.mock import FX_CENTER_KRW, MockConfig, MockMarket  # noqa: E402

DEFAULT_RECORDINGS = ROOT.parent / "shared" / "data" / "exchange-recordings" / "real_books_all.parquet"
#: USDT/KRW of the recordings' synthetic FX book (README caveat 2)
RECORDED_FX = 1180.0
REST_ONLY = ("BTC", "ETH")  # recorded Binance rows that are REST snapshots, not a feed
#: markets recorded on one venue and also in the mock's universe
OVERLAP = {"upbit": ("ADA", "BAT", "STX"), "binance": ("DOT", "BAT", "ZIL", "MANA")}
SEEDS = (1, 2, 3)
BUSY = 4.0


def fmt(x: float, nd: int = 1) -> str:
    if x is None or not np.isfinite(x):
        return "—"
    if abs(x) >= 10_000:
        return f"{x / 1000:,.0f}k"
    if abs(x) >= 1000:
        return f"{x / 1000:,.1f}k"
    return f"{x:.{nd}f}"


def rng_fmt(s: dict, name: str, nd: int = 1) -> str:
    return f"{fmt(s[name], nd)} ({fmt(s[name + '_min'], nd)}–{fmt(s[name + '_max'], nd)})"


def mock_stats(seconds: float, volatility: float, symbols=None):
    stats, prem = [], []
    for seed in SEEDS:
        kw = {"seed": seed, "volatility": volatility}
        if symbols:
            kw["symbols"] = symbols
        rows = book_rows(MockMarket(MockConfig(**kw)).batches(seconds), FX_CENTER_KRW)
        stats.extend(stream_stats(rows))
        prem.append(premium_activity(rows))
    return stats, prem


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recordings", default=str(DEFAULT_RECORDINGS))
    ap.add_argument("--out", default=str(ROOT / "docs" / "mock_calibration.md"))
    ap.add_argument("--seconds", type=float, default=600.0)
    args = ap.parse_args()

    rec = stream_stats(book_rows(replay_batches(args.recordings), RECORDED_FX))
    mock, prem1 = mock_stats(args.seconds, 1.0)
    busy, prem4 = mock_stats(args.seconds, BUSY)
    overlap_syms = tuple(dict.fromkeys(OVERLAP["upbit"] + OVERLAP["binance"]))
    over, _ = mock_stats(args.seconds, 1.0, overlap_syms)
    cfg = MockConfig()

    r = {v: venue_summary(rec, v, exclude=REST_ONLY if v == "binance" else ()) for v in OVERLAP}
    m = {v: venue_summary(mock, v) for v in OVERLAP}
    b = {v: venue_summary(busy, v) for v in OVERLAP}

    lines: list[str] = []
    add = lines.append
    add("# Mock market calibration")
    add("")
    add("Made by `python scripts/calibrate_mock.py` (do not edit by hand). Recordings: the "
        "2021 Upbit and Binance books in `../shared/data/exchange-recordings/` "
        "(`real_books_all.parquet`; cryptofeed's sample data — *This product includes software "
        "developed by Bryant Moscon (http://www.bryantmoscon.com/).*). Mock: "
        f"{args.seconds:g} s of the 20 default symbols for seeds {', '.join(map(str, SEEDS))}, "
        f"volatility 1 (calibrated) and {BUSY:g} (busy); feed latency Upbit "
        f"{cfg.upbit_feed_latency_ms:g} ms, Binance {cfg.binance_feed_latency_ms:g} ms, "
        f"jitter {cfg.feed_jitter_ms:g} ms.")
    add("")
    add("Per venue: the median over markets (min–max in brackets); gaps are pooled over books. "
        f"Upbit KRW is converted at {RECORDED_FX:g} KRW/USD for the recordings and "
        f"{FX_CENTER_KRW:g} for the mock. Recorded streams used: Upbit's "
        f"{int(r['upbit']['streams'])} KRW markets ({int(r['upbit']['books'])} books), "
        f"Binance's {int(r['binance']['streams'])} USDT markets "
        f"({int(r['binance']['books'])} books; BAT is the perpetual's book; BTC and ETH are "
        "REST snapshots only and left out). Markets in other quote currencies are left out.")
    add("")
    add("| figure | venue | recordings (2021) | mock, volatility 1 | mock, volatility "
        f"{BUSY:g} | what the mock's figure rests on | where the recording is too thin |")
    add("|---|---|---|---|---|---|---|")
    rows_spec = [
        ("book updates / s per market", "rate_per_s", 2,
         {"upbit": "Upbit's ~300 ms publishing cycle seen in the recorded venue times (gaps "
                   "of 293–340 ms and multiples); a book in a cycle with probability 0.20–0.75 "
                   "by the market's traded value",
          "binance": "`@depth@100ms`: venue times exactly 100 ms apart; a book in a period "
                     "with probability 0.70–0.98 by traded value"},
         {"upbit": "8 mid-cap markets, 2 minutes each; the mock's top-20 markets are busier "
                   "today — their rate is extrapolated along traded value",
          "binance": "6 mid-cap markets; the top 20 publish in nearly every 100 ms period"}),
        ("relative spread, bps (median)", "spread_bps", 1,
         {"upbit": "1–3 ticks of Upbit's KRW tick table at today's prices",
          "binance": "1–3 ticks of each symbol's tick"},
         {"upbit": "mid-caps with coarse 2021 KRW ticks (5 KRW at 1,000–10,000 KRW: 5–50 "
                   "bps a tick), most of them 1 tick wide; in ticks the mock agrees",
          "binance": "mid-caps; liquid symbols quote 1 tick wide"}),
        ("top-level depth, USD (median)", "top_usd", 0,
         {"upbit": "0.7 × the asset's Binance level depth, a queue that trades consume "
                   "between books (shrinks ~11 % a book) and refills",
          "binance": "per-asset typical level depth (universe table), the same queue model"},
         {"upbit": "only mid-caps of 2021; ADA alone is 20× the median",
          "binance": "mid-caps only (per market below: the mock is 1–7× deeper, today's "
                     "liquidity); the top-20 depths rest on the universe table"}),
        ("10-level depth, USD (median)", "depth10_usd", 0,
         {"upbit": "lognormal level sizes, 10 % more per level further out",
          "binance": "same"},
         {"upbit": "Upbit's 10 levels span 30–300 bps (coarse ticks) vs ~20 in the mock",
          "binance": "Binance's 10 levels span <1–20 bps depending on the tick"}),
        ("10-level span, bps (median)", "span10_bps", 1,
         {"upbit": "levels ≥ 1 tick and ~1 bps apart", "binance": "same"},
         {"upbit": "explains the depth gap above", "binance": "explains the depth gap above"}),
        ("consecutive books identical at the top", "same_top_share", 2,
         {"upbit": "a book repeats the previous top with p 0.5 (÷ √volatility), else the "
                   "queue changes", "binance": "same"},
         {"upbit": "8 markets, 26–231 books each", "binance": "6 markets"}),
    ]
    for title, key, nd, rests, thin in rows_spec:
        for v in ("upbit", "binance"):
            add(f"| {title} | {v} | {rng_fmt(r[v], key, nd)} | {rng_fmt(m[v], key, nd)} | "
                f"{rng_fmt(b[v], key, nd)} | {rests[v]} | {thin[v]} |")
    for v in ("upbit", "binance"):
        add(f"| recv − venue time, ms (p1 / p50 / p99) | {v} | "
            f"{fmt(r[v]['gap_ms_p1'], 0)} / {fmt(r[v]['gap_ms_p50'], 0)} / "
            f"{fmt(r[v]['gap_ms_p99'], 0)} | {fmt(m[v]['gap_ms_p1'], 1)} / "
            f"{fmt(m[v]['gap_ms_p50'], 1)} / {fmt(m[v]['gap_ms_p99'], 1)} | "
            f"{fmt(b[v]['gap_ms_p1'], 1)} / {fmt(b[v]['gap_ms_p50'], 1)} / "
            f"{fmt(b[v]['gap_ms_p99'], 1)} | the configured feed latency + uniform jitter "
            "(a trader in Seoul, see below) | the recorder was far from the venues and its "
            "clock was off by ~10 ms (negative Binance gaps): not a trader's latency |")
    for v in ("upbit", "binance"):
        add(f"| books sharing recv_ns with the stream's previous book | {v} | "
            f"{r[v]['same_recv_share']:.1%} | {m[v]['same_recv_share']:.1%} | "
            f"{b[v]['same_recv_share']:.1%} | strictly increasing receive times per stream "
            "(a tie is nudged by 1 ns) | — |")

    def pmean(ps: list[dict], k: str) -> float:
        return float(np.mean([p[k] for p in ps]))

    prem_rests = (
        "level 1.5–3.5 %, OU deviation 15–22 bps (calm) with 2–6 min half-life, a 3–6 bps "
        "fast part (Upbit lagging Binance), jumps of 40–120 bps about hourly that decay in "
        "1–4 min; volatile hours (1 h in 4 on average) ×2.2 stdev and ×3 jumps; volatility v: "
        "stdev ×v, jump rate ×v, jump size ×√v, price vol ×v"
    )
    prem_thin = (
        "only one market (BAT) on both venues, its two sides recorded 20 minutes apart "
        "(Binance's a perpetual): the premium cannot be calibrated from the recordings"
    )
    for i, (title, k, nd) in enumerate((
        ("premium deviation from its 10-min mean, stdev bps", "dev_sd_bps", 1),
        ("premium deviation, p99 of its absolute value, bps", "dev_p99_bps", 0),
        ("share of Upbit books with a deviation beyond 48 bps (the default entry cost)",
         "beyond_share", 3),
        ("entries beyond 48 bps per symbol-hour", "crossings_per_h", 0),
    )):
        rests, thin = (prem_rests, prem_thin) if i == 0 else ("as above", "as above")
        add(f"| {title} | both | — | {fmt(pmean(prem1, k), nd)} | {fmt(pmean(prem4, k), nd)} | "
            f"{rests} | {thin} |")
    add("")

    add("## Per market (recorded markets that are also in the mock's universe)")
    add("")
    add("Mock: the same markets, generated together (volatility 1, seeds as above, medians over "
        "seeds). Recorded markets are 2021 prices and liquidity; the mock's universe figures "
        "are today's.")
    add("")
    add("| venue | market | recorded books/s | mock books/s | recorded spread bps | mock "
        "spread bps | recorded top USD | mock top USD | recorded 10-level USD | mock "
        "10-level USD | recorded identical tops | mock identical tops |")
    add("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for v, syms in OVERLAP.items():
        for sym in syms:
            rs = [s for s in rec if s.venue == v and s.symbol == sym]
            ms = [s for s in over if s.venue == v and s.symbol == sym]
            if not rs or not ms:
                continue
            a = rs[0]

            def med(name: str, ms=ms) -> float:
                return float(np.median([getattr(s, name) for s in ms]))

            add(f"| {v} | {sym} | {a.rate_per_s:.2f} | {med('rate_per_s'):.2f} | "
                f"{a.spread_bps:.1f} | {med('spread_bps'):.1f} | {fmt(a.top_usd, 0)} | "
                f"{fmt(med('top_usd'), 0)} | {fmt(a.depth10_usd, 0)} | "
                f"{fmt(med('depth10_usd'), 0)} | {a.same_top_share:.2f} | "
                f"{med('same_top_share'):.2f} |")
    add("")
    add("(Binance BAT is the USDⓈ-M perpetual book, see the recordings' README.)")
    add("")

    add("## Feed latency defaults")
    add("")
    add(f"The mock draws `recv_ns = ts_ns + feed latency + U[0, jitter)`, never reordering a "
        "stream. The recorded gaps cannot set these figures: Upbit's (p50 "
        f"{fmt(r['upbit']['gap_ms_p50'], 0)} ms, p1 {fmt(r['upbit']['gap_ms_p1'], 0)} ms) "
        "are those of a recorder far from Seoul (a floor above 100 ms is an intercontinental "
        "path), and Binance's median is negative in one file (the recorder's clock was ~10 ms "
        "behind), so neither is the latency of a trader placed for this strategy. A kimchi "
        "trader sits in Seoul, next to Upbit (AWS Seoul: a few ms of network plus the "
        "venue's own publishing delay, 10–40 ms in all) and about 16 ms one way from "
        "Binance's matching engine in Tokyo, plus Binance's publishing delay. The defaults "
        f"stay Upbit {cfg.upbit_feed_latency_ms:g} ms, Binance "
        f"{cfg.binance_feed_latency_ms:g} ms, jitter {cfg.feed_jitter_ms:g} ms: within those "
        "ranges (Binance's on the low side, as for a trader near Tokyo), and the spread of the "
        "recorded gaps (hundreds of ms from p1 to p99) is the distant recorder's path, not "
        "the venues'.")
    add("")
    add("## What the mock does not take from the recordings")
    add("")
    add("- The premium process (level, deviations, jumps, regimes): see the table; its "
        "parameters are the design's assumptions, and the volatility knob scales them.")
    add("- Thin books (5 % of books 30–150× thinner) and bad books (0.2 %, every kind the "
        "validator rejects): the recordings have neither in two minutes.")
    add("- Absolute depth: the universe table's level depths (today's markets). The recordings "
        "set the shape (top level about 5 % of 10 levels on Binance, as in the mock), not the "
        "size; 2021 Upbit mid-caps were deeper than the mock's Upbit books.")
    add("- Rates of the most active markets: extrapolated along traded value from mid-caps; "
        "the volatility knob leaves rates and times alone (the same books at the same times, "
        "so that benchmarks compare like with like).")
    add("")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
