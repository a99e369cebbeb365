"""Every balance per venue and asset, with reservations for unsettled trades; never negative."""

from __future__ import annotations

from dataclasses import dataclass

from common.types import BINANCE, UPBIT, VENUE_NAMES, VENUE_QUOTES, LegFill, Side

_EPS = 1e-9


class BalanceError(RuntimeError):
    """An invariant broke: a balance would go negative. Always a bug, never market data."""


@dataclass(frozen=True, slots=True)
class FeeSchedule:
    """Taker fees in bps. Binance takes its fee in the asset received; Upbit always in KRW."""

    upbit_bps: float = 5.0
    binance_bps: float = 10.0

    def rate(self, venue: int) -> float:
        return (self.upbit_bps if venue == UPBIT else self.binance_bps) / 1e4

    def fee_of(self, venue: int, side: int, qty: float, price: float, asset: str) -> tuple[float, str]:
        """(fee amount, fee asset) of a fill of ``qty`` at ``price`` on ``venue``."""
        r = self.rate(venue)
        if venue == BINANCE and side == Side.BUY:
            return qty * r, asset
        return qty * price * r, VENUE_QUOTES[venue]


class PortfolioState:
    """Balances per (venue, asset) from actual fills and fees, plus amounts reserved at decision
    time for trades that have not settled yet. ``available = balance - reserved``.
    """

    def __init__(self) -> None:
        self.balances: dict[tuple[str, str], float] = {}
        self.reserved: dict[tuple[str, str], float] = {}
        self.initial: dict[tuple[str, str], float] = {}

    # -- funding -------------------------------------------------------------------------------
    def fund(self, venue: str, asset: str, amount: float) -> None:
        if amount < 0:
            raise BalanceError(f"cannot fund {venue} {asset} with a negative amount {amount}")
        key = (venue, asset)
        self.balances[key] = self.balances.get(key, 0.0) + amount
        self.initial[key] = self.initial.get(key, 0.0) + amount

    def is_funded(self, venue: str, asset: str) -> bool:
        return (venue, asset) in self.initial

    # -- queries -------------------------------------------------------------------------------
    def balance(self, venue: str, asset: str) -> float:
        return self.balances.get((venue, asset), 0.0)

    def available(self, venue: str, asset: str) -> float:
        key = (venue, asset)
        return max(0.0, self.balances.get(key, 0.0) - self.reserved.get(key, 0.0))

    # -- reservations --------------------------------------------------------------------------
    def reserve(self, venue: str, asset: str, amount: float) -> None:
        if amount <= 0:
            return
        if amount > self.available(venue, asset) * (1 + 1e-12) + _EPS:
            raise BalanceError(
                f"reserve {amount} {asset} on {venue} exceeds available {self.available(venue, asset)}"
            )
        key = (venue, asset)
        self.reserved[key] = self.reserved.get(key, 0.0) + amount

    def release(self, venue: str, asset: str, amount: float) -> None:
        if amount <= 0:
            return
        key = (venue, asset)
        left = self.reserved.get(key, 0.0) - amount
        self.reserved[key] = left if left > _EPS else 0.0

    # -- fills ---------------------------------------------------------------------------------
    def apply_fill(self, leg: LegFill, coin: str) -> None:
        """Move the balances of one leg fill: the coin one way, the quote the other, minus fees."""
        if leg.filled_qty <= 0:
            return
        venue = leg.exchange
        quote = VENUE_QUOTES[VENUE_NAMES.index(venue)]
        notional = leg.filled_qty * leg.vwap_price
        if leg.side == Side.BUY:
            self._add(venue, quote, -notional)
            self._add(venue, coin, leg.filled_qty)
        else:
            self._add(venue, coin, -leg.filled_qty)
            self._add(venue, quote, notional)
        self._add(venue, leg.fee_asset, -leg.fee)

    def _add(self, venue: str, asset: str, amount: float) -> None:
        key = (venue, asset)
        new = self.balances.get(key, 0.0) + amount
        if new < -_EPS * max(1.0, abs(amount)):
            raise BalanceError(f"{venue} {asset} balance would go negative ({new})")
        self.balances[key] = max(new, 0.0)

    # -- snapshots -----------------------------------------------------------------------------
    def get_state(self) -> dict:
        return {"balances": dict(self.balances), "reserved": dict(self.reserved),
                "initial": dict(self.initial)}

    def set_state(self, state: dict) -> None:
        self.balances = dict(state["balances"])
        self.reserved = dict(state["reserved"])
        self.initial = dict(state["initial"])
