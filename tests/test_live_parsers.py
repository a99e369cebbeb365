"""The exchange parsers on real recorded frames (Upbit SIMPLE orderbooks, Binance diff depth with
its REST snapshot) and on every kind of bad frame; the wire formats the clients send."""

from __future__ import annotations

import numpy as np
import orjson
import pyarrow.parquet as pq
import pytest

from common.marketdata.batch import SymbolTable
from common.marketdata.binance import (
    DepthUpdate,
    DiffBook,
    parse_exchange_info,
    parse_message,
    parse_snapshot,
    stream_url,
)
from common.marketdata.rows import FrameError, rows_to_batch
from common.marketdata.upbit import parse_frame, parse_markets, subscription_message
from common.marketdata.validate import REASON_CODE, BookValidator, static_reasons
from common.types import BINANCE, UPBIT
from tests.fakes import recordings as rec

needs_upbit = pytest.mark.skipif(not rec.available("UPBIT-d78752.0", "UPBIT.ws.62.0", "UPBIT.0"),
                                 reason="exchange recordings not available")
needs_binance = pytest.mark.skipif(not rec.available("BINANCE-ee25be.0", "BINANCE.0"),
                                   reason="exchange recordings not available")

SIMPLE_TO_DEFAULT = {"ty": "type", "cd": "code", "tms": "timestamp", "tas": "total_ask_size",
                     "tbs": "total_bid_size", "obu": "orderbook_units", "st": "stream_type",
                     "lv": "level"}
UNIT_TO_DEFAULT = {"ap": "ask_price", "bp": "bid_price", "as": "ask_size", "bs": "bid_size"}


def to_default(simple: dict) -> dict:
    out = {SIMPLE_TO_DEFAULT.get(k, k): v for k, v in simple.items()}
    out["orderbook_units"] = [{UNIT_TO_DEFAULT[k]: v for k, v in u.items()}
                              for u in out["orderbook_units"]]
    return out


# -- Upbit ---------------------------------------------------------------------------------------


@needs_upbit
def test_upbit_simple_frames_match_the_derived_replay_file():
    """Every recorded KRW-BAT SIMPLE frame parses to exactly the row of real_books.parquet."""
    frames = rec.frames("UPBIT-d78752.0", '"cd":"KRW-BAT"')
    rows = [parse_frame(p, int(t * 1e9), {"KRW-BAT": "BAT"}) for t, p in frames]
    rows = [r for r in rows if r is not None]  # trade frames of KRW-BAT are not books
    derived = [r for r in pq.read_table(rec.RECORDINGS / "real_books.parquet").to_pylist()
               if r["exchange"] == "upbit" and r["symbol"] == "BAT"]
    assert len(rows) == len(derived) == 76
    for row, want in zip(rows, derived, strict=True):
        assert row.venue == UPBIT and row.symbol == "BAT"
        assert row.ts_ns == want["ts_ns"]
        for side in ("bid_px", "bid_sz", "ask_px", "ask_sz"):
            assert getattr(row, side).tolist() == want[side]
    batch = rows_to_batch(rows, SymbolTable())
    assert (static_reasons(batch) == 0).all()


@needs_upbit
def test_upbit_default_and_simple_formats_parse_the_same():
    frames = rec.frames("UPBIT.ws.62.0", '"ty":"orderbook","cd":"KRW-LAMB"')
    assert len(frames) == 87
    for _t, payload in frames[:20]:
        simple = parse_frame(payload, 1, {"KRW-LAMB": "LAMB"})
        default = parse_frame(orjson.dumps(to_default(orjson.loads(payload))), 1,
                              {"KRW-LAMB": "LAMB"})
        assert simple.ts_ns == default.ts_ns == orjson.loads(payload)["tms"] * 1_000_000
        for side in ("bid_px", "bid_sz", "ask_px", "ask_sz"):
            assert np.array_equal(getattr(simple, side), getattr(default, side))
        assert simple.bid_px.shape == (15,)
        assert (np.diff(simple.bid_px) < 0).all() and (np.diff(simple.ask_px) > 0).all()


@needs_upbit
def test_upbit_other_frames():
    trade = rec.frames("UPBIT.ws.62.0", '"ty":"trade"')[0][1]
    assert parse_frame(trade, 1, {}) is None
    assert parse_frame(b'{"status":"UP"}', 1, {}) is None
    book = rec.frames("UPBIT.ws.62.0", '"ty":"orderbook","cd":"BTC-XTZ"')[0][1]
    with pytest.raises(FrameError) as e:
        parse_frame(book, 1, {"KRW-LAMB": "LAMB"})  # not subscribed as a KRW market
    assert e.value.reason == "unknown_market"


