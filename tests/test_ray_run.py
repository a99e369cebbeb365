"""run.py with the Ray engine as a user runs it: Ctrl-C stops cleanly, metrics are exported, and
cluster.yaml passes Ray's own validation."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.ray


def start_run(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen, Path]:
    err = tmp_path / "stderr.txt"
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    p = subprocess.Popen(
        [sys.executable, "run.py", "--engine", "ray", "--symbols", "BTC,ETH,XRP",
         "--run-duration-seconds", "36000", "--speed", "200", "--namespace", "test-run",
         "--kpi-output-path", str(tmp_path / "kpi.json"), "--log-dir", str(tmp_path / "logs"),
         *extra],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err.open("w"), text=True)
    return p, err


def wait_for(pred, what: str, timeout: float = 240.0, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def running(p: subprocess.Popen, err: Path):
    def check():
        if p.poll() is not None:
            raise AssertionError(f"run.py ended early ({p.returncode}): {err.read_text()[-800:]}")
        # the feed is running and reporting progress: in the run's log (the captured stderr is
        # not a terminal, so progress lines stay off it)
        logs = err.parent / "logs"
        return any("event time" in f.read_text() for f in logs.glob("*/run.log"))
    return check


def assert_outputs_complete(tmp_path: Path, kpi: dict) -> None:
    jsonl = Path(kpi["trade_log_path"])
    rows = [json.loads(x) for x in jsonl.read_text().splitlines() if x.strip()]
    table = pq.read_table(kpi["trade_log_parquet_path"])
    assert table.num_rows == len(rows) == kpi["trades_executed"]
    assert len({r["trade_id"] for r in rows}) == len(rows)


def assert_no_ray_left(procs: list[psutil.Process]) -> None:
    gone, alive = psutil.wait_procs(procs, timeout=60)
    alive = [x for x in alive if x.is_running() and x.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"left running: {[(x.pid, x.name()) for x in alive]}"


@pytest.mark.slow
def test_sigint_stops_cleanly(tmp_path):
    p, err = start_run(tmp_path)
    try:
        wait_for(running(p, err), "the run to start feeding")
        procs = psutil.Process(p.pid).children(recursive=True)
        names = {x.name() for x in procs}
        assert any("raylet" in n for n in names) and any("gcs_server" in n for n in names)
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=240)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, err.read_text()[-2000:]
    assert "Traceback" not in err.read_text()
    assert "KPI summary" in out
    kpi = json.loads((tmp_path / "kpi.json").read_text())
    assert kpi["interrupted"] is True and kpi["engine"] == "ray"
    assert 0 < kpi["events_processed"]
    assert_outputs_complete(tmp_path, kpi)
    assert_no_ray_left(procs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: who may listen beyond loopback: Ray's own processes, which bind every interface in Ray 2.60
#: whatever the node address (their token authentication is what guards them; README,
#: "What binds where"). A listener of any other kind on a routable or wildcard address fails.
RAY_ROLES = {"gcs_server", "raylet", "driver core worker", "worker", "dashboard",
             "dashboard agent", "runtime env agent", "monitor", "log monitor"}


def role_of(proc: psutil.Process, driver_pid: int) -> str:
    cmd = " ".join(proc.cmdline())
    name = proc.name()
    if proc.pid == driver_pid:
        return "driver core worker"
    for key, role in (("gcs_server", "gcs_server"), ("raylet", "raylet"),
                      ("dashboard/agent.py", "dashboard agent"),
                      ("DashboardAgent", "dashboard agent"),
                      ("runtime_env/agent", "runtime env agent"),
                      ("RuntimeEnvAgent", "runtime env agent"),
                      ("dashboard/dashboard.py", "dashboard"), ("log_monitor", "log monitor"),
                      ("autoscaler/_private/monitor.py", "monitor"), ("monitor.py", "monitor")):
        if key in cmd or key in name:
            return role
    if name.startswith("ray::") or "default_worker.py" in cmd:
        return "worker"
    return f"other: {name} {cmd[:80]}"


def listeners(driver_pid: int) -> set[tuple[str, str, int]]:
    """(role, address, port) of every listening TCP socket of the run's processes."""
    root = psutil.Process(driver_pid)
    out = set()
    for proc in [root, *root.children(recursive=True)]:
        try:
            conns = proc.net_connections(kind="inet")
            role = role_of(proc, driver_pid)
        except psutil.Error:
            continue  # a worker that just ended
        out |= {(role, c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN}
    return out


def assert_ports_as_documented(driver_pid: int) -> None:
    """The dashboard is on 127.0.0.1 only; whatever else listens beyond loopback is one of
    Ray's own processes; and both the dashboard's API and the GCS refuse a client without the
    cluster's token."""
    socks = listeners(driver_pid)
    loopback = {"127.0.0.1", "::1"}
    assert {(a, p) for r, a, p in socks if p == 8265} == {("127.0.0.1", 8265)}
    wide = {r for r, a, _ in socks if a not in loopback}
    assert wide and wide <= RAY_ROLES, sorted(wide - RAY_ROLES)
    # the dashboard's API: 401 without the token, 200 with it
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen("http://127.0.0.1:8265/api/jobs/", timeout=10)
    assert e.value.code == 401
    token = (Path.home() / ".ray" / "auth_token").read_text().strip()
    req = urllib.request.Request("http://127.0.0.1:8265/api/jobs/",
                                 headers={"Authorization": f"Bearer {token}"})
    assert urllib.request.urlopen(req, timeout=10).status == 200
    # the GCS: an RPC without the token is refused as unauthenticated
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    (gcs_port,) = {p for r, a, p in socks if r == "gcs_server"}
    with grpc.insecure_channel(f"127.0.0.1:{gcs_port}") as ch:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(ch)
        with pytest.raises(grpc.RpcError) as rpc:
            stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=10)
    assert rpc.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.slow
