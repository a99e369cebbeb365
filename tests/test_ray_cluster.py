"""The Ray engine on a two-node cluster: symbol actors on both nodes, results as on one node."""

from __future__ import annotations

import uuid

import pytest
import ray

from actors.engine import RayOptions, run_ray
from common.engine.build import open_source
from common.engine.local import run_local
from common.settings import Settings
from tests.ray_helpers import assert_same_run, two_node_cluster

pytestmark = [pytest.mark.ray, pytest.mark.slow]

NS = f"test-ray-cluster-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def two_nodes():
    with two_node_cluster(NS) as cluster:
        yield cluster


def test_symbol_actors_span_both_nodes_with_the_same_results(two_nodes, tmp_path):
    s = Settings.from_env(overrides={"symbols": "BTC,ETH,XRP,SOL,DOGE,ADA", "batch_rows": 4000,
                                     "snapshot_every_chunks": 4, "entry_margin_bps": 0.0})
    placed = {}

    def on_started(handles):
        syms = {k: h for k, h in handles.items() if k.startswith("symbol-")}
        placed.update(zip(syms, ray.get([h.where.remote() for h in syms.values()]), strict=True))

    local = run_local(s, open_source("mock", s, None, 1200), "local", tmp_path / "local", None, 6,
                      progress=False)
    r = run_ray(s, open_source("mock", s, None, 1200), "ray", tmp_path / "ray", None, 6,
                RayOptions(namespace=NS, progress=False, on_started=on_started))
    nodes = {p["node_id"] for p in placed.values()}
    assert len(ray.nodes()) == 2
    assert len(nodes) == 2, f"symbol actors all on one node: {placed}"
    assert local["trades_executed"] > 0
    assert_same_run(local, r.report)
