"""How market data and calls reach the symbol actors: one shared FeedPart per batch whose row
indices equal the local engine's, operations queued and sent in one call per need, and snapshots
that leave the batch out and get it back on restore."""

from __future__ import annotations

import time

import numpy as np
import pytest
import ray

from actors.engine import split_rows
from actors.port import RayExecutionPort
from actors.symbol import (
    LAST_PART,
    OP_COLLECT,
    OP_INGEST,
    OP_SNAPSHOT,
    OP_SUBMIT,
    SymbolActor,
    SymbolExecutorShell,
)
from common.engine.build import validate_batch
from common.execution.executor import PaperExecutor
from common.fill.models import FillModelConfig
from common.marketdata.mock import MockConfig, MockMarket
from common.marketdata.validate import BookValidator
from common.portfolio.state import FeeSchedule
from common.types import BINANCE, UPBIT, Trade

SYMBOLS = ("BTC", "ETH", "XRP")
MS = 1_000_000


def validated(seconds: float = 240, batch_rows: int = 500, quiet: str | None = None):
    """Validated mock batches; ``quiet``: a symbol whose books (and the FX book) are left out of
    two batches in three, as live batches of a few books leave most symbols without news."""
    market = MockMarket(MockConfig(seed=5, symbols=SYMBOLS, bad_book_prob=0.02))
    validator = BookValidator()
    batches = list(market.batches(seconds, batch_rows))
    if quiet is not None:
        drop = [market.symtab.id_of(quiet), market.symtab.fx_id]
        batches = [b if k % 3 == 0 else b.take(np.flatnonzero(~np.isin(b.sym, drop)))
                   for k, b in enumerate(batches)]
    out = [validate_batch(validator, b, {}) for b in batches]
    ids = {s: market.symtab.id_of(s) for s in SYMBOLS}
    return out, ids, market.symtab.fx_id


def local_rows(vb, sid: int, fx_id: int) -> np.ndarray:
    """An executor's candidate rows, unsplit: its symbol's valid rows and the valid FX rows (the
    reference executor below picks its venues' and the FX rows out of them itself)."""
    return np.concatenate((vb.valid_rows[vb.top.rows_of(sid)], vb.valid_rows[vb.top.rows_of(fx_id)]))


def trade(symbol: str, k: int, t: int) -> Trade:
    """A leg pair at decision time ``t``: buy Binance (arrives after 120 ms), sell Upbit (30 ms);
    limits wide enough to fill against whatever book is there."""
    return Trade(f"{symbol}-E-{k}", symbol, "entry", f"{symbol}-RT-{k}", "binance", "upbit",
                 0.01, 1.0, 1.0, 1e12, 1e-12, t, t + 120 * MS, t + 30 * MS)


