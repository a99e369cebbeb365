"""The live source in its own process: the rows wire format, symbol ids mapped between the two
processes' tables, logs forwarded, a dead child that ends the run cleanly, and the setting that
chooses it. (What it shares with the in-thread source, start errors and early stops included,
is tested for both in test_live_source.py.)"""

from __future__ import annotations

import time

import numpy as np
import pytest
from loguru import logger

from common.marketdata.batch import SymbolTable
from common.marketdata.live_process import LiveFeedProcess, decode_rows, encode_rows
from common.marketdata.rows import BookRow, rows_to_batch
from common.types import BINANCE, UPBIT
from tests.fakes.exchanges import DEFAULT_ASSETS, FX, FakeExchanges
from tests.test_live_source import config, run_source

PRICE_USD = {a.symbol: a.price_usd for a in DEFAULT_ASSETS} | {"USDT": 1.0}


def _row(sym: str, venue: int, recv: int, n_bid: int, n_ask: int) -> BookRow:
    bid = 100.0 - np.arange(n_bid, dtype=np.float64)
    ask = 101.0 + np.arange(n_ask, dtype=np.float64)
    return BookRow(recv - 5, recv, venue, sym, bid, np.full(n_bid, 0.5), ask,
                   np.full(n_ask, 0.25 * recv))


def test_rows_wire_format_round_trips_every_column():
    st = SymbolTable(["USDT", "BTC", "ETH"])
    rows = [_row("BTC", UPBIT, 10, 3, 2), _row("USDT", UPBIT, 11, 1, 4),
            _row("ETH", BINANCE, 12, 0, 1), _row("BTC", BINANCE, 13, 20, 20)]
    b = rows_to_batch(rows, st)
    data = encode_rows(b)
    got = decode_rows(data, st.names)
    for name in ("ts_ns", "recv_ns", "venue", "sym", "quote_ok", "bid_off", "bid_px", "bid_sz",
                 "ask_off", "ask_px", "ask_sz"):
        a, g = getattr(b, name), getattr(got, name)
        assert g.dtype == a.dtype and np.array_equal(g, a), name
    assert got.symbols == st.names and len(got) == 4
    assert not got.bid_px.flags.writeable  # views of the message, never written
    with pytest.raises(ValueError, match="rows message"):
        decode_rows(data + b"\0" * 8, st.names)
    empty = decode_rows(encode_rows(rows_to_batch([], st)), st.names)
    assert len(empty) == 0 and empty.bid_off.tolist() == [0]


@pytest.fixture(scope="module")
def fakes():
    with FakeExchanges() as f:
        yield f


def test_symbol_ids_follow_this_process_table(fakes):
    """The engine interns symbols in its own order; every row still names its own book."""
    mine = SymbolTable(["USDT", "DOGE", "SOL", "ADA", "ETH"])
    run = run_source(fakes, 2.5, kind="process", symtab=mine)
    b = run.batch
    assert b.symbols == mine.names[:len(b.symbols)]
    assert set(mine.names) >= {"BTC", "XRP", "ETH", "SOL", "DOGE", "USDT"}
    mid = (b.best_bid() + b.best_ask()) / 2
    for i in range(len(b)):
        name = b.symbols[b.sym[i]]
        usd = mid[i] / FX if b.venue[i] == UPBIT else mid[i]  # Upbit quotes KRW
        assert 0.9 < usd / PRICE_USD[name] < 1.1, (name, int(b.venue[i]), mid[i])


def test_child_logs_reach_this_process_sinks(fakes):
    seen: list[str] = []
    sink = logger.add(lambda m: seen.append(f"{m.record['level'].name} {m.record['message']} "
                                            f"@{m.record['name']}"), level="INFO")
    try:
        run_source(fakes, 4.0, kind="process",
                   actions=[(1.5, "drop", lambda _: fakes.drop("binance"))])
    finally:
        logger.remove(sink)
    # as logged by the feed's module in the child
    assert any(s.startswith("WARNING binance") and "reconnecting" in s
               and s.endswith("@common.marketdata.feed") for s in seen), seen


def test_a_dead_child_ends_the_run_without_an_exception(fakes):
    """The market-data process killed mid-run: the batches end (an error is logged), so the
    engine can settle and write its KPIs; nothing hangs."""
    seen: list[str] = []
    sink = logger.add(lambda m: seen.append(m.record["message"]), level="ERROR")
    src = LiveFeedProcess(config(fakes), duration_s=30.0)
    rows = 0
    t0 = time.monotonic()
    try:
        for b, _ in src.batches():
            rows += len(b)
            if rows > 30 and src._proc.poll() is None:
                src._proc.kill()
    finally:
        logger.remove(sink)
    assert rows > 30 and time.monotonic() - t0 < 20
    assert any("market-data process ended unexpectedly" in s for s in seen)


def test_the_setting_chooses_process_or_thread(fakes, monkeypatch):
    from common.marketdata.live import LiveSource
    from common.marketdata.live_process import open_live
    from common.settings import Settings

    for k, v in fakes.env().items():
        monkeypatch.setenv(k, v)
    for flag, kind in ((True, LiveFeedProcess), (False, LiveSource)):
        src = open_live(Settings.from_env(overrides={"topn_size": 2, "live_feed_process": flag}),
                        1.0)
        try:
            assert type(src) is kind and src.symbols == ("BTC", "XRP")
        finally:
            src.stop()


def test_a_busy_engine_never_stalls_the_books_receive_times():
    """The engine side reads nothing for 1.5 s while ~1,100 books a second arrive (far more
    than a socket buffer holds): the market-data process keeps reading the exchanges and the
    books keep their real receive times; they all arrive, in order, once the engine asks."""
    with FakeExchanges(rate_hz=100) as f:
        src = LiveFeedProcess(config(f), duration_s=None)
        src.start()
        time.sleep(1.0)
        t0 = time.time_ns()
        time.sleep(1.5)  # busy: not reading
        t1 = time.time_ns()
        rows = []
        gen = src.batches()
        for b, _ in gen:
            rows.append(b.recv_ns)
            if time.time_ns() - t1 > 1.0e9:
                break
        gen.close()
    recv = np.concatenate(rows)
    assert (np.diff(recv) >= 0).all()
    inside = recv[(recv > t0) & (recv < t1)]
    assert inside.size > 500, inside.size  # received while the engine was busy
    assert np.diff(inside).max() < 300_000_000  # no stall of the receive clock
