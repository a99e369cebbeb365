"""Replay of Parquet recordings: streaming, parts, symbol filter, errors, the real fixture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common.marketdata.arrow import REPLAY_SCHEMA, batch_to_arrow
from common.marketdata.batch import BookBatch, SymbolTable
from common.marketdata.mock import MockConfig, MockMarket
from common.marketdata.replay import (
    DataSourceError,
    ReplaySource,
    replay_files,
    scan_symbols,
    write_replay,
)
from common.marketdata.validate import BookValidator, count_reasons
from common.types import BINANCE, UPBIT

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "data" / "exchange-recordings"
SYMS = ("BTC", "XRP", "DOGE")


@pytest.fixture(scope="module")
def market() -> tuple[MockMarket, list[BookBatch]]:
    mock = MockMarket(MockConfig(seed=21, symbols=SYMS))
    batches = list(mock.batches(120.0, batch_rows=500))
    assert len(batches) >= 4
    return mock, batches


def same_rows(a: BookBatch, b: BookBatch) -> bool:
    names = ("ts_ns", "recv_ns", "venue", "sym", "quote_ok", "bid_off", "ask_off")
    floats = ("bid_px", "bid_sz", "ask_px", "ask_sz")
    return (
        len(a) == len(b)
        and all(np.array_equal(getattr(a, n), getattr(b, n)) for n in names)
        and all(np.array_equal(getattr(a, n), getattr(b, n), equal_nan=True) for n in floats)
    )


def collect(src: ReplaySource) -> tuple[list[BookBatch], dict[str, int]]:
    out, drops = [], {}
    for b, d in src.batches():
        out.append(b)
        for k, v in d.items():
            drops[k] = drops.get(k, 0) + v
    return out, drops


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg
    return msg


# -- streaming ----------------------------------------------------------------------------------


def test_stream_one_file(tmp_path, market):
    mock, batches = market
    total = sum(len(b) for b in batches)
    f = tmp_path / "books.parquet"
    assert write_replay(f, batches) == total
    assert pq.read_schema(f).equals(REPLAY_SCHEMA)
    assert replay_files(f) == [f]
    src = ReplaySource(f, SymbolTable(mock.symtab.names), batch_rows=700)
    assert src.rows_total == total
    got, drops = collect(src)
    assert drops == {}
    assert len(got) >= total // 700 and all(len(b) <= 700 for b in got)
    assert same_rows(BookBatch.concat(got), BookBatch.concat(batches))


def test_stream_directory_of_parts(tmp_path, market):
    mock, batches = market
    d = tmp_path / "rec"
    d.mkdir()
    # written out of name order on purpose; other files are ignored
    write_replay(d / "part-00001.parquet", batches[3:])
    write_replay(d / "part-00000.parquet", batches[:3])
    (d / "notes.txt").write_text("not data")
    write_replay(d / "other.parquet", batches[:1])
    (d / "part-00002.parquet.tmp").write_text("in progress")
    files = replay_files(d)
    assert [f.name for f in files] == ["part-00000.parquet", "part-00001.parquet"]
    src = ReplaySource(d, SymbolTable(mock.symtab.names), batch_rows=65536)
    assert src.rows_total == sum(len(b) for b in batches)
    got, _ = collect(src)
    assert len(got) == 2
    merged = BookBatch.concat(got)
    assert same_rows(merged, BookBatch.concat(batches))
    assert np.all(np.diff(merged.recv_ns) >= 0)


def test_symbol_filter_keeps_fx(tmp_path, market):
    mock, batches = market
    f = tmp_path / "books.parquet"
    write_replay(f, batches)
    st = SymbolTable()
    got, _ = collect(ReplaySource(f, st, symbols={"XRP"}))
    merged = BookBatch.concat(got)
    assert set(st.names) == {"USDT", "XRP"}
    names = {merged.symbols[i] for i in np.unique(merged.sym)}
    assert names == {"USDT", "XRP"}
    ref = BookBatch.concat(batches)
    keep = np.isin(ref.sym, [mock.symtab.get("USDT"), mock.symtab.get("XRP")])
    assert len(merged) == int(keep.sum())
    np.testing.assert_array_equal(merged.recv_ns, ref.recv_ns[keep])
    np.testing.assert_array_equal(merged.bid_px, ref.take(np.flatnonzero(keep)).bid_px)
    # a filter matching nothing but FX
    got, _ = collect(ReplaySource(f, SymbolTable(), symbols={"NOPE"}))
    assert {b.symbols[s] for b in got for s in np.unique(b.sym)} == {"USDT"}


def test_malformed_rows_in_a_file_are_counted(tmp_path):
    rows = [
        {
            "ts_ns": i,
            "recv_ns": i,
            "exchange": "upbit",
            "symbol": "BTC",
            "quote": "KRW",
            "bid_px": [100.0],
            "bid_sz": [1.0],
            "ask_px": [101.0],
            "ask_sz": [1.0],
        }
        for i in range(6)
    ]
    rows[1]["ask_sz"] = [1.0, 2.0]
    rows[4]["symbol"] = None
    f = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=REPLAY_SCHEMA), f)
    got, drops = collect(ReplaySource(f, SymbolTable(), batch_rows=4))
    assert drops == {"malformed": 2}
    assert BookBatch.concat(got).ts_ns.tolist() == [0, 2, 3, 5]
    # with a symbol filter, a null symbol is still counted rather than silently dropped
    got, drops = collect(ReplaySource(f, SymbolTable(), symbols={"BTC"}))
    assert drops == {"malformed": 2}


def test_write_replay_empty_and_nested_dir(tmp_path):
    f = tmp_path / "a" / "b" / "empty.parquet"
    assert write_replay(f, []) == 0
    src = ReplaySource(f, SymbolTable())
    assert src.rows_total == 0
    assert list(src.batches()) == []


# -- errors -------------------------------------------------------------------------------------


def test_missing_path(tmp_path):
    with pytest.raises(DataSourceError) as e:
        ReplaySource(tmp_path / "nope.parquet", SymbolTable())
    assert "nope.parquet" in one_line(e) and "does not exist" in str(e.value)


def test_directory_without_parts(tmp_path):
    (tmp_path / "books.parquet").write_bytes(b"")
    with pytest.raises(DataSourceError) as e:
        replay_files(tmp_path)
    assert str(tmp_path) in one_line(e) and "part-*.parquet" in str(e.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataSourceError):
        ReplaySource(empty, SymbolTable())


def test_text_file_named_parquet(tmp_path):
    f = tmp_path / "part-00000.parquet"
    f.write_text("ts_ns,recv_ns\n1,2\n")
    for target in (f, tmp_path):
        with pytest.raises(DataSourceError) as e:
            ReplaySource(target, SymbolTable())
        assert "part-00000.parquet" in one_line(e) and "not a Parquet file" in str(e.value)
    with pytest.raises(DataSourceError):
        scan_symbols(f)


def test_file_missing_a_column_is_reported_before_anything_is_yielded(tmp_path, market):
    _, batches = market
    d = tmp_path / "rec"
    d.mkdir()
    write_replay(d / "part-00000.parquet", batches[:2])
    bad = batch_to_arrow(batches[2]).drop_columns(["ask_sz"])
    pq.write_table(pa.Table.from_batches([bad]), d / "part-00001.parquet")
    with pytest.raises(DataSourceError) as e:
        ReplaySource(d, SymbolTable())
    msg = one_line(e)
    assert "part-00001.parquet" in msg and "ask_sz" in msg


def test_file_with_a_wrong_column_type(tmp_path, market):
    _, batches = market
    t = pa.Table.from_batches([batch_to_arrow(batches[0])])
    t = t.set_column(0, "ts_ns", t.column("ts_ns").cast(pa.float64(), safe=False))
    f = tmp_path / "wrong.parquet"
    pq.write_table(t, f)
    with pytest.raises(DataSourceError) as e:
        ReplaySource(f, SymbolTable())
    msg = one_line(e)
    assert "wrong.parquet" in msg and "ts_ns" in msg and "double" in msg


def test_corrupt_file(tmp_path, market):
    _, batches = market
    good = tmp_path / "good.parquet"
    write_replay(good, batches)
    data = bytearray(good.read_bytes())
    # keep the magic bytes at both ends, wreck the footer
    f = tmp_path / "corrupt.parquet"
    f.write_bytes(bytes(data[:4]) + b"\x00" * (len(data) - 8) + bytes(data[-4:]))
    with pytest.raises(DataSourceError) as e:
        ReplaySource(f, SymbolTable())
    assert "corrupt.parquet" in one_line(e)
    # a file cut short (e.g. a part still being written)
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(DataSourceError) as e:
        ReplaySource(cut, SymbolTable())
    assert "cut.parquet" in one_line(e)


def test_corrupt_data_pages_fail_while_streaming(tmp_path, market):
    _, batches = market
    f = tmp_path / "pages.parquet"
    pq.write_table(
        pa.Table.from_batches([batch_to_arrow(b) for b in batches]),
        f,
        compression="none",
        row_group_size=500,
    )
    md = pq.ParquetFile(f).metadata
    data = bytearray(f.read_bytes())
    # overwrite the middle of the last row group's bid_px column chunk
    col = md.row_group(md.num_row_groups - 1).column(5)
    start = col.data_page_offset
    for i in range(start + 10, start + col.total_compressed_size - 10):
        data[i] = 0xFF
    f.write_bytes(bytes(data))
    src = ReplaySource(f, SymbolTable())
    with pytest.raises(DataSourceError) as e:
        collect(src)
    assert "pages.parquet" in one_line(e)


# -- scan_symbols ---------------------------------------------------------------------------------


def test_scan_symbols(tmp_path):
    def rows(exchange, symbol, quote, n):
        return [
            {
                "ts_ns": 0,
                "recv_ns": 0,
                "exchange": exchange,
                "symbol": symbol,
                "quote": quote,
                "bid_px": [1.0],
                "bid_sz": [1.0],
                "ask_px": [2.0],
                "ask_sz": [1.0],
            }
        ] * n

    data = (
        rows("upbit", "USDT", "KRW", 50)
        + rows("upbit", "BTC", "KRW", 3)
        + rows("binance", "BTC", "USDT", 7)
        + rows("upbit", "ETH", "KRW", 6)
        + rows("binance", "ETH", "USDT", 4)
        + rows("upbit", "XRP", "KRW", 40)  # upbit only
        + rows("binance", "SOL", "USDT", 40)  # binance only
        + rows("upbit", "ADA", "BTC", 30)  # wrong quote: not tradable here
        + rows("binance", "ADA", "USDT", 30)
        + rows("binance", "DOGE", "USDT", 1)
    )
    d = tmp_path / "rec"
    d.mkdir()
    t = pa.Table.from_pylist(data, schema=REPLAY_SCHEMA)
    pq.write_table(t.slice(0, 100), d / "part-00000.parquet")
    pq.write_table(t.slice(100), d / "part-00001.parquet")
    pq.write_table(
        pa.Table.from_pylist(rows("upbit", "DOGE", "KRW", 2), schema=REPLAY_SCHEMA),
        d / "part-00002.parquet",
    )
    scores = scan_symbols(d)
    assert scores == {"BTC": 10.0, "ETH": 10.0, "DOGE": 3.0}
    assert list(scores) == ["BTC", "ETH", "DOGE"]  # ties broken by name


def test_scan_symbols_of_mock_recording(tmp_path, market):
    _, batches = market
    f = tmp_path / "books.parquet"
    write_replay(f, batches)
    scores = scan_symbols(f)
    assert set(scores) == set(SYMS)
    ref = BookBatch.concat(batches)
    for s, v in scores.items():
        sid = ref.symbols.index(s)
        assert v == float(np.sum(ref.sym == sid))


# -- the real fixture -----------------------------------------------------------------------------


def test_real_fixture():
    f = FIXTURES / "real_books.parquet"
    if not f.exists():
        pytest.skip(f"real fixture not present at {f}")
    st = SymbolTable()
    src = ReplaySource(f, st, batch_rows=256)
    assert src.rows_total == 1082
    v = BookValidator()
    got, drops = collect(src)
    assert drops == {}
    codes = np.concatenate([v.validate(b) for b in got])
    assert codes.shape == (1082,)
    assert count_reasons(codes) == {}
    merged = BookBatch.concat(got)
    bat = st.get("BAT")
    assert bat is not None and st.get("USDT") is not None
    assert int(np.sum((merged.sym == bat) & (merged.venue == UPBIT))) == 76
    assert int(np.sum((merged.sym == bat) & (merged.venue == BINANCE))) == 885
    assert int(np.sum(merged.sym == st.get("USDT"))) == 121
    assert np.all(np.diff(merged.recv_ns) >= 0)
    assert scan_symbols(f) == {"BAT": 961.0}
    # the BAT premium at the synthetic 1180 KRW/USDT is about +11 %
    up = merged.take(np.flatnonzero((merged.sym == bat) & (merged.venue == UPBIT)))
    bn = merged.take(np.flatnonzero((merged.sym == bat) & (merged.venue == BINANCE)))
    up_mid = np.median((up.best_bid() + up.best_ask()) / 2)
    bn_mid = np.median((bn.best_bid() + bn.best_ask()) / 2)
    assert 0.08 < up_mid / (bn_mid * 1180.0) - 1 < 0.15
