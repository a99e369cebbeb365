"""DepthCost: the expected slippage of one trade's notional from each book side, per row."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.marketdata.depth import DepthCost, _side_slippage
from tests.books import book, fx, to_batch


def reference(levels, notional, side, cap_bps):
    """Walk the levels one by one, the straightforward way."""
    best = levels[0][0]
    need, qty, cost = notional, 0.0, 0.0
    for p, z in levels:
        if (p / best - 1.0) * side * 1e4 > cap_bps + 1e-9 or need <= 0:
            break
        take = min(z, need / p)
        qty += take
        cost += take * p
        need -= take * p
    return min(max((cost / qty / best - 1.0) * side * 1e4, 0.0), cap_bps)


@settings(max_examples=300, deadline=None)
@given(books=st.lists(st.lists(st.tuples(st.floats(0.01, 50.0), st.floats(1e-3, 100.0)),
                               min_size=1, max_size=12), min_size=1, max_size=6),
       notional=st.floats(1.0, 5000.0), side=st.sampled_from([1, -1]),
       cap=st.floats(0.0, 300.0))
def test_matches_a_level_by_level_walk(books, notional, side, cap):
    px, sz, off = [], [], [0]
    rows = []
    for b in books:
        levels, price = [], 100.0
        for step, size in b:  # strictly worse prices going out, as a valid book has
            price = price + side * step
            levels.append((price, size))
        rows.append(levels)
        px += [p for p, _ in levels]
        sz += [z for _, z in levels]
        off.append(len(px))
    got = _side_slippage(np.array(px), np.array(sz), np.array(off), np.arange(len(rows)),
                         np.full(len(rows), notional), side, cap)
    want = [reference(levels, notional, side, cap) for levels in rows]
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    # a row's figure never depends on the other rows of its batch
    for k in range(len(rows)):
        alone = _side_slippage(np.array(px), np.array(sz), np.array(off), np.array([k]),
                               np.array([notional]), side, cap)
        assert alone[0] == got[k]


def test_upbit_books_are_priced_in_krw_at_the_fx_received_before_them():
    d = DepthCost(notional_usd=1000.0, cap_bps=100.0)
    # 1,000 USD at 1,400 KRW/USD = 1.4 M KRW: 1.0 M at the best ask, 0.4 M one level out
    rows = [book(1.0, "upbit", "BTC", [(99_000, 100)], [(100_000, 10), (101_000, 10)]),
            fx(0.5, mid=1400.0)]
    b = to_batch(rows)
    bid, ask = d.slippage(b, np.arange(len(b)))
    i = list(b.symbols[s] for s in b.sym).index("BTC")
    qty = 10 + 400_000 / 101_000
    assert ask[i] == pytest.approx((1_400_000 / qty / 100_000 - 1) * 1e4)
    assert bid[i] == 0.0
    # before any FX, an Upbit book cannot be priced: nan (the entry rule's fallback applies)
    d2 = DepthCost(notional_usd=1000.0, cap_bps=100.0)
    b2 = to_batch([book(1.0, "upbit", "BTC", [(99_000, 100)], [(100_000, 10)])])
    assert np.isnan(d2.slippage(b2, np.arange(1))[1][0])
