"""The data a sweep runs on: mock seeds, or replay paths read through ``pyarrow.fs`` (a local or
shared filesystem, or object storage such as ``s3://``), their event-time spans, the windows of
a trial, and the market source of one trial.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from common.engine.build import MarketSource, open_source
from common.marketdata.replay import DataSourceError
from common.settings import Settings

#: where a node keeps its copy of replay data read from object storage
CACHE_ENV = "KIMCHI_SWEEP_CACHE"


@dataclass(frozen=True, slots=True)
class DataUnit:
    """One independent stretch of market data: a mock seed, or one replay path."""

    kind: str  # mock | replay
    seed: int | None = None
    path: str | None = None
    duration_s: float | None = None  # mock: its length; replay: a cap (None: all of it)
    fingerprint: str = ""  # replay: sizes and times of its files (a changed file reruns)
    span_s: float = 0.0  # event seconds available (a capped replay: the cap)

    @property
    def label(self) -> str:
        return f"seed {self.seed}" if self.kind == "mock" else str(self.path)

    def identity(self) -> dict:
        if self.kind == "mock":
            return {"kind": "mock", "seed": self.seed, "duration_s": self.duration_s}
        return {"kind": "replay", "path": self.path, "duration_s": self.duration_s,
                "files": self.fingerprint}


@dataclass(frozen=True, slots=True)
class Window:
    """An event-time range of a data unit, in seconds from its first book: ``full`` (the whole
    unit), or the in-sample or out-of-sample window of walk-forward fold ``fold``."""

    role: str  # full | in_sample | out_of_sample
    fold: int
    start_s: float
    end_s: float

    @property
    def hours(self) -> float:
        return (self.end_s - self.start_s) / 3600.0


def is_uri(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _fs(path: str) -> tuple[pafs.FileSystem, str]:
    if is_uri(path):
        try:
            return pafs.FileSystem.from_uri(path)
        except Exception as e:  # pyarrow raises several types for a bad or unsupported URI
            raise DataSourceError(f"{path}: cannot open its filesystem ({_one_line(e)})") from None
    local = path.removeprefix("file://")
    return pafs.LocalFileSystem(), str(Path(local).expanduser().resolve())


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def replay_file_infos(path: str) -> list[pafs.FileInfo]:
    """The Parquet files of a replay path through ``pyarrow.fs``: the file, or a directory's
    ``part-*.parquet`` in name order. Raises DataSourceError (one line) if it cannot be read."""
    fs, p = _fs(path)
    try:
        info = fs.get_file_info(p)
        if info.type == pafs.FileType.NotFound:
            raise DataSourceError(f"replay path {path} does not exist")
        if info.type == pafs.FileType.Directory:
            files = [f for f in fs.get_file_info(pafs.FileSelector(p, recursive=False))
                     if f.type == pafs.FileType.File and f.base_name.startswith("part-")
                     and f.base_name.endswith(".parquet")]
            files.sort(key=lambda f: f.base_name)
            if not files:
                raise DataSourceError(f"replay directory {path} has no part-*.parquet files")
        else:
            files = [info]
        for f in files:
            with fs.open_input_file(f.path) as fh:  # readable, not just listed
                fh.read(4)
    except DataSourceError:
        raise
    except Exception as e:  # permissions, network, credentials: one line either way
        raise DataSourceError(f"replay path {path} cannot be read ({_one_line(e)})") from None
    return files


def fingerprint(path: str) -> str:
    infos = replay_file_infos(path)
    text = json.dumps([(f.base_name, f.size, f.mtime_ns) for f in infos])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def replay_span_s(path: str) -> float:
    """Event seconds from the replay's first to its last book (rows are in ``recv_ns`` order)."""
    fs, _ = _fs(path)
    infos = replay_file_infos(path)
    try:
        with fs.open_input_file(infos[0].path) as fh:
            first = _recv_edge(pq.ParquetFile(fh), first=True)
        with fs.open_input_file(infos[-1].path) as fh:
            last = _recv_edge(pq.ParquetFile(fh), first=False)
    except DataSourceError:
        raise
    except Exception as e:
        raise DataSourceError(f"replay path {path}: cannot read recv_ns ({_one_line(e)})") from None
    return max(0.0, (last - first) / 1e9)


def _recv_edge(pf: pq.ParquetFile, first: bool) -> int:
    groups = range(pf.num_row_groups) if first else range(pf.num_row_groups - 1, -1, -1)
    for g in groups:
        col = pf.read_row_group(g, columns=["recv_ns"]).column(0).drop_null()
        if len(col):
            return int(col[0].as_py() if first else col[-1].as_py())
    raise DataSourceError("no rows with recv_ns")


def local_path(path: str) -> str:
    """A local path the engine can open for ``path``: itself when local, else a copy in this
    node's cache (one per fingerprint, made once and atomically)."""
    if not is_uri(path):
        return path.removeprefix("file://")
    fs, p = _fs(path)
    infos = replay_file_infos(path)
    root = Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "kimchi-sweep-data")
    target = root / fingerprint(path)
    single = len(infos) == 1 and fs.get_file_info(p).type == pafs.FileType.File
    final = target / infos[0].base_name if single else target / "data"
    if final.exists():
        return str(final)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="staging-", dir=root))
    try:
        dest = tmp / "data"
        dest.mkdir()
        for f in infos:
            pafs.copy_files(f.path, str(dest / f.base_name), source_filesystem=fs,
                            destination_filesystem=pafs.LocalFileSystem())
        target.mkdir(exist_ok=True)
        if single:
            os.replace(dest / infos[0].base_name, final)
        else:
            try:
                os.replace(dest, final)
            except OSError:
                if not final.exists():  # another trial of this node finished the copy first
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(final)


def window_batches(gen: Iterator, start_s: float, end_s: float) -> Iterator:
    """The rows of a source's batches with ``start_s <= recv - first recv < end_s`` (seconds
    from the stream's first book, as ``--run-duration-seconds`` counts them)."""
    t0 = None
    for batch, rejects in gen:
        if len(batch) == 0:
            continue
        if t0 is None:
            t0 = int(batch.recv_ns[0])
        lo = t0 + int(round(start_s * 1e9))
        hi = t0 + int(round(end_s * 1e9))
        recv = batch.recv_ns
        if recv[-1] < lo:
            continue
        a = int(np.searchsorted(recv, lo, side="left"))
        b = int(np.searchsorted(recv, hi, side="left"))
        if b > a:
            yield (batch if (a == 0 and b == len(batch)) else batch.take(np.arange(a, b))), \
                rejects if a == 0 else {}
        if b < len(batch):
            return


def open_trial_source(unit: DataUnit, window: Window, settings: Settings) -> MarketSource:
    """The market source of one trial: the unit's data, cut to the window. A ``full`` window is
    exactly what ``run.py --data-source <kind> ... --run-duration-seconds <duration>`` reads."""
    if unit.kind == "mock":
        if window.role == "full":
            return open_source("mock", settings, None, unit.duration_s)
        # a little more than the window's end, then cut by receive time
        src = open_source("mock", settings, None, window.end_s + 5.0)
    else:
        path = local_path(unit.path or "")
        if window.role == "full":
            return open_source("replay", settings, path, unit.duration_s)
        src = open_source("replay", settings, path, None)
    length = window.end_s - window.start_s
    return replace(src, _batches=window_batches(src.batches(), window.start_s, window.end_s),
                   duration_s=length,
                   description=f"{src.description}, window [{window.start_s:g}, "
                               f"{window.end_s:g}) s",
                   origin={**src.origin, "window_s": [window.start_s, window.end_s]})
