"""build_frames (all symbols of a batch in one set of array operations) against a plain
per-symbol computation of the same quantities: every array must be bit-identical, including the
EWMA across batches, grid rebases, first observations, NaN books and symbols without events."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common.strategy.signals import (
    CarryState,
    StrategyConfig,
    TopBatch,
    build_frames,
    ewma_level,
    fx_series,
)
from common.types import BINANCE, UPBIT

FX = 0


def reference_frame(top, mine, carry, fx_t, fx_mid, cfg, cand_prev):
    """One symbol at a time, the straightforward way (as-of by running counts)."""
    venue = top.venue[mine]
    t = np.concatenate(([carry.t], top.recv_ns[mine]))
    out = {"t": t, "venue": np.concatenate(([-1], venue)).astype(np.int8)}
    # the last event of every run of equal times (the carry counts as its own run)
    tie_last = np.ones(t.shape[0], dtype=bool)
    for j in range(1, t.shape[0] - 1):
        tie_last[j] = t[j + 1] != t[j]
    out["tie_last"] = tie_last
    for v, cb, ca, j in ((UPBIT, carry.u_bid, carry.u_ask, 0),
                         (BINANCE, carry.b_bid, carry.b_ask, 2)):
        is_v = venue == v
        rows = mine[is_v]
        vb = np.concatenate(([cb], top.bid[rows]))
        va = np.concatenate(([ca], top.ask[rows]))
        sb = np.concatenate(([carry.slips[j]], top.slip_bid[rows]))
        sa = np.concatenate(([carry.slips[j + 1]], top.slip_ask[rows]))
        k = np.concatenate(([0], np.cumsum(is_v)))
        key = "u" if v == UPBIT else "b"
        out[f"{key}_bid"], out[f"{key}_ask"] = vb[k], va[k]
        out[f"{key}_sbid"], out[f"{key}_sask"] = sb[k], sa[k]
    slip_rt = np.zeros(t.shape[0])
    for name in ("u_sbid", "u_sask", "b_sbid", "b_sask"):
        slip_rt += np.where(np.isfinite(out[name]), out[name], cfg.expected_slippage_bps)
    out["slip_rt"] = slip_rt
    k = np.searchsorted(fx_t, t, side="right") - 1
    fx = np.where(k >= 0, fx_mid[np.maximum(k, 0)], np.nan)
    fx[0] = carry.fx
    out["fx"] = fx
    with np.errstate(invalid="ignore", divide="ignore"):
        out["p_mid"] = ((out["u_bid"] + out["u_ask"]) * 0.5
                        / ((out["b_bid"] + out["b_ask"]) * 0.5 * fx) - 1.0)
        out["p_sell_u"] = out["u_bid"] / (out["b_ask"] * fx) - 1.0
        out["p_buy_u"] = out["u_ask"] / (out["b_bid"] * fx) - 1.0
    out["level"], ewma = ewma_level(t, out["p_mid"], carry.ewma, cfg.ewma_halflife_s)
    warm_from = (ewma.first_t + int(cfg.warmup_s * 1e9) if ewma.first_t >= 0
                 else np.iinfo(np.int64).max)
    out["warm"] = (t >= warm_from) & np.isfinite(out["level"])
    thr = cfg.candidate_threshold
    out["dev_sell_u"] = out["p_sell_u"] - out["level"]
    out["dev_buy_u"] = out["level"] - out["p_buy_u"]
    with np.errstate(invalid="ignore"):
        best = np.fmax(out["dev_sell_u"], out["dev_buy_u"])
        cand = out["warm"] & tie_last & (best - slip_rt / 1e4 > thr)
    cand[0] = cand_prev
    out["cand"] = cand
    idx = np.flatnonzero(cand)
    out["cand_idx"] = idx[idx > 0]
    edge = cand.copy()
    edge[1:] &= ~cand[:-1]
    idx = np.flatnonzero(edge)
    out["edge_idx"] = idx[idx > 0]
    no_fx = int((np.isfinite(out["u_bid"][1:]) & np.isfinite(out["b_bid"][1:])
                 & ~np.isfinite(fx[1:])).sum())
    carry_out = CarryState(int(t[-1]), float(out["u_bid"][-1]), float(out["u_ask"][-1]),
                           float(out["b_bid"][-1]), float(out["b_ask"][-1]), float(fx[-1]), ewma,
                           tuple(float(out[n][-1]) for n in ("u_sbid", "u_sask", "b_sbid",
                                                              "b_sask")))
    return out, carry_out, no_fx


def same_state(a, b) -> bool:
    """Dataclass equality where NaN equals NaN (carries hold NaN until a venue has a book)."""
    fa = [getattr(a, f) for f in a.__slots__]
    fb = [getattr(b, f) for f in b.__slots__]
    for x, y in zip(fa, fb, strict=True):
        if hasattr(x, "__slots__"):
            if not same_state(x, y):
                return False
        elif isinstance(x, tuple):
            if not np.array_equal(np.array(x), np.array(y), equal_nan=True):
                return False
        elif not (x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y))):
            return False
    return True


def random_stream(rng, n_sym, rows, t0, step_ns, nan_share=0.02):
    sym = rng.integers(0, n_sym + 1, rows)  # 0 = FX
    venue = np.where(sym == FX, UPBIT, rng.integers(0, 2, rows)).astype(np.int8)
    recv = t0 + np.cumsum(rng.integers(1, step_ns, rows))
    # every tenth book shares its receive time with the one before (ties, as in real feeds)
    recv[1:][rng.random(rows - 1) < 0.1] = 0
    recv = np.maximum.accumulate(recv)
    base = np.where(sym == FX, 1400.0, np.where(venue == UPBIT, 1400.0 * 1.02 * 10, 10.0))
    mid = base * np.exp(rng.normal(0, 0.004, rows))
    bid, ask = mid * (1 - 1e-4), mid * (1 + 1e-4)
    bad = rng.random(rows) < nan_share
    bid[bad] = np.nan
    return recv, venue, sym.astype(np.int32), bid, ask


def top_batch(recv, venue, sym, bid, ask, rng=None):
    order = np.argsort(sym, kind="stable")
    start = np.searchsorted(sym[order], np.arange(int(sym.max(initial=0)) + 2))
    slips = (None, None)
    if rng is not None:  # expected slippage per side, some unknown (nan: the fallback applies)
        slips = tuple(np.where(rng.random(recv.shape[0]) < 0.05, np.nan,
                               rng.exponential(3.0, recv.shape[0])) for _ in range(2))
    return TopBatch(recv, venue, sym, bid, ask, int(recv[0]), int(recv[-1]), order, start,
                    slip_bid=slips[0], slip_ask=slips[1])


@pytest.mark.parametrize("halflife,rows_per_batch,step_ns", [
    (600.0, 40, 50_000_000),       # live-like batches, no rebase
    (5.0, 300, 20_000_000),         # fast decay: rebase periods of ~6 minutes, crossed often
    (60.0, 3, 2_000_000_000),       # tiny batches, most symbols idle in each
])
def test_build_frames_equals_per_symbol_computation(halflife, rows_per_batch, step_ns,
                                                     monkeypatch):
    import common.strategy.signals as signals

    slow = []  # segments that went through ewma_level itself (first observation, rebase)

    def counting(*args, **kwargs):
        slow.append(1)
        return ewma_level(*args, **kwargs)

    monkeypatch.setattr(signals, "ewma_level", counting)
    rng = np.random.default_rng(3)
    n_sym = 7
    cfg = StrategyConfig(ewma_halflife_s=halflife, warmup_s=30.0, entry_margin_bps=-40.0)
    recv, venue, sym, bid, ask = random_stream(rng, n_sym, 120 * rows_per_batch, 10**12, step_ns)
    carries = {s: CarryState() for s in range(1, n_sym + 1)}
    ref_carries = dict(carries)
    cand_prev = {s: False for s in carries}
    ref_prev = dict(cand_prev)
    fx_carry = (-1, math.nan)
    checked = crossed = segments = 0
    for lo in range(0, recv.shape[0], rows_per_batch):
        sl = slice(lo, lo + rows_per_batch)
        top = top_batch(recv[sl], venue[sl], sym[sl], bid[sl], ask[sl], rng)
        fx_t, fx_mid = fx_series(top, FX, *fx_carry)
        syms = list(carries)
        frames, no_fx = build_frames(top, [top.rows_of(s) for s in syms],
                                     [carries[s] for s in syms], [cand_prev[s] for s in syms],
                                     fx_t, fx_mid, cfg)
        ref_no_fx = 0
        for s, frame in zip(syms, frames, strict=True):
            ref, ref_carries[s], n = reference_frame(top, top.rows_of(s), ref_carries[s], fx_t,
                                                     fx_mid, cfg, ref_prev[s])
            ref_no_fx += n
            segments += int(top.rows_of(s).size > 0)
            assert len(frame) == ref["t"].shape[0]
            for name, want in ref.items():
                got = getattr(frame, name)
                np.testing.assert_array_equal(got, want, err_msg=f"{name} of symbol {s}")
                checked += want.shape[0]
            carries[s] = frame.carry()
            assert same_state(carries[s], ref_carries[s])
            cand_prev[s] = ref_prev[s] = bool(ref["cand"][-1])
            crossed += int(ref["cand_idx"].size)
        assert no_fx == ref_no_fx
        if fx_t.size:
            fx_carry = (int(fx_t[-1]), float(fx_mid[-1]))
    assert checked > 0 and crossed > 0  # the signals really fired somewhere
    # the vectorised EWMA did most of the work; the fallback ran at least for first observations
    assert n_sym <= len(slow) < segments / 2
