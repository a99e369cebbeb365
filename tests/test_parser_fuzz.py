"""Any bytes into each venue's parser give a book, a frame that is not a book (None), or a counted
reject (``FrameError`` with a reason): never another exception. A book that parses then goes
through the batch and the validator, which accept it or name its reject: nothing escapes.

Inputs tried per run: ``FUZZ_EXAMPLES`` (default 150; CI's figure) random byte strings and as
many structure-aware frames (real frame shapes with any JSON values in any field) per venue;
``FUZZ_EXAMPLES=20000 pytest tests/test_parser_fuzz.py`` for a long run.
"""

from __future__ import annotations

import os

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.marketdata.batch import SymbolTable
from common.marketdata.binance import parse_message
from common.marketdata.rows import FrameError, rows_to_batch
from common.marketdata.upbit import parse_frame
from common.marketdata.validate import REASON_CODE, BookValidator

REASONS = set(REASON_CODE)
SYMBOLS = {"KRW-BTC": "BTC", "KRW-USDT": "USDT"}
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

json_leaf = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
             | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                          max_leaves=12)


def _dumps(obj) -> bytes:
    """JSON as a venue might send it, NaN and infinities included (orjson would refuse them)."""
    import json

    return json.dumps(obj, allow_nan=True).encode()


def through_validator(row) -> None:
    """A parsed book goes into a batch and through the validator: accepted or a named reject."""
    codes = BookValidator().validate(rows_to_batch([row], SymbolTable()))
    assert codes.shape == (1,)
    assert int(codes[0]) in set(REASON_CODE.values()) | {0}


def upbit_outcome(data: bytes) -> str:
    try:
        row = parse_frame(data, 1, SYMBOLS)
    except FrameError as e:
        assert e.reason in REASONS | {"malformed", "venue_error", "unknown_market"}, e.reason
        return e.reason
    if row is None:
        return "not a book"
    through_validator(row)
    return "book"


def binance_outcome(data: bytes) -> str:
    try:
        upd = parse_message(data)
    except FrameError as e:
        assert e.reason in REASONS | {"malformed"}, e.reason
        return e.reason
    return "not a book" if upd is None else "update"


@FUZZ
@given(st.binary(max_size=300))
def test_any_bytes_into_the_upbit_parser(data):
    upbit_outcome(data)


@FUZZ
@given(st.binary(max_size=300))
def test_any_bytes_into_the_binance_parser(data):
    binance_outcome(data)


upbit_unit = st.fixed_dictionaries({}, optional={
    "ask_price": json_value | st.floats(0.01, 1e9), "bid_price": json_value | st.floats(0.01, 1e9),
    "ask_size": json_value | st.floats(0, 1e6), "bid_size": json_value | st.floats(0, 1e6),
    "ap": json_value, "bp": json_value, "as": json_value, "bs": json_value})
upbit_frame = st.fixed_dictionaries(
    {"type": st.sampled_from(["orderbook", "ticker"]) | json_value},
    optional={"code": st.sampled_from(["KRW-BTC", "KRW-USDT", "KRW-XYZ"]) | json_value,
              "cd": json_value, "ty": json_value,
              "timestamp": st.integers(-5, 2**64) | json_value, "tms": json_value,
              "orderbook_units": st.lists(upbit_unit, max_size=6) | json_value,
              "obu": json_value, "status": json_value, "error": json_value})


@FUZZ
@given(upbit_frame)
def test_upbit_frames_of_any_shape(frame):
    upbit_outcome(_dumps(frame))


levels = st.lists(st.lists(st.text(max_size=8) | json_value, max_size=3), max_size=5) | json_value
binance_data = st.fixed_dictionaries(
    {"e": st.sampled_from(["depthUpdate", "trade"]) | json_value},
    optional={"s": json_value | st.just("BTCUSDT"), "U": st.integers(-5, 2**64) | json_value,
              "u": st.integers(-5, 2**64) | json_value, "E": st.integers(-5, 2**64) | json_value,
              "b": levels, "a": levels})
binance_frame = st.one_of(
    st.fixed_dictionaries({"stream": st.just("btcusdt@depth@100ms") | json_value,
                           "data": binance_data | json_value}),
    binance_data, st.fixed_dictionaries({"result": json_value, "id": json_value}))


@FUZZ
@given(binance_frame)
def test_binance_frames_of_any_shape(frame):
    binance_outcome(_dumps(frame))


def test_the_fuzzers_reach_books_and_rejects():
    """The strategies are not all rejects: good frames parse into books."""
    good = orjson.dumps({"type": "orderbook", "code": "KRW-BTC", "timestamp": 1000,
                         "orderbook_units": [{"ask_price": 101.0, "bid_price": 100.0,
                                              "ask_size": 1.0, "bid_size": 2.0}]})
    assert upbit_outcome(good) == "book"
    upd = _dumps({"stream": "btcusdt@depth@100ms", "data": {
        "e": "depthUpdate", "E": 1, "s": "BTCUSDT", "U": 1, "u": 2,
        "b": [["100.0", "1.0"]], "a": [["101.0", "nan"]]}})
    assert binance_outcome(upd) == "non_finite"
