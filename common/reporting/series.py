"""The time series a run keeps for its plots, beside the equity curve.

* ``premium``: per symbol, on a fixed event-time grid (``interval_s``), the mid premium of Upbit
  over Binance and its EWMA level (what entries deviate from), both in bps, as of each grid time;
* ``marks``: at every mark (``mark_interval_s``), each venue's balances valued in USD, the
  strategy's unhedged coin exposure (Upbit + Binance position, net) and its gross exposure.

Both are kept as compact arrays (a 12-hour run of 20 symbols at 5 s is 173 k premium rows) and
written to the run folder as ``premium.parquet`` and ``marks.parquet``.
"""

from __future__ import annotations

import math
import os
from array import array
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

#: the columns of ``marks.parquet`` after ``t_ns`` (all USD)
MARK_COLUMNS = ("upbit_krw_usd", "upbit_coins_usd", "binance_usdt_usd", "binance_coins_usd",
                "unhedged_usd", "gross_exposure_usd", "open_round_trips")


class SeriesRecorder:
    """Collects the premium grid and the marks of one run (plain arrays, no I/O)."""

    def __init__(self, interval_s: float = 5.0) -> None:
        if not (math.isfinite(interval_s) and interval_s > 0):
            raise ValueError(f"series interval must be > 0 s (got {interval_s})")
        self.step_ns = int(interval_s * 1e9)
        self._next_ns = -1
        self._sym: dict[str, tuple[array, array, array]] = {}
        self._marks: dict[str, array] = {c: array("d") for c in MARK_COLUMNS}
        self._mark_t = array("q")

    def sample_premiums(self, frames: dict, end_ns: int) -> None:
        """Sample every symbol's frame at each grid time up to ``end_ns`` (a batch's end).
        A frame exposes ``t`` (event times, index 0 the carried state), ``p_mid`` and ``level``
        (fractions). Grid times before a symbol's first finite premium are skipped for it."""
        if self._next_ns < 0:
            starts = [int(f.t[1]) for f in frames.values() if len(f) > 1]
            if not starts:
                return
            self._next_ns = (min(starts) // self.step_ns + 1) * self.step_ns
        if self._next_ns > end_ns:
            return
        grid = np.arange(self._next_ns, end_ns + 1, self.step_ns, dtype=np.int64)
        self._next_ns = int(grid[-1]) + self.step_ns
        for name, f in frames.items():
            idx = np.searchsorted(f.t, grid, side="right") - 1
            ok = idx >= 0
            if not ok.any():
                continue
            k = idx[ok]
            p = f.p_mid[k]
            lv = f.level[k]
            fin = np.isfinite(p)
            if not fin.any():
                continue
            t_arr, p_arr, l_arr = self._sym.setdefault(name, (array("q"), array("d"), array("d")))
            t_arr.extend(grid[ok][fin].tolist())
            p_arr.extend((p[fin] * 1e4).tolist())
            l_arr.extend((lv[fin] * 1e4).tolist())

    def mark(self, t_ns: int, values: dict[str, float]) -> None:
        """One mark: the ``MARK_COLUMNS`` values at event time ``t_ns``."""
        if self._mark_t and t_ns <= self._mark_t[-1]:
            return  # the final mark of ``finish`` may repeat the last grid mark
        self._mark_t.append(int(t_ns))
        for c in MARK_COLUMNS:
            self._marks[c].append(float(values[c]))

    def premium_table(self) -> pa.Table:
        names, ts, ps, ls = [], [], [], []
        for name in sorted(self._sym):
            t_arr, p_arr, l_arr = self._sym[name]
            names.extend([name] * len(t_arr))
            ts.append(np.frombuffer(t_arr, dtype=np.int64) if t_arr else np.zeros(0, np.int64))
            ps.append(np.frombuffer(p_arr, dtype=float) if p_arr else np.zeros(0))
            ls.append(np.frombuffer(l_arr, dtype=float) if l_arr else np.zeros(0))
        def cat(xs: list, dt) -> np.ndarray:
            return np.concatenate(xs) if xs else np.zeros(0, dt)

        return pa.table({"t_ns": pa.array(cat(ts, np.int64), pa.int64()),
                         "symbol": pa.array(names, pa.string()),
                         "premium_bps": pa.array(cat(ps, float), pa.float64()),
                         "level_bps": pa.array(cat(ls, float), pa.float64())})

    def marks_table(self) -> pa.Table:
        cols = {"t_ns": pa.array(np.frombuffer(self._mark_t, dtype=np.int64)
                                 if self._mark_t else np.zeros(0, np.int64), pa.int64())}
        for c in MARK_COLUMNS:
            a = self._marks[c]
            cols[c] = pa.array(np.frombuffer(a, dtype=float) if a else np.zeros(0), pa.float64())
        return pa.table(cols)

    def tables(self) -> dict[str, pa.Table]:
        """``{"premium": ..., "marks": ...}``: what the run folder's Parquet files hold."""
        return {"premium": self.premium_table(), "marks": self.marks_table()}


def write_series(run_dir: str | Path, tables: dict[str, pa.Table]) -> None:
    """``premium.parquet`` and ``marks.parquet`` into the run folder, atomically."""
    run_dir = Path(run_dir)
    for name, table in tables.items():
        tmp = run_dir / f"{name}.parquet.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, run_dir / f"{name}.parquet")


__all__ = ["MARK_COLUMNS", "SeriesRecorder", "write_series"]