def test_metrics_are_exported_with_symbol_tags(tmp_path):
    port = free_port()
    p, err = start_run(tmp_path, "--monitoring-enabled", "--metrics-export-port", str(port))
    found: list[str] = []

    def scrape():
        if p.poll() is not None:
            raise AssertionError(f"run.py ended early ({p.returncode}): {err.read_text()[-800:]}")
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
        except OSError:
            return False
        lines = [x for x in text.decode().splitlines() if x.startswith("ray_arb_")]
        found[:] = lines
        return {x.split("{")[0] for x in lines if 'symbol="' in x} >= {
            "ray_arb_events_total", "ray_arb_premium_bps"}

    try:
        wait_for(scrape, "ray_arb_* metrics with a symbol tag", every=2.0)
        procs = psutil.Process(p.pid).children(recursive=True)
        assert_ports_as_documented(p.pid)
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=240)
    finally:
        if p.poll() is None:
            p.kill()
    assert any('symbol="BTC"' in x and 'exchange="upbit"' in x for x in found)
    assert p.returncode == 143, err.read_text()[-2000:]  # SIGTERM: 128 + 15, as locally
    assert "Ray dashboard: http://127.0.0.1:" in out
    assert f"http://127.0.0.1:{port}/metrics" in out
    kpi = json.loads((tmp_path / "kpi.json").read_text())
    assert kpi["interrupted"] is True and kpi["stopped_by"] == "SIGTERM"
    assert_outputs_complete(tmp_path, kpi)
    assert_no_ray_left(procs)


def test_cluster_yaml_passes_ray_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    assert config["provider"]["type"] == "local"
    prepared = prepare_config(config)
    validate_config(prepared)
    starts = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in starts and "RAY_AUTH_MODE=token" in starts
    assert any("pip install" in c and "-e ~/kimchi-paper" in c for c in config["setup_commands"])
