"""The seeded mock market: determinism, ordering, realism, bad books."""

from __future__ import annotations

import numpy as np
import pytest

from common.marketdata.batch import BookBatch
from common.marketdata.mock import (
    DEFAULT_START_NS,
    MOCK_UNIVERSE,
    MockConfig,
    MockMarket,
    mock_universe_topn,
    mock_volume_usd,
    upbit_krw_tick,
)
from common.marketdata.validate import BookValidator, count_reasons
from common.types import BINANCE, FX_SYMBOL, UPBIT

SMALL = ("BTC", "XRP", "DOGE")


def run(cfg: MockConfig, duration_s: float, batch_rows: int = 65536) -> BookBatch:
    return BookBatch.concat(list(MockMarket(cfg).batches(duration_s, batch_rows)))


def assert_same_rows(a: BookBatch, b: BookBatch) -> None:
    assert len(a) == len(b)
    for name in (
        "ts_ns",
        "recv_ns",
        "venue",
        "sym",
        "quote_ok",
        "bid_off",
        "bid_px",
        "bid_sz",
        "ask_off",
        "ask_px",
        "ask_sz",
    ):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.symbols == b.symbols


@pytest.fixture(scope="module")
def hour() -> tuple[MockMarket, BookBatch, np.ndarray]:
    """One hour of the default market (20 symbols), with its validation codes."""
    mock = MockMarket(MockConfig(seed=7))
    batches = list(mock.batches(3600.0))
    v = BookValidator()
    codes = np.concatenate([v.validate(b) for b in batches])
    return mock, BookBatch.concat(batches), codes


# -- universe and config ------------------------------------------------------------------------


def test_universe():
    assert 35 <= len(MOCK_UNIVERSE) <= 50
    assert FX_SYMBOL not in MOCK_UNIVERSE
    vols = mock_volume_usd()
    assert list(vols) == sorted(vols, key=lambda s: (-vols[s], s))
    assert mock_universe_topn(3) == ("BTC", "ETH", "XRP")
    assert mock_universe_topn(20) == tuple(list(vols)[:20])
    assert mock_universe_topn(0) == ()
    assert MOCK_UNIVERSE["BTC"].price_usd > 10_000 and MOCK_UNIVERSE["DOGE"].price_usd < 1
    for a in MOCK_UNIVERSE.values():
        assert a.price_usd > 0 and 0 < a.daily_vol < 0.2 and a.depth_usd > 0
        assert 0 < a.binance_tick < a.price_usd / 500  # at least a few hundred ticks per price
        assert a.binance_lot > 0


