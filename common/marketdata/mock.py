"""A seeded, realistic mock market: Binance USDT books, Upbit KRW books and the KRW-USDT FX book.

Calibrated against the recorded 2021 books (``docs/mock_calibration.md``, made by
``scripts/calibrate_mock.py``). Model (all in event time, on a 50 ms grid, vectorised per chunk):

* Binance mid per symbol: a geometric random walk with the symbol's daily volatility and a
  common market factor (correlation 0.6 between symbols).
* FX (KRW per USDT): a slow mean-reverting walk around 1400 KRW.
* Premium per symbol: a persistent level (+1.5 % .. +3.5 %, drifting slowly) plus an
  Ornstein-Uhlenbeck deviation (15-22 bps stationary stdev in calm hours, half-life of a few
  minutes), a fast OU part (3-6 bps, half-life 2-8 s: Upbit lagging Binance) and occasional
  jumps of 40-120 bps that decay back (half-life 1-4 minutes, about one an hour).
* Regimes: the whole market switches between calm and volatile hours (mean durations 3 h and
  1 h); volatile hours have 2.2x the deviation stdev and 3x the jump rate.
* ``volatility`` v: deviation stdevs x v, jump rate x v, jump size x sqrt(v), price volatility
  x v (1 = calibrated; 4-5 = a busy market). It changes no book time.
* Upbit mid = Binance mid * FX * (1 + premium).
* Book times: each (venue, symbol) stream publishes on a period (Binance ``@depth@100ms``:
  100 ms; Upbit's cycle: 300 ms) with a fixed phase, a book in a period with a probability that
  grows with the asset's traded value (Binance 0.70-0.98, Upbit 0.20-0.75; the FX book about
  one a second). ``ts_ns`` is the venue time in whole ms (Upbit's scattered over the first
  40 ms of the cycle); ``recv_ns = ts_ns + feed latency of the venue + uniform jitter in
  [0, feed_jitter_ms)``, strictly increasing within a stream (never reordering it; a tie is
  nudged by 1 ns), and the output is sorted by ``recv_ns``.
* Books: tick-rounded prices (Upbit's KRW tick table by price band, Binance per-symbol ticks),
  1-3 tick spreads, ``levels`` strictly sorted levels per side, lognormal sizes around the
  symbol's typical depth (a little more depth further out). The best level is a queue that
  trades consume between books (a lognormal share per book) until the best price moves or the
  queue is refreshed; about half the books repeat the previous book's top (best prices and
  sizes; fewer at higher volatility) and change only deeper levels. With ``thin_book_prob`` a
  book is 30-150x thinner (a few hundred to a few thousand USD per level: orders of a few
  thousand USD then really fill partially); with ``bad_book_prob`` a book is corrupted
  (crossed, NaN price, negative size, zero price, unsorted levels or an empty side).

Determinism: the market is generated in fixed event-time chunks of ``chunk_seconds``, chunk k from
its own RNG (``SeedSequence(seed, spawn_key=(0, k))``), the state carried from chunk to chunk;
the sorted row stream is then cut into batches (never between two rows of one ``recv_ns``), so
``batch_rows`` never changes the rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from common.marketdata.batch import BookBatch, SymbolTable
from common.types import BINANCE, FX_SYMBOL, UPBIT


@dataclass(frozen=True, slots=True)
class MockAsset:
    """One asset of the built-in universe (figures are typical, not live)."""

    name: str
    price_usd: float
    daily_vol: float  # stdev of daily log returns
    volume_usd: float  # 24 h traded value, both venues (ranks TopN)
    depth_usd: float  # typical size of one top-of-book level on Binance, USD
    binance_tick: float  # price tick of <name>USDT
    binance_lot: float  # quantity step of <name>USDT


def _universe() -> dict[str, MockAsset]:
    rows = [
        # name, price USD, daily vol, 24h value USD, level depth USD, Binance tick, Binance lot
        ("BTC", 95000.0, 0.025, 35e9, 150_000, 0.01, 0.00001),
        ("ETH", 3500.0, 0.035, 18e9, 100_000, 0.01, 0.0001),
        ("XRP", 2.3, 0.045, 6.0e9, 60_000, 0.0001, 0.1),
        ("SOL", 180.0, 0.045, 5.0e9, 50_000, 0.01, 0.001),
        ("DOGE", 0.35, 0.055, 3.0e9, 40_000, 0.00001, 1.0),
        ("ADA", 0.9, 0.05, 1.2e9, 25_000, 0.0001, 0.1),
        ("SUI", 4.2, 0.065, 1.1e9, 20_000, 0.0001, 0.1),
        ("LINK", 22.0, 0.05, 0.9e9, 20_000, 0.01, 0.01),
        ("PEPE", 0.000018, 0.07, 0.8e9, 20_000, 0.00000001, 1.0),
        ("AVAX", 38.0, 0.055, 0.7e9, 15_000, 0.01, 0.01),
        ("TRX", 0.25, 0.03, 0.6e9, 15_000, 0.0001, 0.1),
        ("SHIB", 0.000022, 0.055, 0.45e9, 15_000, 0.00000001, 1.0),
        ("XLM", 0.42, 0.05, 0.42e9, 12_000, 0.0001, 0.1),
        ("BCH", 450.0, 0.04, 0.4e9, 10_000, 0.1, 0.001),
        ("HBAR", 0.28, 0.06, 0.36e9, 10_000, 0.00001, 1.0),
        ("DOT", 7.0, 0.055, 0.35e9, 10_000, 0.001, 0.01),
        ("NEAR", 5.5, 0.06, 0.34e9, 10_000, 0.001, 0.1),
        ("AAVE", 300.0, 0.06, 0.31e9, 8_000, 0.01, 0.001),
        ("APT", 9.0, 0.06, 0.3e9, 8_000, 0.001, 0.01),
        ("ONDO", 1.4, 0.07, 0.29e9, 8_000, 0.0001, 0.1),
        ("ARB", 0.75, 0.065, 0.28e9, 8_000, 0.0001, 0.1),
        ("ETC", 27.0, 0.05, 0.26e9, 8_000, 0.01, 0.01),
        ("UNI", 13.0, 0.06, 0.25e9, 7_000, 0.001, 0.01),
        ("SEI", 0.45, 0.07, 0.2e9, 6_000, 0.0001, 0.1),
        ("OP", 1.9, 0.065, 0.19e9, 6_000, 0.001, 0.01),
        ("POL", 0.5, 0.06, 0.16e9, 5_000, 0.0001, 0.1),
        ("ATOM", 6.5, 0.055, 0.15e9, 5_000, 0.001, 0.01),
        ("ALGO", 0.4, 0.06, 0.14e9, 5_000, 0.0001, 1.0),
        ("STX", 1.6, 0.07, 0.12e9, 4_000, 0.0001, 0.1),
        ("SAND", 0.55, 0.065, 0.115e9, 4_000, 0.0001, 1.0),
        ("IMX", 1.3, 0.07, 0.1e9, 4_000, 0.0001, 0.01),
        ("ENS", 35.0, 0.065, 0.095e9, 3_500, 0.01, 0.01),
        ("GRT", 0.2, 0.065, 0.09e9, 3_500, 0.0001, 1.0),
        ("MANA", 0.5, 0.065, 0.08e9, 3_000, 0.0001, 1.0),
        ("AXS", 6.5, 0.065, 0.075e9, 3_000, 0.001, 0.01),
        ("CHZ", 0.09, 0.065, 0.07e9, 3_000, 0.00001, 1.0),
        ("THETA", 2.2, 0.06, 0.06e9, 2_500, 0.001, 0.1),
        ("VET", 0.045, 0.06, 0.055e9, 2_500, 0.000001, 0.1),
        ("FLOW", 0.8, 0.065, 0.05e9, 2_500, 0.001, 0.01),
        ("BAT", 0.23, 0.06, 0.045e9, 2_500, 0.0001, 1.0),
        ("ZIL", 0.025, 0.065, 0.04e9, 2_000, 0.00001, 1.0),
        ("XTZ", 1.2, 0.06, 0.035e9, 2_000, 0.001, 0.01),
    ]
    return {r[0]: MockAsset(*r) for r in rows}


#: The built-in universe: assets listed on both Upbit KRW and Binance USDT.
MOCK_UNIVERSE: dict[str, MockAsset] = _universe()


def mock_volume_usd() -> dict[str, float]:
    """24 h traded value in USD per universe asset, highest first."""
    ranked = sorted(MOCK_UNIVERSE.values(), key=lambda a: (-a.volume_usd, a.name))
    return {a.name: a.volume_usd for a in ranked}


def mock_universe_topn(n: int) -> tuple[str, ...]:
    """The ``n`` universe assets with the largest traded value (descending)."""
    return tuple(list(mock_volume_usd())[: max(0, n)])


#: Upbit KRW market price bands (lower bound, tick), an approximation of the real table.
UPBIT_KRW_TICKS: tuple[tuple[float, float], ...] = (
    (0.0, 0.00000001),
    (0.0001, 0.0000001),
    (0.001, 0.000001),
    (0.01, 0.00001),
    (0.1, 0.0001),
    (1.0, 0.001),
    (10.0, 0.01),
    (100.0, 0.1),
    (1_000.0, 1.0),
    (10_000.0, 10.0),
    (100_000.0, 50.0),
    (500_000.0, 100.0),
    (1_000_000.0, 500.0),
    (2_000_000.0, 1000.0),
)
_BAND_LO = np.array([b[0] for b in UPBIT_KRW_TICKS])
_BAND_TICK = np.array([b[1] for b in UPBIT_KRW_TICKS])


def upbit_krw_tick(price_krw: np.ndarray | float) -> np.ndarray:
    """Upbit's KRW price tick for the given price(s)."""
    p = np.asarray(price_krw, dtype=np.float64)
    idx = np.searchsorted(_BAND_LO, p, side="right") - 1
    return _BAND_TICK[np.clip(idx, 0, len(_BAND_TICK) - 1)]


