"""Vectorised signals against naive loops; the executor's book-at-arrival and snapshots."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.execution.executor import LatencyConfig, LatencyModel, PaperExecutor
from common.fill.models import FillModelConfig
from common.marketdata.batch import SymbolTable
from common.portfolio.state import FeeSchedule
from common.strategy.signals import EwmaState, ewma_lambda, ewma_level
from common.types import Trade
from tests.books import T0, S, book, fx, to_batch


def naive_ewma(t, x, halflife_s):
    lam = ewma_lambda(halflife_s)
    out, level, last = [], math.nan, None
    for ti, xi in zip(t, x, strict=True):
        if math.isfinite(xi):
            if last is None:
                level = xi
            else:
                a = 1 - math.exp(-lam * (ti - last))
                level = level + a * (xi - level)
            last = ti
        out.append(level)
    return np.array(out)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5 * 3600 * S), st.floats(-0.05, 0.05) | st.just(math.nan)),
                min_size=2, max_size=80),
       st.lists(st.integers(1, 79), max_size=4), st.sampled_from([5.0, 600.0, 1e5]))
def test_ewma_matches_a_naive_loop_and_ignores_batch_cuts(points, cuts, halflife):
    points.sort(key=lambda p: p[0])
    t = np.array([T0 + p[0] for p in points], dtype=np.int64)
    x = np.array([p[1] for p in points])
    expect = naive_ewma(t, x, halflife)
    # one batch (element 0 of a frame is the carry: prepend a dummy)
    whole, _ = ewma_level(np.concatenate(([0], t)), np.concatenate(([np.nan], x)), EwmaState(),
                          halflife)
    np.testing.assert_allclose(whole[1:], expect, rtol=1e-9, atol=1e-12, equal_nan=True)
    # the same stream cut anywhere gives bit-identical levels
    state, parts = EwmaState(), []
    bounds = [0, *sorted({c for c in cuts if c < len(t)}), len(t)]
    for a, b in zip(bounds, bounds[1:], strict=False):
        lv, state = ewma_level(np.concatenate(([0], t[a:b])), np.concatenate(([np.nan], x[a:b])),
                               state, halflife)
        parts.append(lv[1:])
    np.testing.assert_array_equal(np.concatenate(parts), whole[1:])


def _executor(**cfg):
    return PaperExecutor("BTC", FillModelConfig(**cfg), FeeSchedule(), seed=1)


def _trade(tid, t_s, arrive_s, qty=1.0, buy="binance", sell=None, limit=1e9):
    t = T0 + round(t_s * S)
    arr = T0 + round(arrive_s * S)
    return Trade(tid, "BTC", "entry", "BTC-RT-1", buy, sell, qty, 100.0, math.nan, limit,
                 math.nan if sell is None else 0.0, t, arr, arr)


def test_leg_fills_against_the_latest_book_at_or_before_arrival():
    symtab = SymbolTable(("USDT", "BTC"))
    batch = to_batch([fx(0.0),
                      book(1.0, "binance", "BTC", [(99, 5)], [(100, 5)]),
                      book(2.0, "binance", "BTC", [(109, 5)], [(110, 5)]),
                      book(3.0, "binance", "BTC", [(119, 5)], [(120, 5)])], symtab)
    ex = _executor(kind="book_walk")
    ex.ingest(batch, T0)
    ex.submit([_trade("BTC-E-1", 1.5, 2.5)])  # decided at 1.5, arrives 2.5: meets the 2.0 book
    (res,) = ex.collect(T0 + 3 * S)
    assert res.buy.vwap_price == 110.0 and res.buy.arrival_best_price == 110.0
    assert res.buy.book_recv_ns == T0 + 2 * S
    assert res.buy.latency_cost_bps == pytest.approx((110 - 100) / 100 * 1e4)
    assert res.buy.slippage_bps == 0.0


def test_consumed_liquidity_is_not_filled_twice_until_a_newer_book():
    symtab = SymbolTable(("USDT", "BTC"))
    rows = [fx(0.0), book(1.0, "binance", "BTC", [(99, 5)], [(100, 3), (101, 3), (102, 3)])]
    ex = _executor(kind="book_walk", hidden_depth_ratio=0.0)
    ex.ingest(to_batch(rows, symtab), T0)
    ex.submit([_trade("BTC-E-1", 1.1, 1.2, qty=4.0)])
    ex.submit([_trade("BTC-E-2", 1.3, 1.4, qty=4.0)])
    r1, r2 = ex.collect(T0 + 2 * S)
    assert r1.buy.vwap_price == pytest.approx((3 * 100 + 1 * 101) / 4)
    # the second order meets what is left: 2 @ 101 and 3 @ 102 -> 2 @ 101 + 2 @ 102
    assert r2.buy.vwap_price == pytest.approx((2 * 101 + 2 * 102) / 4)
    # a newer book restores the liquidity
    ex.ingest(to_batch([book(2.0, "binance", "BTC", [(99, 5)], [(100, 3), (101, 3)])], symtab),
              T0 + 2 * S)
    ex.submit([_trade("BTC-E-3", 2.1, 2.2, qty=4.0)])
    (r3,) = ex.collect(T0 + 3 * S)
    assert r3.buy.vwap_price == pytest.approx((3 * 100 + 1 * 101) / 4)


def test_no_book_yet_means_a_failed_leg():
    symtab = SymbolTable(("USDT", "BTC"))
    ex = _executor()
    ex.ingest(to_batch([fx(0.0), book(5.0, "binance", "BTC", [(99, 5)], [(100, 5)])], symtab), T0)
    ex.submit([_trade("BTC-E-1", 1.0, 1.1)])
    (res,) = ex.collect(T0 + 2 * S)
    assert res.trade_result == "failed" and res.buy.filled_qty == 0 and res.buy.book_recv_ns == -1


def test_snapshot_restore_continues_identically():
    symtab = SymbolTable(("USDT", "BTC"))
    rows = [fx(0.0)] + [book(1.0 + i * 0.5, "binance", "BTC", [(99, 5)],
                             [(100 + i, 0.5), (100.5 + i, 0.5)]) for i in range(6)]
    batch = to_batch(rows, symtab)

    def trades():
        return [_trade(f"BTC-E-{i}", 1.1 + i * 0.5, 1.2 + i * 0.5, qty=2.0) for i in range(6)]

    a = _executor(kind="book_walk")
    a.ingest(batch, T0)
    a.submit(trades()[:3])
    state = pickle.loads(pickle.dumps(a.get_state()))
    a.submit(trades()[3:])
    ref = a.collect(T0 + 10 * S)
    b = _executor(kind="book_walk")
    b.set_state(state)
    b.submit(trades()[3:])
    assert repr(b.collect(T0 + 10 * S)) == repr(ref)  # repr: NaN fields compare equal
    assert any(r.trade_result == "partial" or r.buy.vwap_price > r.buy.arrival_best_price
               for r in ref)  # the hidden-liquidity RNG really was exercised


def test_latency_model_is_seeded_per_symbol():
    cfg = LatencyConfig(upbit_ms=30, binance_ms=120, jitter_ms=10)
    a = [LatencyModel(cfg, 7, "BTC").draw_ns(1) for _ in range(1)]
    b = [LatencyModel(cfg, 7, "BTC").draw_ns(1) for _ in range(1)]
    c = LatencyModel(cfg, 7, "ETH").draw_ns(1)
    assert a == b and a[0] != c
    assert 120e6 <= a[0] <= 130e6


def test_a_leg_meets_the_book_of_its_own_arrival_even_if_its_twin_arrives_a_batch_later():
    symtab = SymbolTable(("USDT", "BTC"))
    ex = _executor(kind="book_walk")
    ex.ingest(to_batch([fx(0.0),
                        book(9.9, "binance", "BTC", [(99, 5)], [(100, 5)]),
                        book(9.95, "upbit", "BTC", [(140000, 5)], [(140100, 5)]),
                        book(10.5, "binance", "BTC", [(199, 5)], [(200, 5)])], symtab), T0)
    t = T0 + 9_950_000_000
    trade = Trade("BTC-E-1", "BTC", "entry", "BTC-RT-1", "binance", "upbit", 1.0, 100.0, 140000.0,
                  1e9, 1.0, t, T0 + 10 * S, T0 + 11_200_000_000)
    ex.submit([trade])
    assert ex.collect(T0 + 10_600_000_000) == []  # the upbit leg has not arrived yet
    ex.ingest(to_batch([book(11.0, "upbit", "BTC", [(150000, 5)], [(150100, 5)])], symtab),
              T0 + 11 * S)
    (res,) = ex.collect(T0 + 12 * S)
    assert res.buy.vwap_price == 100.0  # the 9.9 book, not the 10.5 one seen later
    assert res.sell.vwap_price == 150000.0  # the 11.0 book, the latest before 11.2
    assert res.fill_ts_ns == T0 + 11_200_000_000


def test_an_empty_ingest_equals_the_full_path():
    """Batches with nothing for an executor skip the row selection, both right after a batch
    with its rows (the books rotate into the carry) and while it stays quiet; its state and
    later fills must be exactly those of the full path (which an index array with other
    symbols' rows still takes)."""
    symtab = SymbolTable(("USDT", "BTC", "ETH"))
    first = to_batch([fx(0.0), book(1.0, "binance", "BTC", [(99, 5)], [(100, 2), (101, 9)]),
                      book(1.5, "upbit", "BTC", [(139_000, 5)], [(140_000, 5)])], symtab)
    others = [to_batch([book(2.0 + i, "binance", "ETH", [(9, 5)], [(10, 5)])], symtab)
              for i in range(3)]
    later = to_batch([book(6.0, "binance", "BTC", [(98, 5)], [(99, 1), (100, 9)])], symtab)
    quick, full = _executor(kind="book_walk"), _executor(kind="book_walk")
    for ex, empty_rows in ((quick, lambda b: np.zeros(0, dtype=np.int64)),
                           (full, lambda b: np.arange(len(b)))):
        ex.ingest(first, T0)
        for i, b in enumerate(others):
            ex.ingest(b, T0 + (2 + i) * S, empty_rows(b))
        ex.ingest(later, T0 + 6 * S)
        # one leg meets the carried book of the first batch, one the newest
        ex.submit([_trade("BTC-E-1", 5.0, 5.9, qty=3.0), _trade("BTC-E-2", 6.0, 6.1, qty=3.0)])
    assert repr(quick.get_state()) == repr(full.get_state())
    a, b = quick.collect(T0 + 7 * S), full.collect(T0 + 7 * S)
    assert repr(a) == repr(b)
    assert a[0].buy.book_recv_ns == T0 + S and a[1].buy.book_recv_ns == T0 + 6 * S
    assert a[0].buy.vwap_price == pytest.approx((2 * 100 + 101) / 3)
