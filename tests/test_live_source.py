"""The live source against the loopback fake exchanges: books for TopN and FX, reconnect and
resync, sequence gaps, malformed frames, staleness, TopN refresh, recording, HTTP 451."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from common.marketdata.batch import BookBatch, SymbolTable
from common.marketdata.live import LiveConfig, LiveSource
from common.marketdata.live_process import LiveFeedProcess
from common.marketdata.record import RecordingWriter, read_topn_events, recorded_symbols
from common.marketdata.replay import DataSourceError, ReplaySource
from common.marketdata.validate import BookValidator, count_reasons
from common.types import BINANCE, UPBIT
from tests.fakes.exchanges import FakeExchanges


def config(fakes: FakeExchanges, **kw) -> LiveConfig:
    env = fakes.env()
    base = dict(upbit_rest_url=env["UPBIT_REST_URL"], upbit_ws_url=env["UPBIT_WS_URL"],
                binance_rest_url=env["BINANCE_REST_URL"], binance_ws_url=env["BINANCE_WS_URL"],
                topn_size=5, stale_ms=1000)
    base.update(kw)
    return LiveConfig(**base)


SOURCES = {"thread": LiveSource, "process": LiveFeedProcess}


@dataclasses.dataclass
class Run:
    src: LiveSource | LiveFeedProcess
    batch: BookBatch
    rejects: dict
    marks: dict  # action name -> time.time_ns() when it fired


def run_source(fakes, seconds: float, actions=(), record_path=None, kind="thread",
               symtab=None, **kw) -> Run:
    """Consume the source for ``seconds``; ``actions``: (after_s, name, fn) fired on the way
    (``fn`` gets the source). ``kind``: the clients in a thread of this process or in their own."""
    src = SOURCES[kind](config(fakes, **kw), symtab if symtab is not None else SymbolTable(),
                        record_path=record_path, duration_s=seconds)
    src.start()
    t0 = time.monotonic()
    todo = sorted(actions, key=lambda a: a[0])
    batches, rejects, marks = [], {}, {}
    for b, r in src.batches():
        if len(b):
            batches.append(b)
        for k, v in r.items():
            rejects[k] = rejects.get(k, 0) + v
        while todo and time.monotonic() - t0 >= todo[0][0]:
            _, name, fn = todo.pop(0)
            marks[name] = time.time_ns()
            fn(src)
    assert not todo, "the run ended before every action fired"
    return Run(src, BookBatch.concat(batches), rejects, marks)


def streams_after(batch: BookBatch, t_ns: int) -> set[tuple[int, str]]:
    rows = np.flatnonzero(batch.recv_ns > t_ns)
    return {(int(batch.venue[i]), batch.symbols[batch.sym[i]]) for i in rows}


def all_streams(symbols) -> set[tuple[int, str]]:
    return {(v, s) for s in symbols for v in (UPBIT, BINANCE)} | {(UPBIT, "USDT")}


def stopped(src) -> bool:
    """The source's I/O thread, or its process, has ended."""
    if isinstance(src, LiveFeedProcess):
        return src._proc.poll() == 0
    return not src._thread.is_alive()


@pytest.fixture(scope="module")
def fakes():
    with FakeExchanges() as f:
        yield f


@pytest.fixture(params=["thread", "process"])
def kind(request) -> str:
    return request.param


def test_books_for_every_topn_symbol_and_fx(fakes, kind):
    run = run_source(fakes, 3.0, kind=kind)
    assert run.src.symbols == ("BTC", "XRP", "ETH", "SOL", "DOGE")
    b = run.batch
    assert streams_after(b, 0) == all_streams(run.src.symbols)
    assert (np.diff(b.recv_ns) >= 0).all()
    codes = BookValidator().validate(b)
    assert count_reasons(codes) == {}
    assert run.rejects == {}  # books replaced during the first sync are not counted as stale
    up = b.venue == UPBIT
    assert (b.n_bid[up] == 15).all() and (b.n_bid[~up] == 20).all()
    # ts_ns is the venue's event time (ms precision), recv_ns the local receive time
    assert (b.ts_ns % 1_000_000 == 0).all() and (b.recv_ns >= b.ts_ns - 10**9).all()
    assert stopped(run.src)