def script(vbs, ids, fx_id, symbol: str):
    """The operations a coordinator might send one symbol actor over the run: every batch, and
    in some batches a trade decided mid-batch and collected at its settlement."""
    steps = []
    for k, vb in enumerate(vbs):
        part = split_rows(vb, ids, fx_id)
        steps.append(((OP_INGEST, vb.top.start_ns), part))
        if k % 2 == 1 and len(vb.top):
            t = int(vb.top.recv_ns[len(vb.top) // 2])
            steps.append(((OP_SUBMIT, [trade(symbol, k, t)]), None))
            steps.append(((OP_COLLECT, t + 250 * MS), None))
    return steps


def test_each_symbol_gets_its_rows_of_one_shared_batch_split_by_venue():
    vbs, ids, fx_id = validated()
    for vb in vbs:
        part = split_rows(vb, ids, fx_id)
        assert part.batch is vb.batch  # one batch for every symbol: indices, no copies
        b, v = vb.batch, vb.valid_rows
        fx = v[(b.sym[v] == fx_id) & (b.venue[v] == UPBIT)]
        assert fx.size
        for s, sid in ids.items():
            up, bn, fx_rows = part.rows_for(s)
            np.testing.assert_array_equal(up, v[(b.sym[v] == sid) & (b.venue[v] == UPBIT)])
            np.testing.assert_array_equal(bn, v[(b.sym[v] == sid) & (b.venue[v] == BINANCE)])
            np.testing.assert_array_equal(fx_rows, fx)


@pytest.mark.parametrize("quiet", [None, "BTC"])
def test_shell_fills_like_a_local_executor_and_resumes_from_a_snapshot_without_its_batch(quiet):
    """Also when most batches hold nothing for the symbol (its executor skips them): the
    snapshot taken after such a batch still leaves exactly that batch out."""
    vbs, ids, fx_id = validated(batch_rows=60 if quiet else 500, quiet=quiet)
    cfg, fees = FillModelConfig(), FeeSchedule()
    steps = script(vbs, ids, fx_id, "BTC")
    assert sum(op[0] == OP_COLLECT for op, _ in steps) >= 3

    # the reference: a PaperExecutor fed as the local engine feeds it
    ref = PaperExecutor("BTC", cfg, fees, seed=7)
    expected = []
    for op, part in steps:
        if op[0] == OP_INGEST:
            vb = next(v for v in vbs if v.batch is part.batch)
            ref.ingest(vb.batch, op[1], local_rows(vb, ids["BTC"], fx_id))
        elif op[0] == OP_SUBMIT:
            ref.submit(op[1])
        else:
            expected.append(repr(ref.collect(op[1])))

    a = SymbolExecutorShell("BTC", cfg, fees, seed=7)
    a.start()
    got, snap, snap_part, rest = [], None, None, None
    seq, last_part = 0, None
    for i, (op, part) in enumerate(steps):
        seq += 1
        out = a.run(seq, [op], *([part] if part is not None else []))
        last_part = part if part is not None else last_part
        if op[0] == OP_COLLECT:
            got.append(repr(out))
        quiet_here = part is not None and not any(r.size for r in part.rows_for("BTC"))
        if (snap is None and i >= len(steps) // 2 and op[0] == OP_INGEST
                and (quiet_here or not quiet)):
            seq += 1
            snap = a.run(seq, [(OP_SNAPSHOT,)])
            snap_part, rest = last_part, steps[i + 1 :]
    assert got == expected

    # the snapshot leaves its batch out; restored with that part, a fresh shell carries on alike
    assert snap["state"]["batch"] == LAST_PART
    b = SymbolExecutorShell("BTC", cfg, fees, seed=7)
    assert b.restore(snap, snap_part) == snap["seq"]
    with pytest.raises(ValueError):
        SymbolExecutorShell("BTC", cfg, fees, seed=7).restore(snap)
    seq = snap["seq"]
    resumed = []
    for op, part in rest:
        seq += 1
        out = b.run(seq, [op], *([part] if part is not None else []))
        if op[0] == OP_COLLECT:
            resumed.append(repr(out))
    assert resumed and resumed == expected[len(expected) - len(resumed):]


@pytest.fixture
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def restarted(handle) -> None:
    """Kill the actor and wait until its restarted process answers (a call it cannot serve)."""
    from ray.exceptions import RayActorError

    pid = ray.get(handle.where.remote())["pid"]
    ray.kill(handle, no_restart=False)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if ray.get(handle.where.remote(), timeout=30)["pid"] != pid:
                return
        except (RayActorError, ray.exceptions.GetTimeoutError):
            pass
        time.sleep(0.2)
    raise AssertionError("the killed actor did not come back")


@pytest.mark.ray
def test_port_sends_queued_batches_and_trades_with_the_collect_in_one_call(ray_cluster):
    vbs, ids, fx_id = validated(seconds=120)
    handles = {s: SymbolActor.options(num_cpus=0.01, max_restarts=-1, max_task_retries=0)
               .remote(s, FillModelConfig(), FeeSchedule(), 7) for s in SYMBOLS}
    port = RayExecutionPort(handles)
    port.start()
    assert port.calls_sent == len(SYMBOLS)
    for vb in vbs:
        port.ingest(ray.put(split_rows(vb, ids, fx_id)), vb.top.start_ns, len(vb.batch))
    assert port.calls_sent == len(SYMBOLS)  # batches wait until something needs them
    # a snapshot round: one light call each, the batches stay queued
    port.snapshot_all()
    assert port.calls_sent == 2 * len(SYMBOLS)
    assert all(len(link.ops) == len(vbs) for link in port.links.values())

    t = int(vbs[-1].top.recv_ns[-1])
    port.submit("ETH", [trade("ETH", 1, t)])
    out = port.collect(["ETH"], t + 250 * MS)
    assert port.calls_sent == 2 * len(SYMBOLS) + 1  # batches, trade and collect: one call
    (res,) = out["ETH"]
    assert res.trade.trade_id == "ETH-E-1" and res.buy.filled_qty > 0
    assert not port.links["ETH"].ops and len(port.links["BTC"].ops) == len(vbs)

    # the ETH actor dies: restored from its snapshot plus the replayed call, nothing doubled
    restarted(handles["ETH"])
    port.submit("ETH", [trade("ETH", 2, t + 300 * MS)])
    (again,) = port.collect(["ETH"], t + 600 * MS)["ETH"]
    assert port.recoveries == 1 and again.trade.trade_id == "ETH-E-2"
    port.check()
