"""The Ray engine on one node: equal to the local engine, restores killed symbol actors, and
refuses a second run in the same namespace."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import ray

from actors.engine import RayEngineError, RayOptions, run_ray
from common.engine.build import open_source
from common.engine.local import run_local
from common.marketdata.mock import MockConfig, MockMarket
from common.marketdata.replay import write_replay
from common.settings import Settings
from tests.ray_helpers import assert_same_run, rows_of

pytestmark = pytest.mark.ray

NS = f"test-ray-engine-{uuid.uuid4().hex[:8]}"
SYMBOLS = "BTC,ETH,XRP,SOL"
REAL_BOOKS = (Path(__file__).resolve().parents[2] / "shared" / "data" / "exchange-recordings"
              / "real_books.parquet")


@pytest.fixture(scope="module", autouse=True)
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, namespace=NS)
    yield
    ray.shutdown()


def settings(**extra) -> Settings:
    # small batches and a frequent snapshot so a short run crosses many batch and snapshot
    # boundaries; no entry margin so that it trades (entries, exits, hedges)
    base = {"symbols": SYMBOLS, "batch_rows": 3000, "snapshot_every_chunks": 3,
            "entry_margin_bps": 0.0}
    base.update(extra)
    return Settings.from_env(overrides=base)


def both(s: Settings, tmp_path: Path, kind: str, path: str | None, seconds: float | None,
         opts: RayOptions | None = None):
    top_n = len(s.symbols) or s.topn_size
    local = run_local(s, open_source(kind, s, path, seconds), "local", tmp_path / "local", None,
                      top_n, progress=False)
    ray_run = run_ray(s, open_source(kind, s, path, seconds), "ray", tmp_path / "ray",
                      tmp_path / "ray.json", top_n,
                      opts or RayOptions(namespace=NS, progress=False))
    return local, ray_run


def test_mock_market_equals_local(tmp_path):
    local, r = both(settings(), tmp_path, "mock", None, 1800)
    assert local["trades_executed"] > 0
    assert r.report["engine"] == "ray" and (tmp_path / "ray.json").exists()
    assert_same_run(local, r.report)
    assert r.calls["batches"] > 3 * 3  # the run crossed several snapshots
    # the plot series of the run folder too (premium grid, balances and exposure at marks)
    import pyarrow.parquet as pq

    for name in ("premium.parquet", "marks.parquet", "equity.parquet"):
        a = pq.read_table(tmp_path / "local" / "local" / name)
        b = pq.read_table(tmp_path / "ray" / "ray" / name)
        assert a.num_rows > 0 and a.equals(b), name


def test_replay_of_mock_batches_equals_local(tmp_path):
    s = settings()
    market = MockMarket(MockConfig(seed=11, symbols=tuple(SYMBOLS.split(","))))
    path = tmp_path / "books.parquet"
    write_replay(path, market.batches(900, batch_rows=5000))
    local, r = both(s, tmp_path, "replay", str(path), None)
    assert local["events_processed"] > 0
    assert_same_run(local, r.report)


def test_recorded_books_replay_equals_local(tmp_path):
    if not REAL_BOOKS.exists():
        pytest.skip(f"{REAL_BOOKS} is not on this machine")
    s = Settings.from_env(overrides={"batch_rows": 500, "snapshot_every_chunks": 2})
    local, r = both(s, tmp_path, "replay", str(REAL_BOOKS), None)
    assert local["events_processed"] > 0
    assert_same_run(local, r.report)


def _killer(kills: dict[int, int]):
    """Kill symbol-BTC (letting Ray restart it) after the given batches, n times in a row."""
    done = []

    def on_batch(k: int) -> None:
        for _ in range(kills.get(k, 0)):
            ray.kill(ray.get_actor("symbol-BTC", namespace=NS), no_restart=False)
            done.append(k)

    return on_batch, done


def test_killed_symbol_actor_loses_and_doubles_no_row(tmp_path):
    s = settings()
    # once mid-run, then twice in a row, then right at a snapshot boundary (every 3 batches)
    on_batch, done = _killer({4: 1, 9: 2, 11: 1})
    local, r = both(s, tmp_path, "mock", None, 1800,
                    RayOptions(namespace=NS, progress=False, on_batch=on_batch))
    assert done == [4, 9, 9, 11]
    assert r.calls["recoveries"] >= 1
    ids = [row["trade_id"] for row in rows_of(r.report)]
    assert len(ids) == len(set(ids))
    assert_same_run(local, r.report)


def test_second_run_in_same_namespace_is_refused(tmp_path):
    s = settings()
    seen = {}

    def on_started(handles):
        # a second run while this one is up: refused with a message naming the first
        with pytest.raises(RayEngineError, match="already has run first") as e:
            run_ray(s, open_source("mock", s, None, 60), "second", tmp_path / "b", None, 4,
                    RayOptions(namespace=NS, progress=False))
        seen["msg"] = str(e.value)

    r = run_ray(s, open_source("mock", s, None, 300), "first", tmp_path / "a", None, 4,
                RayOptions(namespace=NS, progress=False, on_started=on_started))
    assert "namespace" in seen["msg"] and "\n" not in seen["msg"]
    assert r.report["events_processed"] > 0
    # the first run's actors are gone: the namespace is free again
    with pytest.raises(ValueError):
        ray.get_actor("coordinator", namespace=NS)


def test_kill_during_snapshot_with_the_port_driven_here(tmp_path):
    """The coordinator's logic run in this process over RayExecutionPort, so that symbol-BTC can
    be killed at exact points: right before a snapshot is taken, and again before the next
    collect after the restore."""
    from actors.engine import split_rows
    from actors.port import RayExecutionPort
    from actors.symbol import SymbolActor
    from common.engine.build import (
        book_checks,
        coordinator_config,
        fee_schedule,
        fill_model_config,
        validate_batch,
    )
    from common.engine.coordinator import CoordinatorCore
    from common.reporting.kpi import KpiAccumulator

    s = settings()
    local = run_local(s, open_source("mock", s, None, 1800), "local", tmp_path / "local", None, 4,
                      progress=False)
    src = open_source("mock", s, None, 1800)
    ids = {x: src.symtab.id_of(x) for x in src.symbols}
    ns = NS + "-port"
    handles = {x: SymbolActor.options(name=f"symbol-{x}", namespace=ns, num_cpus=0.01,
                                      max_restarts=-1, max_task_retries=0)
               .remote(x, fill_model_config(s), fee_schedule(s), s.seed) for x in src.symbols}

    def kill_btc():
        ray.kill(handles["BTC"], no_restart=False)

    class KillingPort(RayExecutionPort):
        kill_at_snapshot = {2, 3}
        kill_next_collect = False

        def snapshot_all(self):
            if self.snapshots in self.kill_at_snapshot:
                kill_btc()
                KillingPort.kill_next_collect = True
            super().snapshot_all()

        def collect(self, symbols, up_to_ns):
            if self.kill_next_collect and "BTC" in symbols:
                KillingPort.kill_next_collect = False
                kill_btc()
            return super().collect(symbols, up_to_ns)

    port = KillingPort(handles)
    port.start()
    kpi = KpiAccumulator()
    core = CoordinatorCore(coordinator_config(s), src.symbols, ids, src.symtab.fx_id, port, kpi,
                           session_id="port")
    validator, depth = book_checks(s)
    rows = []
    try:
        for k, (batch, pre) in enumerate(x for x in src.batches() if len(x[0])):
            vb = validate_batch(validator, batch, pre, depth)
            kpi.add_events(vb.rows_in, vb.rejected)
            port.ingest(ray.put(split_rows(vb, ids, src.symtab.fx_id)), vb.top.start_ns)
            rows += core.process_batch(vb.top)
            if (k + 1) % s.snapshot_every_chunks == 0:
                port.snapshot_all()
        rows += core.finish()
        port.check()
    finally:
        for h in handles.values():
            ray.kill(h, no_restart=True)
    assert port.snapshots >= 4 and port.recoveries >= 2
    ref_rows = rows_of(local)
    assert [r["trade_id"] for r in rows] == [r["trade_id"] for r in ref_rows]
    strip = {"session_id", "tick_to_fill_ms"}
    assert ([{k: v for k, v in r.items() if k not in strip} for r in rows]
            == [{k: v for k, v in r.items() if k not in strip} for r in ref_rows])


def test_reject_counts_without_rows_are_counted_like_local(tmp_path):
    """Batches that carry only reject counts (frames dropped before any book, the end of a
    live run) reach the KPIs on Ray as they do locally, also between batches with rows."""
    import numpy as np

    from common.engine.build import MarketSource

    s = settings(symbols="BTC,ETH")
    market = MockMarket(MockConfig(seed=5, symbols=("BTC", "ETH")))
    batches = list(market.batches(120.0, batch_rows=2000))
    empty = batches[0].take(np.zeros(0, dtype=np.int64))
    items = ([(batches[0], {}), (empty, {"malformed": 2})] + [(b, {}) for b in batches[1:]]
             + [(empty, {"malformed": 3, "non_finite": 1})])

    def source():
        return MarketSource("real", ["BTC", "ETH"], market.symtab, iter(list(items)), "t", None)

    local = run_local(s, source(), "local", tmp_path / "l", None, 2, progress=False)
    r = run_ray(s, source(), "ray", tmp_path / "r", None, 2,
                RayOptions(namespace=NS, progress=False))
    rows = sum(len(b) for b in batches)
    for rep in (local, r.report):
        assert rep["events_processed"] == rows + 6
        assert rep["events_rejected_by_reason"]["malformed"] == 5
    assert_same_run(local, r.report)
