"""Shared helpers of the Ray tests: comparable KPI reports and trade logs, a two-node cluster."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from common.reporting.trade_log import read_trade_log

#: DESIGN's exempt fields, plus the engine's own name (the one thing meant to differ)
EXEMPT = {"run_id", "session_id", "wall_seconds", "events_per_second", "tick_to_fill_ms", "engine"}
EXEMPT_SUFFIX = ("_wall", "_path", "_dir")


def stable(o):
    if isinstance(o, dict):
        return {k: stable(v) for k, v in sorted(o.items())
                if k not in EXEMPT and not k.endswith(EXEMPT_SUFFIX)}
    if isinstance(o, list):
        return [stable(v) for v in o]
    return o


def rows_of(report: dict) -> list[dict]:
    return read_trade_log(report["trade_log_path"])


def account_gap(rep: dict) -> float:
    """How far the account identity is from exact, relative to the account's start value:
    end - start = total PnL + FX translation + inventory revaluation."""
    gap = (rep["account_value_end_usd"] - rep["account_value_start_usd"] - rep["total_pnl_usd"]
           - rep["fx_translation_usd"] - rep["inventory_mtm_usd"])
    return abs(gap) / max(abs(rep["account_value_start_usd"]), 1.0)


def assert_same_run(a: dict, b: dict) -> None:
    """Identical trade rows and KPIs but the exempt fields; both accounts add up exactly."""
    assert account_gap(a) < 1e-9 and account_gap(b) < 1e-9
    ka, kb = stable(a), stable(b)
    assert sorted(ka) == sorted(kb)
    diff = [k for k in ka if ka[k] != kb[k]]
    assert not diff, f"KPI fields differ: {diff}"
    ra, rb = rows_of(a), rows_of(b)
    assert [r["trade_id"] for r in ra] == [r["trade_id"] for r in rb]
    assert stable(ra) == stable(rb)


@contextmanager
def two_node_cluster(namespace: str) -> Iterator[object]:
    """A head and a worker node of one CPU each on this machine, this process connected to
    it in ``namespace``; both shut down afterwards."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace=namespace)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
