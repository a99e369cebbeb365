"""Pacing: deliver a replay or mock stream at X event-seconds per wall second.

Batches are cut into slices of at most ``slice_s`` event-seconds and each slice waits until its
wall time has come. Results do not depend on pacing: every signal and decision is independent of
where the stream is cut into batches.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np


def paced_batches(batches, speed: float, slice_s: float = 0.25, clock=time.monotonic,
                  sleep=time.sleep):
    """Yield (batch, rejects) slices no faster than ``speed`` event-seconds per wall second."""
    t0_wall = None
    t0_event = None
    step = int(slice_s * 1e9)
    for batch, rejects in batches:
        n = len(batch)
        if n == 0:
            yield batch, rejects
            continue
        recv = batch.recv_ns
        start = 0
        first = True
        while start < n:
            end = int(np.searchsorted(recv, int(recv[start]) + step, side="left"))
            end = max(end, start + 1)
            piece = batch if (start == 0 and end == n) else batch.take(np.arange(start, end))
            if t0_wall is None:
                t0_wall, t0_event = clock(), int(recv[start])
            due = t0_wall + (int(recv[start]) - t0_event) / 1e9 / speed
            wait = due - clock()
            if wait > 0:
                sleep(wait)
            yield piece, (rejects if first else {})
            first = False
            start = end


def paced(source, speed: float):
    """The same MarketSource, paced."""
    return dataclasses.replace(source, _batches=paced_batches(source.batches(), speed),
                               description=source.description + f", paced at {speed:g}x")
