"""Immutable domain values shared by every component: venues, trades, leg fills, execution results."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum

#: Venue codes as they appear in columnar batches (``BookBatch.venue``).
UPBIT = 0
BINANCE = 1
VENUE_NAMES = ("upbit", "binance")
VENUE_CODES = {"upbit": UPBIT, "binance": BINANCE}
#: The quote currency of each venue's spot markets traded here.
VENUE_QUOTES = ("KRW", "USDT")
#: The FX book: USDT quoted in KRW on Upbit (market ``KRW-USDT``).
FX_SYMBOL = "USDT"

LEG_ENTRY = "entry"
LEG_EXIT = "exit"
LEG_HEDGE = "hedge"
LEG_KIND_LETTER = {LEG_ENTRY: "E", LEG_EXIT: "X", LEG_HEDGE: "H"}

RESULT_FULL = "full"
RESULT_PARTIAL = "partial"
RESULT_FAILED = "failed"


class Side(IntEnum):
    BUY = 1
    SELL = -1


@dataclass(frozen=True, slots=True)
class Trade:
    """A dispatched trade as the executor sees it: a leg pair (entry/exit) or a single hedge leg.

    Prices are the decision-time best prices on each venue, in that venue's quote currency
    (KRW on Upbit, USDT on Binance). A hedge has only one leg: the other exchange is ``None``.
    """

    trade_id: str
    symbol: str
    leg_kind: str
    round_trip_id: str
    buy_exchange: str | None
    sell_exchange: str | None
    quantity: float
    buy_price: float
    sell_price: float
    buy_limit: float
    sell_limit: float
    decision_ts_ns: int
    buy_arrival_ns: int
    sell_arrival_ns: int
    #: the deviation of the executable premium from its level at decision time, in bps
    signal_bps: float = 0.0
    #: free text: why this trade (entry direction, exit rule, hedge reason)
    reason: str = ""
    #: the quantity step both venues accept: fills are whole multiples of it (0: no grid)
    lot: float = 0.0


@dataclass(frozen=True, slots=True)
class LegFill:
    """What one IOC limit leg got on one venue."""

    exchange: str
    side: int  # Side.BUY or Side.SELL
    requested_qty: float
    filled_qty: float
    vwap_price: float  # 0.0 when nothing filled
    decision_price: float  # best price at decision time
    arrival_best_price: float  # best price of the book the leg met (nan if none)
    limit_price: float
    fee: float  # amount of the fee
    fee_asset: str  # the asset the fee was charged in (coin on Binance buys, quote otherwise)
    arrival_ns: int
    book_recv_ns: int  # recv_ns of the book filled against (-1: no valid book)
    #: USD per unit of this venue's quote at arrival: 1 for USDT, 1 / (KRW-USDT mid) for KRW
    usd_per_quote: float = 1.0
    #: ts_ns (venue time) of the book filled against: the latest with ts_ns <= arrival (-1: none)
    book_ts_ns: int = -1
    #: the lot both quantities are whole multiples of (0: no grid)
    lot: float = 0.0

    @property
    def notional_usd(self) -> float:
        return self.filled_qty * self.vwap_price * self.usd_per_quote

    @property
    def requested_notional_usd(self) -> float:
        return self.requested_qty * self.decision_price * self.usd_per_quote

    @property
    def fee_usd(self) -> float:
        """The fee in USD (a coin fee is valued at this fill's own price)."""
        if self.fee_asset in ("KRW", "USDT"):
            return self.fee * self.usd_per_quote
        return self.fee * self.vwap_price * self.usd_per_quote

    @property
    def quote_flow(self) -> float:
        """Quote received (sell) or paid (buy) in the venue's quote currency, net of a quote fee."""
        quote_fee = self.fee if self.fee_asset in ("KRW", "USDT") else 0.0
        return -self.side * self.filled_qty * self.vwap_price - quote_fee

    @property
    def cash_flow_usd(self) -> float:
        """``quote_flow`` in USD at this fill's own FX."""
        return self.quote_flow * self.usd_per_quote

    @property
    def coin_delta(self) -> float:
        """Change of this venue's coin balance, net of a coin fee."""
        coin_fee = 0.0 if self.fee_asset in ("KRW", "USDT") else self.fee
        return self.side * self.filled_qty - coin_fee

    @property
    def fill_ratio(self) -> float:
        """Filled over requested; on a lot grid, exactly the ratio of the whole lot counts."""
        if not self.requested_qty > 0:
            return 0.0
        if self.lot > 0:
            return round(self.filled_qty / self.lot) / round(self.requested_qty / self.lot)
        return self.filled_qty / self.requested_qty

    @property
    def slippage_bps(self) -> float:
        """VWAP against the best price at arrival, adverse direction only (never negative)."""
        if self.filled_qty <= 0 or not self.arrival_best_price > 0:
            return 0.0
        s = (self.vwap_price - self.arrival_best_price) / self.arrival_best_price * 1e4
        return max(0.0, s * self.side)

    @property
    def latency_cost_bps(self) -> float:
        """Arrival best price against decision best price, signed (positive = it moved against us)."""
        if not self.arrival_best_price > 0 or not self.decision_price > 0:
            return 0.0
        return (self.arrival_best_price - self.decision_price) / self.decision_price * 1e4 * self.side


@dataclass(frozen=True, slots=True)
class ExecutionResult:
    """The outcome of one ``Trade``: its legs' fills and the overall result."""

    trade: Trade
    buy: LegFill | None
    sell: LegFill | None
    trade_result: str  # full / partial / failed
    fill_ts_ns: int  # event time of the last leg's arrival

    @property
    def trade_id(self) -> str:
        return self.trade.trade_id

    @property
    def symbol(self) -> str:
        return self.trade.symbol

    @property
    def buy_fill_ratio(self) -> float:
        return self.buy.fill_ratio if self.buy is not None else float("nan")

    @property
    def sell_fill_ratio(self) -> float:
        return self.sell.fill_ratio if self.sell is not None else float("nan")

    @property
    def buy_slippage_bps(self) -> float:
        return self.buy.slippage_bps if self.buy is not None else float("nan")

    @property
    def sell_slippage_bps(self) -> float:
        return self.sell.slippage_bps if self.sell is not None else float("nan")


def classify_result(legs: list[LegFill]) -> str:
    """full if every leg filled completely, failed if none filled anything, else partial."""
    if all(leg.filled_qty >= leg.requested_qty * (1 - 1e-12) for leg in legs):
        return RESULT_FULL
    if all(leg.filled_qty <= 0 for leg in legs):
        return RESULT_FAILED
    return RESULT_PARTIAL


def floor_lot(qty: float, lot: float) -> float:
    """Round a quantity down to a whole number of lots (robust to float noise): the one place
    quantities are put on a venue's lot grid."""
    if not qty > 0 or not lot > 0:
        return 0.0
    n = math.floor(qty / lot + 1e-9)
    return round(n * lot, 12)


def make_trade_id(symbol: str, leg_kind: str, seq: int) -> str:
    return f"{symbol}-{LEG_KIND_LETTER[leg_kind]}-{seq}"
