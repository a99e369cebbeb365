"""Arrow <-> ``BookBatch`` conversion in the replay schema, without a Python object per level.

List columns are read as (offsets, flat values) with ``to_numpy``; string columns are dictionary
encoded so that Python only ever sees the handful of distinct exchange / symbol / quote strings.
Rows that cannot be represented (a null anywhere, or price and size lists of different lengths on
one side) are dropped and counted as ``"malformed"``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from common.marketdata.batch import BookBatch, SymbolTable, _gather_offsets
from common.types import BINANCE, FX_SYMBOL, UPBIT, VENUE_CODES, VENUE_NAMES, VENUE_QUOTES

_LEVELS = pa.list_(pa.float64())

#: The replay / recording schema (see DESIGN.md, "Market data").
REPLAY_SCHEMA = pa.schema(
    [
        pa.field("ts_ns", pa.int64()),
        pa.field("recv_ns", pa.int64()),
        pa.field("exchange", pa.string()),
        pa.field("symbol", pa.string()),
        pa.field("quote", pa.string()),
        pa.field("bid_px", _LEVELS),
        pa.field("bid_sz", _LEVELS),
        pa.field("ask_px", _LEVELS),
        pa.field("ask_sz", _LEVELS),
    ]
)
REPLAY_COLUMNS: tuple[str, ...] = tuple(REPLAY_SCHEMA.names)
_LIST_COLUMNS = ("bid_px", "bid_sz", "ask_px", "ask_sz")
_STRING_COLUMNS = ("exchange", "symbol", "quote")
_INT_COLUMNS = ("ts_ns", "recv_ns")

#: Name written for rows whose venue code is unknown (-1) by ``batch_to_arrow``.
UNKNOWN_EXCHANGE = "unknown"


def column_type_problem(name: str, typ: pa.DataType) -> str | None:
    """Why ``typ`` is not acceptable for replay column ``name`` (None if it is).

    Accepted beyond the exact schema types: ``large_string`` / dictionary-of-string for the
    string columns and ``large_list<double>`` for the level columns (list field names are free).
    """
    if name in _INT_COLUMNS:
        ok = pa.types.is_int64(typ)
        want = "int64"
    elif name in _STRING_COLUMNS:
        ok = _is_stringish(typ)
        want = "string"
    elif name in _LIST_COLUMNS:
        ok = (pa.types.is_list(typ) or pa.types.is_large_list(typ)) and pa.types.is_float64(
            typ.value_type
        )
        want = "list<double>"
    else:
        return None
    return None if ok else f"column '{name}' has type {typ}, expected {want}"


def _is_stringish(typ: pa.DataType) -> bool:
    if pa.types.is_dictionary(typ):
        typ = typ.value_type
    return pa.types.is_string(typ) or pa.types.is_large_string(typ)


def schema_problem(schema: pa.Schema) -> str | None:
    """The first problem of ``schema`` against ``REPLAY_SCHEMA`` (None if it fits)."""
    for name in REPLAY_COLUMNS:
        idx = schema.get_field_index(name)
        if idx < 0:
            return f"missing column '{name}'"
        problem = column_type_problem(name, schema.field(idx).type)
        if problem is not None:
            return problem
    return None


def _column(data: pa.RecordBatch | pa.Table, name: str) -> pa.Array:
    col = data.column(name)
    if isinstance(col, pa.ChunkedArray):
        if col.num_chunks == 1:
            return col.chunk(0)
        if col.num_chunks == 0:
            return pa.array([], type=col.type)
        return pa.concat_arrays(col.chunks)
    return col


def _list_parts(arr: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """(offsets rebased to start at 0 as int64, the child values they index), slice-aware."""
    off = arr.offsets.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    start, stop = int(off[0]), int(off[-1])
    values = arr.values.slice(start, stop - start)
    return off - start, values


def _row_counts(flag: np.ndarray, off: np.ndarray) -> np.ndarray:
    """Per row, how many flagged values lie in ``[off[i], off[i+1])`` (empty rows give 0)."""
    cs = np.zeros(flag.shape[0] + 1, dtype=np.int64)
    np.cumsum(flag, out=cs[1:])
    return cs[off[1:]] - cs[off[:-1]]


def _malformed_mask(data: pa.RecordBatch | pa.Table) -> np.ndarray:
    n = data.num_rows
    bad = np.zeros(n, dtype=bool)
    for name in REPLAY_COLUMNS:
        col = _column(data, name)
        if col.null_count:
            bad |= col.is_null().to_numpy(zero_copy_only=False)
        if name in _LIST_COLUMNS:
            off, values = _list_parts(col)
            if values.null_count:
                nested = values.is_null().to_numpy(zero_copy_only=False)
                bad |= _row_counts(nested, off) > 0
    for px, sz in (("bid_px", "bid_sz"), ("ask_px", "ask_sz")):
        lp = pc.list_value_length(_column(data, px)).to_numpy(zero_copy_only=False)
        ls = pc.list_value_length(_column(data, sz)).to_numpy(zero_copy_only=False)
        # null lists give null lengths (NaN here): already flagged above, NaN != NaN flags again
        bad |= lp != ls
    return bad


def _encode(arr: pa.Array) -> tuple[np.ndarray, list]:
    """(int indices per row, the distinct values they point to) for a string column."""
    if not pa.types.is_dictionary(arr.type):
        arr = pc.dictionary_encode(arr)
    idx = arr.indices.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    return idx, arr.dictionary.to_pylist()


def _side(data: pa.RecordBatch | pa.Table, px: str, sz: str):
    off_p, val_p = _list_parts(_column(data, px))
    off_s, val_s = _list_parts(_column(data, sz))
    px_np = val_p.to_numpy(zero_copy_only=False)
    sz_np = val_s.to_numpy(zero_copy_only=False)
    if not np.array_equal(off_p, off_s):
        # same lengths per row (checked) but laid out differently: realign sizes on price offsets
        _, idx = _gather_offsets(off_s, np.arange(off_s.shape[0] - 1, dtype=np.int64))
        sz_np = sz_np[idx]
    return off_p, px_np, sz_np


def batch_from_arrow(
    rb: pa.RecordBatch | pa.Table, symtab: SymbolTable
) -> tuple[BookBatch, dict[str, int]]:
    """Convert replay-schema rows to a ``BookBatch``; malformed rows are dropped and counted.

    Returns the batch and the dropped-row counts by reason (only non-zero entries, i.e. ``{}`` or
    ``{"malformed": k}``). Symbols are registered in ``symtab`` in order of first appearance.
    """
    if isinstance(rb, pa.Table):
        rb = rb.combine_chunks()
    bad = _malformed_mask(rb)
    n_bad = int(bad.sum())
    drops: dict[str, int] = {"malformed": n_bad} if n_bad else {}
    if n_bad:
        rb = rb.filter(pa.array(~bad))

    ts = _column(rb, "ts_ns").to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    recv = _column(rb, "recv_ns").to_numpy(zero_copy_only=False).astype(np.int64, copy=False)

    ex_idx, ex_vals = _encode(_column(rb, "exchange"))
    venue_of = np.array([VENUE_CODES.get(v, -1) for v in ex_vals] + [-1], dtype=np.int8)
    venue = venue_of[ex_idx]

    sym_idx, sym_vals = _encode(_column(rb, "symbol"))
    sym_of = np.append(symtab.ids_of(sym_vals), np.int32(-1)).astype(np.int32)
    sym = sym_of[sym_idx]
    sym_is_fx = np.array([v == FX_SYMBOL for v in sym_vals] + [False], dtype=bool)[sym_idx]

    q_idx, q_vals = _encode(_column(rb, "quote"))
    q_krw = np.array([v == "KRW" for v in q_vals] + [False], dtype=bool)[q_idx]
    q_usdt = np.array([v == "USDT" for v in q_vals] + [False], dtype=bool)[q_idx]
    quote_ok = ((venue == UPBIT) & q_krw) | ((venue == BINANCE) & q_usdt & ~sym_is_fx)

    bid_off, bid_px, bid_sz = _side(rb, "bid_px", "bid_sz")
    ask_off, ask_px, ask_sz = _side(rb, "ask_px", "ask_sz")
    batch = BookBatch(
        ts_ns=ts,
        recv_ns=recv,
        venue=venue,
        sym=sym,
        quote_ok=quote_ok,
        bid_off=bid_off,
        bid_px=bid_px,
        bid_sz=bid_sz,
        ask_off=ask_off,
        ask_px=ask_px,
        ask_sz=ask_sz,
        symbols=symtab.names,
    )
    return batch, drops


def _list_array(off: np.ndarray, values: np.ndarray) -> pa.Array:
    base = int(off[0])
    rel = off - base
    if rel[-1] > np.iinfo(np.int32).max:
        raise ValueError(
            "too many levels in one batch for list<double> offsets; use smaller batches"
        )
    flat = np.ascontiguousarray(values[base : int(off[-1])], dtype=np.float64)
    return pa.ListArray.from_arrays(pa.array(rel.astype(np.int32)), pa.array(flat))


def batch_to_arrow(batch: BookBatch) -> pa.RecordBatch:
    """A ``REPLAY_SCHEMA`` record batch of ``batch`` (the exact inverse of ``batch_from_arrow``
    for valid rows).

    Rows with an unknown venue get exchange ``"unknown"``, rows with an unknown symbol a null
    symbol, and rows whose quote is not right for their venue an empty quote, so that reading the
    result back flags them the same way.
    """
    venue = batch.venue.astype(np.int64)
    known_venue = (venue >= 0) & (venue < len(VENUE_NAMES))
    v_idx = np.where(known_venue, venue, len(VENUE_NAMES))
    exchange = pc.take(pa.array([*VENUE_NAMES, UNKNOWN_EXCHANGE]), pa.array(v_idx))
    sym = batch.sym.astype(np.int64)
    known_sym = (sym >= 0) & (sym < len(batch.symbols))
    if known_sym.any():
        symbol = pc.take(
            pa.array(list(batch.symbols), type=pa.string()),
            pa.array(np.where(known_sym, sym, 0), mask=~known_sym),
        )
    else:
        symbol = pa.nulls(len(batch), type=pa.string())
    q_idx = np.where(known_venue & batch.quote_ok, v_idx, len(VENUE_QUOTES))
    quote = pc.take(pa.array([*VENUE_QUOTES, ""]), pa.array(q_idx))
    arrays = [
        pa.array(batch.ts_ns, type=pa.int64()),
        pa.array(batch.recv_ns, type=pa.int64()),
        exchange,
        symbol,
        quote,
        _list_array(batch.bid_off, batch.bid_px),
        _list_array(batch.bid_off, batch.bid_sz),
        _list_array(batch.ask_off, batch.ask_px),
        _list_array(batch.ask_off, batch.ask_sz),
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=REPLAY_SCHEMA)
