"""Hand-built markets through the whole local engine: entries, exits, hedges, PnL by hand.

Books: Binance mid 100 USDT (spread 0.02), Upbit mid = 100 * 1400 * (1 + premium) KRW with a
1 bps half spread, FX mid 1400 KRW/USDT. Latency 30 ms (Upbit) / 120 ms (Binance), no jitter,
settlement every 250 ms (after the 1 s feed-latency bound). The premium level barely moves
(half-life 1e6 s), so the level is the first premium seen (2 %). Entries need the cost model's
predicted net edge (deviation less fees 30 bps, the books' slippage, the latency prior 4 * 0.5 bps,
the level-drift prior 0.3 * deviation and the exit-band prior 5 bps) above the 5 bps margin.
"""

from __future__ import annotations

import pytest

from tests.books import T0, S, premium_rows, run_rows

FX = 1400.0


def _ids(log):
    return [r["trade_id"] for r in log]


def test_round_trip_pnl_by_hand_with_coin_fee_and_fx():
    # premium 2 % -> 3 % at t=30 (upbit rich: sell upbit, buy binance) -> back to 2 % at t=60
    rows = premium_rows("BTC", [(0, 0.02), (30, 0.03), (60, 0.02)], end_s=120)
    rep, log = run_rows(rows, ["BTC"])
    assert _ids(log) == ["BTC-E-1", "BTC-H-2", "BTC-X-3"]
    entry, hedge, exit_ = log
    # entry decided on the upbit book at t=30.2; qty = 3000 USD / 100 = 30 (lot 0.01)
    assert entry["decision_ts_ns"] == T0 + round(30.2 * S)
    assert entry["reason"] == "upbit_rich" and entry["quantity"] == 30.0
    assert entry["buy_exchange"] == "binance" and entry["sell_exchange"] == "upbit"
    assert entry["buy_vwap"] == pytest.approx(100.01)  # binance best ask
    assert entry["sell_vwap"] == pytest.approx(144185.58)  # 144200 - 1 bps
    # binance takes 10 bps of the bought coin: 30 -> 29.97 received
    assert entry["buy_fee"] == pytest.approx(0.03) and entry["buy_fee_asset"] == "BTC"
    assert entry["coin_delta_binance"] == pytest.approx(29.97)
    assert entry["coin_delta_upbit"] == pytest.approx(-30.0)
    # the 0.03 BTC imbalance is bought back on upbit (where the position is short) at settlement
    assert hedge["reason"] == "leg_imbalance" and hedge["buy_exchange"] == "upbit"
    assert hedge["quantity"] == pytest.approx(0.03) and hedge["sell_exchange"] is None
    # the binance leg arrives at 30.32; every book with venue time <= 30.32 is in once the
    # clock passed 30.32 + the 1 s feed-latency bound: it settles at the end of chunk 31.5
    assert hedge["decision_ts_ns"] == T0 + round(31.5 * S)
    # the exit trades what is held: 29.97 on both venues, when the premium is back at the level
    assert exit_["reason"] == "band" and exit_["quantity"] == pytest.approx(29.97)
    assert exit_["buy_vwap"] == pytest.approx(142814.28) and exit_["sell_vwap"] == pytest.approx(99.99)

    # cash flows in USD, KRW at 1400 per USDT, fees as charged
    entry_cash = -30 * 100.01 + 30 * 144185.58 * (1 - 0.0005) / FX
    hedge_cash = -0.03 * 144214.42 * (1 + 0.0005) / FX
    exit_cash = -29.97 * 142814.28 * (1 + 0.0005) / FX + 29.97 * 99.99 * (1 - 0.001)
    assert entry["cash_flow_usd"] == pytest.approx(entry_cash, rel=1e-9)
    assert hedge["cash_flow_usd"] == pytest.approx(hedge_cash, rel=1e-9)
    assert exit_["cash_flow_usd"] == pytest.approx(exit_cash, rel=1e-9)
    pnl = entry_cash + hedge_cash + exit_cash  # flat afterwards: no residual to mark
    assert pnl == pytest.approx(19.68358, abs=1e-4)
    assert exit_["round_trip_closed"] is True
    assert exit_["round_trip_pnl_usd"] == pytest.approx(pnl, rel=1e-9)
    assert rep["total_pnl_usd"] == pytest.approx(pnl, rel=1e-9)
    assert rep["realized_pnl_usd"] == pytest.approx(pnl, rel=1e-9)
    assert rep["round_trips_completed"] == 1 and rep["win_rate_pct"] == 100.0
    fees = 30 * 100.01 * 0.001 + (30 * 144185.58 * 0.0005 + 0.03 * 144214.42 * 0.0005
                                  + 29.97 * 142814.28 * 0.0005) / FX + 29.97 * 99.99 * 0.001
    assert rep["fees_usd"] == pytest.approx(fees, rel=1e-9)
    # balances: initial + fills - fees, per venue and asset
    b = rep["balances"]
    assert b["binance"]["USDT"]["final"] - b["binance"]["USDT"]["initial"] == pytest.approx(
        -30 * 100.01 + 29.97 * 99.99 * 0.999, rel=1e-9)
    assert b["binance"]["BTC"]["final"] - b["binance"]["BTC"]["initial"] == pytest.approx(0.0, abs=1e-9)


