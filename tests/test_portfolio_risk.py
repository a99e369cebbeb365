"""PortfolioState balances and fees, RiskGuard limits: hand-computed cases."""

from __future__ import annotations

import math

import pytest

from common.portfolio.state import BalanceError, FeeSchedule, PortfolioState
from common.risk.guard import LegNeed, RiskGuard, RiskLimits, floor_lot
from common.types import LegFill, Side


def leg(exchange, side, qty, px, fee, fee_asset, usd_per_quote=1.0):
    return LegFill(exchange, int(side), qty, qty, px, px, px, px, fee, fee_asset, 0, 0,
                   usd_per_quote)


def test_fees_binance_in_received_asset_upbit_in_krw():
    f = FeeSchedule(upbit_bps=5, binance_bps=10)
    assert f.fee_of(1, Side.BUY, 2.0, 100.0, "BTC") == pytest.approx((0.002, "BTC"))
    assert f.fee_of(1, Side.SELL, 2.0, 100.0, "BTC") == pytest.approx((0.2, "USDT"))
    assert f.fee_of(0, Side.BUY, 2.0, 140000.0, "BTC") == pytest.approx((140.0, "KRW"))
    assert f.fee_of(0, Side.SELL, 2.0, 140000.0, "BTC") == pytest.approx((140.0, "KRW"))


def test_apply_fills_moves_coin_quote_and_fee():
    p = PortfolioState()
    p.fund("binance", "USDT", 1000.0)
    p.fund("upbit", "BTC", 1.0)
    p.apply_fill(leg("binance", Side.BUY, 2.0, 100.0, 0.002, "BTC"), "BTC")
    assert p.balance("binance", "USDT") == pytest.approx(800.0)
    assert p.balance("binance", "BTC") == pytest.approx(1.998)
    p.apply_fill(leg("upbit", Side.SELL, 1.0, 140000.0, 70.0, "KRW"), "BTC")
    assert p.balance("upbit", "BTC") == 0.0
    assert p.balance("upbit", "KRW") == pytest.approx(139930.0)
    with pytest.raises(BalanceError):
        p.apply_fill(leg("upbit", Side.SELL, 0.5, 140000.0, 0.0, "KRW"), "BTC")


def test_reservations_limit_what_is_available():
    p = PortfolioState()
    p.fund("binance", "USDT", 1000.0)
    p.reserve("binance", "USDT", 600.0)
    assert p.available("binance", "USDT") == pytest.approx(400.0)
    with pytest.raises(BalanceError):
        p.reserve("binance", "USDT", 500.0)
    p.release("binance", "USDT", 600.0)
    assert p.available("binance", "USDT") == pytest.approx(1000.0)


def test_leg_cash_flow_and_coin_delta_in_usd():
    buy = leg("binance", Side.BUY, 2.0, 100.0, 0.002, "BTC")
    assert buy.cash_flow_usd == pytest.approx(-200.0) and buy.coin_delta == pytest.approx(1.998)
    assert buy.fee_usd == pytest.approx(0.2)
    sell = leg("upbit", Side.SELL, 1.0, 140000.0, 70.0, "KRW", usd_per_quote=1 / 1400)
    assert sell.cash_flow_usd == pytest.approx((140000 - 70) / 1400)
    assert sell.fee_usd == pytest.approx(0.05) and sell.coin_delta == -1.0


def _funded():
    p = PortfolioState()
    p.fund("binance", "USDT", 100_000.0)
    p.fund("upbit", "BTC", 100.0)
    return p


LEGS = [LegNeed("binance", "USDT", 100.0), LegNeed("upbit", "BTC", 1.0)]


def check(guard, qty=30.0, **kw):
    args = dict(qty=qty, price_usd=100.0, lot=0.01, legs=LEGS, portfolio=_funded(),
                symbol_exposure_usd=0.0, total_exposure_usd=0.0, open_round_trips=0,
                total_pnl_usd=0.0)
    args.update(kw)
    return guard.check_entry(**args)


def test_each_risk_limit_refuses_or_clips():
    g = RiskGuard(RiskLimits(max_notional_per_trade_usd=2000, max_exposure_per_symbol_usd=2500,
                             max_total_exposure_usd=10_000, max_open_round_trips=2,
                             max_loss_usd=100))
    assert check(g, total_pnl_usd=-101).refusal == "loss_limit"
    assert check(g, open_round_trips=2).refusal == "max_open_round_trips"
    d = check(g)  # 30 * 100 = 3000 > 2000 per trade: clipped to 20
    assert d.quantity == 20.0 and d.clips == ("notional_per_trade",)
    d = check(g, symbol_exposure_usd=1500)  # room for 1000 USD = 10
    assert d.quantity == 10.0 and "exposure_per_symbol" in d.clips
    assert check(g, symbol_exposure_usd=2500).refusal == "exposure_per_symbol"
    d = check(g, total_exposure_usd=9_500)
    assert d.quantity == 5.0 and "total_exposure" in d.clips
    assert check(g, total_exposure_usd=10_000).refusal == "total_exposure"
    assert g.refusals == {"loss_limit": 1, "max_open_round_trips": 1, "exposure_per_symbol": 1,
                          "total_exposure": 1}


def test_clipped_by_available_balance_and_rounded_down_to_a_lot():
    g = RiskGuard(RiskLimits())
    p = _funded()
    p.reserve("upbit", "BTC", 99.995)  # 0.005 BTC left on upbit: below one lot
    d = g.check_entry(qty=30.0, price_usd=100.0, lot=0.01, legs=LEGS, portfolio=p,
                      symbol_exposure_usd=0, total_exposure_usd=0, open_round_trips=0,
                      total_pnl_usd=0)
    assert d.refusal == "balance_upbit_BTC"
    p2 = PortfolioState()
    p2.fund("binance", "USDT", 1234.0)
    p2.fund("upbit", "BTC", 100.0)
    d = g.check_entry(qty=30.0, price_usd=100.0, lot=0.01, legs=LEGS, portfolio=p2,
                      symbol_exposure_usd=0, total_exposure_usd=0, open_round_trips=0,
                      total_pnl_usd=0)
    assert d.quantity == 12.34 and d.clips == ("balance_binance_USDT",)


def test_unwinds_are_never_refused_by_exposure_or_loss():
    g = RiskGuard(RiskLimits(max_loss_usd=1, max_open_round_trips=1))
    d = g.check_unwind(5.0, 0.01, [LegNeed("upbit", "BTC", 1.0)], _funded())
    assert d.quantity == 5.0 and d.refusal is None


def test_floor_lot():
    assert floor_lot(12.3456, 0.01) == 12.34
    assert floor_lot(0.3, 0.1) == 0.3  # float noise must not lose a lot
    assert floor_lot(0.0099, 0.01) == 0.0


def test_derived_lot_is_a_whole_multiple_of_the_exchange_step():
    from common.risk.guard import derived_lot

    assert derived_lot(95_000.0, 1.0) == 0.00001  # a power of ten worth at most 1 USD
    assert derived_lot(95_000.0, 1.0, 0.0001) == 0.0001  # a coarser step wins
    assert derived_lot(0.35, 1.0, 0.001) == 1.0  # a finer step keeps the power of ten
    assert derived_lot(0.35, 1.0, 5.0) == 5.0  # never less than one step
    assert derived_lot(3.0, 100.0, 3.0) == 9.0  # 10 rounded down to a multiple of 3
    assert derived_lot(95_000.0, 1.0, math.nan) == 0.00001  # unknown step: ignored
    with pytest.raises(ValueError):
        derived_lot(0.0, 1.0)
