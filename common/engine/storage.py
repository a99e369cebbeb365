"""Where a run writes, checked before it starts: a directory it cannot write, or a disk about to
be full, ends the run at once with one line instead of a traceback hours later."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

#: below this much free space a run does not start (its logs and trade log would not fit)
MIN_FREE_MB = 64


def write_atomically(path: str | Path, data: bytes | str, durable: bool = False) -> Path:
    """Write ``data`` to ``path`` through a temporary file beside it and a rename: a reader, or
    a crash, sees the old file or the new one, never half of one. ``durable``: fsync the data
    before the rename (a checkpoint must survive a power cut, not only a killed process)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


class StorageError(OSError):
    """A directory a run cannot use (one line for the user)."""


def check_writable_dir(path: str | Path, what: str, min_free_mb: float = MIN_FREE_MB) -> Path:
    """Create ``path`` if needed, write and remove a probe file in it, and require
    ``min_free_mb`` free on its disk. ``what`` names it for the message (e.g. ``--log-dir``).
    Returns the directory; raises ``StorageError``."""
    d = Path(path)
    if d.exists() and not d.is_dir():
        raise StorageError(f"{what} {path}: is a file, not a directory")
    try:
        d.mkdir(parents=True, exist_ok=True)
        probe = d / f".write-probe-{os.getpid()}"
        with open(probe, "wb") as f:
            f.write(b"ok")
        probe.unlink()
        free_mb = shutil.disk_usage(d).free / 2**20
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise StorageError(f"{what} {path}: cannot write there ({reason})") from None
    if free_mb < min_free_mb:
        raise StorageError(f"{what} {path}: only {free_mb:.0f} MB free on its disk "
                           f"(a run needs at least {min_free_mb:g} MB)")
    return d


__all__ = ["MIN_FREE_MB", "StorageError", "check_writable_dir", "write_atomically"]