def test_dropped_connections_reconnect_and_resync(fakes, kind):
    before = dict(fakes.stats)
    depth_before = fakes.stats["depth_requests"]
    run = run_source(fakes, 5.0, kind=kind,
                     actions=[(1.5, "drop", lambda _: (fakes.drop("upbit"),
                                                       fakes.drop("binance")))])
    assert run.src.stats["reconnects"] >= 2
    assert fakes.stats["upbit_connections"] >= before["upbit_connections"] + 2
    assert fakes.stats["binance_connections"] >= before["binance_connections"] + 2
    # a full resync: a new snapshot for every Binance book, every stream flowing again
    assert fakes.stats["depth_requests"] >= depth_before + 2 * len(run.src.symbols)
    assert streams_after(run.batch, run.marks["drop"]) == all_streams(run.src.symbols)
    assert (np.diff(run.batch.recv_ns) >= 0).all()


def test_sequence_gap_triggers_a_resync(fakes, kind):
    depth_before = fakes.stats["depth_requests"]
    run = run_source(fakes, 4.0, kind=kind, actions=[(1.5, "gap", lambda _: fakes.gap("XRPUSDT"))])
    assert run.rejects.get("sequence_gap", 0) >= 1
    assert run.src.stats["sequence_gaps"] >= 1
    assert fakes.stats["depth_requests"] >= depth_before + len(run.src.symbols) + 1
    assert (BINANCE, "XRP") in streams_after(run.batch, run.marks["gap"])
    assert count_reasons(BookValidator().validate(run.batch)) == {}


def _upbit_frame(units, code="KRW-BTC") -> bytes:
    import orjson

    return orjson.dumps({"type": "orderbook", "code": code, "timestamp": int(time.time() * 1000),
                         "orderbook_units": [{"ask_price": a, "bid_price": b, "ask_size": 1.0,
                                              "bid_size": 1.0} for a, b in units]})


def test_malformed_frames_are_counted_and_dropped(fakes, kind):
    btc = 95000.0 * 1400 * 1.02

    def inject(_):
        fakes.inject("upbit", b"\x00\x01garbage\xff")
        fakes.inject("upbit", _upbit_frame([(btc, btc * 1.01)]))  # crossed
        fakes.inject("upbit", _upbit_frame([(btc, 0.0)]))  # zero price
        fakes.inject("upbit", b'{"type":"orderbook","code":"KRW-BTC"}')  # missing fields
        fakes.inject("binance", "not json at all")
        fakes.inject("binance", '{"stream":"ethusdt@depth@100ms","data":{"e":"depthUpdate",'
                                '"E":1,"s":"ETHUSDT","U":1,"u":2,"b":[["NaN","1.0"]],"a":[]}}')

    run = run_source(fakes, 4.0, kind=kind, actions=[(1.5, "inject", inject)])
    codes = BookValidator().validate(run.batch)
    reasons = dict(run.rejects)
    for k, v in count_reasons(codes).items():
        reasons[k] = reasons.get(k, 0) + v
    assert reasons["malformed"] >= 3
    assert reasons["crossed"] >= 1
    assert reasons["non_positive"] >= 1
    assert reasons["non_finite"] >= 1
    # the bad rows never become valid books, and every stream keeps flowing afterwards
    valid = codes == 0
    best_bid, best_ask = run.batch.best_bid(), run.batch.best_ask()
    assert (best_bid[valid] < best_ask[valid]).all() and (best_bid[valid] > 0).all()
    assert streams_after(run.batch, run.marks["inject"]) == all_streams(run.src.symbols)


def test_a_silent_venue_is_stale_and_blocks_trading_data(fakes, kind):
    run = run_source(fakes, 5.0, stale_ms=400, kind=kind,
                     actions=[(1.5, "silence", lambda _: fakes.silence("binance", 1.5))])
    assert run.src.stats["stale_periods"] >= 1
    assert run.src.stats["reconnects"] >= 1  # silent for three STALE_MS: link renewed
    assert run.rejects.get("stale", 0) > 0  # Upbit books held back while Binance was silent
    assert streams_after(run.batch, run.marks["silence"] + 1_600_000_000) == all_streams(
        run.src.symbols)


