"""BookValidator: exact reason codes per rule, priority, state across batches, edge cases."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.marketdata.batch import BookBatch
from common.marketdata.validate import (
    REJECT_REASONS,
    BookValidator,
    count_reasons,
    static_reasons,
)
from common.types import BINANCE, UPBIT

SYMBOLS = ("USDT", "BTC", "ETH")
R = {name: i for i, name in enumerate(REJECT_REASONS)}
GOOD_BIDS = ((100.0, 1.0), (99.0, 2.0), (98.0, 3.0))
GOOD_ASKS = ((101.0, 1.0), (102.0, 2.0), (103.0, 3.0))


def book(
    ts=0, recv=None, venue=UPBIT, sym=1, quote_ok=True, bids=GOOD_BIDS, asks=GOOD_ASKS
) -> dict:
    return {
        "ts": ts,
        "recv": ts if recv is None else recv,
        "venue": venue,
        "sym": sym,
        "quote_ok": quote_ok,
        "bids": tuple(bids),
        "asks": tuple(asks),
    }


def mk(rows: list[dict], pad: int = 0, symbols=SYMBOLS) -> BookBatch:
    """A batch of hand-written rows; ``pad`` junk values before the levels (offsets not at 0)."""

    def side(key):
        lens = [len(r[key]) for r in rows]
        off = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lens, out=off[1:])
        junk = [float("nan")] * pad
        px = np.array(junk + [p for r in rows for p, _ in r[key]], dtype=np.float64)
        sz = np.array(junk + [s for r in rows for _, s in r[key]], dtype=np.float64)
        return off + pad, px, sz

    bo, bp, bs = side("bids")
    ao, ap, as_ = side("asks")
    return BookBatch(
        ts_ns=np.array([r["ts"] for r in rows], dtype=np.int64),
        recv_ns=np.array([r["recv"] for r in rows], dtype=np.int64),
        venue=np.array([r["venue"] for r in rows], dtype=np.int8),
        sym=np.array([r["sym"] for r in rows], dtype=np.int32),
        quote_ok=np.array([r["quote_ok"] for r in rows], dtype=bool),
        bid_off=bo,
        bid_px=bp,
        bid_sz=bs,
        ask_off=ao,
        ask_px=ap,
        ask_sz=as_,
        symbols=symbols,
    )


def codes_of(rows, validator=None, **kw) -> list[str]:
    v = validator or BookValidator()
    return [REJECT_REASONS[c] for c in v.validate(mk(rows, **kw))]


# -- one rule at a time -------------------------------------------------------------------------


def test_reason_table():
    assert REJECT_REASONS == (
        "ok",
        "unknown_market",
        "empty",
        "non_finite",
        "non_positive",
        "unsorted",
        "crossed",
        "out_of_order",
        "straggler",
    )


def test_valid_books():
    rows = [
        book(ts=1),
        book(ts=2, venue=BINANCE),
        book(ts=3, sym=0, bids=[(1.0, 1.0)], asks=[(2.0, 1.0)]),
    ]
    codes = BookValidator().validate(mk(rows))
    assert codes.dtype == np.int8
    assert codes.tolist() == [0, 0, 0]


@pytest.mark.parametrize(
    "kw",
    [
        {"venue": -1},
        {"venue": 5},
        {"sym": -1},
        {"sym": 3},  # beyond the batch's symbol table
        {"quote_ok": False},
    ],
)
def test_unknown_market(kw):
    assert codes_of([book(ts=1), book(ts=2, **kw), book(ts=3)]) == ["ok", "unknown_market", "ok"]


@pytest.mark.parametrize(
    "kw",
    [
        {"bids": ()},
        {"asks": ()},
        {"bids": (), "asks": ()},
    ],
)
def test_empty(kw):
    assert codes_of([book(ts=1), book(ts=2, **kw), book(ts=3)]) == ["ok", "empty", "ok"]


@pytest.mark.parametrize(
    "kw",
    [
        {"bids": ((math.nan, 1.0), (99.0, 1.0))},
        {"bids": ((100.0, 1.0), (99.0, math.inf))},
        {"asks": ((101.0, 1.0), (-math.inf, 1.0))},
        {"asks": ((101.0, math.nan),)},
    ],
)
def test_non_finite(kw):
    assert codes_of([book(ts=1), book(ts=2, **kw), book(ts=3)]) == ["ok", "non_finite", "ok"]


@pytest.mark.parametrize(
    "kw",
    [
        {"bids": ((100.0, 1.0), (0.0, 1.0))},
        {"bids": ((100.0, -1.0),)},
        {"asks": ((101.0, 0.0),)},
        {"asks": ((-101.0, 1.0),)},
    ],
)
def test_non_positive(kw):
    assert codes_of([book(ts=1), book(ts=2, **kw), book(ts=3)]) == ["ok", "non_positive", "ok"]


@pytest.mark.parametrize(
    "kw",
    [
        {"bids": ((100.0, 1.0), (100.0, 1.0))},  # equal prices are not strictly sorted
        {"bids": ((99.0, 1.0), (100.0, 1.0))},
        {"bids": ((100.0, 1.0), (98.0, 1.0), (99.0, 1.0))},
        {"asks": ((101.0, 1.0), (101.0, 1.0))},
        {"asks": ((102.0, 1.0), (101.5, 1.0))},
        {"asks": ((101.0, 1.0), (103.0, 1.0), (102.0, 1.0))},
    ],
)
def test_unsorted(kw):
    assert codes_of([book(ts=1), book(ts=2, **kw), book(ts=3)]) == ["ok", "unsorted", "ok"]


def test_sortedness_does_not_compare_across_rows():
    # row 0's last bid (1.0) is below row 1's first bid (500.0): fine, different rows
    rows = [
        book(ts=1, bids=[(3.0, 1.0), (2.0, 1.0), (1.0, 1.0)], asks=[(4.0, 1.0), (5.0, 1.0)]),
        book(ts=2, bids=[(500.0, 1.0), (400.0, 1.0)], asks=[(600.0, 1.0), (700.0, 1.0)]),
        book(ts=3, bids=[(2.0, 1.0)], asks=[(3.0, 1.0)]),  # first ask 3 < previous row's last 700
        book(ts=4, bids=[(2.0, 1.0)], asks=[(3.0, 1.0)]),
    ]
    assert codes_of(rows) == ["ok"] * 4


@pytest.mark.parametrize(
    "kw",
    [
        {"bids": ((101.0, 1.0),), "asks": ((101.0, 1.0),)},  # locked counts as crossed
        {"bids": ((102.0, 1.0), (99.0, 1.0)), "asks": ((101.0, 1.0), (103.0, 1.0))},
    ],
)
def test_crossed(kw):
    assert codes_of([book(ts=1), book(ts=2, **kw), book(ts=3)]) == ["ok", "crossed", "ok"]


# -- priority -----------------------------------------------------------------------------------


def test_priority_first_reason_in_the_tuple_wins():
    rows = [
        book(ts=10),
        book(ts=11, venue=-1, bids=()),  # unknown_market + empty
        book(ts=12, asks=(), bids=((math.nan, 1.0),)),  # empty + non_finite
        book(ts=13, bids=((math.nan, -1.0),)),  # non_finite + non_positive
        book(ts=14, bids=((100.0, 1.0), (0.0, 1.0), (50.0, 1.0))),  # non_positive + unsorted
        book(ts=15, bids=((160.0, 1.0), (170.0, 1.0)), asks=((150.0, 1.0),)),  # unsorted + crossed
        book(ts=5, bids=((200.0, 1.0),)),  # crossed + out_of_order (ts behind)
        book(ts=4, recv=0, quote_ok=False),  # unknown_market + out_of_order (recv behind)
        book(ts=3),  # only out_of_order
    ]
    assert codes_of(rows) == [
        "ok",
        "unknown_market",
        "empty",
        "non_finite",
        "non_positive",
        "unsorted",
        "crossed",
        "unknown_market",
        "out_of_order",
    ]


# -- out of order -------------------------------------------------------------------------------


def test_recv_out_of_order_against_all_earlier_rows():
    rows = [
        book(ts=1, recv=100),
        book(ts=2, recv=200, venue=-1),  # rejected, but its recv_ns still counts
        book(ts=3, recv=150, sym=2),
        book(ts=4, recv=200),  # equal recv is fine
        book(ts=5, recv=201),
    ]
    assert codes_of(rows) == ["ok", "unknown_market", "out_of_order", "ok", "ok"]


def test_ts_out_of_order_per_stream_and_rejected_rows_do_not_advance():
    rows = [
        book(ts=100, recv=1, venue=UPBIT, sym=1),
        book(ts=50, recv=2, venue=BINANCE, sym=1),  # another stream: fine
        book(ts=90, recv=3, venue=UPBIT, sym=1),  # behind upbit/BTC's 100
        book(ts=100, recv=4, venue=UPBIT, sym=1),  # equal ts is fine
        book(ts=500, recv=5, venue=UPBIT, sym=1, asks=()),  # rejected: must not advance the stream
        book(ts=110, recv=6, venue=UPBIT, sym=1),  # fine: 110 >= 100 (the 500 was rejected)
        book(ts=105, recv=7, venue=UPBIT, sym=1),  # behind 110
        book(ts=60, recv=8, venue=BINANCE, sym=1),
        book(ts=40, recv=9, venue=BINANCE, sym=2),  # ETH binance: a new stream
    ]
    assert codes_of(rows) == [
        "ok",
        "ok",
        "out_of_order",
        "ok",
        "empty",
        "ok",
        "out_of_order",
        "ok",
        "ok",
    ]


def test_out_of_order_rejection_does_not_advance_stream_with_larger_ts():
    # a row rejected for recv order has a larger ts; the next row must be judged against 100
    rows = [
        book(ts=100, recv=10),
        book(ts=300, recv=5),  # recv behind: rejected
        book(ts=200, recv=11),  # 200 >= 100: ok
        book(ts=150, recv=12),  # behind the accepted 200
    ]
    assert codes_of(rows) == ["ok", "out_of_order", "ok", "out_of_order"]


def test_out_of_order_across_batch_boundaries():
    v = BookValidator()
    assert codes_of([book(ts=100, recv=1000), book(ts=10, recv=1001, venue=BINANCE)], v) == [
        "ok",
        "ok",
    ]
    assert codes_of(
        [
            book(ts=101, recv=999),  # recv behind the previous batch
            book(ts=99, recv=1002),  # ts behind the previous batch's accepted 100
            book(ts=9, recv=1003, venue=BINANCE),  # behind binance's 10
            book(ts=100, recv=1004),
            book(ts=11, recv=1005, venue=BINANCE),
        ],
        v,
    ) == ["out_of_order", "out_of_order", "out_of_order", "ok", "ok"]
    # an empty batch changes nothing
    assert v.validate(mk([])).tolist() == []
    assert codes_of([book(ts=100, recv=1005), book(ts=10, recv=1006, venue=BINANCE)], v) == [
        "ok",
        "out_of_order",
    ]


def test_symbol_ids_of_later_batches_with_a_bigger_table():
    v = BookValidator()
    codes_of([book(ts=100, sym=1)], v, symbols=("USDT", "BTC"))
    # a later batch knows more symbols; BTC keeps its id and its state
    assert codes_of(
        [book(ts=50, recv=200, sym=1), book(ts=50, recv=201, sym=2)], v, symbols=SYMBOLS
    ) == ["out_of_order", "ok"]


# -- reduceat-style edge cases ------------------------------------------------------------------


def test_empty_rows_at_edges_and_in_the_middle():
    rows = [
        book(ts=1, bids=(), asks=()),
        book(ts=2, bids=(), asks=((1.0, 1.0),)),
        book(ts=3, bids=((math.nan, 1.0),), asks=((5.0, 1.0), (4.0, 1.0))),
        book(ts=4, asks=()),
        book(ts=5, bids=((2.0, 1.0), (3.0, 1.0)), asks=((4.0, 1.0),)),
        book(ts=6, bids=(), asks=()),
        book(ts=7, bids=((1.0, 1.0),), asks=()),
    ]
    for pad in (0, 3):
        assert codes_of(rows, pad=pad) == [
            "empty",
            "empty",
            "non_finite",
            "empty",
            "unsorted",
            "empty",
            "empty",
        ]


def test_all_rows_without_levels_and_zero_rows():
    assert codes_of([book(ts=1, bids=(), asks=())] * 3) == ["empty"] * 3
    assert BookValidator().validate(mk([])).shape == (0,)


def test_bad_level_in_last_row_and_first_row():
    rows = [
        book(ts=1, bids=((100.0, 1.0), (101.0, 1.0))),
        book(ts=2),
        book(ts=3, asks=((101.0, 1.0), (100.5, 1.0))),
    ]
    assert codes_of(rows) == ["unsorted", "ok", "unsorted"]
    rows = [book(ts=1, asks=((101.0, -1.0),)), book(ts=2), book(ts=3, asks=((math.nan, 1.0),))]
    assert codes_of(rows, pad=2) == ["non_positive", "ok", "non_finite"]


def test_single_level_books():
    rows = [
        book(ts=1, bids=((1.0, 1.0),), asks=((2.0, 1.0),)),
        book(ts=2, bids=((3.0, 1.0),), asks=((2.0, 1.0),)),
    ]
    assert codes_of(rows) == ["ok", "crossed"]


# -- state ----------------------------------------------------------------------------------------


def test_state_round_trip_continues_identically():
    first = [book(ts=100, recv=10), book(ts=50, recv=11, venue=BINANCE, sym=2)]
    second = [
        book(ts=99, recv=12),
        book(ts=49, recv=13, venue=BINANCE, sym=2),
        book(ts=1, recv=9, sym=0),
        book(ts=101, recv=14),
    ]
    a = BookValidator()
    a.validate(mk(first))
    state = a.get_state()
    assert state == {
        "max_recv_ns": 11,
        "last_ts_ns": {"upbit": {"BTC": 100}, "binance": {"ETH": 50}},
    }
    b = BookValidator()
    b.set_state(pickle.loads(pickle.dumps(state)))
    assert b.validate(mk(second)).tolist() == a.validate(mk(second)).tolist() == [7, 7, 7, 0]
    assert b.get_state() == a.get_state()
    fresh = BookValidator()
    assert fresh.get_state() == {"max_recv_ns": None, "last_ts_ns": {"upbit": {}, "binance": {}}}
    fresh.set_state(BookValidator().get_state())
    assert fresh.validate(mk(second)).tolist() == [0, 0, 7, 0]


def test_validate_and_filter():
    v = BookValidator()
    kept, counts = v.validate_and_filter(mk([book(ts=1), book(ts=2, asks=()), book(ts=3)]))
    assert kept.ts_ns.tolist() == [1, 3]
    assert counts == {"empty": 1}


def test_count_reasons():
    codes = np.array([0, 1, 1, 7, 0, 3, 6, 6, 6], dtype=np.int8)
    assert count_reasons(codes) == {
        "unknown_market": 2,
        "non_finite": 1,
        "crossed": 3,
        "out_of_order": 1,
    }
    assert count_reasons(np.zeros(4, dtype=np.int8)) == {}
    assert count_reasons(np.zeros(0, dtype=np.int8)) == {}


# -- property: the vectorised validator against a per-row reference --------------------------------


def reference(batches: list[list[dict]], n_sym: int) -> list[int]:
    max_recv = None
    last: dict[tuple[int, int], int] = {}
    out = []
    for rows in batches:
        for r in rows:
            bids, asks = r["bids"], r["asks"]
            levels = bids + asks
            if r["venue"] not in (UPBIT, BINANCE) or not 0 <= r["sym"] < n_sym or not r["quote_ok"]:
                code = 1
            elif not bids or not asks:
                code = 2
            elif any(not (math.isfinite(p) and math.isfinite(s)) for p, s in levels):
                code = 3
            elif any(p <= 0 or s <= 0 for p, s in levels):
                code = 4
            elif any(bids[i + 1][0] >= bids[i][0] for i in range(len(bids) - 1)) or any(
                asks[i + 1][0] <= asks[i][0] for i in range(len(asks) - 1)
            ):
                code = 5
            elif bids[0][0] >= asks[0][0]:
                code = 6
            elif (max_recv is not None and r["recv"] < max_recv) or r["ts"] < last.get(
                (r["venue"], r["sym"]), -(2**63)
            ):
                code = 7
            else:
                code = 0
                last[(r["venue"], r["sym"])] = r["ts"]
            max_recv = r["recv"] if max_recv is None else max(max_recv, r["recv"])
            out.append(code)
    return out


price = st.sampled_from([-1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, math.nan, math.inf])
size = st.sampled_from([-1.0, 0.0, 1.0, 2.0, math.nan])
wild_levels = st.lists(st.tuples(price, size), max_size=4)  # anything, mostly invalid
positive_levels = st.lists(  # finite and positive, maybe unsorted
    st.tuples(st.integers(1, 20).map(float), st.just(1.0)), min_size=1, max_size=4
)


def ladder(top: int, k: int, step: int) -> tuple:
    return tuple((float(top + i * step), 1.0) for i in range(k))


# sorted sides whose tops sometimes cross
bid_ladder = st.builds(ladder, st.integers(8, 12), st.integers(1, 4), st.just(-1))
ask_ladder = st.builds(ladder, st.integers(10, 14), st.integers(1, 4), st.just(1))
row_st = st.builds(
    book,
    ts=st.integers(0, 6),
    recv=st.integers(0, 6),
    venue=st.sampled_from([UPBIT, BINANCE] * 4 + [-1]),
    sym=st.sampled_from([0, 1, 1, 2] * 3 + [-1, 3]),
    quote_ok=st.sampled_from([True] * 10 + [False]),
    bids=st.one_of(bid_ladder, bid_ladder, bid_ladder, positive_levels, wild_levels).map(tuple),
    asks=st.one_of(ask_ladder, ask_ladder, ask_ladder, positive_levels, wild_levels).map(tuple),
)


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(row_st, max_size=25),
    cuts=st.lists(st.integers(0, 25), max_size=4),
    pad=st.integers(0, 2),
)
def test_matches_reference_in_any_batching(rows, cuts, pad):
    bounds = sorted({0, len(rows), *[c for c in cuts if c <= len(rows)]})
    parts = [rows[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    v = BookValidator()
    got: list[int] = []
    for part in parts:
        # a snapshot between batches must not change anything
        v2 = BookValidator()
        v2.set_state(pickle.loads(pickle.dumps(v.get_state())))
        v = v2
        got.extend(v.validate(mk(part, pad=pad)).tolist())
    assert got == reference(parts, len(SYMBOLS))
    whole = BookValidator().validate(mk(rows)).tolist()
    assert whole == got
    # the static rules alone agree with the full codes wherever those are not out_of_order
    static = static_reasons(mk(rows)).tolist()
    assert [s for s, g in zip(static, got, strict=True) if g != 7] == [g for g in got if g != 7]


# -- stragglers: books received later than the feed-latency bound after their venue time -------


def test_straggler_is_counted_and_does_not_advance_its_stream():
    v = BookValidator(straggler_ns=100)
    rows = [book(ts=1000, recv=1050), book(ts=1010, recv=1111), book(ts=1020, recv=1120),
            book(ts=1005, recv=1130, venue=BINANCE), book(ts=1200, recv=1190)]
    # 1111 - 1010 = 101 > 100: a straggler; 1120 - 1020 = 100 is within the bound; a book whose
    # venue time is after its receive time (clock skew) is fine
    assert codes_of(rows, v) == ["ok", "straggler", "ok", "straggler", "ok"]
    # the straggler's ts never became the stream's floor: a later book with a smaller ts than it
    # is judged against the accepted ones only
    assert codes_of([book(ts=1200, recv=1250)], v) == ["ok"]


def test_no_bound_means_no_straggler():
    assert codes_of([book(ts=0, recv=10**12)]) == ["ok"]
