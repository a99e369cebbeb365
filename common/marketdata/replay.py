"""Replay of recorded books from Parquet files in the replay schema, streamed batch by batch.

A replay path is one Parquet file or a directory of ``part-*.parquet`` files (read in name
order). Every file's schema is checked before anything is yielded; a problem with the data source
raises ``DataSourceError`` with a one-line message naming the file and the problem.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from common.marketdata.arrow import (
    REPLAY_COLUMNS,
    REPLAY_SCHEMA,
    batch_from_arrow,
    batch_to_arrow,
    column_type_problem,
    schema_problem,
)
from common.marketdata.batch import BookBatch, SymbolTable
from common.types import FX_SYMBOL, VENUE_QUOTES

_PARQUET_MAGIC = b"PAR1"


class DataSourceError(Exception):
    """A data source that cannot be used; the message is one line, meant for the user."""


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _check_magic(path: Path) -> None:
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(4)
            if size >= 12:
                f.seek(-4, 2)
            tail = f.read(4) if size >= 12 else b""
    except OSError as exc:
        raise DataSourceError(f"cannot read replay file {path}: {_one_line(exc)}") from None
    if head != _PARQUET_MAGIC or tail != _PARQUET_MAGIC:
        raise DataSourceError(f"replay file {path} is not a Parquet file (or is incomplete)")


def replay_files(path: str | Path) -> list[Path]:
    """The Parquet files of a replay path: the file itself, or a directory's ``part-*.parquet``
    files sorted by name."""
    p = Path(path)
    if not p.exists():
        raise DataSourceError(f"replay path {p} does not exist")
    if p.is_dir():
        files = sorted(f for f in p.glob("part-*.parquet") if f.is_file())
        if not files:
            raise DataSourceError(f"replay directory {p} has no part-*.parquet files")
    elif p.is_file():
        files = [p]
    else:
        raise DataSourceError(f"replay path {p} is neither a file nor a directory")
    for f in files:
        _check_magic(f)
    return files


def _open(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DataSourceError(
            f"replay file {path} is not a readable Parquet file: {_one_line(exc)}"
        ) from None


def _check_schema(path: Path, pf: pq.ParquetFile, columns: Iterable[str] = REPLAY_COLUMNS) -> None:
    schema = pf.schema_arrow
    if tuple(columns) == REPLAY_COLUMNS:
        problem = schema_problem(schema)
    else:
        problem = None
        for name in columns:
            idx = schema.get_field_index(name)
            problem = (
                f"missing column '{name}'"
                if idx < 0
                else column_type_problem(name, schema.field(idx).type)
            )
            if problem:
                break
    if problem:
        raise DataSourceError(f"replay file {path}: {problem}")


class ReplaySource:
    """Streams ``(BookBatch, dropped-rows-by-reason)`` from a replay path.

    ``symbols``: keep only these base assets (plus the FX book ``USDT``); the filter runs in Arrow
    before conversion. Rows with a null symbol are kept so that they are counted as malformed.
    """

    def __init__(
        self,
        path: str | Path,
        symtab: SymbolTable,
        batch_rows: int = 65536,
        symbols: set[str] | None = None,
    ) -> None:
        if batch_rows < 1:
            raise ValueError("batch_rows must be >= 1")
        self.path = Path(path)
        self.symtab = symtab
        self.batch_rows = int(batch_rows)
        self.symbols = None if symbols is None else frozenset(symbols) | {FX_SYMBOL}
        self.files = replay_files(self.path)
        self._rows: list[int] = []
        for f in self.files:
            pf = _open(f)
            _check_schema(f, pf)
            self._rows.append(int(pf.metadata.num_rows))

    @property
    def rows_total(self) -> int:
        """Rows in all files (from the Parquet metadata), before any filter."""
        return sum(self._rows)

    def batches(self) -> Iterator[tuple[BookBatch, dict[str, int]]]:
        value_set = None
        if self.symbols is not None:
            value_set = pa.array(sorted(self.symbols), type=pa.string())
        for f in self.files:
            for rb in _iter_file(f, self.batch_rows, list(REPLAY_COLUMNS)):
                if value_set is not None:
                    col = rb.column("symbol")
                    keep = pc.or_(pc.is_in(col, value_set=value_set), pc.is_null(col))
                    rb = rb.filter(keep)
                if rb.num_rows == 0:
                    continue
                yield batch_from_arrow(rb, self.symtab)


def _iter_file(path: Path, batch_rows: int, columns: list[str]) -> Iterator[pa.RecordBatch]:
    pf = _open(path)
    it = pf.iter_batches(batch_size=batch_rows, columns=columns)
    while True:
        try:
            rb = next(it)
        except StopIteration:
            return
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise DataSourceError(f"replay file {path} is corrupt: {_one_line(exc)}") from None
        yield rb


def scan_symbols(path: str | Path) -> dict[str, float]:
    """Activity score (row count over both venues) per base symbol with rows on both Upbit (KRW)
    and Binance (USDT), highest first, then by name; the FX book is left out.

    Reads only the ``exchange``, ``symbol`` and ``quote`` columns (``quote`` so that a market
    quoted in another currency, e.g. Upbit BTC-XTZ, does not count as tradable).
    """
    files = replay_files(path)
    cols = ["exchange", "symbol", "quote"]
    counts: dict[tuple[str, str], int] = {}
    for f in files:
        pf = _open(f)
        _check_schema(f, pf, cols)
        for rb in _iter_file(f, 1 << 20, cols):
            tbl = pa.Table.from_batches([rb]).drop_null()
            grouped = tbl.group_by(cols).aggregate([([], "count_all")]).to_pydict()
            for ex, sym, quote, n in zip(
                grouped["exchange"],
                grouped["symbol"],
                grouped["quote"],
                grouped["count_all"],
                strict=True,
            ):
                if (ex, quote) not in (("upbit", VENUE_QUOTES[0]), ("binance", VENUE_QUOTES[1])):
                    continue
                counts[(ex, sym)] = counts.get((ex, sym), 0) + int(n)
    scores: dict[str, float] = {}
    for (ex, sym), n in counts.items():
        if sym == FX_SYMBOL or ex != "upbit" or ("binance", sym) not in counts:
            continue
        scores[sym] = float(n + counts[("binance", sym)])
    return dict(sorted(scores.items(), key=lambda kv: (-kv[1], kv[0])))


def write_replay(path: str | Path, batches: Iterable[BookBatch]) -> int:
    """Write batches to one Parquet file in ``REPLAY_SCHEMA``; returns the number of rows."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    rows = 0
    with pq.ParquetWriter(p, REPLAY_SCHEMA) as writer:
        for b in batches:
            if len(b) == 0:
                continue
            writer.write_batch(batch_to_arrow(b))
            rows += len(b)
    return rows