@pytest.mark.parametrize("frame,reason", [
    (b"\x00\xff garbage", "malformed"),
    (b"[1, 2]", "malformed"),
    (b'{"type":"orderbook","code":"KRW-BTC","orderbook_units":[]}', "malformed"),
    (b'{"type":"orderbook","code":"KRW-BTC","timestamp":1,"orderbook_units":'
     b'[{"ask_price":2.0,"bid_price":1.0,"ask_size":1.0}]}', "malformed"),
    (b'{"type":"orderbook","code":"KRW-BTC","timestamp":1,"orderbook_units":'
     b'[{"ask_price":"2","bid_price":1.0,"ask_size":1.0,"bid_size":1.0}]}', "malformed"),
    (b'{"error":{"name":"WRONG_FORMAT","message":"bad"}}', "venue_error"),
    (b'{"type":"orderbook","code":"KRW-XYZ","timestamp":1,"orderbook_units":[]}',
     "unknown_market"),
])
def test_upbit_bad_frames_raise_a_counted_reason(frame, reason):
    with pytest.raises(FrameError) as e:
        parse_frame(frame, 1, {"KRW-BTC": "BTC"})
    assert e.value.reason == reason


def _upbit_book(units) -> bytes:
    return orjson.dumps({"type": "orderbook", "code": "KRW-BTC", "timestamp": 1000,
                         "orderbook_units": [{"ask_price": a, "bid_price": b, "ask_size": 1.0,
                                              "bid_size": bs} for a, b, bs in units]})


@pytest.mark.parametrize("units,reason", [
    ([(100.0, 101.0, 1.0)], "crossed"),
    ([(100.0, 0.0, 1.0)], "non_positive"),
    ([(100.0, 99.0, 0.0), (101.0, 98.0, 1.0)], "non_positive"),
    ([(100.0, 99.0, 1.0), (99.5, 98.0, 1.0)], "unsorted"),
])
def test_upbit_bad_books_parse_and_the_validator_rejects_them(units, reason):
    row = parse_frame(_upbit_book(units), 5, {"KRW-BTC": "BTC"})
    assert row.ts_ns == 1_000_000_000 and row.recv_ns == 5
    codes = BookValidator().validate(rows_to_batch([row], SymbolTable()))
    assert codes.tolist() == [REASON_CODE[reason]]


def test_upbit_subscription_message():
    msg = orjson.loads(subscription_message(["KRW-BTC", "KRW-USDT"], 15, "SIMPLE", "t-1"))
    assert msg == [{"ticket": "t-1"}, {"type": "orderbook", "codes": ["KRW-BTC.15",
                                                                      "KRW-USDT.15"]},
                   {"format": "SIMPLE"}]
    with pytest.raises(ValueError):
        subscription_message(["KRW-BTC"], 31)


@needs_upbit
def test_upbit_recorded_market_list():
    markets = parse_markets(orjson.loads(rec.rest_body("UPBIT.0", "/v1/market/all")))
    assert len(markets) == 294
    krw = {m.base for m in markets if m.quote == "KRW"}
    assert {"BTC", "ETH", "XRP"} <= krw and not any(m.warning for m in markets)


# -- Binance -------------------------------------------------------------------------------------


def _recorded_stream(pair: str):
    snaps = [(t, body) for t, s, body in rec.depth_snapshots("BINANCE-ee25be.0") if s == pair]
    diffs = [(t, parse_message(p)) for t, p in
             rec.frames("BINANCE-ee25be.0", f'"stream":"{pair.lower()}@depth@100ms"')]
    return snaps[0], diffs


@needs_binance
def test_binance_recorded_diff_stream_syncs_and_stays_in_sequence():
    (snap_t, body), diffs = _recorded_stream("BTCUSDT")
    assert len(diffs) == 899 and all(isinstance(d, DepthUpdate) for _, d in diffs)
    book = DiffBook("BTCUSDT")
    before = [d for t, d in diffs if t < snap_t]
    after = [d for t, d in diffs if t >= snap_t]
    book.buffer = list(before)
    last_id, bids, asks = parse_snapshot(orjson.loads(body))
    assert book.load_snapshot(last_id, bids, asks) == "ok"
    statuses = [book.apply(d) for d in after]
    assert "gap" not in statuses and statuses.count("ok") > 800
    bp, bs, ap, as_ = book.top(20)
    assert bp.shape == ap.shape == (20,)
    assert bp[0] < ap[0] and (np.diff(bp) < 0).all() and (np.diff(ap) > 0).all()
    assert (bs > 0).all() and (as_ > 0).all()


