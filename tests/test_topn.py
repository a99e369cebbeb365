"""TopN selection: on the recorded Upbit market list and Binance exchangeInfo with known tickers,
and through the real REST clients against the loopback fakes."""

from __future__ import annotations

import asyncio
import dataclasses

import aiohttp
import orjson
import pytest

from common.marketdata.binance import BinanceRest, BinanceSymbol, BinanceTicker, parse_exchange_info
from common.marketdata.topn import TopNProvider, select_topn
from common.marketdata.upbit import UpbitRest, UpbitTicker, parse_markets
from tests.fakes import recordings as rec
from tests.fakes.exchanges import DEFAULT_ASSETS, FakeAsset, FakeExchanges

FX = 1400.0
pytestmark = pytest.mark.skipif(not rec.available("UPBIT.0", "BINANCE.0"),
                                reason="exchange recordings not available")


@pytest.fixture(scope="module")
def lists():
    markets = parse_markets(orjson.loads(rec.rest_body("UPBIT.0", "/v1/market/all")))
    info = parse_exchange_info(orjson.loads(rec.rest_body("BINANCE.0", "/api/v3/exchangeInfo")))
    return markets, info


def tickers(markets, info, values: dict[str, tuple[float, float]], price_factor=None):
    """Known tickers: every KRW market at a 2 % premium with tiny volume unless given."""
    up, bn = {"KRW-USDT": UpbitTicker("KRW-USDT", FX, 1e12)}, {}
    for m in markets:
        if m.quote != "KRW" or m.base + "USDT" not in info:
            continue
        uv, bv = values.get(m.base, (1e5, 1e5))
        f = (price_factor or {}).get(m.base, 1.0)
        up[m.market] = UpbitTicker(m.market, 10.0 * FX * 1.02 * f, uv * FX)
        bn[m.base + "USDT"] = BinanceTicker(m.base + "USDT", 10.0, bv)
    return up, bn


def test_ranking_on_recorded_lists(lists):
    markets, info = lists
    values = {"BTC": (5e8, 1e10), "ETH": (3e8, 2e8), "XRP": (9e8, 4e8), "ADA": (1e8, 9e9),
              "SC": (9e9, 9e9), "TRX": (8e9, 8e9), "NEO": (7e9, 7e9)}
    markets = [dataclasses.replace(m, warning=True) if m.base == "SC" else m for m in markets]
    up, bn = tickers(markets, info, values, price_factor={"TRX": 1.5})
    sel = select_topn(markets, up, info, bn, 4, deny=("NEO",), outlier_bps=1500.0)
    assert sel.members == ("BTC", "XRP", "ETH", "ADA")  # by min(upbit, binance) USD value
    assert sel.excluded["SC"] == "upbit_warning"
    assert sel.excluded["TRX"] == "premium_outlier"
    assert sel.excluded["NEO"] == "denied"
    assert sel.fx_krw == FX and sel.median_premium_bps == pytest.approx(200.0)
    top = sel.ranked[0]
    assert (top.symbol, top.binance_pair, top.score_usd) == ("BTC", "BTCUSDT", 5e8)
    assert top.premium_bps == pytest.approx(200.0)
    assert len(sel.ranked) == 65 - 3  # listed on both, minus the three excluded


def test_aliases_and_binance_status(lists):
    markets, info = lists
    info = dict(info)
    info["BTTCUSDT"] = BinanceSymbol("BTTCUSDT", "BTTC", "USDT", True, 1.0, 1e-7)
    info["ETHUSDT"] = dataclasses.replace(info["ETHUSDT"], trading=False)
    values = {"BTT": (9e9, 9e9), "ETH": (8e9, 8e9), "BTC": (1e9, 1e9)}
    up, bn = tickers(markets, info, values)
    bn["BTTCUSDT"] = BinanceTicker("BTTCUSDT", 10.0, 9e9)
    sel = select_topn(markets, up, info, bn, 2, aliases={"BTT": "BTTC"})
    assert sel.members == ("BTT", "BTC")
    assert sel.ranked[0].binance_pair == "BTTCUSDT"
    assert sel.excluded["ETH"] == "binance_not_trading"


def test_no_fx_means_no_selection(lists):
    markets, info = lists
    up, bn = tickers(markets, info, {})
    del up["KRW-USDT"]
    assert select_topn(markets, up, info, bn, 5).members == ()


async def _select(fakes: FakeExchanges, size: int, **kw):
    env = fakes.env()
    async with aiohttp.ClientSession() as session:
        provider = TopNProvider(UpbitRest(session, env["UPBIT_REST_URL"]),
                                BinanceRest(session, env["BINANCE_REST_URL"]), size, **kw)
        return await provider.select(), provider


def test_provider_over_rest_with_recorded_lists():
    """The real REST clients against the fakes serving the recorded lists plus our assets."""
    with FakeExchanges(recorded_lists=True) as fakes:
        sel, provider = asyncio.run(_select(fakes, 5))
    by_value = sorted(DEFAULT_ASSETS, key=lambda a: -min(a.upbit_value_usd, a.binance_value_usd))
    assert sel.members == tuple(a.symbol for a in by_value[:5])
    assert sel.fx_krw == pytest.approx(FX, rel=1e-3)
    assert provider.step_sizes["BTC"] > 0
    # recorded-only markets have no Binance ticker on the fake: listed but not ranked
    assert sel.excluded.get("NEO") == "no_ticker"


def test_provider_exclusions_over_rest():
    assets = DEFAULT_ASSETS[:3] + (
        FakeAsset("WARN", 10.0, 5e9, 5e9, warning=True),
        FakeAsset("FAR", 10.0, 5e9, 5e9, premium_offset_bps=3000.0),
        FakeAsset("BTT", 0.001, 4e9, 4e9, binance_base="BTTC"),
        FakeAsset("HALT", 1.0, 5e9, 5e9, binance_trading=False),
    )
    with FakeExchanges(assets) as fakes:
        sel, _ = asyncio.run(_select(fakes, 3, aliases={"BTT": "BTTC"}, deny=("ETH",)))
        fixed, _ = asyncio.run(_select(fakes, 3, fixed=("XRP", "NOPE", "BTC")))
    assert sel.members == ("BTT", "BTC", "XRP")
    assert sel.excluded == {"WARN": "upbit_warning", "FAR": "premium_outlier",
                            "HALT": "binance_not_trading", "ETH": "denied"}
    assert fixed.members == ("XRP", "BTC")
    assert fixed.excluded["NOPE"] == "not_listed_on_both"