def test_topn_refresh_emits_membership_changes(kind):
    with FakeExchanges() as f:

        def promote(_):
            f.assets = tuple(dataclasses.replace(a, upbit_value_usd=5e10, binance_value_usd=5e10)
                             if a.symbol == "LINK" else a for a in f.assets)

        # released once flat (as the coordinator does)
        run = run_source(f, 5.0, topn_size=2, topn_refresh_s=1.0, kind=kind,
                         actions=[(0.2, "promote", promote),
                                  (3.5, "release", lambda src: src.release("XRP"))])
    events = run.src.topn_events
    assert events[0]["event"] == "topn" and events[0]["members"] == ["BTC", "XRP"]
    change = next(e for e in events[1:] if e["event"] == "topn")
    assert change["added"] == ["LINK"] and change["removed"] == ["XRP"]
    assert change["members"] == ["LINK", "BTC"]
    assert any(e["event"] == "synced" and e["symbols"] == ["LINK"] for e in events)
    # LINK streams after joining; XRP (exit-only) keeps streaming until it is released
    after = streams_after(run.batch, change["recv_ns"])
    assert {(UPBIT, "LINK"), (BINANCE, "LINK"), (BINANCE, "XRP")} <= after
    # the subscriptions changed on the open connections: nothing else was interrupted
    assert run.src.stats["reconnects"] == 0
    assert f.stats["binance_requests"] == ["SUBSCRIBE", "UNSUBSCRIBE"]
    assert f.stats["upbit_connections"] == 1 and len(f.stats["upbit_subscriptions"]) == 3
    # released (flat): drained, no XRP book after that
    drained = next(e for e in events if e["event"] == "drained")
    assert drained["symbols"] == ["XRP"]
    after_drain = {s for _, s in streams_after(run.batch, drained["recv_ns"])}
    assert "XRP" not in after_drain and {"BTC", "LINK", "USDT"} <= after_drain


def test_recording_is_readable_and_replays_the_same_rows(fakes, tmp_path, kind):
    out = tmp_path / "rec"
    run = run_source(fakes, 3.0, record_path=str(out), kind=kind)
    parts = sorted(out.glob("part-*.parquet"))
    assert parts and not list(out.glob(".part-*"))
    replayed = list(ReplaySource(out, SymbolTable(run.batch.symbols)).batches())
    got = BookBatch.concat([b for b, _ in replayed])
    for name in ("ts_ns", "recv_ns", "venue", "sym", "bid_off", "bid_px", "ask_sz"):
        assert np.array_equal(getattr(got, name), getattr(run.batch, name)), name
    assert recorded_symbols(out) == list(run.src.symbols)
    assert read_topn_events(out)[0]["members"] == list(run.src.symbols)


def test_recording_writer_rolls_parts(fakes, tmp_path):
    run = run_source(fakes, 1.5)
    n = len(run.batch)
    assert n >= 8
    # sized from what arrived (a loaded machine receives fewer books in 1.5 s): several parts
    part = max(2, n // 3)
    w = RecordingWriter(tmp_path, part_rows=part, row_group_rows=max(1, part // 4))
    step = max(1, part // 2)
    for i in range(0, n, step):
        w.write(run.batch.take(np.arange(i, min(i + step, n))))
    w.write_event({"event": "topn", "members": ["BTC"], "recv_ns": 1})
    w.close()
    parts = sorted(tmp_path.glob("part-*.parquet"))
    assert len(parts) >= 2 and w.error is None
    assert sum(pq.read_metadata(p).num_rows for p in parts) == len(run.batch)
    with pytest.raises(FileExistsError):
        RecordingWriter(tmp_path)


def test_binance_451_is_a_clear_error(kind):
    with FakeExchanges() as f:
        f.binance_451 = True
        src = SOURCES[kind](config(f))
        with pytest.raises(DataSourceError) as e:
            src.start()
    msg = str(e.value)
    assert "HTTP 451" in msg and "region" in msg and "\n" not in msg
    assert stopped(src)


def test_stopping_early_does_not_block(fakes, kind):
    src = SOURCES[kind](config(fakes), duration_s=None)
    gen = src.batches()
    n = 0
    for b, _ in gen:
        n += len(b)
        if n > 20:
            break
    t0 = time.monotonic()
    gen.close()
    assert stopped(src) and time.monotonic() - t0 < 5
    assert src.topn_events[0]["members"] == list(src.symbols)


def test_connections_are_renewed_before_the_time_limit(fakes):
    """Binance closes a connection after 24 h: the feeds renew theirs before the limit."""
    before = fakes.stats["binance_connections"]
    run = run_source(fakes, 3.5, max_connection_s=1.0)
    assert fakes.stats["binance_connections"] >= before + 3
    assert run.src.stats["reconnects"] >= 4  # both venues, at least twice each
    assert count_reasons(BookValidator().validate(run.batch)) == {}
    assert streams_after(run.batch, run.batch.recv_ns[-1] - 800_000_000) == all_streams(
        run.src.symbols)


def test_gil_switch_interval_is_short_while_live_and_restored_after(fakes):
    import sys

    before = sys.getswitchinterval()
    src = LiveSource(config(fakes), duration_s=0.5)
    src.start()
    try:
        assert sys.getswitchinterval() <= 0.001 < before
    finally:
        src.stop()
    assert sys.getswitchinterval() == before