@needs_binance
def test_binance_missing_update_is_a_gap():
    (_, body), diffs = _recorded_stream("ETHUSDT")
    book = DiffBook("ETHUSDT")
    last_id, bids, asks = parse_snapshot(orjson.loads(body))
    book.load_snapshot(last_id, bids, asks)
    live = [d for _, d in diffs if d.last_id > last_id]
    assert book.apply(live[0]) == "ok"
    assert book.apply(live[0]) == "old"  # a repeat is ignored
    assert book.apply(live[2]) == "gap"  # live[1] never arrived


def test_binance_stale_snapshot_is_refetched():
    book = DiffBook("BTCUSDT")
    book.buffer = [DepthUpdate("BTCUSDT", 105, 110, 1, [(1.0, 1.0)], [(2.0, 1.0)])]
    assert book.load_snapshot(100, [(1.0, 2.0)], [(2.0, 2.0)]) == "too_old"
    assert book.load_snapshot(106, [(1.0, 2.0)], [(2.0, 2.0)]) == "ok"
    assert book.last_id == 110 and book.bids == {1.0: 1.0}


def test_binance_top_of_book_after_many_random_diffs():
    """The top levels stay exactly the best prices of the book (new, changed and removed
    levels, removals of prices that were never there, both sides crossing the old touch)."""
    import heapq
    import random

    rng = random.Random(3)
    book = DiffBook("X")
    book.load_snapshot(0, [(float(p), 1.0) for p in range(90, 100)],
                       [(float(p), 1.0) for p in range(101, 111)])
    for k in range(2000):
        bids = [(float(rng.randint(60, 105)), rng.choice([0.0, 0.5, 2.0])) for _ in range(8)]
        asks = [(float(rng.randint(95, 140)), rng.choice([0.0, 0.5, 2.0])) for _ in range(8)]
        assert book.apply(DepthUpdate("X", k + 1, k + 1, k, bids, asks)) == "ok"
        for depth in (0, 1, 5, 20):
            bp, bs, ap, az = book.top(depth)
            assert bp.tolist() == heapq.nlargest(depth, book.bids)
            assert ap.tolist() == heapq.nsmallest(depth, book.asks)
            assert bs.tolist() == [book.bids[p] for p in bp.tolist()]
            assert az.tolist() == [book.asks[p] for p in ap.tolist()]
    book.reset()
    assert [a.size for a in book.top(5)] == [0, 0, 0, 0]


@pytest.mark.parametrize("frame,reason", [
    (b"garbage{", "malformed"),
    (b'{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","s":"BTCUSDT","U":1}}',
     "malformed"),
    (b'{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1,"s":"BTCUSDT","U":1,'
     b'"u":2,"b":[["NaN","1.0"]],"a":[]}}', "non_finite"),
    (b'{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1,"s":"BTCUSDT","U":1,'
     b'"u":2,"b":[["0.0","1.0"]],"a":[]}}', "non_positive"),
    (b'{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1,"s":"BTCUSDT","U":1,'
     b'"u":2,"b":[["1.0","x"]],"a":[]}}', "malformed"),
])
def test_binance_bad_frames(frame, reason):
    with pytest.raises(FrameError) as e:
        parse_message(frame)
    assert e.value.reason == reason


def test_binance_stream_url_and_other_events():
    assert stream_url("wss://stream.binance.com:9443/", ["BTCUSDT", "ETHUSDT"]) == (
        "wss://stream.binance.com:9443/stream?streams=btcusdt@depth@100ms/ethusdt@depth@100ms")
    assert parse_message(b'{"result":null,"id":1}') is None
    assert parse_message(b'{"stream":"x@aggTrade","data":{"e":"aggTrade"}}') is None


@needs_binance
def test_binance_recorded_exchange_info():
    info = parse_exchange_info(orjson.loads(rec.rest_body("BINANCE.0", "/api/v3/exchangeInfo")))
    assert len(info) == 1695
    btc = info["BTCUSDT"]
    assert (btc.base, btc.quote, btc.trading) == ("BTC", "USDT", True)
    assert btc.step_size == pytest.approx(1e-5) and btc.tick_size == pytest.approx(0.01)


def test_rows_to_batch_layout():
    row = parse_frame(_upbit_book([(101.0, 100.0, 1.0), (102.0, 99.0, 2.0)]), 7,
                      {"KRW-BTC": "BTC"})
    symtab = SymbolTable(["USDT"])
    b = rows_to_batch([row, row.restamped(9)], symtab)
    assert b.symbols == ("USDT", "BTC") and b.sym.tolist() == [1, 1]
    assert b.recv_ns.tolist() == [7, 9] and b.venue.tolist() == [UPBIT, UPBIT]
    assert b.bid_off.tolist() == [0, 2, 4] and b.best_ask().tolist() == [101.0, 101.0]
    assert BINANCE != UPBIT and len(rows_to_batch([], symtab)) == 0
