"""Overfitting statistics of a set of trials: the deflated Sharpe ratio and the probability of
backtest overfitting by combinatorially symmetric cross-validation.

Both follow Bailey & Lopez de Prado: "The Deflated Sharpe Ratio" (2014) and "The Probability of
Backtest Overfitting" (Bailey, Borwein, Lopez de Prado, Zhu, 2015). Inputs are per-period PnL
(or returns) of every trial on one shared time grid: a ``T x N`` matrix, one column per trial.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

EULER_GAMMA = 0.5772156649015329
_N = NormalDist()


def sharpe(x: np.ndarray) -> float:
    """Per-period Sharpe ratio (mean / sample sd); 0 for a flat or too short series."""
    x = np.asarray(x, dtype=float)
    if x.size < 2:
        return 0.0
    sd = float(x.std(ddof=1))
    return float(x.mean()) / sd if sd > 0 else 0.0


def sharpe_columns(m: np.ndarray) -> np.ndarray:
    """The per-period Sharpe ratio of every column of a ``T x N`` matrix (0 where flat)."""
    m = np.asarray(m, dtype=float)
    if m.shape[0] < 2:
        return np.zeros(m.shape[1])
    sd = m.std(axis=0, ddof=1)
    mean = m.mean(axis=0)
    return np.divide(mean, sd, out=np.zeros_like(mean), where=sd > 0)


def expected_max_sharpe(n_trials: int, sharpe_variance: float) -> float:
    """The Sharpe ratio the best of ``n_trials`` skill-less trials reaches by luck alone:
    ``sqrt(V) * ((1 - g) * Z(1 - 1/N) + g * Z(1 - 1/(N e)))`` (g: Euler-Mascheroni)."""
    if n_trials < 2 or sharpe_variance <= 0:
        return 0.0
    z1 = _N.inv_cdf(1.0 - 1.0 / n_trials)
    z2 = _N.inv_cdf(1.0 - 1.0 / (n_trials * math.e))
    return math.sqrt(sharpe_variance) * ((1.0 - EULER_GAMMA) * z1 + EULER_GAMMA * z2)


@dataclass(frozen=True, slots=True)
class DeflatedSharpe:
    sharpe: float  # the best trial's per-period Sharpe ratio
    sharpe_threshold: float  # the expected maximum of N skill-less trials (SR0)
    probability: float  # DSR: P(true Sharpe > 0) after deflating for N trials, skew, kurtosis
    n_trials: int
    periods: int
    skewness: float
    kurtosis: float  # not excess: 3 for a normal series


def deflated_sharpe(best: np.ndarray, trial_sharpes: np.ndarray) -> DeflatedSharpe:
    """The deflated Sharpe ratio of ``best`` (its per-period PnL) among trials whose per-period
    Sharpe ratios are ``trial_sharpes`` (every trial tried, ``best`` included)."""
    x = np.asarray(best, dtype=float)
    srs = np.asarray(trial_sharpes, dtype=float)
    n = int(srs.size)
    t = int(x.size)
    sr = sharpe(x)
    var = float(srs.var(ddof=1)) if n > 1 else 0.0
    sr0 = expected_max_sharpe(n, var)
    sd = float(x.std()) if t else 0.0
    if t < 3 or sd == 0:
        return DeflatedSharpe(sr, sr0, 0.0, n, t, 0.0, 3.0)
    z = (x - x.mean()) / sd
    skew = float(np.mean(z ** 3))
    kurt = float(np.mean(z ** 4))
    denom = 1.0 - skew * sr + (kurt - 1.0) / 4.0 * sr * sr
    if denom <= 0:
        return DeflatedSharpe(sr, sr0, 0.0, n, t, skew, kurt)
    prob = _N.cdf((sr - sr0) * math.sqrt(t - 1) / math.sqrt(denom))
    return DeflatedSharpe(sr, sr0, prob, n, t, skew, kurt)


@dataclass(frozen=True, slots=True)
class Pbo:
    pbo: float  # share of splits whose in-sample best ranks in the lower half out of sample
    splits: int  # C(S, S/2) combinations evaluated
    blocks: int  # S: the time grid cut into this many equal blocks
    logits: np.ndarray = field(repr=False)  # logit of the in-sample best's out-of-sample rank
    is_best_sharpe: np.ndarray = field(repr=False)  # per split: the IS best's IS Sharpe
    oos_sharpe: np.ndarray = field(repr=False)  # per split: the IS best's OOS Sharpe
    degradation_slope: float  # OLS slope of OOS on IS Sharpe of the chosen (< 0: overfit)
    prob_oos_loss: float  # share of splits where the IS best loses out of sample


def pbo_cscv(m: np.ndarray, blocks: int = 16) -> Pbo:
    """PBO of the ``N`` strategies whose per-period PnL are the columns of ``m`` (``T x N``).

    The rows are cut into ``blocks`` (S, even) contiguous blocks; for every way of choosing S/2
    of them as the in-sample set (the rest out of sample), the strategy with the best in-sample
    Sharpe ratio is ranked among all N out of sample; PBO is the share of splits where it ranks
    at or below the median (logit of its relative rank <= 0).
    """
    m = np.asarray(m, dtype=float)
    t, n = m.shape
    if n < 2:
        raise ValueError("PBO needs at least two strategies")
    s = min(int(blocks), t - t % 2)
    s -= s % 2
    if s < 2:
        raise ValueError(f"PBO needs at least two periods per block (got {t} periods)")
    bounds = np.linspace(0, t, s + 1).round().astype(int)
    # per block: sums and sums of squares per strategy, so each split's Sharpe is cheap
    cnt = np.diff(bounds).astype(float)
    s1 = np.add.reduceat(m, bounds[:-1], axis=0)
    s2 = np.add.reduceat(m * m, bounds[:-1], axis=0)
    combos = np.array(list(itertools.combinations(range(s), s // 2)), dtype=int)
    mask = np.zeros((len(combos), s), dtype=bool)
    mask[np.arange(len(combos))[:, None], combos] = True

    def sharpe_of(sel: np.ndarray) -> np.ndarray:
        k = sel.astype(float)
        nn = (k @ cnt)[:, None]
        mu = (k @ s1) / nn
        var = ((k @ s2) - nn * mu * mu) / np.maximum(nn - 1.0, 1.0)
        sd = np.sqrt(np.maximum(var, 0.0))
        return np.divide(mu, sd, out=np.zeros_like(mu), where=sd > 1e-15 * (np.abs(mu) + 1))

    sr_is = sharpe_of(mask)
    sr_oos = sharpe_of(~mask)
    best = sr_is.argmax(axis=1)
    rows = np.arange(len(combos))
    chosen_oos = sr_oos[rows, best]
    # relative rank of the chosen out of sample, ties at their average rank, in (0, 1)
    below = (sr_oos < chosen_oos[:, None]).sum(axis=1)
    ties = (sr_oos == chosen_oos[:, None]).sum(axis=1)
    omega = (below + (ties + 1) / 2.0) / (n + 1.0)
    logits = np.log(omega / (1.0 - omega))
    chosen_is = sr_is[rows, best]
    if np.ptp(chosen_is) > 0:
        slope = float(np.polyfit(chosen_is, chosen_oos, 1)[0])
    else:
        slope = 0.0
    return Pbo(pbo=float(np.mean(logits <= 0.0)), splits=len(combos), blocks=s, logits=logits,
               is_best_sharpe=chosen_is, oos_sharpe=chosen_oos, degradation_slope=slope,
               prob_oos_loss=float(np.mean(chosen_oos < 0.0)))
