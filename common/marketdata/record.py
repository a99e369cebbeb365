"""Recording of a live session: the books handed to the engine, in the replay schema, plus the
TopN changes, so that replaying the directory makes the same decisions.

Books go to rolling ``part-NNNNN.parquet`` files. A part is written under a hidden temporary
name and renamed when closed, so every ``part-*.parquet`` in the directory is complete and
readable (also after Ctrl-C; at worst the part open at a hard kill is missing). Writing happens
in a background thread fed by a queue: the engine's thread only enqueues. TopN changes are
appended to ``topn.jsonl`` (one JSON object per line, flushed at once).
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from loguru import logger

from common.marketdata.arrow import REPLAY_SCHEMA, batch_to_arrow
from common.marketdata.batch import BookBatch

TOPN_FILE = "topn.jsonl"
_STOP = object()


class RecordingWriter:
    """Writes batches to ``<dir>/part-NNNNN.parquet`` (a new part every ``part_rows`` rows or
    ``part_seconds`` seconds) and TopN events to ``<dir>/topn.jsonl``."""

    def __init__(self, directory: str | Path, part_rows: int = 200_000,
                 part_seconds: float = 60.0, row_group_rows: int = 20_000) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        existing = sorted(self.dir.glob("part-*.parquet"))
        if existing:
            raise FileExistsError(f"--record-path {self.dir} already holds a recording "
                                  f"({existing[0].name}, ...); choose an empty directory")
        self.part_rows = part_rows
        self.part_seconds = part_seconds
        self.row_group_rows = row_group_rows
        self.parts_closed = 0
        self.rows_written = 0
        self.error: str | None = None
        self._part = 0
        self._q: queue.Queue = queue.Queue()
        self._topn = open(self.dir / TOPN_FILE, "a", encoding="utf-8")
        self._topn_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()

    def write(self, batch: BookBatch) -> None:
        if len(batch):
            self._q.put(batch)

    def write_event(self, event: dict) -> None:
        with self._topn_lock:
            self._topn.write(json.dumps(event, sort_keys=True) + "\n")
            self._topn.flush()

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush and close the open part (renaming it into place) and the TopN file."""
        self._q.put(_STOP)
        self._thread.join(timeout_s)
        with self._topn_lock:
            if not self._topn.closed:
                self._topn.close()

    # -- the writer thread ---------------------------------------------------------------------
    def _run(self) -> None:
        writer = tmp = final = None
        pending: list[pa.RecordBatch] = []
        pending_rows = part_rows = 0
        opened = 0.0

        def flush() -> None:
            nonlocal pending, pending_rows
            if pending:
                writer.write_table(pa.Table.from_batches(pending, schema=REPLAY_SCHEMA))
                pending, pending_rows = [], 0

        def close_part() -> None:
            nonlocal writer
            flush()
            writer.close()
            os.replace(tmp, final)
            writer = None
            self.parts_closed += 1

        try:
            while True:
                try:
                    item = self._q.get(timeout=0.5)
                except queue.Empty:
                    item = None
                if item is _STOP:
                    break
                if writer is not None and (part_rows >= self.part_rows
                                           or time.monotonic() - opened >= self.part_seconds):
                    close_part()
                if item is None:
                    continue
                if writer is None:
                    final = self.dir / f"part-{self._part:05d}.parquet"
                    tmp = self.dir / f".part-{self._part:05d}.parquet.inprogress"
                    self._part += 1
                    writer = pq.ParquetWriter(tmp, REPLAY_SCHEMA)
                    opened, part_rows = time.monotonic(), 0
                rb = batch_to_arrow(item)
                pending.append(rb)
                pending_rows += rb.num_rows
                part_rows += rb.num_rows
                self.rows_written += rb.num_rows
                if pending_rows >= self.row_group_rows:
                    flush()
            if writer is not None:
                close_part()
        except Exception as exc:  # a full disk must not end the trading run
            self.error = f"{type(exc).__name__}: {exc}"
            logger.error("recording stopped: {}", self.error)


def read_topn_events(directory: str | Path) -> list[dict]:
    """The TopN events of a recording directory (empty if it has none)."""
    p = Path(directory) / TOPN_FILE
    if not p.is_file():
        return []
    out = []
    for line in p.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def recorded_symbols(directory: str | Path) -> list[str] | None:
    """The symbols a recorded live run traded (its first TopN membership), or None when the
    path is not a recording with a universe."""
    for ev in read_topn_events(directory):
        if ev.get("event") == "topn" and ev.get("members"):
            return [str(s) for s in ev["members"]]
    return None
