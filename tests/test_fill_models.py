"""Fill models: hand-computed fills, determinism of the hidden liquidity, and properties."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from common.fill.models import (
    HIDDEN_IMPACT_K,
    BookWalkFillModel,
    FillModel,
    FillModelConfig,
    FillOutcome,
    NoFillModel,
    SimpleFillModel,
    create_fill_model,
)
from common.types import Side

BUY = Side.BUY
SELL = Side.SELL
NAN = math.nan

# Asks 100 / 101 / 102 with sizes 1 / 2 / 3 (visible depth 6), bids mirrored 100 / 99 / 98.
ASK_PX = np.array([100.0, 101.0, 102.0])
ASK_SZ = np.array([1.0, 2.0, 3.0])
BID_PX = np.array([100.0, 99.0, 98.0])
BID_SZ = np.array([1.0, 2.0, 3.0])

# A config whose hidden liquidity never caps a small order: H = 10 * V * U >= 5 * V.
DEEP_HIDDEN = FillModelConfig(hidden_depth_ratio=10.0)


def book_walk(cfg: FillModelConfig | None = None, seed: int = 1) -> FillModel:
    return create_fill_model(cfg or FillModelConfig(), seed)


def simple(seed: int = 1, **kw) -> FillModel:
    return create_fill_model(FillModelConfig(kind="simple", **kw), seed)


def arr(*v: float) -> np.ndarray:
    return np.array(v, dtype=np.float64)


def approx(x: float) -> object:
    return pytest.approx(x, rel=1e-12, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# factory and config


def test_factory_picks_the_model_and_validates_config():
    assert isinstance(create_fill_model(FillModelConfig(enable=False), 0), NoFillModel)
    assert isinstance(create_fill_model(FillModelConfig(kind="simple"), 0), SimpleFillModel)
    assert isinstance(create_fill_model(FillModelConfig(), 0), BookWalkFillModel)
    for m in (NoFillModel, SimpleFillModel, BookWalkFillModel):
        assert isinstance(m(FillModelConfig(), 0), FillModel)
    with pytest.raises(ValueError, match="kind"):
        FillModelConfig(kind="magic")
    with pytest.raises(ValueError, match="slippage_alpha"):
        FillModelConfig(slippage_alpha=-1e-4)
    with pytest.raises(ValueError, match="simple_volume_multiplier"):
        FillModelConfig(simple_volume_multiplier=0.0)
    with pytest.raises(ValueError, match="hidden_depth_ratio"):
        FillModelConfig(hidden_depth_ratio=math.nan)
    with pytest.raises(ValueError, match="impact_exponent"):
        FillModelConfig(impact_exponent=0.0)


def test_bad_side_is_an_error():
    with pytest.raises(ValueError, match="side"):
        book_walk().fill(0, 1.0, 105.0, ASK_PX, ASK_SZ, 0.0)


# ---------------------------------------------------------------------------------------------
# book walk: the visible levels


def test_vwap_across_three_levels():
    # buy 4 within limit 105: 1@100 + 2@101 + 1@102 = 100 + 202 + 102 = 404 -> VWAP 404/4 = 101
    out = book_walk().fill(BUY, 4.0, 105.0, ASK_PX, ASK_SZ, 0.0)
    assert out == FillOutcome(4.0, approx(101.0), approx(4.0))


def test_sell_is_symmetric():
    # sell 4 within limit 95: 1@100 + 2@99 + 1@98 = 100 + 198 + 98 = 396 -> VWAP 396/4 = 99
    out = book_walk().fill(SELL, 4.0, 95.0, BID_PX, BID_SZ, 0.0)
    assert out == FillOutcome(4.0, approx(99.0), approx(4.0))


def test_partial_fill_when_book_too_thin_and_no_hidden_depth():
    # hidden_depth_ratio 0: buy 10 takes the whole book, 1@100 + 2@101 + 3@102 = 100+202+306 = 608
    # -> filled 6, VWAP 608/6 = 101.333...
    out = book_walk(FillModelConfig(hidden_depth_ratio=0.0)).fill(
        BUY, 10.0, 110.0, ASK_PX, ASK_SZ, 0.0
    )
    assert out == FillOutcome(approx(6.0), approx(608.0 / 6.0), approx(6.0))


def test_partial_fill_when_the_limit_sits_on_the_last_level():
    # limit 102 == last visible price: the hidden curve starts at 102 and rises, so x_lim = 0:
    # same 6 @ 608/6 as above, and no RNG draw is made.
    m = book_walk()
    before = m.get_state()
    out = m.fill(BUY, 10.0, 102.0, ASK_PX, ASK_SZ, 0.0)
    assert out == FillOutcome(approx(6.0), approx(608.0 / 6.0), approx(6.0))
    assert m.get_state() == before


def test_ioc_limit_stops_the_walk_mid_book():
    # limit 101.5: levels 100 and 101 qualify, 102 does not -> 1@100 + 2@101 = 302, filled 3,
    # VWAP 302/3 = 100.666..., the rest (2) is cancelled
    m = book_walk()
    before = m.get_state()
    out = m.fill(BUY, 5.0, 101.5, ASK_PX, ASK_SZ, 0.0)
    assert out == FillOutcome(approx(3.0), approx(302.0 / 3.0), approx(3.0))
    assert m.get_state() == before  # stopped by the limit: never reached the hidden liquidity
    # a sell limit of 99.5 stops after the first bid level: 1@100
    out = book_walk().fill(SELL, 5.0, 99.5, BID_PX, BID_SZ, 0.0)
    assert out == FillOutcome(approx(1.0), approx(100.0), approx(1.0))


def test_limit_better_than_best_fills_nothing():
    assert book_walk().fill(BUY, 1.0, 99.0, ASK_PX, ASK_SZ, 0.0) == (0.0, 0.0, 0.0)
    assert book_walk().fill(SELL, 1.0, 101.0, BID_PX, BID_SZ, 0.0) == (0.0, 0.0, 0.0)


def test_liquidity_is_consumed_once():
    m = book_walk()
    # first: buy 2 -> 1@100 + 1@101 = 201, VWAP 100.5, consumed 2
    first = m.fill(BUY, 2.0, 105.0, ASK_PX, ASK_SZ, 0.0)
    assert first == FillOutcome(approx(2.0), approx(100.5), approx(2.0))
    # second, on the same book with consumed=2: level 100 gone, 1 left at 101 ->
    # 1@101 + 1@102 = 203, VWAP 101.5 (worse than the first)
    second = m.fill(BUY, 2.0, 105.0, ASK_PX, ASK_SZ, first.consumed_qty)
    assert second == FillOutcome(approx(2.0), approx(101.5), approx(2.0))
    assert second.vwap_price > first.vwap_price
    # consumed 4 (mid-level): 2 left at 102 -> buy 2 = 2@102
    third = m.fill(BUY, 2.0, 105.0, ASK_PX, ASK_SZ, 4.0)
    assert third == FillOutcome(approx(2.0), approx(102.0), approx(2.0))


def test_consumed_beyond_the_whole_visible_book_fills_nothing():
    m = book_walk()
    before = m.get_state()
    for consumed in (6.0, 7.5, math.inf):
        assert m.fill(BUY, 1.0, 110.0, ASK_PX, ASK_SZ, consumed) == (0.0, 0.0, 0.0)
    assert m.get_state() == before  # no visible depth left -> no hidden liquidity, no draw


def test_empty_book_and_zero_qty_fill_nothing():
    empty = np.array([], dtype=np.float64)
    for m in (book_walk(), simple(), create_fill_model(FillModelConfig(enable=False), 1)):
        assert m.fill(BUY, 1.0, 105.0, empty, empty, 0.0) == (0.0, 0.0, 0.0)
        assert m.fill(BUY, 0.0, 105.0, ASK_PX, ASK_SZ, 0.0) == (0.0, 0.0, 0.0)
        assert m.fill(SELL, -1.0, 95.0, BID_PX, BID_SZ, 0.0) == (0.0, 0.0, 0.0)
        assert m.fill(BUY, NAN, 105.0, ASK_PX, ASK_SZ, 0.0) == (0.0, 0.0, 0.0)


def test_malformed_limit_fills_nothing():
    for m in (book_walk(), simple()):
        for limit in (NAN, math.inf, 0.0, -5.0):
            assert m.fill(BUY, 1.0, limit, ASK_PX, ASK_SZ, 0.0) == (0.0, 0.0, 0.0)


def test_bad_levels_are_ignored_and_the_book_ends_at_a_bad_price():
    # size nan at 101 counts as 0; the nan price ends the book -> 1@100 + 3@102 = 406, VWAP 101.5
    px = arr(100.0, 101.0, 102.0, NAN, 103.0)
    sz = arr(1.0, NAN, 3.0, 5.0, 5.0)
    out = book_walk(FillModelConfig(hidden_depth_ratio=0.0)).fill(BUY, 10.0, 110.0, px, sz, 0.0)
    assert out == FillOutcome(approx(4.0), approx(101.5), approx(4.0))


def test_slippage_off_prices_every_unit_at_best():
    cfg = FillModelConfig(slippage_enable=False)
    # quantity as with slippage (4 of the book), price px[0] = 100
    assert book_walk(cfg).fill(BUY, 4.0, 105.0, ASK_PX, ASK_SZ, 0.0) == (4.0, 100.0, 4.0)
    # the limit still cuts the quantity: 3 within 101.5, at 100
    assert book_walk(cfg).fill(BUY, 5.0, 101.5, ASK_PX, ASK_SZ, 0.0) == (
        approx(3.0),
        100.0,
        approx(3.0),
    )
    # consumed 2 still takes the deeper units, but they are priced at px[0]
    assert book_walk(cfg).fill(BUY, 2.0, 105.0, ASK_PX, ASK_SZ, 2.0) == (2.0, 100.0, 2.0)


def test_partial_off_fills_fully_with_the_rest_at_the_limit():
    cfg = FillModelConfig(partial_enable=False, hidden_depth_ratio=0.0)
    # buy 10, limit 102: the book gives 6 for 608; the other 4 fill at the limit 102 = 408
    # -> VWAP (608 + 408) / 10 = 101.6; consumed is the visible 6
    out = book_walk(cfg).fill(BUY, 10.0, 102.0, ASK_PX, ASK_SZ, 0.0)
    assert out == FillOutcome(10.0, approx(101.6), approx(6.0))
    # limit 101.5: 3 for 302, 2 at 101.5 = 203 -> (302 + 203) / 5 = 101
    out = book_walk(cfg).fill(BUY, 5.0, 101.5, ASK_PX, ASK_SZ, 0.0)
    assert out == FillOutcome(5.0, approx(101.0), approx(3.0))
    # not marketable (limit 99 < ask 100): forced fill at the best ask, never below it
    out = book_walk(cfg).fill(BUY, 2.0, 99.0, ASK_PX, ASK_SZ, 0.0)
    assert out == FillOutcome(2.0, approx(100.0), 0.0)
    # sells mirror it: sell 5 limit 98.5 -> 1@100 + 2@99 = 298, 2 at 98.5 = 197 -> 495/5 = 99
    out = book_walk(cfg).fill(SELL, 5.0, 98.5, BID_PX, BID_SZ, 0.0)
    assert out == FillOutcome(5.0, approx(99.0), approx(3.0))
    # slippage off as well: everything at px[0]
    cfg = FillModelConfig(partial_enable=False, slippage_enable=False)
    assert book_walk(cfg).fill(BUY, 10.0, 102.0, ASK_PX, ASK_SZ, 0.0) == (10.0, 100.0, 6.0)


# ---------------------------------------------------------------------------------------------
# book walk: hidden liquidity beyond the visible depth

TWO_PX = arr(100.0, 101.0)
TWO_SZ = arr(1.0, 1.0)  # visible depth V = 2, last level P = 101


def test_hidden_liquidity_hand_computed_buy():
    # buy 2.5, limit 110: visible 1@100 + 1@101 = 201; hidden h = 0.5 (H = 10*2*U >= 10).
    # average hidden premium = alpha*K/(e+1) * (h/V)^e = 1e-4*100/2.5 * 0.25^1.5 = 0.004*0.125
    #   = 0.0005 -> hidden cost 0.5 * 101 * 1.0005 = 50.52525
    # VWAP = (201 + 50.52525) / 2.5 = 100.6101
    assert HIDDEN_IMPACT_K == 100.0
    out = book_walk(DEEP_HIDDEN).fill(BUY, 2.5, 110.0, TWO_PX, TWO_SZ, 0.0)
    assert out.filled_qty == approx(2.5)
    assert out.vwap_price == approx(251.52525 / 2.5)
    assert out.consumed_qty == approx(2.0)  # the visible part only
    hidden_vwap = (out.vwap_price * out.filled_qty - 201.0) / 0.5
    assert hidden_vwap == pytest.approx(101.0505, rel=1e-10)
    assert hidden_vwap > TWO_PX[-1]  # strictly worse than the last visible level


def test_hidden_liquidity_hand_computed_sell():
    # bids 100 / 99, sell 2.5, limit 90: visible 199; hidden 0.5 * 99 * (1 - 0.0005) = 49.47525
    # VWAP = (199 + 49.47525) / 2.5 = 99.3901
    out = book_walk(DEEP_HIDDEN).fill(SELL, 2.5, 90.0, arr(100.0, 99.0), TWO_SZ, 0.0)
    assert out.filled_qty == approx(2.5)
    assert out.vwap_price == approx(248.47525 / 2.5)
    assert out.consumed_qty == approx(2.0)


def test_hidden_liquidity_stops_at_the_limit():
    # marginal price m(x) = 101 * (1 + 0.01 * (x/2)^1.5); at x = 0.5 it is 101 * 1.00125 = 101.12625
    # so limit 101.12625 gives x_lim = 0.5: buy 3 fills 2 visible + 0.5 hidden, as above
    limit = 101.0 * (1.0 + 0.01 * 0.25**1.5)
    out = book_walk(DEEP_HIDDEN).fill(BUY, 3.0, limit, TWO_PX, TWO_SZ, 0.0)
    assert out.filled_qty == pytest.approx(2.5, rel=1e-12)
    assert out.vwap_price == pytest.approx(251.52525 / 2.5, rel=1e-12)
    assert out.vwap_price <= limit


def test_hidden_liquidity_is_seeded():
    # default ratio 0.3: H = 0.3 * 2 * U with U = 0.5 + rng.random(), so buying 10 fills 2 + H
    def hidden_fill(seed: int) -> FillOutcome:
        return book_walk(seed=seed).fill(BUY, 10.0, 110.0, TWO_PX, TWO_SZ, 0.0)

    a, b, c = hidden_fill(11), hidden_fill(11), hidden_fill(12)
    assert a == b
    assert a != c
    for seed, out in ((11, a), (12, c)):
        u = 0.5 + np.random.default_rng(seed).random()
        assert out.filled_qty == approx(2.0 + 0.3 * 2.0 * u)
        assert out.consumed_qty == approx(2.0)
        assert 2.0 + 0.3 < out.filled_qty < 2.0 + 0.9 + 1e-12
        assert out.vwap_price <= 110.0


def test_hidden_impact_is_convex():
    # hidden cost C(h) = P * (h + alpha*K*V/(e+1) * (h/V)^(e+1)); the impact part is
    # I(h) = P*alpha*K*V/(e+1) * (h/V)^2.5. For h = 0.5, 1, 1.5 (V = 2, P = 101):
    # I = 101*0.008*(0.25^2.5, 0.5^2.5, 0.75^2.5) = 0.808*(0.03125, 0.1767767, 0.4871393)
    # second difference I(1.5) - 2 I(1) + I(0.5) > 0 (convex), and the average premium grows
    # like h^1.5: premium(1) / premium(0.5) = 2^1.5 = 2.828..., not 2 (linear)
    costs = []
    for h in (0.5, 1.0, 1.5):
        out = book_walk(DEEP_HIDDEN).fill(BUY, 2.0 + h, 200.0, TWO_PX, TWO_SZ, 0.0)
        assert out.filled_qty == approx(2.0 + h)
        costs.append(out.vwap_price * out.filled_qty - 201.0)
    impact = [c - 101.0 * h for c, h in zip(costs, (0.5, 1.0, 1.5), strict=True)]
    assert impact[0] == pytest.approx(0.808 * 0.25**2.5, rel=1e-9)
    assert impact[2] - 2 * impact[1] + impact[0] > 0
    prem = [i / (101.0 * h) for i, h in zip(impact, (0.5, 1.0, 1.5), strict=True)]
    assert prem[1] / prem[0] == pytest.approx(2**1.5, rel=1e-9)
    assert prem[2] / prem[1] == pytest.approx(1.5**1.5, rel=1e-9)


def test_fills_inside_the_visible_book_do_not_draw():
    m = book_walk()
    before = m.get_state()
    m.fill(BUY, 4.0, 105.0, ASK_PX, ASK_SZ, 0.0)
    m.fill(SELL, 6.0, 95.0, BID_PX, BID_SZ, 0.0)
    assert m.get_state() == before
    m.fill(BUY, 7.0, 105.0, ASK_PX, ASK_SZ, 0.0)  # reaches past the visible book
    assert m.get_state() != before


def test_get_state_set_state_reproduces_the_next_fills():
    m = book_walk(seed=5)
    m.fill(BUY, 10.0, 110.0, TWO_PX, TWO_SZ, 0.0)
    state = pickle.loads(pickle.dumps(m.get_state()))
    nxt = [m.fill(BUY, 10.0, 110.0, TWO_PX, TWO_SZ, 0.0) for _ in range(3)]
    assert len(set(nxt)) == 3  # every call drew a new U
    m.set_state(state)
    assert [m.fill(BUY, 10.0, 110.0, TWO_PX, TWO_SZ, 0.0) for _ in range(3)] == nxt
    # a fresh model with another seed restored from the state continues the same sequence
    other = book_walk(seed=99)
    other.set_state(state)
    assert [other.fill(BUY, 10.0, 110.0, TWO_PX, TWO_SZ, 0.0) for _ in range(3)] == nxt
    with pytest.raises(ValueError, match="book_walk"):
        simple().set_state(state)
    s = simple()
    s.set_state(s.get_state())
    off = create_fill_model(FillModelConfig(enable=False), 3)
    off.set_state(pickle.loads(pickle.dumps(off.get_state())))


def test_book_walk_with_unknown_sizes_uses_the_2x_rule():
    # top size unknown: available = 2 * 3 = 6, slippage 1e-4 * 3/6 = 0.00005 -> 100.005
    out = book_walk().fill(BUY, 3.0, 105.0, arr(100.0, 101.0), arr(NAN, NAN), 0.0)
    assert out == FillOutcome(3.0, approx(100.005), 0.0)


# ---------------------------------------------------------------------------------------------
# simple model (the seed's)


def test_simple_2x_rule_when_size_unknown():
    # available = 2 * 2 = 4 -> full fill; slippage = 1e-4 * 2/4 = 0.00005 -> 100 * 1.00005
    for top in (NAN, 0.0):
        out = simple().fill(BUY, 2.0, 105.0, arr(100.0), arr(top), 0.0)
        assert out == FillOutcome(2.0, approx(100.005), 0.0)
    # sell: 100 * (1 - 0.00005) = 99.995; consumed is ignored under the 2x rule
    out = simple().fill(SELL, 2.0, 95.0, arr(100.0), arr(NAN), 50.0)
    assert out == FillOutcome(2.0, approx(99.995), 0.0)


def test_simple_partial_when_top_size_below_qty():
    # top 1.5 < qty 2: fills 1.5, slippage = 1e-4 * 1.5/1.5 = 1e-4 -> 100.01, consumed 1.5
    out = simple().fill(BUY, 2.0, 105.0, arr(100.0, 101.0), arr(1.5, 10.0), 0.0)
    assert out == FillOutcome(1.5, approx(100.01), 1.5)
    # top 3 with 1 already consumed: A = 2 -> fills 2 at 100.01
    out = simple().fill(BUY, 5.0, 105.0, arr(100.0), arr(3.0), 1.0)
    assert out == FillOutcome(2.0, approx(100.01), 2.0)
    # top fully consumed -> nothing
    assert simple().fill(BUY, 5.0, 105.0, arr(100.0), arr(3.0), 3.0) == (0.0, 0.0, 0.0)
    # top 8, qty 2: slippage 1e-4 * 2/8 = 0.000025 -> 100.0025
    out = simple().fill(BUY, 2.0, 105.0, arr(100.0), arr(8.0), 0.0)
    assert out == FillOutcome(2.0, approx(100.0025), 2.0)


def test_simple_limit_reduces_the_fill():
    # top 10, buy 10 would price at 100 * (1 + 1e-4 * 10/10) = 100.01 > limit 100.005;
    # q_lim = (100.005/100 - 1) * 10 / 1e-4 = 0.00005 * 1e5 = 5 -> 5 @ 100.005
    out = simple().fill(BUY, 10.0, 100.005, arr(100.0), arr(10.0), 0.0)
    assert out.filled_qty == pytest.approx(5.0, rel=1e-9)
    assert out.vwap_price == pytest.approx(100.005, rel=1e-12)
    assert out.vwap_price <= 100.005
    # sell mirror: 99.995 limit -> 5 @ 99.995
    out = simple().fill(SELL, 10.0, 99.995, arr(100.0), arr(10.0), 0.0)
    assert out.filled_qty == pytest.approx(5.0, rel=1e-9)
    assert out.vwap_price >= 99.995
    # best beyond the limit -> nothing
    assert simple().fill(BUY, 1.0, 99.9, arr(100.0), arr(10.0), 0.0) == (0.0, 0.0, 0.0)


def test_simple_partial_off_and_slippage_off():
    # partial off, top 1, buy 2: whole order at 100 * (1 + 1e-4 * 2/1) = 100.02; consumed 1
    out = simple(partial_enable=False).fill(BUY, 2.0, 100.05, arr(100.0), arr(1.0), 0.0)
    assert out == FillOutcome(2.0, approx(100.02), 1.0)
    # ... capped at the limit 100.015
    out = simple(partial_enable=False).fill(BUY, 2.0, 100.015, arr(100.0), arr(1.0), 0.0)
    assert out == FillOutcome(2.0, approx(100.015), 1.0)
    # top exhausted (A = 0): the forced fill is priced at the limit
    out = simple(partial_enable=False).fill(BUY, 2.0, 100.015, arr(100.0), arr(1.0), 5.0)
    assert out == FillOutcome(2.0, approx(100.015), 0.0)
    # limit not marketable: priced at the best, never better than the market
    out = simple(partial_enable=False).fill(BUY, 2.0, 99.0, arr(100.0), arr(1.0), 0.0)
    assert out == FillOutcome(2.0, approx(100.0), 1.0)
    # slippage off: min(qty, A) at px[0], no limit reduction beyond px[0] itself
    out = simple(slippage_enable=False).fill(BUY, 10.0, 100.0, arr(100.0), arr(4.0), 0.0)
    assert out == FillOutcome(4.0, 100.0, 4.0)


# ---------------------------------------------------------------------------------------------
# fill model off


def test_fill_model_off_fills_fully_at_the_quote():
    off = create_fill_model(FillModelConfig(enable=False), 0)
    # ignores depth (1 at the top), consumed (100) and the limit (50)
    assert off.fill(BUY, 5.0, 50.0, ASK_PX, ASK_SZ, 100.0) == (5.0, 100.0, 0.0)
    assert off.fill(SELL, 5.0, 500.0, BID_PX, BID_SZ, 0.0) == (5.0, 100.0, 0.0)
    assert off.fill(BUY, 5.0, 50.0, arr(100.0), arr(NAN), 0.0) == (5.0, 100.0, 0.0)


# ---------------------------------------------------------------------------------------------
# properties


@st.composite
def books(draw):
    """One book side (as the buy side sees it: ascending), an order, and the consumed counter."""
    n = draw(st.integers(1, 30))
    best = draw(st.floats(1.0, 1e5))
    steps = draw(st.lists(st.floats(0.0, 0.01), min_size=n - 1, max_size=n - 1))
    rel = np.concatenate([[0.0], np.cumsum(steps)])
    size = st.floats(1e-6, 1e3)
    if draw(st.booleans()):  # some books carry unknown (nan) sizes, the top one included
        size = st.one_of(size, st.just(NAN))
    sizes = draw(st.lists(size, min_size=n, max_size=n))
    sz = np.array(sizes, dtype=np.float64)
    visible = float(np.nansum(sz))
    qty = draw(st.floats(1e-6, 2e3))
    limit_bps = draw(st.floats(-50.0, 500.0))
    consumed = draw(st.one_of(st.just(0.0), st.floats(0.0, 1.2 * visible)))
    return best, rel, sz, qty, limit_bps, consumed


def side_book(side: int, best: float, rel: np.ndarray, limit_bps: float):
    """Prices for the side taken: asks ascend from best, bids descend from it."""
    px = best * (1.0 + side * rel)
    limit = best * (1.0 + side * limit_bps * 1e-4)
    return px, limit


CONFIGS = [
    FillModelConfig(kind="simple"),
    FillModelConfig(),
    DEEP_HIDDEN,
    FillModelConfig(slippage_alpha=0.0),
    FillModelConfig(impact_exponent=3.0, slippage_alpha=0.002),
]
TOL = 1e-9


@settings(max_examples=300, deadline=None)
@given(
    b=books(),
    side=st.sampled_from([BUY, SELL]),
    cfg=st.sampled_from(CONFIGS),
    seed=st.integers(0, 2**32),
)
def test_property_fill_within_qty_limit_and_visible_depth(b, side, cfg, seed):
    best, rel, sz, qty, limit_bps, consumed = b
    px, limit = side_book(side, best, rel, limit_bps)
    out = create_fill_model(cfg, seed).fill(side, qty, limit, px, sz, consumed)
    assert 0.0 <= out.filled_qty <= qty * (1 + 1e-12)
    visible_left = max(float(np.nansum(sz)) - consumed, 0.0)
    assert 0.0 <= out.consumed_qty <= visible_left * (1 + 1e-12) + 1e-12
    assert out.consumed_qty <= out.filled_qty * (1 + 1e-12)
    if out.filled_qty == 0.0:
        assert out.vwap_price == 0.0
    else:
        # a buy's VWAP lies in [best, limit], a sell's in [limit, best]
        assert side * out.vwap_price >= side * px[0] - TOL * best
        assert side * out.vwap_price <= side * limit + TOL * best


@settings(max_examples=200, deadline=None)
@given(
    b=books(),
    cfg=st.sampled_from(CONFIGS),
    seed=st.integers(0, 2**32),
    frac=st.floats(1e-6, 1.0),
)
def test_property_buy_vwap_non_decreasing_in_qty(b, cfg, seed, frac):
    best, rel, sz, qty, limit_bps, consumed = b
    px, limit = side_book(BUY, best, rel, limit_bps)
    small = qty * frac
    assume(small > 0)
    # fresh models with the same seed: the same U if both reach the hidden liquidity
    lo = create_fill_model(cfg, seed).fill(BUY, small, limit, px, sz, consumed)
    hi = create_fill_model(cfg, seed).fill(BUY, qty, limit, px, sz, consumed)
    assert hi.filled_qty >= lo.filled_qty * (1 - 1e-12)
    if lo.filled_qty > 0:
        assert hi.vwap_price >= lo.vwap_price * (1 - 1e-12)


@settings(max_examples=200, deadline=None)
@given(
    b=books(),
    side=st.sampled_from([BUY, SELL]),
    kind=st.sampled_from(["simple", "book_walk"]),
    seed=st.integers(0, 2**32),
)
def test_property_partial_off_always_fills_fully(b, side, kind, seed):
    best, rel, sz, qty, limit_bps, consumed = b
    px, limit = side_book(side, best, rel, limit_bps)
    cfg = FillModelConfig(kind=kind, partial_enable=False)
    out = create_fill_model(cfg, seed).fill(side, qty, limit, px, sz, consumed)
    assert out.filled_qty == qty
    # never better than the best price; the forced rest is at the limit, or at the best price left
    # on the book when that is beyond the limit (so never worse than the deepest level)
    assert side * out.vwap_price >= side * px[0] - TOL * best
    assert side * out.vwap_price <= max(side * limit, side * px[-1]) + TOL * best


@settings(max_examples=200, deadline=None)
@given(
    b=books(),
    cfg=st.sampled_from([FillModelConfig(kind="simple"), FillModelConfig(hidden_depth_ratio=0.0)]),
)
def test_property_sells_mirror_buys(b, cfg):
    # a sell on bids best*(1 - rel) with limit best*(1 - bps) fills the same quantity as a buy on
    # asks best*(1 + rel) with limit best*(1 + bps), at a VWAP mirrored around best (no hidden
    # liquidity here: its price P*(1 +- premium) is a mirror only to first order)
    best, rel, sz, qty, limit_bps, consumed = b
    assume(np.all(np.abs(rel - limit_bps * 1e-4) > 1e-9))  # no level on the limit within rounding
    outs = []
    for side in (BUY, SELL):
        px, limit = side_book(side, best, rel, limit_bps)
        outs.append(create_fill_model(cfg, 0).fill(side, qty, limit, px, sz, consumed))
    buy, sell = outs
    tol = {"rel": 1e-6, "abs": 1e-9 * qty}
    assert sell.filled_qty == pytest.approx(buy.filled_qty, **tol)
    assert sell.consumed_qty == pytest.approx(buy.consumed_qty, **tol)
    if buy.filled_qty > 0 and sell.filled_qty > 0:
        assert best - sell.vwap_price == pytest.approx(
            buy.vwap_price - best, rel=1e-6, abs=1e-9 * best
        )
