"""The entry rule's cost model: what a round trip entered at a given deviation is expected to net.

An entry at executable deviation ``D`` (bps of the premium beyond its level, in the direction
that pays) captures ``D - D_exit - drift`` gross, where ``D_exit`` is the deviation still left
when it exits (about the exit band) and ``drift`` is how far the level itself moves toward the
trade during the hold: the level is an EWMA of the premium, so while the premium stays away
from it the level follows, by an amount that grows with ``D``. Then it pays four taker fees, the
slippage of four legs (priced from the visible depth, ``common.marketdata.depth``) and the
latency cost of four legs (the move of the best price between decision and arrival).

::

    predicted net = D - E[D_exit] - rho * D - fees - slippage - 4 * E[latency cost per leg]

``rho``, ``E[D_exit]`` and the latency cost are learnt from the run's own settled legs and closed
round trips as they stream in (a prior worth ``prior_weight`` observations keeps the first
entries sane): ``rho`` by least squares through the origin of the level's drift on the entry
deviation, the other two as running means. Each estimate is clamped at zero from below, so the
fees plus the margin are a lower bound of the required deviation (the signal frames pre-filter
on it). Observations are taken in at fixed event-time marks (``fold``, every minute): the model
holds still between them, so the coordinator evaluates every candidate event of a period in one
array operation, and the same input gives the same decisions on any engine and batching.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.strategy.signals import StrategyConfig


@dataclass(frozen=True, slots=True)
class CostModelConfig:
    """The cost model's priors. Fees, the margin and the exit band (the prior of the deviation
    left at exit) are the strategy's own (``StrategyConfig``), so that the signal frames'
    candidate threshold is always the model's lower bound."""

    #: priors: the share of the entry deviation the level gives back over a hold, and the
    #: latency cost per leg
    drift_ratio_prior: float = 0.3
    latency_cost_prior_bps: float = 0.5
    #: how many observations each prior is worth
    prior_weight: float = 10.0
    #: the typical entry deviation the drift prior is weighted at (bps)
    typical_deviation_bps: float = 50.0


@dataclass(frozen=True, slots=True)
class EdgeEstimate:
    """One entry's predicted figures, all in bps of one leg's notional."""

    deviation_bps: float
    exit_deviation_bps: float
    drift_bps: float
    fees_bps: float
    slippage_bps: float
    latency_bps: float
    net_bps: float


class CostModel:
    """Running estimates behind the entry rule (see the module docstring)."""

    def __init__(self, cfg: CostModelConfig,
                 strategy: StrategyConfig = StrategyConfig()) -> None:  # noqa: B008 - frozen
        self.cfg = cfg
        self.strategy = strategy
        self.fees_bps = 2.0 * (strategy.upbit_fee_bps + strategy.binance_fee_bps)
        self.margin_bps = strategy.entry_margin_bps
        w, d = cfg.prior_weight, cfg.typical_deviation_bps
        # least squares through the origin: rho = sum(drift * D) / sum(D^2), prior included
        self._dd = w * d * d
        self._drift_d = cfg.drift_ratio_prior * w * d * d
        self._exit_sum = strategy.exit_band_bps * w
        self._exit_n = w
        self._lat_sum = cfg.latency_cost_prior_bps * w
        self._lat_n = w
        self.round_trips = 0
        self.legs = 0
        #: observations made since the last ``fold``: (kind, figures)
        self._pending: list[tuple] = []

    @property
    def drift_ratio(self) -> float:
        return max(0.0, self._drift_d / self._dd)

    @property
    def exit_deviation_bps(self) -> float:
        return max(0.0, self._exit_sum / self._exit_n)

    @property
    def latency_cost_bps(self) -> float:
        """Per leg."""
        return max(0.0, self._lat_sum / self._lat_n)

    def net_bps(self, deviation_bps, slippage_bps):
        """Predicted net edge (bps) of entering at ``deviation_bps`` with the round trip's
        expected slippage ``slippage_bps`` (four legs): floats or arrays alike, with the very
        same arithmetic (the coordinator prices a period's candidates at once, ``estimate``
        one entry)."""
        return (deviation_bps - self.exit_deviation_bps
                - self.drift_ratio * np.maximum(deviation_bps, 0.0) - self.fees_bps
                - slippage_bps - 4.0 * self.latency_cost_bps)

    def estimate(self, deviation_bps: float, slippage_bps: float) -> EdgeEstimate:
        """The predicted figures of entering now at ``deviation_bps`` with the round trip's
        expected slippage ``slippage_bps`` (four legs)."""
        return EdgeEstimate(
            deviation_bps=deviation_bps,
            exit_deviation_bps=self.exit_deviation_bps,
            drift_bps=self.drift_ratio * max(deviation_bps, 0.0),
            fees_bps=self.fees_bps,
            slippage_bps=slippage_bps,
            latency_bps=4.0 * self.latency_cost_bps,
            net_bps=float(self.net_bps(deviation_bps, slippage_bps)),
        )

    def pays(self, est: EdgeEstimate) -> bool:
        return est.net_bps > self.margin_bps

    def observe_leg(self, latency_cost_bps: float) -> None:
        """A filled entry or exit leg's latency cost (bps, positive = it moved against us);
        taken in at the next ``fold``."""
        self._pending.append(("leg", latency_cost_bps))

    def observe_round_trip(self, entry_deviation_bps: float, drift_bps: float,
                           exit_deviation_bps: float) -> None:
        """A closed round trip: its entry deviation, how far the level moved toward it during
        the hold, and the deviation left when it exited (all bps, signed so that positive
        costs the trade); taken in at the next ``fold``."""
        self._pending.append(("rt", entry_deviation_bps, drift_bps, exit_deviation_bps))

    def fold(self) -> None:
        """Take in the observations made since the last fold. The engine folds at fixed
        event-time marks, so the model holds still between them and every entry decision
        of a period can be evaluated at once."""
        for obs in self._pending:
            if obs[0] == "leg":
                self._lat_sum += obs[1]
                self._lat_n += 1.0
                self.legs += 1
            else:
                _, dev, drift, exit_dev = obs
                d = max(dev, 0.0)
                self._dd += d * d
                self._drift_d += drift * d
                self._exit_sum += exit_dev
                self._exit_n += 1.0
                self.round_trips += 1
        self._pending = []

    def report(self) -> dict:
        return {"drift_ratio": self.drift_ratio, "exit_deviation_bps": self.exit_deviation_bps,
                "latency_cost_bps_per_leg": self.latency_cost_bps,
                "round_trips_observed": self.round_trips, "legs_observed": self.legs}

    def get_state(self) -> dict:
        state = {k: getattr(self, k) for k in ("_dd", "_drift_d", "_exit_sum", "_exit_n",
                                               "_lat_sum", "_lat_n", "round_trips", "legs")}
        state["_pending"] = list(self._pending)
        return state

    def set_state(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, list(v) if k == "_pending" else v)


#: edges of the entry-deviation buckets (bps) the KPIs report predicted vs realised net edge by
EDGE_BUCKETS_BPS = (0.0, 40.0, 50.0, 60.0, 80.0, 120.0, 200.0)


def bucket_label(deviation_bps: float) -> str:
    """The entry-deviation bucket of ``deviation_bps``, e.g. ``"40-50"`` or ``"200+"``."""
    edges = EDGE_BUCKETS_BPS
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        if deviation_bps < hi:
            return f"{lo:g}-{hi:g}"
    return f"{edges[-1]:g}+"