def _upbit_book_tick(mid: np.ndarray, levels: int) -> np.ndarray:
    """One tick for a whole Upbit book around ``mid``: the tick of the band of the book's
    highest price (bands' ticks are multiples of the finer bands' ticks, so every level of a
    book that reaches into a coarser band lies on the grid of its own band)."""
    fine = upbit_krw_tick(mid)
    extra = np.maximum(0.0, mid * (_LEVEL_SPACING_BPS * 1e-4) / fine - 1.0)
    return upbit_krw_tick(mid + (levels + 3) * (2.0 * extra + 2.0) * fine)


#: 2026-01-01T00:00:00Z in ns.
DEFAULT_START_NS = 1_767_225_600 * 1_000_000_000

FX_CENTER_KRW = 1400.0
_GRID_NS = 50_000_000  # 50 ms event-time grid for the price processes
_DAY_S = 86_400.0
_MARKET_CORR = 0.6
#: activity of an asset in [0, 1] from its traded value (log scale, 10^7.5 .. 10^10.5 USD)
_ACT_LO, _ACT_SPAN = 7.5, 3.0
#: probability that a symbol publishes a book in one publishing period, by activity 0 .. 1
_BINANCE_P_LO, _BINANCE_P_HI = 0.70, 0.98  # @depth@100ms: 7-10 books/s (recorded 7.3-9.7)
_UPBIT_P_LO, _UPBIT_P_HI = 0.20, 0.75  # 300 ms cycle: 0.7-2.5 books/s (recorded 0.6-2.2)
_UPBIT_TS_JITTER_MS = 40  # Upbit's venue times scatter over the first ms of its cycle
_LEVEL_SPACING_BPS = 1.0  # typical distance between levels where ticks are finer than this
_UPBIT_DEPTH_FACTOR = 0.7
_FX_DEPTH_USD = 300_000.0
_SIZE_SIGMA = 0.7
_SPREAD_TICKS_P = (0.6, 0.3, 0.1)  # P(spread = 1, 2, 3 ticks)
#: share of books whose top (best prices and sizes) repeats the previous book's, at volatility 1
_HOLD_P = {UPBIT: 0.50, BINANCE: 0.50}
#: best-level queues: trades take a lognormal share between books, refreshed now and then
_QUEUE_DRIFT, _QUEUE_SD, _QUEUE_REFRESH_P = -0.12, 0.30, 0.15
_QUEUE_LOG_LO, _QUEUE_LOG_HI = math.log(0.05), math.log(3.0)
#: premium process parameters (calm regime, volatility 1)
_LEVEL_LO, _LEVEL_HI = 0.015, 0.035
_LEVEL_SD, _LEVEL_HALF_LIFE_S = 0.0030, 3 * 3600.0
_DEV_SD_LO, _DEV_SD_HI = 0.0015, 0.0022
_DEV_HL_LO_S, _DEV_HL_HI_S = 120.0, 360.0
_FAST_SD_LO, _FAST_SD_HI = 0.0003, 0.0006  # Upbit lagging Binance by seconds
_FAST_HL_LO_S, _FAST_HL_HI_S = 2.0, 8.0
_JUMP_MEAN_INTERVAL_S = 3600.0  # per symbol
_JUMP_LO, _JUMP_HI = 0.0040, 0.0120
_JUMP_HL_LO_S, _JUMP_HL_HI_S = 60.0, 240.0
#: market-wide regimes: calm and volatile hours (mean durations; volatile multipliers)
_CALM_MEAN_S, _VOLATILE_MEAN_S = 3 * 3600.0, 3600.0
_VOLATILE_SD_MULT, _VOLATILE_JUMP_MULT = 2.2, 3.0
_FX_SD, _FX_HALF_LIFE_S = 0.005, _DAY_S
#: corruption kinds (bad books)
BAD_KINDS = ("crossed", "nan_price", "negative_size", "zero_price", "unsorted", "empty_side")


