"""The trade log: one row per dispatched trade, JSONL and Parquet from one schema definition.

Rows are written incrementally in (fill_ts_ns, symbol, trade_id) order, each trade id exactly once:
a logger reopened on an existing log (after a restart) reloads the ids it already wrote.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from loguru import logger

from common.types import ExecutionResult

_F, _I, _S, _B = pa.float64(), pa.int64(), pa.string(), pa.bool_()
_LEG_FIELDS = [
    ("exchange", _S), ("price", _F), ("limit", _F), ("filled_qty", _F), ("vwap", _F),
    ("fill_ratio", _F), ("slippage_bps", _F), ("latency_cost_bps", _F), ("fee", _F),
    ("fee_asset", _S), ("usd_per_quote", _F), ("arrival_ns", _I), ("book_recv_ns", _I),
    ("book_ts_ns", _I),
]

#: The one schema definition: JSONL keys, Parquet columns and ``TradeLogEntry`` fields.
TRADE_LOG_SCHEMA = pa.schema(
    [("timestamp", _S), ("session_id", _S), ("trade_id", _S), ("symbol", _S), ("leg_kind", _S),
     ("round_trip_id", _S), ("quantity", _F)]
    + [(f"buy_{n}", t) for n, t in _LEG_FIELDS]
    + [(f"sell_{n}", t) for n, t in _LEG_FIELDS]
    + [("trade_result", _S), ("decision_ts_ns", _I), ("fill_ts_ns", _I), ("signal_bps", _F),
       ("reason", _S), ("cash_flow_usd", _F), ("fees_usd", _F), ("coin_delta_upbit", _F),
       ("coin_delta_binance", _F), ("round_trip_closed", _B), ("round_trip_pnl_usd", _F),
       ("tick_to_fill_ms", _F)]
)
FIELD_NAMES = tuple(TRADE_LOG_SCHEMA.names)

#: The seed's record type, generated from the schema so the two can never drift apart.
TradeLogEntry = dataclasses.make_dataclass(
    "TradeLogEntry", [(f.name, object, dataclasses.field(default=None)) for f in TRADE_LOG_SCHEMA],
    frozen=True, slots=True,
)


def iso_ns(ts_ns: int) -> str:
    """ISO-8601 UTC with nanoseconds, e.g. 2026-01-01T00:00:01.234567891Z."""
    sec, ns = divmod(int(ts_ns), 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{ns:09d}Z"


_INF = math.inf
#: each leg's column names, in schema order (built once: a row is built per trade)
_LEG_KEYS = {p: tuple(f"{p}_{n}" for n, _ in _LEG_FIELDS) for p in ("buy", "sell")}


def build_row(res: ExecutionResult, session_id: str, **extra) -> dict:
    """The log row of one ExecutionResult (missing legs and NaNs become null), in schema order."""
    t = res.trade
    out = dict.fromkeys(FIELD_NAMES)
    out.update(timestamp=iso_ns(res.fill_ts_ns), session_id=session_id, trade_id=t.trade_id,
               symbol=t.symbol, leg_kind=t.leg_kind, round_trip_id=t.round_trip_id,
               quantity=t.quantity)
    for prefix, leg, price, limit in (("buy", res.buy, t.buy_price, t.buy_limit),
                                      ("sell", res.sell, t.sell_price, t.sell_limit)):
        if leg is not None:
            out.update(zip(_LEG_KEYS[prefix], (
                leg.exchange, price, limit, leg.filled_qty, leg.vwap_price, leg.fill_ratio,
                leg.slippage_bps, leg.latency_cost_bps, leg.fee, leg.fee_asset,
                leg.usd_per_quote, leg.arrival_ns, leg.book_recv_ns, leg.book_ts_ns), strict=True))
    out.update(trade_result=res.trade_result, decision_ts_ns=t.decision_ts_ns,
               fill_ts_ns=res.fill_ts_ns, signal_bps=t.signal_bps, reason=t.reason,
               round_trip_closed=False)
    out.update(extra)
    if len(out) != len(FIELD_NAMES):
        raise ValueError(f"trade row fields outside the schema: {sorted(set(out) - set(FIELD_NAMES))}")
    for k, v in out.items():
        if v.__class__ is float and not (-_INF < v < _INF):
            out[k] = None  # NaN and infinities become null
    return out


def trade_log_dir(log_dir: str | Path, run_id: str) -> Path:
    return Path(log_dir) / run_id / "trades"


class TradeLogger:
    """Appends rows to ``top<N>_trade_log.jsonl`` and ``.parquet`` under ``<log_dir>/<run_id>/trades``."""

    def __init__(self, log_dir: str | Path, run_id: str, top_n: int,
                 row_group_rows: int = 4096, keep_rows: int | None = None) -> None:
        """``keep_rows``: reopening an existing log (a resumed run), keep only its first rows
        (those its checkpoint had written); the rest will be written again."""
        self.dir = trade_log_dir(log_dir, run_id)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.dir / f"top{top_n}_trade_log.jsonl"
        self.parquet_path = self.dir / f"top{top_n}_trade_log.parquet"
        self._row_group_rows = row_group_rows
        self._seen: set[str] = set()
        self._buffer: list[dict] = []
        self._writer: pq.ParquetWriter | None = None
        self.rows_written = 0
        self.duplicates_dropped = 0
        recovered: list[dict] = []
        if self.jsonl_path.exists():
            # reopened after a restart: keep what was written, never write an id twice (a torn
            # last line from a crash is skipped: its trade is re-sent)
            for row in read_trade_log_tolerant(self.jsonl_path)[0]:
                if row["trade_id"] not in self._seen:
                    self._seen.add(row["trade_id"])
                    recovered.append(row)
            if keep_rows is not None:
                recovered = recovered[:keep_rows]
                self._seen = {r["trade_id"] for r in recovered}
            # rewrite without a torn tail so the file stays valid JSONL
            self.jsonl_path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in recovered))
            logger.info("trade log reopened with {} rows: {}", len(recovered), self.jsonl_path)
        self._jsonl = self.jsonl_path.open("a", encoding="utf-8")
        self.rows_written = len(recovered)
        if recovered:
            self._buffer.extend(recovered)

    def log_trade(self, entry) -> None:
        """The seed's API: log one ``TradeLogEntry``."""
        self.log_rows([dataclasses.asdict(entry)])

    def log_rows(self, rows: list[dict]) -> int:
        """Append rows not written before; returns how many were new."""
        new = []
        for r in rows:
            if r["trade_id"] in self._seen:
                self.duplicates_dropped += 1
                continue
            self._seen.add(r["trade_id"])
            new.append(r)
        if not new:
            return 0
        self._jsonl.write(b"".join(orjson.dumps(r) + b"\n" for r in new).decode())
        self._jsonl.flush()
        self._buffer.extend(new)
        self.rows_written += len(new)
        if len(self._buffer) >= self._row_group_rows:
            self._flush_parquet()
        return len(new)

    def _flush_parquet(self) -> None:
        if not self._buffer:
            return
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.parquet_path, TRADE_LOG_SCHEMA)
        self._writer.write_table(pa.Table.from_pylist(self._buffer, schema=TRADE_LOG_SCHEMA))
        self._buffer = []

    def close(self) -> None:
        """Flush both files; the Parquet footer is written here."""
        self._flush_parquet()
        if self._writer is None:  # no rows at all: still leave a readable, empty file
            self._writer = pq.ParquetWriter(self.parquet_path, TRADE_LOG_SCHEMA)
        self._writer.close()
        self._jsonl.close()


def read_trade_log(path: str | Path) -> list[dict]:
    """Rows of a JSONL trade log (orjson: the end of a run reads its whole log back for the
    statistics, so this is part of every trade's cost)."""
    return [orjson.loads(line) for line in Path(path).read_bytes().splitlines() if line.strip()]


def read_trade_log_tolerant(path: str | Path) -> tuple[list[dict], int]:
    """Rows of a JSONL trade log that may end in a torn line (a crash, a run still writing):
    every whole row, and how many non-empty lines were not one (skipped)."""
    rows, bad = [], 0
    for line in Path(path).read_bytes().splitlines():
        if not line.strip():
            continue
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError:
            bad += 1
            continue
        if isinstance(row, dict) and row.get("trade_id"):
            rows.append(row)
        else:
            bad += 1
    return rows, bad