def test_config_defaults_and_validation():
    cfg = MockConfig(seed=1)
    assert cfg.symbols == mock_universe_topn(20)
    assert cfg.start_ns == DEFAULT_START_NS == 1_767_225_600_000_000_000
    assert (cfg.levels, cfg.binance_interval_ms, cfg.upbit_interval_ms, cfg.fx_interval_ms) == (
        10,
        100,
        300,
        1000,
    )
    assert (cfg.bad_book_prob, cfg.thin_book_prob, cfg.chunk_seconds) == (0.002, 0.05, 60)
    assert (
        cfg.upbit_feed_latency_ms,
        cfg.binance_feed_latency_ms,
        cfg.feed_jitter_ms,
        cfg.volatility,
    ) == (30.0, 15.0, 10.0, 1.0)
    with pytest.raises(ValueError, match="NOPE"):
        MockConfig(seed=1, symbols=("BTC", "NOPE"))
    with pytest.raises(ValueError):
        MockConfig(seed=1, symbols=("BTC", "BTC"))
    with pytest.raises(ValueError):
        MockConfig(seed=1, symbols=())
    with pytest.raises(ValueError):
        MockConfig(seed=1, levels=0)
    with pytest.raises(ValueError):
        MockConfig(seed=1, bad_book_prob=1.5)
    with pytest.raises(ValueError):
        MockConfig(seed=1, binance_interval_ms=0)
    for bad in (
        {"volatility": 0.0},
        {"volatility": -1.0},
        {"volatility": float("nan")},
        {"upbit_feed_latency_ms": -1.0},
        {"binance_feed_latency_ms": float("inf")},
        {"feed_jitter_ms": -0.5},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            MockConfig(seed=1, **bad)
    # zero latency and zero jitter are allowed
    MockConfig(seed=1, upbit_feed_latency_ms=0, binance_feed_latency_ms=0, feed_jitter_ms=0)


def test_upbit_tick_table():
    prices = np.array([0.00005, 0.03, 0.5, 5.0, 50.0, 500.0, 1400.0, 50_000.0, 200_000.0, 1.4e8])
    assert upbit_krw_tick(prices).tolist() == [
        1e-8,
        1e-5,
        1e-4,
        1e-3,
        1e-2,
        0.1,
        1.0,
        10.0,
        50.0,
        1000.0,
    ]


# -- determinism ------------------------------------------------------------------------------


def assert_batches_cut_between_instants(batches: list[BookBatch], rows: int) -> None:
    """Each batch has ``rows`` rows, or more only to keep books of one recv_ns together."""
    for b, nxt in zip(batches[:-1], batches[1:], strict=True):
        assert len(b) >= rows
        assert b.recv_ns[-1] < nxt.recv_ns[0]  # no instant split across two batches
        if len(b) > rows:  # extended: only over a run of equal recv_ns
            assert np.all(b.recv_ns[rows - 1 :] == b.recv_ns[-1])
    assert 0 < len(batches[-1])


def test_same_rows_regardless_of_batch_rows():
    cfg = MockConfig(seed=11, symbols=SMALL, chunk_seconds=20.0)
    ref = run(cfg, 90.0, batch_rows=65536)
    for rows in (1, 97, 1000, 4096):
        batches = list(MockMarket(cfg).batches(90.0, rows))
        assert_batches_cut_between_instants(batches, rows)
        assert_same_rows(BookBatch.concat(batches), ref)


def test_books_of_one_instant_stay_in_one_batch():
    # without feed jitter, Binance books of different symbols often share a recv_ns
    cfg = MockConfig(seed=4, symbols=mock_universe_topn(12), feed_jitter_ms=0.0, chunk_seconds=7)
    ref = run(cfg, 30.0)
    ties = np.diff(ref.recv_ns) == 0
    assert ties.sum() > 50
    for rows in (1, 2, 13, 500):
        batches = list(MockMarket(cfg).batches(30.0, rows))
        assert_batches_cut_between_instants(batches, rows)
        assert_same_rows(BookBatch.concat(batches), ref)


def test_repeatable_and_seed_dependent():
    cfg = MockConfig(seed=5, symbols=SMALL)
    mock = MockMarket(cfg)
    a = BookBatch.concat(list(mock.batches(30.0)))
    b = BookBatch.concat(list(mock.batches(30.0)))  # a second pass over the same object
    assert_same_rows(a, b)
    assert_same_rows(a, run(MockConfig(seed=5, symbols=SMALL), 30.0))
    c = run(MockConfig(seed=6, symbols=SMALL), 30.0)
    assert len(a) != len(c) or not np.array_equal(a.recv_ns, c.recv_ns)
    n = min(len(a), len(c))
    assert not np.array_equal(a.bid_px[:n], c.bid_px[:n])


def test_shorter_run_is_a_prefix_of_a_longer_one():
    cfg = MockConfig(seed=2, symbols=SMALL, chunk_seconds=15.0)
    short = run(cfg, 40.0, batch_rows=500)
    long = run(cfg, 100.0, batch_rows=333)
    assert len(short) < len(long)
    assert_same_rows(short, long.take(np.arange(len(short))))
    assert short.recv_ns.max() < cfg.start_ns + 40 * 10**9
    assert long.recv_ns[len(short)] >= cfg.start_ns + 40 * 10**9


def test_zero_duration_and_open_ended():
    mock = MockMarket(MockConfig(seed=1, symbols=SMALL))
    assert list(mock.batches(0.0)) == []
    it = mock.batches(None, batch_rows=1000)
    first = [next(it) for _ in range(3)]
    assert_batches_cut_between_instants(first, 1000)
    got = BookBatch.concat(first)
    assert_same_rows(got, run(mock.cfg, 240.0).take(np.arange(len(got))))


# -- shape and ordering -------------------------------------------------------------------------


def test_sorted_streams_and_symbols(hour):
    mock, b, _ = hour
    cfg = mock.cfg
    assert mock.symtab.names[0] == FX_SYMBOL
    assert mock.symtab.names[1:] == cfg.symbols
    assert b.symbols == mock.symtab.names
    assert np.all(np.diff(b.recv_ns) >= 0)
    assert np.all(b.recv_ns >= b.ts_ns)
    assert b.ts_ns.min() >= cfg.start_ns
    assert b.recv_ns.max() < cfg.start_ns + 3600 * 10**9
    assert b.quote_ok.all()
    assert set(np.unique(b.venue).tolist()) == {UPBIT, BINANCE}
    # every symbol on both venues, at the recorded feeds' rates (Binance @depth@100ms: 7-10
    # books/s, more for more active symbols; Upbit's 300 ms cycle: 0.6-2.5/s); FX only on upbit
    rates = {}
    for s in range(1, len(b.symbols)):
        for venue, lo, hi in ((UPBIT, 0.6, 2.5), (BINANCE, 7.0, 10.0)):
            n = int(np.sum((b.sym == s) & (b.venue == venue)))
            rates[venue, s] = n / 3600
            assert lo <= n / 3600 <= hi, (s, venue, n)
    assert rates[BINANCE, 1] > 9.5 and rates[UPBIT, 1] > 2.2  # BTC, the most active
    assert rates[BINANCE, 1] > rates[BINANCE, 20] and rates[UPBIT, 1] > rates[UPBIT, 20]
    fx = b.sym == 0
    assert not np.any(fx & (b.venue == BINANCE))
    assert abs(int(fx.sum()) - 3600) < 300
    # within a stream, ts and recv never go backwards (delays never reorder a stream)
    key = b.venue.astype(np.int64) * 100 + b.sym
    order = np.lexsort((np.arange(len(b)), key))
    same = key[order][1:] == key[order][:-1]
    assert np.all(np.diff(b.ts_ns[order])[same] > 0)
    # no two books of one stream at one recv_ns: a decision would be taken on the first
    assert np.all(np.diff(b.recv_ns[order])[same] > 0)
    # venue times are whole milliseconds, as the venues send them
    assert np.all(b.ts_ns % 1_000_000 == 0)


def test_delays(hour):
    # recv_ns = ts_ns + the venue's feed latency (30 / 15 ms) + uniform jitter in [0, 10 ms)
    _, b, _ = hour
    d = (b.recv_ns - b.ts_ns) / 1e6
    up, bn = d[b.venue == UPBIT], d[b.venue == BINANCE]
    assert up.min() >= 30 and np.percentile(up, 99.9) < 40.01
    assert bn.min() >= 15 and np.percentile(bn, 99.9) < 25.01
    assert abs(np.median(up) - 35) < 0.5 and abs(np.median(bn) - 20) < 0.5
    assert 2.5 < up.std() < 3.3 and 2.5 < bn.std() < 3.3  # 10 / sqrt(12)


def test_mostly_valid_with_every_kind_of_bad_book(hour):
    _, b, codes = hour
    counts = count_reasons(codes)
    assert set(counts) == {"empty", "non_finite", "non_positive", "unsorted", "crossed"}
    bad = sum(counts.values())
    assert 0.001 < bad / len(b) < 0.004
    assert all(c > 40 for c in counts.values())
    # the two non_positive kinds (zero price, negative size) both occur
    rows = np.flatnonzero(codes == 4)
    sub = b.take(rows)
    assert (sub.bid_px == 0).any() or (sub.ask_px == 0).any()
    assert (sub.bid_sz < 0).any() or (sub.ask_sz < 0).any()


def test_valid_books_are_tick_rounded_and_realistic(hour):
    _, b, codes = hour
    good = b.take(np.flatnonzero(codes == 0))
    nb, na = good.n_bid, good.n_ask
    assert np.all(nb == 10) and np.all(na == 10)
    bb, ba = good.best_bid(), good.best_ask()
    up = good.venue == UPBIT
    # every upbit price, at every level, sits on the KRW tick grid of its own price band
    uprows = np.flatnonzero(up)
    for px, off in ((good.bid_px, good.bid_off), (good.ask_px, good.ask_off)):
        vals = px[np.concatenate([np.arange(off[i], off[i + 1]) for i in uprows[:20000]])]
        ratio = vals / upbit_krw_tick(vals)
        assert np.allclose(ratio, np.round(ratio), rtol=0, atol=1e-6)
    # spreads of 1-3 ticks of the book's grid: the coarsest band tick all its prices sit on
    # (the best ask's band tick, or a coarser band's where the book reaches into that band)
    sub = good.take(uprows)
    prices = np.concatenate([sub.bid_px.reshape(-1, 10), sub.ask_px.reshape(-1, 10)], axis=1)
    grid = np.zeros(len(sub))
    for t in np.unique(upbit_krw_tick(prices)):
        for c in (t, t * 5, t * 10):
            q = prices / c
            on = np.all(np.abs(q - np.round(q)) < 1e-6, axis=1)
            grid = np.where(on, np.maximum(grid, c), grid)
    sb, sa = sub.best_bid(), sub.best_ask()
    assert np.all(grid >= upbit_krw_tick(sa))
    spread_ticks = (sa - sb) / grid
    assert np.allclose(spread_ticks, np.round(spread_ticks), atol=1e-6)
    assert set(np.round(spread_ticks).astype(int).tolist()) <= {1, 2, 3}
    assert np.mean(grid == upbit_krw_tick(sa)) > 0.99
    # binance spreads are 1-3 ticks of the symbol
    names = good.symbols
    btick = np.array([0.0] + [MOCK_UNIVERSE[s].binance_tick for s in names[1:]])[good.sym]
    bn = good.venue == BINANCE
    sp = (ba[bn] - bb[bn]) / btick[bn]
    assert set(np.round(sp).astype(int).tolist()) <= {1, 2, 3}
    # FX: around 1400 KRW with a 1-2 KRW spread
    fx = good.sym == 0
    assert 1300 < np.median(bb[fx]) < 1500
    assert np.all((ba[fx] - bb[fx] >= 1) & (ba[fx] - bb[fx] <= 3))


def test_premium_has_level_deviations_and_jumps(hour):
    _, b, codes = hour
    good = b.take(np.flatnonzero(codes == 0))
    mid = (good.best_bid() + good.best_ask()) / 2
    fx_rows = np.flatnonzero(good.sym == 0)
    for s in (1, 3, 7):  # BTC, XRP, LINK-ish: a few symbols
        u = np.flatnonzero((good.sym == s) & (good.venue == UPBIT))
        n = np.flatnonzero((good.sym == s) & (good.venue == BINANCE))
        ib = np.searchsorted(good.recv_ns[n], good.recv_ns[u], side="right") - 1
        ifx = np.searchsorted(good.recv_ns[fx_rows], good.recv_ns[u], side="right") - 1
        ok = (ib >= 0) & (ifx >= 0)
        prem = mid[u[ok]] / (mid[n[ib[ok]]] * mid[fx_rows[ifx[ok]]]) - 1
        assert 0.005 < np.median(prem) < 0.045
        # deviation from a ~10 minute moving average: tens of bps, sometimes beyond the fees
        w = 1200
        ma = np.convolve(prem, np.ones(w) / w, mode="valid")
        dev = prem[w - 1 :] - ma
        assert 0.0008 < dev.std() < 0.0060
        assert np.mean(np.abs(dev) > 0.0035) > 0.001


def test_thin_books_happen(hour):
    _, b, codes = hour
    good = b.take(np.flatnonzero((codes == 0) & (b.venue == BINANCE) & (b.sym == 1)))
    usd = good.best_bid() * good.bid_sz.reshape(-1, 10).sum(axis=1)
    med = np.median(usd)
    thin = usd < med / 6
    assert 0.02 < thin.mean() < 0.09


def test_levels_one_and_all_bad():
    b = run(MockConfig(seed=3, symbols=("ETH",), levels=1, bad_book_prob=0.2), 60.0)
    assert set(np.diff(b.bid_off).tolist()) <= {0, 1}
    counts = count_reasons(BookValidator().validate(b))
    assert "unsorted" not in counts
    assert {"crossed", "empty", "non_finite", "non_positive"} <= set(counts)
    clean = run(MockConfig(seed=3, symbols=("ETH",), bad_book_prob=0.0), 60.0)
    assert count_reasons(BookValidator().validate(clean)) == {}
