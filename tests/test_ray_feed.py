"""The Ray driver's read-ahead feed: merges what piled up, loses and reorders nothing."""

from __future__ import annotations

import time

import numpy as np
import pytest

from actors.engine import coalesced
from common.marketdata.mock import MockConfig, MockMarket
from common.marketdata.replay import DataSourceError

pytestmark = pytest.mark.ray


class _NoStop:
    signal = None


def slices():
    market = MockMarket(MockConfig(seed=3, symbols=("BTC", "ETH")))
    return list(market.batches(120, batch_rows=50))


def test_merges_what_piled_up_without_losing_or_reordering_rows():
    parts = slices()
    src = ((b, {"crossed": 1}) for b in parts)
    out = []
    for batch, rejects in coalesced(src, 400, _NoStop()):
        out.append((batch, rejects))
        time.sleep(0.05)  # a slow consumer: the source gets ahead and slices pile up
    assert sum(len(b) for b, _ in out) == sum(len(b) for b in parts)
    assert all(len(b) <= 400 for b, _ in out)
    assert len(out) < len(parts)  # something was merged
    assert sum(r["crossed"] for _, r in out) == len(parts)
    got = np.concatenate([b.recv_ns for b, _ in out])
    assert np.array_equal(got, np.concatenate([b.recv_ns for b in parts]))
    got_px = np.concatenate([b.bid_px for b, _ in out])
    # (bad books carry NaN prices: NaN equals NaN here)
    assert np.array_equal(got_px, np.concatenate([b.bid_px for b in parts]), equal_nan=True)


def test_a_source_error_reaches_the_consumer():
    parts = slices()

    def bad():
        yield parts[0], {}
        raise DataSourceError("part-00001.parquet: not a Parquet file")

    with pytest.raises(DataSourceError, match="not a Parquet file"):
        for _ in coalesced(bad(), 400, _NoStop()):
            pass


def test_stops_when_asked():
    class Stop:
        signal = None

    stop = Stop()
    n = 0
    for _ in coalesced(((b, {}) for b in slices()), 50, stop):
        n += 1
        stop.signal = "SIGINT"
    assert n == 1


def test_a_stopped_feed_closes_its_source():
    closed = []

    def source():
        try:
            for b in slices():
                yield b, {}
        finally:
            closed.append(True)

    class Stop:
        signal = None

    stop = Stop()
    for _ in coalesced(source(), 50, stop):
        stop.signal = "SIGTERM"
    assert closed == [True]