def _default_symbols() -> tuple[str, ...]:
    return mock_universe_topn(20)


@dataclass(frozen=True)
class MockConfig:
    """The mock market's settings.

    ``binance_interval_ms``: Binance's publishing period (``@depth@100ms``): a symbol publishes
    at most one book per period, with a probability that grows with its traded value.
    ``upbit_interval_ms``: Upbit's publishing cycle per market (about 300 ms in the recordings),
    likewise. ``fx_interval_ms``: mean interval of the KRW-USDT book (on Upbit's cycle).
    ``*_feed_latency_ms`` + a uniform jitter in [0, ``feed_jitter_ms``): venue time to receive
    time. ``volatility``: multiplies the premium's deviation stdev, its jump rate and (by the
    square root) jump size, and the prices' volatility; 1 is the calibrated market, 4-5 a busy
    one.
    """

    seed: int = 0
    symbols: tuple[str, ...] = field(default_factory=_default_symbols)
    start_ns: int = DEFAULT_START_NS
    levels: int = 10
    binance_interval_ms: float = 100.0
    upbit_interval_ms: float = 300.0
    fx_interval_ms: float = 1000.0
    bad_book_prob: float = 0.002
    thin_book_prob: float = 0.05
    chunk_seconds: float = 60.0
    upbit_feed_latency_ms: float = 30.0
    binance_feed_latency_ms: float = 15.0
    feed_jitter_ms: float = 10.0
    volatility: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "symbols", tuple(self.symbols))
        unknown = [s for s in self.symbols if s not in MOCK_UNIVERSE]
        if unknown:
            raise ValueError(
                f"mock market has no symbol {', '.join(unknown)}; known: {', '.join(MOCK_UNIVERSE)}"
            )
        if not self.symbols:
            raise ValueError("mock market needs at least one symbol")
        if FX_SYMBOL in self.symbols:
            raise ValueError(f"{FX_SYMBOL} is the FX book, not a tradable mock symbol")
        if len(set(self.symbols)) != len(self.symbols):
            raise ValueError("mock market symbols must be distinct")
        if self.levels < 1:
            raise ValueError("mock market levels must be >= 1")
        for name in ("binance_interval_ms", "upbit_interval_ms", "fx_interval_ms", "chunk_seconds"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"mock market {name} must be > 0 (got {v})")
        for name in ("bad_book_prob", "thin_book_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"mock market {name} must be within [0, 1]")
        for name in ("upbit_feed_latency_ms", "binance_feed_latency_ms", "feed_jitter_ms"):
            v = getattr(self, name)
            if not (math.isfinite(v) and 0.0 <= v <= 60_000.0):
                raise ValueError(f"mock market {name} must be within [0, 60000] ms (got {v})")
        v = self.volatility
        if not (math.isfinite(v) and 0.0 < v <= 100.0):
            raise ValueError(f"mock market volatility must be > 0 and <= 100 (got {v})")


def _seed_entropy(seed: int) -> int:
    return int(seed) % (1 << 64)


def _ou_path(x0: np.ndarray, a: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """x[:, 0] = x0, x[:, k+1] = a * x[:, k] + eps[:, k], in closed form over blocks.

    Within a block, x_j = a^j * (x_0 + sum_{i<j} eps_i / a^(i+1)); blocks are short enough that
    a^-j stays small (no overflow or precision loss), so the loop runs over a few blocks only.
    """
    s, g = eps.shape
    out = np.empty((s, g + 1))
    out[:, 0] = x0
    decay = float(np.max(-np.log(a))) if s else 0.0
    block = g if decay <= 0 else max(1, min(g, int(20.0 / decay)))
    x = np.asarray(x0, dtype=np.float64)
    for b0 in range(0, g, block):
        b1 = min(g, b0 + block)
        pw = a[:, None] ** np.arange(1, b1 - b0 + 1)[None, :]
        out[:, b0 + 1 : b1 + 1] = pw * (x[:, None] + np.cumsum(eps[:, b0:b1] / pw, axis=1))
        x = out[:, b1]
    return out


class MockMarket:
    """Generates the mock market of ``cfg`` (see the module docstring)."""

    def __init__(self, cfg: MockConfig) -> None:
        self.cfg = cfg
        syms = cfg.symbols
        self.symtab = SymbolTable((FX_SYMBOL, *syms))
        assets = [MOCK_UNIVERSE[s] for s in syms]
        self._n = n = len(syms)
        vol = cfg.volatility
        self._vol_step = np.array([a.daily_vol for a in assets]) * vol * math.sqrt(
            _GRID_NS / 1e9 / _DAY_S
        )
        self._price0 = np.array([a.price_usd for a in assets])
        self._depth = np.array([a.depth_usd for a in assets], dtype=np.float64)
        self._btick = np.array([a.binance_tick for a in assets])
        self._blot = np.array([a.binance_lot for a in assets])
        activity = np.clip(
            (np.log10([a.volume_usd for a in assets]) - _ACT_LO) / _ACT_SPAN, 0.0, 1.0
        )

        # streams: 0 = FX, 1..n = upbit symbols, n+1..2n = binance symbols
        self._st_venue = np.concatenate([[UPBIT], np.full(n, UPBIT), np.full(n, BINANCE)]).astype(
            np.int8
        )
        self._st_asset = np.concatenate([[-1], np.arange(n), np.arange(n)]).astype(np.int64)
        self._st_sym = (self._st_asset + 1).astype(np.int32)  # symtab: FX is 0, asset j is j+1
        # publishing: one slot per period, a book in a slot with probability _st_p
        up_ns = max(1, int(round(cfg.upbit_interval_ms * 1e6)))
        bn_ns = max(1, int(round(cfg.binance_interval_ms * 1e6)))
        self._st_period = np.concatenate([[up_ns], np.full(n, up_ns), np.full(n, bn_ns)]).astype(
            np.int64
        )
        self._st_p = np.concatenate(
            [
                [min(1.0, cfg.upbit_interval_ms / cfg.fx_interval_ms)],
                _UPBIT_P_LO + (_UPBIT_P_HI - _UPBIT_P_LO) * activity,
                _BINANCE_P_LO + (_BINANCE_P_HI - _BINANCE_P_LO) * activity,
            ]
        )
        # venue times are whole ms; Upbit's scatter within the start of its cycle
        self._st_ts_jitter = np.where(
            self._st_venue == UPBIT, min(_UPBIT_TS_JITTER_MS, max(1, up_ns // 2_000_000)), 1
        ).astype(np.int64)
        self._st_latency = np.where(
            self._st_venue == UPBIT, cfg.upbit_feed_latency_ms, cfg.binance_feed_latency_ms
        )
        self._st_hold = np.array(
            [_HOLD_P[int(v)] for v in self._st_venue]
        ) / max(1.0, math.sqrt(vol))

        init = np.random.default_rng(
            np.random.SeedSequence(_seed_entropy(cfg.seed), spawn_key=(1,))
        )
        self._level_base = init.uniform(_LEVEL_LO, _LEVEL_HI, n)
        self._dev_sd = init.uniform(_DEV_SD_LO, _DEV_SD_HI, n) * vol
        dev_hl = init.uniform(_DEV_HL_LO_S, _DEV_HL_HI_S, n)
        jump_hl = init.uniform(_JUMP_HL_LO_S, _JUMP_HL_HI_S, n)
        dt = _GRID_NS / 1e9
        self._a_dev = np.exp(-math.log(2) * dt / dev_hl)
        self._a_jump = np.exp(-math.log(2) * dt / jump_hl)
        self._a_level = np.full(n, math.exp(-math.log(2) * dt / _LEVEL_HALF_LIFE_S))
        self._a_fx = np.array([math.exp(-math.log(2) * dt / _FX_HALF_LIFE_S)])
        self._fast_sd = init.uniform(_FAST_SD_LO, _FAST_SD_HI, n) * vol
        self._a_fast = np.exp(-math.log(2) * dt / init.uniform(_FAST_HL_LO_S, _FAST_HL_HI_S, n))
        phase_ms = init.integers(0, 1 << 30, 2 * n + 1)
        self._st_phase = (phase_ms % np.maximum(1, self._st_period // 1_000_000)) * 1_000_000
        self._jump_p = dt / _JUMP_MEAN_INTERVAL_S * vol
        self._jump_scale = math.sqrt(vol)
        volatile0 = bool(init.random() < _VOLATILE_MEAN_S / (_CALM_MEAN_S + _VOLATILE_MEAN_S))
        first_switch_s = init.exponential(_VOLATILE_MEAN_S if volatile0 else _CALM_MEAN_S)
        self._init_state = {
            "logp": np.log(self._price0) + init.normal(0.0, 0.02, n),
            "level": init.normal(0.0, _LEVEL_SD, n),  # deviation of the level from its base
            "dev": init.normal(0.0, 1.0, n) * self._dev_sd,
            "jump": np.zeros(n),
            "fast": np.zeros(n),
            "logfx": np.array([init.normal(0.0, _FX_SD * 0.5)]),
            "last_recv": np.full(2 * n + 1, np.iinfo(np.int64).min, dtype=np.int64),
            # market regime: volatile?, and the event time of its next switch
            "regime": np.array([volatile0]),
            "next_switch": np.array([cfg.start_ns + int(first_switch_s * 1e9)], dtype=np.int64),
        }

    # -- public ------------------------------------------------------------------------------

    def batches(self, duration_s: float | None, batch_rows: int = 65536) -> Iterator[BookBatch]:
        """Rows with ``recv_ns < start + duration_s`` in ``recv_ns`` order, ``batch_rows`` each,
        or a few more where rows with one ``recv_ns`` would be split (the last batch may be
        shorter). ``duration_s=None`` generates without end."""
        if batch_rows < 1:
            raise ValueError("batch_rows must be >= 1")
        cfg = self.cfg
        end_ns = None
        if duration_s is not None and math.isfinite(duration_s):
            end_ns = cfg.start_ns + int(round(duration_s * 1e9))
        chunk_ns = int(round(cfg.chunk_seconds * 1e9))
        state = {k: v.copy() for k, v in self._init_state.items()}
        carry: BookBatch | None = None
        pending: list[BookBatch] = []
        pending_rows = 0
        k = 0
        while end_ns is None or cfg.start_ns + k * chunk_ns < end_ns:
            c0 = cfg.start_ns + k * chunk_ns
            chunk = self._chunk(k, c0, chunk_ns, state)
            merged = chunk if carry is None else BookBatch.concat([carry, chunk])
            order = np.argsort(merged.recv_ns, kind="stable")
            boundary = c0 + chunk_ns if end_ns is None else min(c0 + chunk_ns, end_ns)
            cut = int(np.searchsorted(merged.recv_ns[order], boundary, side="left"))
            if cut:
                pending.append(merged.take(order[:cut]))
                pending_rows += cut
            carry = merged.take(order[cut:])
            k += 1
            if pending_rows >= batch_rows:
                # no cut inside a run of equal recv_ns: every book of one instant in one batch
                # (a run never spans chunks: pending rows are all before the boundary)
                big = BookBatch.concat(pending)
                pos = 0
                while pending_rows - pos >= batch_rows:
                    end = pos + batch_rows
                    end = int(np.searchsorted(big.recv_ns, big.recv_ns[end - 1], side="right"))
                    yield _rows(big, pos, end)
                    pos = end
                pending = [_rows(big, pos, pending_rows)] if pos < pending_rows else []
                pending_rows -= pos
        if pending_rows:
            yield BookBatch.concat(pending)

    # -- one chunk -----------------------------------------------------------------------------

    def _chunk(self, k: int, c0: int, chunk_ns: int, state: dict) -> BookBatch:
        cfg = self.cfg
        rng = np.random.default_rng(
            np.random.SeedSequence(_seed_entropy(cfg.seed), spawn_key=(0, k))
        )
        n = self._n
        g = -(-chunk_ns // _GRID_NS)  # grid steps covering the chunk

        # market regime per grid step (switches at exponential times, carried across chunks)
        volatile = np.empty(g, dtype=bool)
        at, on = 0, bool(state["regime"][0])
        while True:
            nxt = int(state["next_switch"][0])
            step = max(at, min(g, -(-(nxt - c0) // _GRID_NS)))
            volatile[at:step] = on
            if step >= g:
                break
            at, on = step, not on
            mean_s = _VOLATILE_MEAN_S if on else _CALM_MEAN_S
            state["next_switch"][0] = nxt + max(1, int(rng.exponential(mean_s) * 1e9))
        state["regime"][0] = on
        sd_mult = np.where(volatile, _VOLATILE_SD_MULT, 1.0)[None, :]

        # price processes on the grid: (n, g+1) paths, column 0 = carried state
        zm = rng.standard_normal(g)
        zi = rng.standard_normal((n, g))
        z = _MARKET_CORR * zm[None, :] + math.sqrt(1 - _MARKET_CORR**2) * zi
        vol = self._vol_step[:, None]
        logp = np.empty((n, g + 1))
        logp[:, 0] = state["logp"]
        np.cumsum(vol * z - 0.5 * vol**2, axis=1, out=logp[:, 1:])
        logp[:, 1:] += state["logp"][:, None]

        dev = _ou_path(
            state["dev"],
            self._a_dev,
            rng.standard_normal((n, g))
            * (self._dev_sd * np.sqrt(1 - self._a_dev**2))[:, None]
            * sd_mult,
        )
        fast = _ou_path(
            state["fast"],
            self._a_fast,
            rng.standard_normal((n, g))
            * (self._fast_sd * np.sqrt(1 - self._a_fast**2))[:, None]
            * sd_mult,
        )
        level = _ou_path(
            state["level"],
            self._a_level,
            rng.standard_normal((n, g)) * (_LEVEL_SD * np.sqrt(1 - self._a_level**2))[:, None],
        )
        jumps = np.zeros((n, g))
        jump_p = self._jump_p * np.where(volatile, _VOLATILE_JUMP_MULT, 1.0)[None, :]
        hit = rng.random((n, g)) < jump_p
        n_hit = int(hit.sum())
        if n_hit:
            jumps[hit] = (
                rng.uniform(_JUMP_LO, _JUMP_HI, n_hit)
                * self._jump_scale
                * rng.choice((-1.0, 1.0), n_hit)
            )
        jump = _ou_path(state["jump"], self._a_jump, jumps)
        premium = self._level_base[:, None] + level + dev + fast + jump
        logfx = _ou_path(
            state["logfx"],
            self._a_fx,
            rng.standard_normal((1, g)) * (_FX_SD * math.sqrt(1 - self._a_fx[0] ** 2)),
        )[0]
        fx = FX_CENTER_KRW * np.exp(logfx)
        state["logp"] = logp[:, -1].copy()
        state["dev"] = dev[:, -1].copy()
        state["fast"] = fast[:, -1].copy()
        state["level"] = level[:, -1].copy()
        state["jump"] = jump[:, -1].copy()
        state["logfx"] = logfx[-1:].copy()

        # event times: each stream's publishing slots (period, phase) within the chunk, a book
        # in a slot with the stream's probability; rows grouped by stream, in time order
        period, rel0 = self._st_period, c0 - cfg.start_ns - self._st_phase
        first_slot = -(-rel0 // period)
        n_slots = -(-(rel0 + chunk_ns) // period) - first_slot
        slot_stream = np.repeat(np.arange(n_slots.shape[0], dtype=np.int64), n_slots)
        slot_pos = np.arange(slot_stream.shape[0]) - np.repeat(np.cumsum(n_slots) - n_slots, n_slots)
        keep = rng.random(slot_stream.shape[0]) < self._st_p[slot_stream]
        stream = slot_stream[keep]
        slot_t = (first_slot[stream] + slot_pos[keep]) * period[stream] + self._st_phase[stream]
        r = stream.shape[0]
        jit = rng.integers(0, 1 << 30, r) % self._st_ts_jitter[stream]
        ts = cfg.start_ns + slot_t + jit * 1_000_000
        t_rel = ts - c0
        counts = np.bincount(stream, minlength=period.shape[0])
        first = np.ones(r, dtype=bool)
        first[1:] = stream[1:] != stream[:-1]
        venue = self._st_venue[stream]
        is_up = venue == UPBIT
        asset = self._st_asset[stream]
        is_fx = asset < 0
        a_idx = np.where(is_fx, 0, asset)
        gi = np.clip(t_rel // _GRID_NS, 0, g)

        # receive times: venue time + feed latency + uniform jitter; within a stream strictly
        # increasing (TCP keeps order; a tie is nudged by 1 ns), also across chunks
        lat = (self._st_latency[stream] * 1e6).astype(np.int64)
        jit_ns = int(round(cfg.feed_jitter_ms * 1e6))
        if jit_ns > 0:
            lat += rng.integers(0, jit_ns, r)
        recv = ts + lat
        if r:
            recv[first] = np.maximum(recv[first], state["last_recv"][stream[first]] + 1)
            pos = np.arange(r, dtype=np.int64)
            y = recv - pos
            lo = int(y.min())
            span = int(y.max()) - lo + 1
            y = np.maximum.accumulate((y - lo) + stream * span) - stream * span + lo
            recv = y + pos
            last_idx = np.cumsum(counts) - 1
            has = counts > 0
            state["last_recv"][has] = recv[last_idx[has]]

        # mids, ticks, USD value of one coin
        b_mid = np.exp(logp[a_idx, gi])
        u_mid = b_mid * fx[gi] * (1.0 + premium[a_idx, gi])
        mid = np.where(is_fx, fx[gi], np.where(is_up, u_mid, b_mid))
        tick = np.where(is_up, _upbit_book_tick(mid, cfg.levels), self._btick[a_idx])
        usd_px = np.where(is_fx, 1.0, b_mid)
        depth = np.where(
            is_fx, _FX_DEPTH_USD, self._depth[a_idx] * np.where(is_up, _UPBIT_DEPTH_FACTOR, 1.0)
        )
        lot = np.where(venue == BINANCE, self._blot[a_idx], 0.0)
        bid_off, bid_px, bid_sz, ask_off, ask_px, ask_sz = self._books(
            rng, mid, tick, usd_px, depth, lot, first, self._st_hold[stream]
        )
        return BookBatch(
            ts_ns=ts,
            recv_ns=recv,
            venue=venue,
            sym=self._st_sym[stream],
            quote_ok=np.ones(r, dtype=bool),
            bid_off=bid_off,
            bid_px=bid_px,
            bid_sz=bid_sz,
            ask_off=ask_off,
            ask_px=ask_px,
            ask_sz=ask_sz,
            symbols=self.symtab.names,
        )

    def _books(
        self,
        rng: np.random.Generator,
        mid: np.ndarray,
        tick: np.ndarray,
        usd_px: np.ndarray,
        depth_usd: np.ndarray,
        lot: np.ndarray,
        first: np.ndarray,
        hold_p: np.ndarray,
    ):
        """Both sides of every row's book, as (offsets, prices, sizes) per side.

        Rows come grouped by stream in time order; ``first`` marks each stream's first row.
        """
        cfg = self.cfg
        nl = cfg.levels
        r = mid.shape[0]
        # prices in integer ticks: best bid/ask around the mid with a 1-3 tick spread, then
        # levels further out by at least one tick (more where ticks are much finer than ~1 bps)
        u = rng.random(r)
        p1, p2, _ = _SPREAD_TICKS_P
        spread = 1.0 + (u >= p1) + (u >= p1 + p2)
        bid0 = np.floor(mid / tick - spread / 2.0)
        ask0 = bid0 + spread

        # thin books, and books whose top repeats the previous book's (only deeper levels
        # changed): a held row takes the best prices (and tick) of the last row not held
        thin = rng.random(r) < cfg.thin_book_prob
        after_thin = np.zeros(r, dtype=bool)
        after_thin[1:] = thin[:-1]
        after_thin &= ~first
        hold = (rng.random(r) < hold_p) & ~first & ~thin & ~after_thin
        idx = np.arange(r)
        src = np.maximum.accumulate(np.where(hold, 0, idx))
        bid0, ask0, tick = bid0[src], ask0[src], tick[src]

        # (the arithmetic below runs in place where it can: the same operations in the same
        # order give the same values, without a temporary (2, rows, levels) array per step)
        steps = np.zeros((2, r, nl))
        if nl > 1:
            extra = np.maximum(0.0, mid * (_LEVEL_SPACING_BPS * 1e-4) / tick - 1.0)
            gaps = rng.random((2, r, nl - 1), dtype=np.float32) * (2.0 * extra[None, :, None] + 1.0)
            np.floor(gaps, out=gaps)
            gaps += 1.0
            np.cumsum(gaps, axis=2, out=steps[:, :, 1:])
        ticks = np.empty((2, r, nl))
        np.subtract(bid0[:, None], steps[0], out=ticks[0])
        np.add(ask0[:, None], steps[1], out=ticks[1])
        px = _ticks_to_price(ticks, tick[None, :, None], out=ticks)

        # sizes: lognormal around the level depth in USD, a little deeper further out
        lvl_factor = 1.0 + 0.1 * np.arange(nl)
        z = rng.standard_normal((2, r, nl), dtype=np.float32)
        z *= np.float32(_SIZE_SIGMA)
        z -= np.float32(0.5 * _SIZE_SIGMA**2)
        noise = np.exp(z, out=z)
        thin_factor = np.where(thin, 1.0 / rng.uniform(30.0, 150.0, r), 1.0)
        coin = depth_usd * thin_factor / usd_px
        sz = noise * lvl_factor[None, None, :]
        sz *= coin[None, :, None]

        # the best level is a queue that trades consume between books: within a run of books
        # at one best price its size shrinks by a lognormal share per book (unchanged on held
        # rows); a new run (new best price, a refresh, a thin book) starts from a fresh size
        step_log = rng.normal(_QUEUE_DRIFT, _QUEUE_SD, (2, r))
        refresh = rng.random((2, r)) < _QUEUE_REFRESH_P
        new_px = np.ones((2, r), dtype=bool)
        new_px[0, 1:] = bid0[1:] != bid0[:-1]
        new_px[1, 1:] = ask0[1:] != ask0[:-1]
        start = (new_px | refresh | (first | thin | after_thin)[None, :]) & ~hold[None, :]
        step_log[start] = 0.0
        step_log[:, hold] = 0.0
        cum = np.cumsum(step_log, axis=1)
        run0 = np.maximum.accumulate(np.where(start, idx[None, :], 0), axis=1)
        seg = np.take_along_axis(cum, run0, axis=1)
        np.subtract(cum, seg, out=seg)
        np.clip(seg, _QUEUE_LOG_LO, _QUEUE_LOG_HI, out=seg)
        top0 = np.take_along_axis(sz[:, :, 0], run0, axis=1)
        sz[:, :, 0] = top0 * np.exp(seg)

        has_lot = lot > 0
        if has_lot.any():
            # whole lots, at least one, on the rows that have a lot (Binance); computed over
            # every row (a lot of 1 elsewhere) and selected with np.where: cheaper than
            # gathering and scattering the rows, and the same values on the rows kept
            lot_or_1 = np.where(has_lot, lot, 1.0)[None, :, None]
            lots = np.divide(sz, lot_or_1)
            np.floor(lots, out=lots)
            np.maximum(lots, 1.0, out=lots)
            sz = np.where(has_lot[None, :, None], _ticks_to_price(lots, lot_or_1, out=lots), sz)

        lens = np.full((2, r), nl, dtype=np.int64)
        self._corrupt(rng, px, sz, lens, tick)

        out = []
        for side in (0, 1):
            if (lens[side] == nl).all():
                off = np.arange(r + 1, dtype=np.int64) * nl
                out.extend((off, px[side].reshape(-1), sz[side].reshape(-1)))
            else:
                keep = np.arange(nl)[None, :] < lens[side][:, None]
                off = np.zeros(r + 1, dtype=np.int64)
                np.cumsum(lens[side], out=off[1:])
                out.extend((off, px[side][keep], sz[side][keep]))
        return tuple(out)

    def _corrupt(
        self,
        rng: np.random.Generator,
        px: np.ndarray,
        sz: np.ndarray,
        lens: np.ndarray,
        tick: np.ndarray,
    ) -> None:
        """Corrupt a ``bad_book_prob`` share of rows in place, one way each (``BAD_KINDS``)."""
        nl = px.shape[2]
        rows = np.flatnonzero(rng.random(px.shape[1]) < self.cfg.bad_book_prob)
        m = rows.shape[0]
        kind = rng.integers(0, len(BAD_KINDS), m)
        side = rng.integers(0, 2, m)
        lvl = rng.integers(0, nl, m)
        pair = rng.integers(0, max(nl - 1, 1), m)
        if m == 0:
            return
        if nl < 2:
            kind[kind == BAD_KINDS.index("unsorted")] = BAD_KINDS.index("crossed")
        k = BAD_KINDS.index
        c = rows[kind == k("crossed")]
        if c.shape[0]:
            # move the asks down so that the best ask sits one tick below the best bid
            px[1, c, :] -= (px[1, c, 0] - px[0, c, 0] + tick[c])[:, None]
        sel = kind == k("nan_price")
        px[side[sel], rows[sel], lvl[sel]] = np.nan
        sel = kind == k("negative_size")
        sz[side[sel], rows[sel], lvl[sel]] *= -1.0
        sel = kind == k("zero_price")
        px[side[sel], rows[sel], lvl[sel]] = 0.0
        sel = kind == k("unsorted")
        s, rr, j = side[sel], rows[sel], pair[sel]
        a, b = px[s, rr, j].copy(), px[s, rr, j + 1].copy()
        px[s, rr, j], px[s, rr, j + 1] = b, a
        sel = kind == k("empty_side")
        lens[side[sel], rows[sel]] = 0


def _rows(b: BookBatch, lo: int, hi: int) -> BookBatch:
    """Rows ``lo:hi`` of ``b`` as a compact batch (offsets from 0), sharing ``b``'s memory."""
    bo, ao = b.bid_off[lo : hi + 1], b.ask_off[lo : hi + 1]
    return BookBatch(
        ts_ns=b.ts_ns[lo:hi],
        recv_ns=b.recv_ns[lo:hi],
        venue=b.venue[lo:hi],
        sym=b.sym[lo:hi],
        quote_ok=b.quote_ok[lo:hi],
        bid_off=bo - bo[0],
        bid_px=b.bid_px[bo[0] : bo[-1]],
        bid_sz=b.bid_sz[bo[0] : bo[-1]],
        ask_off=ao - ao[0],
        ask_px=b.ask_px[ao[0] : ao[-1]],
        ask_sz=b.ask_sz[ao[0] : ao[-1]],
        symbols=b.symbols,
    )


def _ticks_to_price(ticks: np.ndarray, tick: np.ndarray, out: np.ndarray | None = None
                    ) -> np.ndarray:
    """ticks * tick, as the closest double to the decimal price where the tick is below 1
    (e.g. 23001 * 0.0001 -> 2.3001, not 2.3001000000000003). ``out`` (may be ``ticks``)
    receives the result."""
    fine = tick < 1.0
    mul = np.where(fine, 1.0, tick)
    div = np.where(fine, np.round(1.0 / np.where(fine, tick, 1.0)), 1.0)
    res = np.multiply(ticks, mul, out=out)
    return np.divide(res, div, out=res)