def test_upbit_cheap_entry_buys_upbit_and_sells_binance():
    rows = premium_rows("BTC", [(0, 0.02), (30, 0.01), (60, 0.02)], end_s=120)
    _, log = run_rows(rows, ["BTC"])
    entry = log[0]
    assert entry["reason"] == "upbit_cheap"
    assert entry["buy_exchange"] == "upbit" and entry["sell_exchange"] == "binance"
    assert entry["buy_vwap"] == pytest.approx(141400 + 14.14)  # 100*1400*1.01 + 1 bps
    assert entry["sell_vwap"] == pytest.approx(99.99)
    exit_ = next(r for r in log if r["leg_kind"] == "exit")
    assert exit_["reason"] == "band" and exit_["sell_exchange"] == "upbit"


def test_deviation_below_costs_does_not_trade():
    # +40 bps is below the 48 bps threshold (plus the spreads): no trade at all
    rows = premium_rows("BTC", [(0, 0.02), (30, 0.0240), (60, 0.02)], end_s=120)
    rep, log = run_rows(rows, ["BTC"])
    assert log == [] and rep["trades_executed"] == 0


def test_stop_loss_exit():
    # entry at +100 bps, then the premium runs another +100 bps against the position
    rows = premium_rows("BTC", [(0, 0.02), (30, 0.03), (60, 0.04)], end_s=120)
    rep, log = run_rows(rows, ["BTC"])
    exit_ = next(r for r in log if r["leg_kind"] == "exit")
    assert exit_["reason"] == "stop_loss"
    assert exit_["decision_ts_ns"] == T0 + round(60.2 * S)
    assert rep["round_trips_completed"] == 1 and rep["win_rate_pct"] == 0.0
    assert rep["realized_pnl_usd"] < 0


def test_max_holding_exit():
    rows = premium_rows("BTC", [(0, 0.02), (30, 0.03)], end_s=200)
    _, log = run_rows(rows, ["BTC"], max_holding_s=100.0)
    exit_ = next(r for r in log if r["leg_kind"] == "exit")
    assert exit_["reason"] == "max_holding"
    # entry at 30.2; the first event at or after 130.2 is the upbit book at 130.2
    assert exit_["decision_ts_ns"] == T0 + round(130.2 * S)


def test_partial_leg_60_of_100_is_unwound_by_hedge_to_within_one_lot():
    # upbit shows only 18 BTC at its best bid and nothing behind it; no hidden depth
    rows = premium_rows("BTC", [(0, 0.02), (30, 0.03)], end_s=100, levels=1, u_sizes=[18.0])
    rep, log = run_rows(rows, ["BTC"], fill_model_hidden_depth_ratio=0.0)
    entry, hedge = log[0], log[1]
    assert entry["trade_result"] == "partial"
    assert entry["sell_fill_ratio"] == pytest.approx(0.6) and entry["buy_fill_ratio"] == 1.0
    # long 29.97 on binance, short 18 on upbit: sell the 11.97 excess on binance
    assert hedge["leg_kind"] == "hedge" and hedge["sell_exchange"] == "binance"
    assert hedge["quantity"] == pytest.approx(11.97)
    net_upbit = entry["coin_delta_upbit"] + hedge["coin_delta_upbit"]
    net_binance = entry["coin_delta_binance"] + hedge["coin_delta_binance"]
    assert abs(net_upbit + net_binance) < 0.01  # within one lot
    assert rep["partial_fills_count"] >= 1 and rep["hedges_count"] >= 1


def test_fill_model_off_fills_in_full_at_the_quote():
    rows = premium_rows("BTC", [(0, 0.02), (30, 0.03), (60, 0.02)], end_s=120, levels=1,
                        u_sizes=[1.0])
    _, log = run_rows(rows, ["BTC"], fill_model_enable=False)
    entry = log[0]
    assert entry["trade_result"] == "full"
    assert entry["sell_fill_ratio"] == 1.0 and entry["sell_vwap"] == pytest.approx(144185.58)
    assert entry["sell_slippage_bps"] == 0.0 and entry["buy_slippage_bps"] == 0.0


def test_missing_fx_is_counted_and_never_traded():
    rows = [r for r in premium_rows("BTC", [(0, 0.02), (30, 0.03), (60, 0.02)], end_s=120)
            if r["symbol"] != "USDT"]
    rep, log = run_rows(rows, ["BTC"])
    assert log == []
    assert rep["signals_skipped_by_reason"]["no_fx"] > 200


