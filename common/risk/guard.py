"""Pre-trade risk: refuse or clip a trade against balances, notional, exposure, open trips, loss."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from common.portfolio.state import PortfolioState
from common.types import floor_lot

__all__ = ["LegNeed", "RiskDecision", "RiskGuard", "RiskLimits", "derived_lot", "floor_lot"]


@dataclass(frozen=True, slots=True)
class RiskLimits:
    max_notional_per_trade_usd: float = 10_000.0
    max_exposure_per_symbol_usd: float = 15_000.0
    max_total_exposure_usd: float = 150_000.0
    max_open_round_trips: int = 20
    max_loss_usd: float = 5_000.0


@dataclass(frozen=True, slots=True)
class LegNeed:
    """What one leg would take from a venue at most, per unit of coin quantity.

    A buy needs ``per_unit`` of the venue's quote (limit price, plus the fee when it is charged in
    the quote); a sell needs 1 coin per unit.
    """

    venue: str
    asset: str
    per_unit: float


@dataclass(frozen=True, slots=True)
class RiskDecision:
    quantity: float  # 0.0 when refused
    refusal: str | None  # reason when refused
    clips: tuple[str, ...]  # reasons the quantity was cut


def derived_lot(price_usd: float, lot_value_usd: float, step: float | None = None) -> float:
    """The lot of a symbol that has no explicit one: a power of ten worth at most
    ``lot_value_usd`` (``10 ** floor(log10(lot_value_usd / price_usd))``), made a whole multiple
    of the exchange's quantity step (Binance ``LOT_SIZE`` ``stepSize``) when one is known, so
    that every quantity traded is one the exchange would accept on both legs."""
    if not (price_usd > 0 and math.isfinite(price_usd)):
        raise ValueError(f"price must be a finite number > 0 (got {price_usd})")
    # the tiny nudge keeps an exact decade (a ratio of 1000 computed as 999.9999...) on its power
    lot = 10.0 ** math.floor(math.log10(lot_value_usd / price_usd) + 1e-9)
    if step is not None and step > 0 and math.isfinite(step):
        lot = round(max(1, math.floor(lot / step + 1e-9)) * step, 12)
    return lot


class RiskGuard:
    """The one global pre-trade check. Counts refusals and clips by reason."""

    def __init__(self, limits: RiskLimits) -> None:
        self.limits = limits
        self.refusals: Counter[str] = Counter()
        self.clips: Counter[str] = Counter()

    def check_entry(
        self,
        qty: float,
        price_usd: float,
        lot: float,
        legs: list[LegNeed],
        portfolio: PortfolioState,
        symbol_exposure_usd: float,
        total_exposure_usd: float,
        open_round_trips: int,
        total_pnl_usd: float,
    ) -> RiskDecision:
        """Size an entry of ``qty`` coins worth ``price_usd`` each (all limits apply)."""
        lim = self.limits
        if total_pnl_usd < -lim.max_loss_usd:
            return self._refuse("loss_limit")
        if open_round_trips >= lim.max_open_round_trips:
            return self._refuse("max_open_round_trips")
        caps = [
            ("notional_per_trade", lim.max_notional_per_trade_usd / price_usd),
            ("exposure_per_symbol", (lim.max_exposure_per_symbol_usd - symbol_exposure_usd) / price_usd),
            ("total_exposure", (lim.max_total_exposure_usd - total_exposure_usd) / price_usd),
        ]
        return self._size(qty, lot, caps, legs, portfolio)

    def check_unwind(self, qty: float, lot: float, legs: list[LegNeed], portfolio: PortfolioState) -> RiskDecision:
        """Size an exit or hedge: only balances limit it (reducing risk is never refused)."""
        return self._size(qty, lot, [], legs, portfolio)

    def _size(self, qty, lot, caps, legs, portfolio) -> RiskDecision:
        clips: list[str] = []
        for reason, cap in caps:
            if cap < qty:
                qty = max(cap, 0.0)
                clips.append(reason)
        for leg in legs:
            cap = portfolio.available(leg.venue, leg.asset) / leg.per_unit
            if cap < qty:
                qty = cap
                clips.append(f"balance_{leg.venue}_{leg.asset}")
        sized = floor_lot(qty, lot)
        if sized <= 0:
            return self._refuse(clips[-1] if clips else "below_lot")
        for c in clips:
            self.clips[c] += 1
        return RiskDecision(sized, None, tuple(clips))

    def _refuse(self, reason: str) -> RiskDecision:
        self.refusals[reason] += 1
        return RiskDecision(0.0, reason, ())

    def get_state(self) -> dict:
        return {"refusals": dict(self.refusals), "clips": dict(self.clips)}

    def set_state(self, state: dict) -> None:
        self.refusals = Counter(state["refusals"])
        self.clips = Counter(state["clips"])
