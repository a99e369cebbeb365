"""TopN: which symbols to trade, chosen from both exchanges' public market lists and tickers.

A symbol qualifies when Upbit lists ``KRW-<X>`` (not under an investment warning) and Binance
lists ``<alias(X)>USDT`` with status TRADING, and it is not denied. Its premium, from last trade
prices at the FX rate of Upbit's ``KRW-USDT``, must lie within ``PREMIUM_OUTLIER_BPS`` of the
cross-symbol median (a far premium means a different coin under the same ticker, or a market
that is closed for deposits). Qualifying symbols rank by the smaller of the two venues' 24 h
traded value in USD; the first N are TopN. ``TopNProvider`` re-selects periodically and reports
membership changes as ``TopNChange`` events.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from common.marketdata.binance import QUOTE, BinanceRest, BinanceSymbol, BinanceTicker
from common.marketdata.upbit import FX_CODE, KRW_PREFIX, UpbitMarket, UpbitRest, UpbitTicker
from common.types import FX_SYMBOL


@dataclass(frozen=True, slots=True)
class Candidate:
    symbol: str  # Upbit's base ticker (the name used everywhere in the trader)
    binance_pair: str
    upbit_value_usd: float
    binance_value_usd: float
    premium_bps: float
    step_size: float  # Binance LOT_SIZE stepSize

    @property
    def score_usd(self) -> float:
        return min(self.upbit_value_usd, self.binance_value_usd)


@dataclass(frozen=True, slots=True)
class TopNSelection:
    members: tuple[str, ...]  # best first
    ranked: tuple[Candidate, ...]  # every qualifying symbol, best first
    excluded: dict[str, str] = field(default_factory=dict)  # symbol -> reason
    fx_krw: float = math.nan
    median_premium_bps: float = math.nan


def select_topn(upbit_markets: list[UpbitMarket], upbit_tickers: dict[str, UpbitTicker],
                binance_symbols: dict[str, BinanceSymbol],
                binance_tickers: dict[str, BinanceTicker], size: int,
                aliases: dict[str, str] | None = None, deny: tuple[str, ...] | set = (),
                outlier_bps: float = 1500.0, fx_krw: float | None = None) -> TopNSelection:
    """The TopN selection (pure; see the module docstring)."""
    aliases = aliases or {}
    deny = set(deny)
    if fx_krw is None:
        t = upbit_tickers.get(FX_CODE)
        fx_krw = t.trade_price if t is not None else math.nan
    excluded: dict[str, str] = {}
    if not (fx_krw > 0 and math.isfinite(fx_krw)):
        return TopNSelection((), (), {"*": "no KRW-USDT price"}, math.nan)
    pre: list[tuple[str, str, float, float, float, float]] = []
    for m in upbit_markets:
        if m.quote != "KRW" or m.base == FX_SYMBOL:
            continue
        sym = m.base
        pair = aliases.get(sym, sym) + QUOTE
        bs = binance_symbols.get(pair)
        if bs is None or bs.quote != QUOTE:
            continue
        if sym in deny:
            excluded[sym] = "denied"
            continue
        if not bs.trading:
            excluded[sym] = "binance_not_trading"
            continue
        if m.warning:
            excluded[sym] = "upbit_warning"
            continue
        ut, bt = upbit_tickers.get(m.market), binance_tickers.get(pair)
        if ut is None or bt is None or not (ut.trade_price > 0 and bt.last_price > 0):
            excluded[sym] = "no_ticker"
            continue
        prem = (ut.trade_price / (bt.last_price * fx_krw) - 1.0) * 1e4
        pre.append((sym, pair, ut.acc_trade_price_24h / fx_krw, bt.quote_volume, prem,
                    bs.step_size))
    median = statistics.median(p[4] for p in pre) if pre else math.nan
    ranked = []
    for sym, pair, uv, bv, prem, step in pre:
        if abs(prem - median) > outlier_bps:
            excluded[sym] = "premium_outlier"
            continue
        ranked.append(Candidate(sym, pair, uv, bv, prem, step))
    ranked.sort(key=lambda c: (-c.score_usd, c.symbol))
    members = tuple(c.symbol for c in ranked[:size])
    return TopNSelection(members, tuple(ranked), excluded, fx_krw, median)


@dataclass(frozen=True, slots=True)
class TopNChange:
    """A membership change: ``added`` joined TopN (trade once their books are synced),
    ``removed`` left it (exit-only until flat, then drained)."""

    recv_ns: int
    members: tuple[str, ...]
    added: tuple[str, ...]
    removed: tuple[str, ...]

    def to_json(self) -> dict:
        return {"recv_ns": self.recv_ns, "event": "topn", "members": list(self.members),
                "added": list(self.added), "removed": list(self.removed)}


class TopNProvider:
    """Fetches both venues' listings and tickers and selects TopN (or checks a fixed list)."""

    def __init__(self, upbit: UpbitRest, binance: BinanceRest, size: int,
                 aliases: dict[str, str] | None = None, deny: tuple[str, ...] = (),
                 outlier_bps: float = 1500.0, fixed: tuple[str, ...] = ()) -> None:
        self.upbit = upbit
        self.binance = binance
        self.size = size
        self.aliases = dict(aliases or {})
        self.deny = tuple(deny)
        self.outlier_bps = outlier_bps
        self.fixed = tuple(fixed)
        self.members: tuple[str, ...] = ()
        self.last: TopNSelection | None = None
        #: Binance step sizes of the listed symbols (the lot both venues accept: Upbit has none)
        self.step_sizes: dict[str, float] = {}

    async def select(self) -> TopNSelection:
        markets = await self.upbit.markets()
        krw = [m.market for m in markets if m.market.startswith(KRW_PREFIX)]
        if FX_CODE not in krw:
            krw.append(FX_CODE)
        up_t = await self.upbit.tickers(krw)
        fx = await self.fx_mid()
        info = await self.binance.exchange_info()
        bn_t = await self.binance.tickers()
        sel = select_topn(markets, up_t, info, bn_t, len(self.fixed) or self.size,
                          self.aliases, self.deny, self.outlier_bps, fx_krw=fx)
        if self.fixed:
            known = {c.symbol for c in sel.ranked}
            sel = TopNSelection(tuple(s for s in self.fixed if s in known), sel.ranked,
                                {**sel.excluded, **{s: sel.excluded.get(s, "not_listed_on_both")
                                                    for s in self.fixed if s not in known}},
                                sel.fx_krw, sel.median_premium_bps)
        self.step_sizes = {c.symbol: c.step_size for c in sel.ranked}
        self.last = sel
        return sel

    async def fx_mid(self) -> float | None:
        """USDT/KRW mid from Upbit's ``KRW-USDT`` order book (None: use the last trade)."""
        rows = await self.upbit.orderbooks([FX_CODE], {FX_CODE: FX_SYMBOL}, 0)
        if rows and rows[0].bid_px.size and rows[0].ask_px.size:
            mid = (float(rows[0].bid_px[0]) + float(rows[0].ask_px[0])) / 2
            if math.isfinite(mid) and mid > 0:
                return mid
        return None

    async def refresh(self, now_ns: int) -> TopNChange | None:
        """Select again; a ``TopNChange`` if the membership changed (None otherwise)."""
        sel = await self.select()
        old = self.members
        self.members = sel.members
        if set(old) == set(sel.members) and old:
            return None
        return TopNChange(now_ns, sel.members, tuple(s for s in sel.members if s not in old),
                          tuple(s for s in old if s not in sel.members))