def test_max_open_round_trips_refuses_the_second_symbol():
    rows = (premium_rows("BTC", [(0, 0.02), (30, 0.03), (90, 0.02)], end_s=150)
            + premium_rows("ETH", [(0, 0.02), (40, 0.03), (90, 0.02)], end_s=150, b_mid=50.0))
    rep, log = run_rows(rows, ["BTC", "ETH"], max_open_round_trips=1)
    assert [r["symbol"] for r in log if r["leg_kind"] == "entry"] == ["BTC"]
    assert rep["refusals"] == {"max_open_round_trips": 1}  # edge-triggered: refused once


def test_entry_clipped_by_available_balance():
    # only 1,000 USDT on binance: the 30 BTC entry is clipped to what 1000 USDT buys at the limit
    rows = premium_rows("BTC", [(0, 0.02), (30, 0.03), (60, 0.02)], end_s=120)
    rep, log = run_rows(rows, ["BTC"], initial_usdt=1000.0)
    entry = log[0]
    limit = 100.01 * (1 + 15 / 1e4)
    assert entry["quantity"] == pytest.approx(int(1000 / limit / 0.01) * 0.01)
    assert rep["clips"] == {"balance_binance_USDT": 1}
    assert rep["balances"]["binance"]["USDT"]["final"] >= 0


def test_bad_books_are_counted_by_reason_and_never_traded_on():
    from tests.books import book

    good = premium_rows("BTC", [(0, 0.02), (60, 0.02)], end_s=120)
    # at t=30..35 upbit "shows" a 5 % premium, but only in broken books: none may be traded
    rich = 100 * 1400 * 1.05
    bad = [
        book(30.3, "upbit", "BTC", [(rich + 10, 1)], [(rich, 1)]),  # crossed
        book(31.3, "upbit", "BTC", [(float("nan"), 1)], [(rich, 1)]),  # NaN price
        book(32.3, "upbit", "BTC", [(rich, -1)], [(rich + 1, 1)]),  # negative size
        book(33.3, "upbit", "BTC", [(rich, 1), (rich + 5, 1)], [(rich + 20, 1)]),  # unsorted bids
        book(34.3, "upbit", "BTC", [], [(rich, 1)]),  # empty side
        book(35.3, "upbit", "BTC", [(0.0, 1)], [(rich, 1)]),  # zero price
        book(36.3, "upbit", "BTC", [(rich, 1)], [(rich + 1, 1)], quote="BTC"),  # unknown market
    ]
    rep, log = run_rows(good + bad, ["BTC"])
    assert log == []
    assert rep["events_rejected_by_reason"] == {"crossed": 1, "non_finite": 1, "non_positive": 2,
                                                "unsorted": 1, "empty": 1, "unknown_market": 1}
    assert rep["events_rejected"] == 7


def test_topn_leaver_exits_only_until_flat_and_a_joiner_trades_after_warm_up():
    # BTC enters at 30, leaves TopN at 45 with the position open: it still exits (band, at 60),
    # then never enters again although its premium jumps at 100. ETH joins at 50 and trades.
    rows = (premium_rows("BTC", [(0, 0.02), (30, 0.03), (60, 0.02), (100, 0.03), (130, 0.02)],
                         end_s=160)
            + premium_rows("ETH", [(0, 0.02), (110, 0.03), (140, 0.02)], end_s=160, b_mid=50.0))
    rep, log = run_rows(rows, ["BTC"], universe=[(45.0, ["ETH"])])
    btc = [(r["leg_kind"], r["reason"]) for r in log if r["symbol"] == "BTC"]
    assert btc == [("entry", "upbit_rich"), ("hedge", "leg_imbalance"), ("exit", "band")]
    eth = [r for r in log if r["symbol"] == "ETH"]
    assert eth and eth[0]["leg_kind"] == "entry"
    assert eth[0]["decision_ts_ns"] == T0 + round(110.2 * S)
    assert rep["symbols"] == ["BTC", "ETH"] and rep["round_trips_completed"] == 2


@pytest.mark.parametrize("batch_rows", [7, 1000])
def test_a_queued_entry_is_dropped_when_the_symbol_leaves_topn_first(batch_rows):
    # BTC's entry signal is at 30.2; BTC leaves TopN at 30.1, after the decision point was
    # queued in a large batch but before it is reached: no entry, whatever the batch size
    rows = premium_rows("BTC", [(0, 0.02), (30, 0.03), (60, 0.02)], end_s=120)
    rep, log = run_rows(rows, ["BTC"], batch_rows=batch_rows, universe=[(30.1, [])])
    assert log == [] and rep["trades_executed"] == 0
