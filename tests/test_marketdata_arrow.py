"""Arrow <-> BookBatch conversion, and BookBatch.take / concat."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.marketdata.arrow import (
    REPLAY_SCHEMA,
    batch_from_arrow,
    batch_to_arrow,
    schema_problem,
)
from common.marketdata.batch import BookBatch, SymbolTable
from common.marketdata.mock import MockConfig, MockMarket
from common.types import BINANCE, UPBIT

LIST = pa.list_(pa.float64())


def row(
    exchange="upbit",
    symbol="BTC",
    quote="KRW",
    bid_px=(100.0, 99.0),
    bid_sz=(1.0, 2.0),
    ask_px=(101.0, 102.0),
    ask_sz=(3.0, 4.0),
    ts=1,
    recv=None,
):
    return {
        "ts_ns": ts,
        "recv_ns": ts if recv is None else recv,
        "exchange": exchange,
        "symbol": symbol,
        "quote": quote,
        "bid_px": None if bid_px is None else list(bid_px),
        "bid_sz": None if bid_sz is None else list(bid_sz),
        "ask_px": None if ask_px is None else list(ask_px),
        "ask_sz": None if ask_sz is None else list(ask_sz),
    }


def table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=REPLAY_SCHEMA)


def rows_of(batch: BookBatch) -> list[tuple]:
    """A per-row Python view of a batch (the naive reference representation)."""
    out = []
    for i in range(len(batch)):
        bp, bs = batch.levels(i, True)
        ap, as_ = batch.levels(i, False)
        out.append(
            (
                int(batch.ts_ns[i]),
                int(batch.recv_ns[i]),
                int(batch.venue[i]),
                int(batch.sym[i]),
                bool(batch.quote_ok[i]),
                bp.tolist(),
                bs.tolist(),
                ap.tolist(),
                as_.tolist(),
            )
        )
    return out


def assert_compact(batch: BookBatch) -> None:
    for off, px, sz in (
        (batch.bid_off, batch.bid_px, batch.bid_sz),
        (batch.ask_off, batch.ask_px, batch.ask_sz),
    ):
        assert off.shape == (len(batch) + 1,)
        assert off[0] == 0 and off[-1] == px.shape[0] == sz.shape[0]
        assert np.all(np.diff(off) >= 0)


# -- schema -----------------------------------------------------------------------------------


def test_replay_schema_exact():
    assert REPLAY_SCHEMA.names == [
        "ts_ns",
        "recv_ns",
        "exchange",
        "symbol",
        "quote",
        "bid_px",
        "bid_sz",
        "ask_px",
        "ask_sz",
    ]
    assert REPLAY_SCHEMA.field("ts_ns").type == pa.int64()
    assert REPLAY_SCHEMA.field("recv_ns").type == pa.int64()
    for name in ("exchange", "symbol", "quote"):
        assert REPLAY_SCHEMA.field(name).type == pa.string()
    for name in ("bid_px", "bid_sz", "ask_px", "ask_sz"):
        assert REPLAY_SCHEMA.field(name).type == pa.list_(pa.float64())


def test_schema_problem_names_column():
    assert schema_problem(REPLAY_SCHEMA) is None
    missing = pa.schema([f for f in REPLAY_SCHEMA if f.name != "ask_sz"])
    assert "ask_sz" in schema_problem(missing)
    wrong = REPLAY_SCHEMA.set(0, pa.field("ts_ns", pa.string()))
    assert "ts_ns" in schema_problem(wrong)
    wrong_list = REPLAY_SCHEMA.set(5, pa.field("bid_px", pa.list_(pa.float32())))
    assert "bid_px" in schema_problem(wrong_list)
    large = pa.schema(
        [
            pa.field(f.name, pa.large_list(pa.float64()))
            if pa.types.is_list(f.type)
            else pa.field(f.name, pa.large_string())
            if f.type == pa.string()
            else f
            for f in REPLAY_SCHEMA
        ]
    )
    assert schema_problem(large) is None


# -- conversion -------------------------------------------------------------------------------


def test_basic_conversion_and_venues():
    st_ = SymbolTable()
    rows = [
        row("upbit", "USDT", "KRW", (1400.0,), (10.0,), (1401.0,), (11.0,), ts=1),
        row("upbit", "BTC", "KRW", ts=2),
        row("binance", "BTC", "USDT", (95000.0, 94999.0, 94998.0), (1, 2, 3), (95001.0,), (4,), 3),
        row("binance", "USDT", "USDT", ts=4),  # USDT is not tradable on Binance against USDT
        row("upbit", "ETH", "BTC", ts=5),  # wrong quote for the venue
        row("bithumb", "ETH", "KRW", ts=6),  # unknown exchange: still gets a symbol id
        row("binance", "ETH", "KRW", ts=7),
    ]
    batch, drops = batch_from_arrow(table(rows), st_)
    assert drops == {}
    assert len(batch) == 7
    assert batch.venue.dtype == np.int8 and batch.sym.dtype == np.int32
    assert batch.quote_ok.dtype == bool
    assert batch.venue.tolist() == [UPBIT, UPBIT, BINANCE, BINANCE, UPBIT, -1, BINANCE]
    assert st_.names == ("USDT", "BTC", "ETH")
    assert batch.symbols == st_.names
    assert batch.sym.tolist() == [0, 1, 1, 0, 2, 2, 2]
    assert batch.quote_ok.tolist() == [True, True, True, False, False, False, False]
    assert batch.ts_ns.tolist() == [1, 2, 3, 4, 5, 6, 7]
    assert_compact(batch)
    assert batch.n_bid.tolist() == [1, 2, 3, 2, 2, 2, 2]
    assert batch.levels(2, True)[0].tolist() == [95000.0, 94999.0, 94998.0]
    assert batch.levels(2, True)[1].tolist() == [1.0, 2.0, 3.0]
    assert batch.levels(2, False)[0].tolist() == [95001.0]
    assert batch.best_bid()[0] == 1400.0 and batch.best_ask_sz()[0] == 11.0


def test_symbol_ids_are_stable_across_batches():
    st_ = SymbolTable(["ETH"])
    b1, _ = batch_from_arrow(table([row(symbol="XRP"), row(symbol="ETH")]), st_)
    b2, _ = batch_from_arrow(table([row(symbol="BTC"), row(symbol="XRP")]), st_)
    assert st_.names == ("ETH", "XRP", "BTC")
    assert b1.sym.tolist() == [1, 0]
    assert b2.sym.tolist() == [2, 1]
    assert b1.symbols == ("ETH", "XRP") and b2.symbols == ("ETH", "XRP", "BTC")


@pytest.mark.parametrize(
    "bad",
    [
        {"ts_ns": None},
        {"recv_ns": None},
        {"exchange": None},
        {"symbol": None},
        {"quote": None},
        {"bid_px": None},
        {"ask_sz": None},
        {"bid_px": [100.0, None]},  # a null level inside the list
        {"ask_sz": [1.0]},  # 2 ask prices, 1 ask size
        {"bid_sz": [1.0, 2.0, 3.0]},
    ],
)
def test_malformed_rows_removed_and_counted(bad):
    rows = [row(ts=1), row(ts=2), row(ts=3)]
    rows[1].update(bad)
    batch, drops = batch_from_arrow(table(rows), SymbolTable())
    assert drops == {"malformed": 1}
    assert batch.ts_ns.tolist() == [1, 3]
    assert_compact(batch)
    assert batch.levels(1, True)[0].tolist() == [100.0, 99.0]
    assert batch.levels(1, False)[1].tolist() == [3.0, 4.0]


def test_all_rows_malformed_and_empty_input():
    batch, drops = batch_from_arrow(table([row(bid_px=None), row(ask_sz=[1.0])]), SymbolTable())
    assert drops == {"malformed": 2}
    assert len(batch) == 0 and batch.bid_off.tolist() == [0] and batch.ask_px.shape == (0,)
    batch, drops = batch_from_arrow(REPLAY_SCHEMA.empty_table(), SymbolTable())
    assert drops == {} and len(batch) == 0
    batch, drops = batch_from_arrow(
        pa.RecordBatch.from_pylist([], schema=REPLAY_SCHEMA), SymbolTable()
    )
    assert drops == {} and len(batch) == 0


def test_empty_sides_are_representable():
    rows = [row(bid_px=(), bid_sz=(), ts=1), row(ts=2), row(ask_px=(), ask_sz=(), ts=3)]
    batch, drops = batch_from_arrow(table(rows), SymbolTable())
    assert drops == {}
    assert batch.n_bid.tolist() == [0, 2, 2]
    assert batch.n_ask.tolist() == [2, 2, 0]
    assert np.isnan(batch.best_bid()[0]) and np.isnan(batch.best_ask()[2])


def test_sliced_record_batch_offsets_not_at_zero():
    rows = [
        row(ts=i, bid_px=[100.0 - j for j in range(i % 4)], bid_sz=[1.0] * (i % 4))
        for i in range(10)
    ]
    rows[6]["quote"] = None  # malformed inside the slice
    rb = table(rows).to_batches()[0]
    sliced = rb.slice(3, 5)  # rows 3..7
    assert sliced.column("bid_px").offsets[0].as_py() != 0
    batch, drops = batch_from_arrow(sliced, SymbolTable())
    assert drops == {"malformed": 1}
    assert batch.ts_ns.tolist() == [3, 4, 5, 7]
    assert_compact(batch)
    for i, ts in enumerate([3, 4, 5, 7]):
        assert batch.levels(i, True)[0].tolist() == [100.0 - j for j in range(ts % 4)]


def test_chunked_table_columns():
    rows = [row(ts=i, symbol=["BTC", "ETH", "XRP"][i % 3]) for i in range(9)]
    t = pa.concat_tables([table(rows[:2]), table(rows[2:5]), table(rows[5:])])
    assert t.column("bid_px").num_chunks == 3
    st1, st2 = SymbolTable(), SymbolTable()
    b_chunked, _ = batch_from_arrow(t, st1)
    b_flat, _ = batch_from_arrow(table(rows), st2)
    assert rows_of(b_chunked) == rows_of(b_flat)
    # a table whose columns are chunked differently
    cols = {name: t.column(name) for name in t.column_names}
    cols["ask_px"] = pa.chunked_array([t.column("ask_px").combine_chunks()])
    mixed = pa.table(cols, schema=REPLAY_SCHEMA)
    b_mixed, _ = batch_from_arrow(mixed, SymbolTable())
    assert rows_of(b_mixed) == rows_of(b_flat)


def test_price_and_size_lists_with_different_layouts():
    """Same lengths per row, but the size list array is a slice of a bigger one."""
    px = pa.array([[1.0, 0.5], [2.0], [3.0, 2.5, 2.0]], type=LIST)
    sz_big = pa.array([[9.0], [10.0, 11.0], [12.0], [13.0, 14.0, 15.0]], type=LIST).slice(1, 3)
    ask = pa.array([[4.0], [5.0], [6.0]], type=LIST)
    rb = pa.RecordBatch.from_arrays(
        [
            pa.array([1, 2, 3], pa.int64()),
            pa.array([1, 2, 3], pa.int64()),
            pa.array(["upbit"] * 3),
            pa.array(["BTC"] * 3),
            pa.array(["KRW"] * 3),
            px,
            sz_big,
            ask,
            ask,
        ],
        schema=REPLAY_SCHEMA,
    )
    batch, drops = batch_from_arrow(rb, SymbolTable())
    assert drops == {}
    assert batch.levels(0, True)[1].tolist() == [10.0, 11.0]
    assert batch.levels(1, True)[1].tolist() == [12.0]
    assert batch.levels(2, True)[1].tolist() == [13.0, 14.0, 15.0]


def test_large_types_are_accepted():
    t = table([row(ts=1), row(ts=2, exchange="binance", quote="USDT")])
    large = t.cast(
        pa.schema(
            [
                pa.field(f.name, pa.large_list(pa.float64()))
                if pa.types.is_list(f.type)
                else pa.field(f.name, pa.large_string())
                if f.type == pa.string()
                else f
                for f in REPLAY_SCHEMA
            ]
        )
    )
    b_large, _ = batch_from_arrow(large, SymbolTable())
    b, _ = batch_from_arrow(t, SymbolTable())
    assert rows_of(b_large) == rows_of(b)


def test_round_trip_arrow_batch_arrow():
    rows = [
        row("upbit", "USDT", "KRW", (1400.0,), (10.0,), (1401.0,), (11.0,), ts=1, recv=5),
        row("binance", "BTC", "USDT", (), (), (95001.0,), (4.0,), ts=2, recv=6),
        row("upbit", "BTC", "KRW", ts=3, recv=7),
    ]
    t = table(rows)
    batch, _ = batch_from_arrow(t, SymbolTable())
    back = batch_to_arrow(batch)
    assert isinstance(back, pa.RecordBatch)
    assert back.schema.equals(REPLAY_SCHEMA)
    assert back.to_pylist() == t.to_pylist()


def test_round_trip_batch_arrow_batch_with_mock_data():
    mock = MockMarket(MockConfig(seed=3, symbols=("BTC", "XRP", "DOGE")))
    batch = next(mock.batches(30.0, batch_rows=5000))
    rb = batch_to_arrow(batch)
    back, drops = batch_from_arrow(rb, SymbolTable(mock.symtab.names))
    assert drops == {}
    for name in ("ts_ns", "recv_ns", "venue", "sym", "quote_ok", "bid_off", "ask_off"):
        np.testing.assert_array_equal(getattr(back, name), getattr(batch, name))
    for name in ("bid_px", "bid_sz", "ask_px", "ask_sz"):
        np.testing.assert_array_equal(getattr(back, name), getattr(batch, name))
    assert back.symbols == batch.symbols


def test_batch_to_arrow_of_a_view_with_offsets_not_at_zero():
    t = table([row(ts=i, bid_px=[100.0 + i], bid_sz=[1.0]) for i in range(5)])
    full, _ = batch_from_arrow(t, SymbolTable())
    view = BookBatch(
        ts_ns=full.ts_ns[2:],
        recv_ns=full.recv_ns[2:],
        venue=full.venue[2:],
        sym=full.sym[2:],
        quote_ok=full.quote_ok[2:],
        bid_off=full.bid_off[2:],
        bid_px=full.bid_px,
        bid_sz=full.bid_sz,
        ask_off=full.ask_off[2:],
        ask_px=full.ask_px,
        ask_sz=full.ask_sz,
        symbols=full.symbols,
    )
    assert batch_to_arrow(view).to_pylist() == t.slice(2).to_pylist()


def test_batch_to_arrow_unknown_rows_read_back_as_unknown():
    rows = [
        row("kraken", "BTC", "USD", ts=1),
        row("upbit", "ETH", "BTC", ts=2),
        row("binance", "USDT", "USDT", ts=3),
    ]
    st_ = SymbolTable()
    batch, _ = batch_from_arrow(table(rows), st_)
    back, drops = batch_from_arrow(batch_to_arrow(batch), st_)
    assert drops == {}
    np.testing.assert_array_equal(back.venue, batch.venue)
    np.testing.assert_array_equal(back.quote_ok, batch.quote_ok)
    np.testing.assert_array_equal(back.sym, batch.sym)
    # an unknown symbol id becomes a null symbol, which reads back as malformed
    bad_sym = dataclasses.replace(batch, sym=np.array([-1, 0, 1], np.int32))
    rb = batch_to_arrow(bad_sym)
    assert rb.column("symbol").to_pylist()[0] is None
    _, drops = batch_from_arrow(rb, st_)
    assert drops == {"malformed": 1}


# -- BookBatch.take / concat against a naive per-row implementation -----------------------------

level_lists = st.lists(
    st.tuples(
        st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
        st.floats(0, 1e6, allow_nan=False, allow_infinity=False),
    ),
    max_size=4,
)
row_strategy = st.tuples(
    st.integers(0, 10**18),
    st.integers(0, 10**18),
    st.sampled_from([-1, UPBIT, BINANCE]),
    st.integers(-1, 3),
    st.booleans(),
    level_lists,
    level_lists,
)


def build(rows: list[tuple], pad_front: int = 0, pad_back: int = 0) -> BookBatch:
    """A batch from per-row tuples; optional junk values before/after (offsets not at 0)."""

    def side(idx: int):
        lens = [len(r[idx]) for r in rows]
        off = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lens, out=off[1:])
        px = [lv[0] for r in rows for lv in r[idx]]
        sz = [lv[1] for r in rows for lv in r[idx]]
        junk = [-7.0]
        px = np.array(junk * pad_front + px + junk * pad_back, dtype=np.float64)
        sz = np.array(junk * pad_front + sz + junk * pad_back, dtype=np.float64)
        return off + pad_front, px, sz

    bo, bp, bs = side(5)
    ao, ap, as_ = side(6)
    return BookBatch(
        ts_ns=np.array([r[0] for r in rows], dtype=np.int64),
        recv_ns=np.array([r[1] for r in rows], dtype=np.int64),
        venue=np.array([r[2] for r in rows], dtype=np.int8),
        sym=np.array([r[3] for r in rows], dtype=np.int32),
        quote_ok=np.array([r[4] for r in rows], dtype=bool),
        bid_off=bo,
        bid_px=bp,
        bid_sz=bs,
        ask_off=ao,
        ask_px=ap,
        ask_sz=as_,
        symbols=("USDT", "BTC", "ETH", "XRP"),
    )


def naive(rows: list[tuple]) -> list[tuple]:
    return [
        (
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            [lv[0] for lv in r[5]],
            [lv[1] for lv in r[5]],
            [lv[0] for lv in r[6]],
            [lv[1] for lv in r[6]],
        )
        for r in rows
    ]


@settings(max_examples=150, deadline=None)
@given(
    rows=st.lists(row_strategy, max_size=12),
    data=st.data(),
    pad=st.tuples(st.integers(0, 3), st.integers(0, 3)),
)
def test_take_matches_naive(rows, data, pad):
    batch = build(rows, *pad)
    idx = data.draw(st.lists(st.integers(0, max(len(rows) - 1, 0)), max_size=15)) if rows else []
    if data.draw(st.booleans()):
        idx = sorted(set(idx))
    taken = batch.take(np.array(idx, dtype=np.int64))
    assert rows_of(taken) == [naive(rows)[i] for i in idx]
    assert_compact(taken)
    assert taken.symbols == batch.symbols


@settings(max_examples=150, deadline=None)
@given(
    parts=st.lists(
        st.tuples(st.lists(row_strategy, max_size=6), st.integers(0, 2), st.integers(0, 2)),
        min_size=1,
        max_size=5,
    )
)
def test_concat_matches_naive(parts):
    batches = [build(rows, a, b) for rows, a, b in parts]
    out = BookBatch.concat(batches)
    assert rows_of(out) == [r for rows, _, _ in parts for r in naive(rows)]
    if len(parts) > 1:
        assert_compact(out)


def test_take_empty_selection_and_levels_views():
    batch = build([(1, 2, UPBIT, 1, True, [(10.0, 1.0)], [(11.0, 2.0)])])
    empty = batch.take(np.array([], dtype=np.int64))
    assert len(empty) == 0 and empty.bid_off.tolist() == [0] and empty.bid_px.shape == (0,)
    px, sz = batch.levels(0, False)
    assert px.tolist() == [11.0] and sz.tolist() == [2.0]
