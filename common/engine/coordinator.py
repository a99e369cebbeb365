"""The coordinator core: the one brain that turns the top-of-book stream into trades.

It owns TopN membership, the ``PortfolioState`` and the global ``RiskGuard``, and decides entries,
exits and hedges in exact event-time order. Premiums and signals are computed over whole batches
(``SymbolFrame``); Python-level work happens only where a decision is taken. Trades go out through
an ``ExecutionPort`` (in-process executors, or Ray symbol actors) and their results come back when
their settlement chunk closes: a trade decided at t with legs arriving at t + latency settles at
the end of the ``settle_ms`` chunk that holds its last arrival, and until then its worst-case
amounts are reserved and its symbol decides nothing new. Results therefore never depend on when
the executors happen to compute them.
"""

from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from loguru import logger

from common.execution.executor import LatencyConfig, LatencyModel
from common.portfolio.state import FeeSchedule, PortfolioState
from common.reporting.kpi import KpiAccumulator
from common.reporting.series import MARK_COLUMNS, SeriesRecorder
from common.reporting.trade_log import build_row
from common.risk.guard import LegNeed, RiskGuard, RiskLimits, derived_lot, floor_lot
from common.strategy.costs import CostModel, CostModelConfig, EdgeEstimate
from common.strategy.signals import (
    CarryState,
    StrategyConfig,
    SymbolFrame,
    TopBatch,
    build_frames,
    fx_series,
)
from common.types import (
    BINANCE,
    LEG_ENTRY,
    LEG_EXIT,
    LEG_HEDGE,
    UPBIT,
    VENUE_NAMES,
    VENUE_QUOTES,
    ExecutionResult,
    Trade,
    make_trade_id,
)

FLAT, OPEN = "flat", "open"


def _position_value(du: float, db: float, u_bid: float, u_ask: float, b_bid: float,
                    b_ask: float, fx: float) -> float:
    """USD value of a coin position of ``du`` on Upbit and ``db`` on Binance at executable
    prices (the bid if long, the ask if short), Upbit's at ``fx`` KRW per USDT; a price that
    is not finite counts as zero value."""
    v = 0.0
    if du:
        px = u_bid if du > 0 else u_ask
        if math.isfinite(px) and math.isfinite(fx):
            v += du * px / fx
    if db:
        px = b_bid if db > 0 else b_ask
        if math.isfinite(px):
            v += db * px
    return v


def _finite_or_zero(x: float) -> float:
    return float(x) if math.isfinite(x) else 0.0
# heap event kinds, in the order they run at equal times: settlements, TopN membership changes,
# equity marks, then decisions
_SETTLE, _UNIVERSE, _MARK, _DECIDE = 0, 1, 2, 3


class ExecutionPort(Protocol):
    """Where trades go and results come from: in-process executors or Ray symbol actors."""

    def submit(self, symbol: str, trades: list[Trade]) -> None: ...

    def collect(self, symbols: list[str], up_to_ns: int) -> dict[str, list[ExecutionResult]]: ...


@dataclass(frozen=True, slots=True)
class CoordinatorConfig:
    strategy: StrategyConfig = StrategyConfig()
    costs: CostModelConfig = CostModelConfig()
    limits: RiskLimits = RiskLimits()
    latency: LatencyConfig = LatencyConfig()
    fees: FeeSchedule = FeeSchedule()
    max_slippage_bps: float = 15.0
    settle_ms: int = 250
    initial_krw: float = 300_000_000.0
    initial_usdt: float = 200_000.0
    initial_coin_usd: float = 20_000.0
    lot_sizes: dict = field(default_factory=dict)
    #: exchange quantity steps (Binance stepSize) per symbol, known on live data: lots are whole
    #: multiples of them
    lot_steps: dict = field(default_factory=dict)
    lot_value_usd: float = 1.0
    seed: int = 7
    mark_interval_s: float = 60.0
    max_hedge_attempts: int = 3
    #: a leg settles once the clock passed its arrival + this: every book with venue time at or
    #: before the arrival has been received by then (later ones are rejected as stragglers)
    feed_latency_bound_ms: float = 1000.0
    #: event-time grid of the premium series kept for the report (``SeriesRecorder``)
    series_interval_s: float = 5.0


@dataclass(slots=True)
class RoundTrip:
    rt_id: str
    opened_ns: int
    start_mark_usd: float
    cash_usd: float = 0.0
    notional_usd: float = 0.0
    #: what the entry rule predicted, and the level and deviation at entry and at the last exit
    predicted: EdgeEstimate | None = None
    level_entry: float = math.nan
    level_exit: float = math.nan
    exit_deviation_bps: float = math.nan


@dataclass(slots=True)
class SymbolState:
    name: str
    sid: int
    latency: LatencyModel
    carry: CarryState = field(default_factory=CarryState)
    cand_prev: bool = False  # was the last event of the previous batch an entry candidate
    lot: float = 0.0
    funded: bool = False
    status: str = FLAT
    direction: int = 0  # +1: sold upbit / bought binance; -1: the reverse
    entry_premium: float = math.nan
    entry_ns: int = 0
    delta: list = field(default_factory=lambda: [0.0, 0.0])  # strategy coin position per venue
    cash_usd: float = 0.0  # every row's cash flow so far
    seq: int = 0
    rt_seq: int = 0
    rt: RoundTrip | None = None
    pending: list = field(default_factory=list)  # trades awaiting settlement
    reservations: list = field(default_factory=list)  # (venue, asset, amount)
    settle_at: int = -1
    hedge_attempts: int = 0
    hedge_wait: int = -1  # a hedge retry waits for a book of this venue received after hedge_after
    hedge_after: int = 0
    rearm: bool = False  # after a refusal, wait for a fresh crossing before trying again
    active: bool = True  # in TopN: may enter; out of it the symbol only exits until flat
    drained: bool = False  # out of TopN and flat: no executor needed any more
    cursor: int = 0  # last processed index into this batch's frame
    pnl_sampled: float = 0.0
    krw_flow: float = 0.0  # KRW moved by this symbol's fills (fees included)
    krw_flow_usd: float = 0.0  # the same flows, each at its own fill's FX
    wall_at_decision: dict = field(default_factory=dict)
    idle_frame: SymbolFrame | None = None  # reused while the symbol has no new events
    #: books (upbit bid/ask, binance bid/ask) as of the last mark: what risk checks value at
    risk_px: tuple = (math.nan, math.nan, math.nan, math.nan)


class CoordinatorCore:
    """Decides every trade. Feed it ``TopBatch``es in order; it calls the port and emits rows."""

    def __init__(self, cfg: CoordinatorConfig, symbols: list[str], symbol_ids: dict[str, int],
                 fx_id: int, port: ExecutionPort, kpi: KpiAccumulator, session_id: str) -> None:
        self.cfg = cfg
        self.port = port
        self.kpi = kpi
        self.session_id = session_id
        self.fx_id = fx_id
        self.portfolio = PortfolioState()
        self.portfolio.fund("upbit", "KRW", cfg.initial_krw)
        self.portfolio.fund("binance", "USDT", cfg.initial_usdt)
        self.risk = RiskGuard(cfg.limits)
        self.costs = CostModel(cfg.costs, cfg.strategy)
        self.declined_by_cost = 0
        self.symbols = {
            s: SymbolState(s, symbol_ids[s], LatencyModel(cfg.latency, cfg.seed, s)) for s in symbols
        }
        self.fx_carry: tuple[int, float] = (-1, math.nan)
        self.fx_first: float = math.nan
        self.initial_price_usd: dict[tuple[str, str], float] = {}
        self.next_mark_ns: int = -1
        self.first_event_ns: int = -1  # recv_ns of the first valid book
        self.last_event_ns: int = -1  # recv_ns of the last book (valid or not)
        #: the entry rule's cost model holds still until this event time (the next mark)
        self._model_until: int = -1
        self.clock_ns: int = -1
        self._slip = cfg.max_slippage_bps / 1e4
        self._settle_ns = int(cfg.settle_ms * 1_000_000)
        self._bound_ns = int(round(cfg.feed_latency_bound_ms * 1e6))
        #: running totals for the risk checks: every symbol's cash flows, and the symbols that
        #: hold a coin position (only those need a mark)
        self._cash_total = 0.0
        self._positioned: set[str] = set()
        self._risk_fx = math.nan  # the KRW-USDT mid as of the last mark
        self._frames: dict[str, SymbolFrame] = {}
        self._fx_t = np.zeros(1, dtype=np.int64)
        self._fx_mid = np.full(1, np.nan)
        self.rows_out: list[dict] = []
        self._universe: list[tuple[int, frozenset[str]]] = []  # scheduled membership changes
        self._universe_due: dict[int, frozenset[str]] = {}  # pushed on this batch's heap
        self.drained_out: list[str] = []  # symbols drained since the engine last asked
        self.series = SeriesRecorder(cfg.series_interval_s)

    # ------------------------------------------------------------------------------------------
    def process_batch(self, top: TopBatch, wall_recv_ns: int | None = None) -> list[dict]:
        """Walk one batch of top-of-book events in time order; return the trade rows it settled."""
        wall_recv_ns = wall_recv_ns if wall_recv_ns is not None else time.perf_counter_ns()
        self._wall_recv = wall_recv_ns
        self._end_ns = top.end_ns
        self._fx_t, self._fx_mid = fx_series(top, self.fx_id, *self.fx_carry)
        if math.isnan(self.fx_first) and np.isfinite(self._fx_mid).any():
            self.fx_first = float(self._fx_mid[np.isfinite(self._fx_mid)][0])
        heap: list[tuple] = []
        # new frames for every symbol with events (or a changed carry), built together
        todo = []
        for st in self.symbols.values():
            mine = top.rows_of(st.sid)
            if mine.size == 0 and st.idle_frame is not None and st.idle_frame.carry_in is st.carry:
                self._frames[st.name] = st.idle_frame  # no event since the last idle batch
            else:
                todo.append((st, mine))
        if todo:
            frames, no_fx = build_frames(top, [m for _, m in todo], [st.carry for st, _ in todo],
                                         [st.cand_prev for st, _ in todo], self._fx_t,
                                         self._fx_mid, self.cfg.strategy)
            if no_fx:
                self.kpi.add_skipped("no_fx", no_fx)
            for (st, mine), frame in zip(todo, frames, strict=True):
                st.idle_frame = frame if mine.size == 0 else None
                self._frames[st.name] = frame
        self.series.sample_premiums(self._frames, top.end_ns)
        if self.next_mark_ns < 0 and len(top):
            self.first_event_ns = int(top.recv_ns[0])
            self.next_mark_ns = self._grid_after(self.first_event_ns)
            self._model_until = self.next_mark_ns
        for st in self.symbols.values():
            frame = self._frames[st.name]
            st.cursor = 0
            if len(frame) == 1 and st.active and not st.pending:
                # no event: nothing to decide, and the carry it holds was already looked at
                # for funding when it was the last event of an earlier frame
                continue
            self._fund_if_ready(st, frame)
            if st.pending:
                if st.settle_at <= top.end_ns:
                    heapq.heappush(heap, (st.settle_at, _SETTLE, -1, st.name))
            else:
                self._push_next(heap, st)
        self._universe_due = {}
        while self._universe and self._universe[0][0] <= top.end_ns:
            t_u, members = self._universe.pop(0)
            k = len(self._universe_due)  # orders changes at the same instant as scheduled
            self._universe_due[k] = members
            heapq.heappush(heap, (t_u, _UNIVERSE, k, ""))
        while 0 <= self.next_mark_ns <= top.end_ns:
            heapq.heappush(heap, (self.next_mark_ns, _MARK, -1, ""))
            self.next_mark_ns += int(self.cfg.mark_interval_s * 1e9)

        self.rows_out = []
        while heap:
            t, kind, row, name = heapq.heappop(heap)
            self.clock_ns = t
            if kind == _SETTLE:
                # every symbol settling at this chunk boundary is collected in one round
                names = [name]
                while heap and heap[0][0] == t and heap[0][1] == _SETTLE:
                    names.append(heapq.heappop(heap)[3])
                self._settle(names, t, heap)
            elif kind == _MARK:
                self._sample_equity(t, list(self.symbols))
                self.series.mark(t, self._venue_values(t))
                self._refresh_risk_marks(t)
                self._new_cost_period(t, heap)
            elif kind == _UNIVERSE:
                self._apply_universe(self._universe_due.pop(row), heap)
            else:
                st = self.symbols[name]
                if st.pending:
                    continue  # stale entry: the symbol became busy after this was pushed
                self._decide(st, row, heap)

        for st in self.symbols.values():
            frame = self._frames[st.name]
            if len(frame) > 1:  # a frame of the carry alone leaves the carry as it was
                st.carry = frame.carry()
                st.cand_prev = bool(frame.cand[-1])
        if self._fx_t.size:
            self.fx_carry = (int(self._fx_t[-1]), float(self._fx_mid[-1]))
        self.clock_ns = max(self.clock_ns, top.end_ns)
        self.last_event_ns = max(self.last_event_ns, top.end_ns)
        return self.rows_out

    # -- TopN membership ------------------------------------------------------------------------
    def schedule_universe(self, t_ns: int, members: list[str],
                          symbol_ids: dict[str, int]) -> list[str]:
        """TopN becomes ``members`` at event time ``t_ns``.

        A symbol that leaves goes exit-only until flat, then is drained (see ``take_drained``);
        one that joins may trade once its books, FX and warm-up allow. Returns the symbols new to
        the run, which need an executor before the next batch reaches them (a drained symbol
        keeps its executor, so one coming back needs none).
        """
        need = []
        for name in members:
            if name not in self.symbols:
                self.symbols[name] = SymbolState(name, symbol_ids[name],
                                                 LatencyModel(self.cfg.latency, self.cfg.seed, name),
                                                 active=False)
                need.append(name)
        self._universe.append((int(t_ns), frozenset(members)))
        self._universe.sort(key=lambda u: u[0])
        return need

    def take_drained(self) -> list[str]:
        out, self.drained_out = self.drained_out, []
        return out

    def _apply_universe(self, members: frozenset[str], heap: list) -> None:
        for st in self.symbols.values():
            was = st.active
            st.active = st.name in members
            if st.active:
                st.drained = False
                if not was and not st.pending:
                    self._push_next(heap, st)
            elif was:
                logger.info("{} left TopN: exit-only until flat", st.name)
                if not st.pending and st.status == FLAT and st.hedge_wait < 0:
                    self._drain(st)

    def _drain(self, st: SymbolState) -> None:
        if not st.drained:
            st.drained = True
            self.drained_out.append(st.name)
            logger.info("{} drained (out of TopN and flat)", st.name)

    def finish(self) -> list[dict]:
        """End of data: settle what is still pending (hedges included) against the last books,
        then take a final equity sample. Returns the rows settled here."""
        self.rows_out = []
        heap: list[tuple] = []
        self._end_ns = np.iinfo(np.int64).max
        for st in self.symbols.values():
            if st.pending:
                heapq.heappush(heap, (st.settle_at, _SETTLE, -1, st.name))
        while heap:
            t, _, _, name = heapq.heappop(heap)
            names = [name]
            while heap and heap[0][0] == t:
                names.append(heapq.heappop(heap)[3])
            self.clock_ns = max(self.clock_ns, t)
            self._settle(names, t, heap, allow_decisions=False)
        self._sample_equity(self.clock_ns, list(self.symbols))
        self.series.mark(self.clock_ns, self._venue_values(self.clock_ns))
        return self.rows_out

    def report_part(self) -> dict:
        """The coordinator's share of the KPI report: marks, balances, refusals, and the account
        at start and end with its exact decomposition (``account``)."""
        open_mark = 0.0
        for st in self.symbols.values():
            frame = self._frames.get(st.name)
            if frame is not None:
                open_mark += self._mark_symbol(st, frame, frame.asof(self.clock_ns), self.clock_ns)
        balances: dict[str, dict[str, dict[str, float]]] = {}
        for venue, asset in sorted(set(self.portfolio.balances) | set(self.portfolio.initial)):
            balances.setdefault(venue, {})[asset] = {
                "initial": self.portfolio.initial.get((venue, asset), 0.0),
                "final": self.portfolio.balance(venue, asset),
            }
        acct = self.account()
        return {
            "open_mark_usd": open_mark,
            "open_round_trips": sum(1 for st in self.symbols.values() if st.rt is not None),
            "inventory_mtm_usd": acct["inventory_mtm_usd"],
            "fx_translation_usd": acct["fx_translation_usd"],
            "account_value_start_usd": acct["account_value_start_usd"],
            "account_value_end_usd": acct["account_value_end_usd"],
            "account_per_symbol": acct["per_symbol"],
            "refusals": dict(sorted(self.risk.refusals.items())),
            "entries_declined_by_cost": self.declined_by_cost,
            "cost_model": self.costs.report(),
            "clips": dict(sorted(self.risk.clips.items())),
            "balances": balances,
            "symbols": list(self.symbols),
            "event_time_span_ns": [self.first_event_ns, self.last_event_ns],
        }

    def account(self) -> dict:
        """The account's value at start and at end, every balance of every venue and asset at
        mids, and its exact decomposition

            end - start = trading PnL + FX translation + inventory revaluation

        * start: KRW at the first KRW-USDT mid, USDT at 1, each coin inventory at the mid of
          its venue's first valid book (when it was funded);
        * end: the same balances after every fill and fee, at the latest books' mids and KRW
          at the latest KRW-USDT mid;
        * trading PnL (``total_pnl_usd``): every fill's cash flow at its own FX plus the open
          position at executable prices, fees included;
        * FX translation: the initial KRW and every fill's KRW flow revalued from the FX they
          entered at to the latest FX;
        * inventory revaluation (``inventory_mtm_usd``): the pre-funded coins from their first
          to their latest mid, plus the open position's mid less its executable mark.
        """
        t = self.clock_ns
        fx0, fx1 = self.fx_first, self._fx_at(t)
        if not (math.isfinite(fx0) and math.isfinite(fx1)):
            fx0 = fx1 = math.inf  # no FX ever seen: KRW cannot be valued (and nothing traded)
        pf = self.portfolio
        k0, k1 = pf.initial.get(("upbit", "KRW"), 0.0), pf.balance("upbit", "KRW")
        u0, u1 = pf.initial.get(("binance", "USDT"), 0.0), pf.balance("binance", "USDT")
        start = k0 / fx0 + u0
        end = k1 / fx1 + u1
        fx_translation = k0 * (1.0 / fx1 - 1.0 / fx0)
        inventory = 0.0
        per_symbol = {}
        for name in sorted(self.symbols):
            st = self.symbols[name]
            frame = self._frames.get(name)
            fx_sym = st.krw_flow / fx1 - st.krw_flow_usd
            inv_sym = 0.0
            mark = 0.0
            if frame is not None and st.funded:
                i = frame.asof(t)
                mids = (_finite_or_zero((frame.u_bid[i] + frame.u_ask[i]) * 0.5 / fx1),
                        _finite_or_zero((frame.b_bid[i] + frame.b_ask[i]) * 0.5))
                mark = self._mark_symbol(st, frame, i, t)
                for v, venue in ((UPBIT, "upbit"), (BINANCE, "binance")):
                    b0 = pf.initial.get((venue, name), 0.0)
                    p0 = self.initial_price_usd.get((venue, name), 0.0)
                    start += b0 * p0
                    end += pf.balance(venue, name) * mids[v]
                    inv_sym += b0 * (mids[v] - p0)
                inv_sym += st.delta[UPBIT] * mids[UPBIT] + st.delta[BINANCE] * mids[BINANCE] - mark
            fx_translation += fx_sym
            inventory += inv_sym
            per_symbol[name] = {"trading_pnl_usd": st.cash_usd + mark,
                                "fx_translation_usd": fx_sym, "inventory_mtm_usd": inv_sym}
        return {"account_value_start_usd": start, "account_value_end_usd": end,
                "fx_translation_usd": fx_translation, "inventory_mtm_usd": inventory,
                "per_symbol": per_symbol}

    def _fund_if_ready(self, st: SymbolState, frame: SymbolFrame) -> None:
        """Pre-fund the coin inventory at the first moment both books and FX are known."""
        if st.funded:
            return
        ok = np.flatnonzero(np.isfinite(frame.p_mid))
        if ok.size == 0:
            return
        i = int(ok[0])
        b_mid = (frame.b_bid[i] + frame.b_ask[i]) * 0.5
        u_mid_usd = (frame.u_bid[i] + frame.u_ask[i]) * 0.5 / frame.fx[i]
        st.lot = self.cfg.lot_sizes.get(st.name) or derived_lot(
            b_mid, self.cfg.lot_value_usd, self.cfg.lot_steps.get(st.name))
        qty = floor_lot(self.cfg.initial_coin_usd / b_mid, st.lot)
        self.portfolio.fund("upbit", st.name, qty)
        self.portfolio.fund("binance", st.name, qty)
        self.initial_price_usd[("upbit", st.name)] = u_mid_usd
        self.initial_price_usd[("binance", st.name)] = b_mid
        st.risk_px = frame.books_at(i)  # until the first mark
        if not math.isfinite(self._risk_fx):
            self._risk_fx = float(frame.fx[i])
        st.funded = True

    def _push_next(self, heap: list, st: SymbolState, from_t: int | None = None) -> None:
        """Push the symbol's next decision point in this batch after its cursor (or at or after
        event time ``from_t``), if any."""
        frame = self._frames[st.name]
        if not st.funded:
            return
        if st.hedge_wait >= 0:
            # the next book of the hedge venue received after the failed attempt settled
            lo = st.cursor + 1
            with np.errstate(invalid="ignore"):
                ok = ((frame.venue[lo:] == st.hedge_wait) & (frame.t[lo:] > st.hedge_after)
                      & frame.tie_last[lo:])
            k = np.flatnonzero(ok)
            if k.size:
                i = lo + int(k[0])
                heapq.heappush(heap, (int(frame.t[i]), _DECIDE, i, st.name))
            return
        if st.status == FLAT:
            if not st.active:
                self._drain(st)
                return
            i = self._next_entry(st, frame, from_t)
            if i >= 0:
                heapq.heappush(heap, (int(frame.t[i]), _DECIDE, i, st.name))
            return
        i = self._next_exit(st, frame)
        if i >= 0:
            heapq.heappush(heap, (int(frame.t[i]), _DECIDE, i, st.name))

    def _next_entry(self, st: SymbolState, frame: SymbolFrame, from_t: int | None) -> int:
        """The next candidate event whose predicted net edge pays, before the cost model's next
        update (``_model_until``); -1 if none. Candidates it passes over are counted as
        declined by the cost model. The figures are exactly ``CostModel.estimate``'s, computed
        for all candidates at once (the model holds still within the period)."""
        idx = frame.edge_idx if st.rearm else frame.cand_idx
        if from_t is not None:
            lo = int(np.searchsorted(frame.t, from_t, side="left"))
            k = int(np.searchsorted(idx, lo, side="left"))
        else:
            # indices are > 0, so at the start of a batch (cursor 0) the first one is next
            k = int(np.searchsorted(idx, st.cursor, side="right")) if st.cursor else 0
        # the cost model holds still until _model_until: look no further
        lim = int(frame.t.searchsorted(self._model_until, side="left"))
        idx = idx[k:int(idx.searchsorted(lim, side="left"))]
        if idx.size == 0:
            return -1
        ds, db = frame.dev_sell_u[idx], frame.dev_buy_u[idx]
        net = self.costs.net_bps(np.where(ds >= db, ds, db) * 1e4, frame.slip_rt[idx])
        ok = np.flatnonzero(net > self.costs.margin_bps)
        self.declined_by_cost += int(ok[0]) if ok.size else int(idx.size)
        return int(idx[ok[0]]) if ok.size else -1

    def _new_cost_period(self, t: int, heap: list) -> None:
        """At a mark: the cost model takes in what it observed since the last one, and every
        flat symbol looks for its next entry under the new figures from ``t`` on."""
        self.costs.fold()
        self._model_until = t + int(self.cfg.mark_interval_s * 1e9)
        for st in self.symbols.values():
            if (st.status == FLAT and st.active and not st.pending and st.hedge_wait < 0
                    and st.name in self._frames):
                self._push_next(heap, st, from_t=t)

    def _next_exit(self, st: SymbolState, frame: SymbolFrame) -> int:
        """The next event after the cursor where the exit rule fires (back within the band of
        the level, the stop loss, or the maximum holding time); -1 if none in this frame. It
        scans in growing windows, so the work follows the distance to the exit, not the length
        of the batch."""
        n = len(frame)
        lo = st.cursor + 1
        if lo >= n:
            return -1
        s = self.cfg.strategy
        band, stop = s.exit_band_bps / 1e4, s.stop_loss_bps / 1e4
        deadline = st.entry_ns + int(s.max_holding_s * 1e9)
        t, level, tie_last = frame.t, frame.level, frame.tie_last
        x_all = frame.p_buy_u if st.direction > 0 else frame.p_sell_u
        width = 256
        while lo < n:
            hi = min(n, lo + width)
            x, lv = x_all[lo:hi], level[lo:hi]
            with np.errstate(invalid="ignore"):
                if st.direction > 0:  # exit buys upbit, sells binance
                    hit = (x - lv <= band) | (x - st.entry_premium >= stop)
                else:
                    hit = (lv - x <= band) | (st.entry_premium - x >= stop)
            hit |= t[lo:hi] >= deadline
            hit &= tie_last[lo:hi]
            k = np.flatnonzero(hit)
            if k.size:
                return lo + int(k[0])
            lo, width = hi, width * 4
        return -1

    # -- decisions -----------------------------------------------------------------------------
    def _decide(self, st: SymbolState, i: int, heap: list) -> None:
        frame = self._frames[st.name]
        st.cursor = i
        t = int(frame.t[i])
        if st.hedge_wait >= 0:
            st.hedge_wait = -1
            if not self._decide_hedge(st, t):
                # the retry cannot go out (refused, or no price): give up hedging; the imbalance
                # keeps the symbol open, so exits unwind it later
                st.hedge_attempts = self.cfg.max_hedge_attempts
                self._settle_status(st, t)
        elif st.status == FLAT and not st.active:
            # it left TopN after this decision point was queued: no entry, only the drain
            self._drain(st)
            return
        elif st.status == FLAT:
            self._decide_entry(st, frame, i, t)
        else:
            self._decide_exit(st, frame, i, t)
        if not st.pending:
            self._push_next(heap, st)
        elif st.settle_at <= self._end_ns:
            heapq.heappush(heap, (st.settle_at, _SETTLE, -1, st.name))

    def _decide_entry(self, st: SymbolState, frame: SymbolFrame, i: int, t: int) -> None:
        dsell, dbuy = float(frame.dev_sell_u[i]), float(frame.dev_buy_u[i])
        direction = 1 if dsell >= dbuy else -1
        est = self.costs.estimate((dsell if direction > 0 else dbuy) * 1e4,
                                  float(frame.slip_rt[i]))
        if not self.costs.pays(est):
            # _next_entry stops only at events that pay, with the very same arithmetic: this
            # is a bug if it ever happens, logged, and the entry declined rather than the run
            # ended
            logger.error("{}: entry at {} does not pay after all ({})", st.name, t, est)
            self.declined_by_cost += 1
            return
        b_mid = (frame.b_bid[i] + frame.b_ask[i]) * 0.5
        fee_u = self.cfg.fees.rate(UPBIT)
        if direction > 0:  # buy binance at ask, sell upbit at bid
            legs = [LegNeed("binance", "USDT", frame.b_ask[i] * (1 + self._slip)),
                    LegNeed("upbit", st.name, 1.0)]
        else:
            legs = [LegNeed("upbit", "KRW", frame.u_ask[i] * (1 + self._slip) * (1 + fee_u)),
                    LegNeed("binance", st.name, 1.0)]
        total_exposure, total_pnl = self._risk_view(t)
        decision = self.risk.check_entry(
            qty=self.cfg.strategy.trade_notional_usd / b_mid, price_usd=b_mid, lot=st.lot,
            legs=legs, portfolio=self.portfolio,
            symbol_exposure_usd=self._exposure(st, t),
            total_exposure_usd=total_exposure,
            open_round_trips=sum(1 for s in self.symbols.values() if s.rt is not None),
            total_pnl_usd=total_pnl,
        )
        if decision.refusal is not None:
            st.rearm = True
            return
        st.rearm = False
        st.rt_seq += 1
        st.rt = RoundTrip(f"{st.name}-RT-{st.rt_seq}", t, self._mark_symbol(st, frame, i, t),
                          predicted=est, level_entry=float(frame.level[i]))
        st.direction = direction
        st.entry_premium = float(frame.p_sell_u[i] if direction > 0 else frame.p_buy_u[i])
        st.entry_ns = t
        buy_v, sell_v = (BINANCE, UPBIT) if direction > 0 else (UPBIT, BINANCE)
        reason = "upbit_rich" if direction > 0 else "upbit_cheap"
        self._dispatch(st, frame, i, t, LEG_ENTRY, decision.quantity, buy_v, sell_v,
                       (dsell if direction > 0 else dbuy) * 1e4, reason)

    def _decide_exit(self, st: SymbolState, frame: SymbolFrame, i: int, t: int) -> None:
        s = self.cfg.strategy
        if st.direction > 0:
            x = float(frame.p_buy_u[i])
            reason = ("stop_loss" if x - st.entry_premium >= s.stop_loss_bps / 1e4 else
                      "band" if x - frame.level[i] <= s.exit_band_bps / 1e4 else "max_holding")
            buy_v, sell_v = UPBIT, BINANCE
        else:
            x = float(frame.p_sell_u[i])
            reason = ("stop_loss" if st.entry_premium - x >= s.stop_loss_bps / 1e4 else
                      "band" if frame.level[i] - x <= s.exit_band_bps / 1e4 else "max_holding")
            buy_v, sell_v = BINANCE, UPBIT
        # exits trade the quantities actually held: the pair closes what both venues can close,
        # anything left over is unwound by a hedge after settlement
        hold_sell = floor_lot(max(st.delta[sell_v], 0.0), st.lot)
        hold_buy = floor_lot(max(-st.delta[buy_v], 0.0), st.lot)
        qty = min(hold_sell, hold_buy)
        if qty <= 0:
            qty = max(hold_sell, hold_buy)
            if hold_sell <= 0:
                sell_v = -1
            else:
                buy_v = -1
        fee_u = self.cfg.fees.rate(UPBIT)
        legs = []
        if buy_v == UPBIT:
            legs.append(LegNeed("upbit", "KRW", frame.u_ask[i] * (1 + self._slip) * (1 + fee_u)))
        elif buy_v == BINANCE:
            legs.append(LegNeed("binance", "USDT", frame.b_ask[i] * (1 + self._slip)))
        if sell_v >= 0:
            legs.append(LegNeed(VENUE_NAMES[sell_v], st.name, 1.0))
        decision = self.risk.check_unwind(qty, st.lot, legs, self.portfolio)
        if decision.refusal is not None:
            return
        dev = (x - float(frame.level[i])) * 1e4 * (1 if st.direction > 0 else -1)
        if st.rt is not None:
            st.rt.level_exit, st.rt.exit_deviation_bps = float(frame.level[i]), dev
        self._dispatch(st, frame, i, t, LEG_EXIT, decision.quantity, buy_v, sell_v, dev, reason)

    def _decide_hedge(self, st: SymbolState, t: int) -> bool:
        """Unwind the coin imbalance left by a partial leg or a coin fee. True if dispatched."""
        net = st.delta[UPBIT] + st.delta[BINANCE]
        if abs(net) < st.lot or st.hedge_attempts >= self.cfg.max_hedge_attempts:
            return False
        frame = self._frames[st.name]
        i = frame.asof(t)
        venue = self._hedge_venue(st)
        if net > 0:  # too many coins: sell where we are longest
            buy_v, sell_v = -1, venue
            legs = [LegNeed(VENUE_NAMES[venue], st.name, 1.0)]
        else:  # too few: buy back where we are shortest
            buy_v, sell_v = venue, -1
            per = (frame.u_ask[i] * (1 + self._slip) * (1 + self.cfg.fees.rate(UPBIT))
                   if venue == UPBIT else frame.b_ask[i] * (1 + self._slip))
            legs = [LegNeed(VENUE_NAMES[venue], VENUE_QUOTES[venue], per)]
        px = frame.u_bid[i] if venue == UPBIT else frame.b_bid[i]
        if not np.isfinite(px):
            return False
        decision = self.risk.check_unwind(abs(net), st.lot, legs, self.portfolio)
        if decision.refusal is not None:
            return False
        st.hedge_attempts += 1
        self._dispatch(st, frame, i, t, LEG_HEDGE, decision.quantity, buy_v, sell_v, 0.0,
                       "leg_imbalance")
        return True

    def _dispatch(self, st: SymbolState, frame: SymbolFrame, i: int, t: int, kind: str,
                  qty: float, buy_v: int, sell_v: int, signal_bps: float, reason: str) -> None:
        st.seq += 1
        buy_px = (frame.u_ask[i] if buy_v == UPBIT else frame.b_ask[i]) if buy_v >= 0 else math.nan
        sell_px = (frame.u_bid[i] if sell_v == UPBIT else frame.b_bid[i]) if sell_v >= 0 else math.nan
        buy_arr = t + st.latency.draw_ns(buy_v) if buy_v >= 0 else t
        sell_arr = t + st.latency.draw_ns(sell_v) if sell_v >= 0 else t
        trade = Trade(
            trade_id=make_trade_id(st.name, kind, st.seq), symbol=st.name, leg_kind=kind,
            round_trip_id=st.rt.rt_id if st.rt else "",
            buy_exchange=VENUE_NAMES[buy_v] if buy_v >= 0 else None,
            sell_exchange=VENUE_NAMES[sell_v] if sell_v >= 0 else None,
            quantity=qty, buy_price=float(buy_px), sell_price=float(sell_px),
            buy_limit=float(buy_px * (1 + self._slip)) if buy_v >= 0 else math.nan,
            sell_limit=float(sell_px * (1 - self._slip)) if sell_v >= 0 else math.nan,
            decision_ts_ns=t, buy_arrival_ns=buy_arr, sell_arrival_ns=sell_arr,
            signal_bps=float(signal_bps), reason=reason, lot=st.lot,
        )
        # reserve the worst case: limit price plus a quote fee for buys, the coins for sells
        if buy_v == UPBIT:
            self._reserve(st, "upbit", "KRW", qty * trade.buy_limit * (1 + self.cfg.fees.rate(UPBIT)))
        elif buy_v == BINANCE:
            self._reserve(st, "binance", "USDT", qty * trade.buy_limit)
        if sell_v >= 0:
            self._reserve(st, VENUE_NAMES[sell_v], st.name, qty)
        # every book with venue time <= the last arrival is in once the clock passed it + bound
        last = max(buy_arr, sell_arr) + self._bound_ns
        st.settle_at = (last // self._settle_ns + 1) * self._settle_ns
        st.pending = [trade]
        st.wall_at_decision[trade.trade_id] = self._wall_recv
        self.kpi.add_sim_latency([(VENUE_NAMES[buy_v], buy_arr - t)] if buy_v >= 0 else [])
        self.kpi.add_sim_latency([(VENUE_NAMES[sell_v], sell_arr - t)] if sell_v >= 0 else [])
        self.port.submit(st.name, [trade])

    def _reserve(self, st: SymbolState, venue: str, asset: str, amount: float) -> None:
        self.portfolio.reserve(venue, asset, amount)
        st.reservations.append((venue, asset, amount))

    # -- settlement ----------------------------------------------------------------------------
    def _settle(self, names: list[str], t: int, heap: list, allow_decisions: bool = True) -> None:
        results = self.port.collect(names, t)
        wall_now = time.perf_counter_ns()
        rows = []
        for name in sorted(names):
            st = self.symbols[name]
            got = {r.trade_id: r for r in results.get(name, [])}
            missing = [tr.trade_id for tr in st.pending if tr.trade_id not in got]
            if missing:
                raise RuntimeError(f"executor for {name} returned no result for {missing} at {t}")
            for venue, asset, amount in st.reservations:
                self.portfolio.release(venue, asset, amount)
            st.reservations = []
            for trade in st.pending:
                res = got[trade.trade_id]
                rows.append(self._apply(st, res, (wall_now - st.wall_at_decision.pop(trade.trade_id)) / 1e6))
            st.pending = []
            st.cursor = max(st.cursor, self._frames[name].asof(t))
            pnl = self._after_settle(st, t)
            if pnl is not None:
                rows[-1]["round_trip_closed"] = True
                rows[-1]["round_trip_pnl_usd"] = pnl
            if st.pending:
                if st.settle_at <= self._end_ns:
                    heapq.heappush(heap, (st.settle_at, _SETTLE, -1, st.name))
            elif allow_decisions:
                self._push_next(heap, st)
        rows.sort(key=lambda r: (r["fill_ts_ns"], r["symbol"], r["trade_id"]))
        self.rows_out.extend(rows)
        self._sample_equity(t, names)

    def _apply(self, st: SymbolState, res: ExecutionResult, tick_to_fill_ms: float) -> dict:
        coin_delta = [0.0, 0.0]
        cash = fees = 0.0
        for leg in (res.buy, res.sell):
            if leg is None:
                continue
            self.portfolio.apply_fill(leg, st.name)
            v = 0 if leg.exchange == "upbit" else 1
            coin_delta[v] += leg.coin_delta
            st.delta[v] += leg.coin_delta
            cash += leg.cash_flow_usd
            fees += leg.fee_usd
            if res.trade.leg_kind != LEG_HEDGE and leg.filled_qty > 0:
                self.costs.observe_leg(leg.latency_cost_bps)
            if v == UPBIT and leg.filled_qty > 0:
                st.krw_flow += leg.quote_flow
                st.krw_flow_usd += leg.cash_flow_usd
        st.cash_usd += cash
        self._cash_total += cash
        if st.delta[UPBIT] or st.delta[BINANCE]:
            self._positioned.add(st.name)
        else:
            self._positioned.discard(st.name)
        if st.rt is not None:
            st.rt.cash_usd += cash
            if res.trade.leg_kind == LEG_ENTRY:
                st.rt.notional_usd += sum(leg.notional_usd for leg in (res.buy, res.sell) if leg)
        row = build_row(res, self.session_id, cash_flow_usd=cash, fees_usd=fees,
                        coin_delta_upbit=coin_delta[0], coin_delta_binance=coin_delta[1],
                        tick_to_fill_ms=tick_to_fill_ms)
        self.kpi.add_result(res, row)
        return row

    def _after_settle(self, st: SymbolState, t: int) -> float | None:
        """Hedge an imbalance, or move the symbol to OPEN / FLAT. Returns the PnL of a round trip
        this settlement closed.

        A first hedge goes out at once; a retry (the last hedge left an imbalance) waits for a
        book of its venue received after this settlement (``_push_next``): every book the last
        attempt could have met was received by now, so the retry never meets the book it
        depleted."""
        if self._imbalance(st) >= st.lot and st.hedge_attempts < self.cfg.max_hedge_attempts:
            if st.hedge_attempts == 0:
                if self._decide_hedge(st, t):
                    return None
            else:
                st.hedge_wait, st.hedge_after = self._hedge_venue(st), t
                return None
        return self._settle_status(st, t)

    def _settle_status(self, st: SymbolState, t: int) -> float | None:
        """OPEN while any position (or an imbalance) of a lot or more is held, else FLAT, which
        closes the round trip; returns its PnL."""
        st.hedge_attempts = 0
        if (abs(st.delta[UPBIT]) >= st.lot or abs(st.delta[BINANCE]) >= st.lot
                or self._imbalance(st) >= st.lot):
            st.status = OPEN
            return None
        direction = st.direction
        st.status, st.direction = FLAT, 0
        rt, st.rt = st.rt, None
        if rt is None or rt.notional_usd <= 0:
            return None  # an entry that filled nothing opened no round trip
        frame = self._frames[st.name]
        pnl = rt.cash_usd + self._mark_symbol(st, frame, frame.asof(t), t) - rt.start_mark_usd
        self.kpi.add_round_trip(st.name, pnl, rt.notional_usd, rt.opened_ns, t)
        if rt.predicted is not None:
            # every entry's outcome counts in the calibration report, one unwound by hedges
            # too; only one that exited shows how far the level drifted
            realised = pnl / (rt.notional_usd / 2.0) * 1e4
            self.kpi.add_edge(st.name, rt.predicted.deviation_bps, rt.predicted.net_bps, realised)
            if math.isfinite(rt.exit_deviation_bps):
                drift = (rt.level_exit - rt.level_entry) * 1e4 * direction
                self.costs.observe_round_trip(rt.predicted.deviation_bps, drift,
                                              rt.exit_deviation_bps)
        return pnl

    @staticmethod
    def _imbalance(st: SymbolState) -> float:
        return abs(st.delta[UPBIT] + st.delta[BINANCE])

    @staticmethod
    def _hedge_venue(st: SymbolState) -> int:
        """Where a hedge trades: too many coins are sold where the position is longest, too few
        bought back where it is shortest."""
        if st.delta[UPBIT] + st.delta[BINANCE] > 0:
            return UPBIT if st.delta[UPBIT] > st.delta[BINANCE] else BINANCE
        return UPBIT if st.delta[UPBIT] < st.delta[BINANCE] else BINANCE

    # -- marks, PnL and equity -----------------------------------------------------------------
    def _mark_symbol(self, st: SymbolState, frame: SymbolFrame, i: int, t: int) -> float:
        """Value at ``t`` of the strategy's coin position at executable prices (bid if long, ask
        if short) of the books as of event ``i``, in USD, Upbit's at the latest FX as of ``t``.
        NaN prices count as zero position value."""
        du, db = st.delta
        if not (du or db):
            return 0.0
        return _position_value(du, db, *frame.books_at(i), self._fx_at(t) if du else math.nan)

    def _risk_view(self, t: int) -> tuple[float, float]:
        """(total exposure, total PnL) for an entry's risk check: every cash flow so far (a
        running total) plus the positions held, valued at the books of the last mark (refreshed
        every ``mark_interval_s``), as a risk system on periodic marks does. One pass of plain
        arithmetic over the symbols holding a position, no lookups."""
        exposure = 0.0
        pnl = self._cash_total
        fx = self._risk_fx
        for name in sorted(self._positioned):
            st = self.symbols[name]
            du, db = st.delta
            b_mid = (st.risk_px[2] + st.risk_px[3]) * 0.5
            if math.isfinite(b_mid):
                exposure += max(abs(du), abs(db)) * b_mid
            pnl += _position_value(du, db, *st.risk_px, fx)
        return exposure, pnl

    def _refresh_risk_marks(self, t: int) -> None:
        """The books risk checks value positions at: those as of mark ``t``."""
        fx = self._fx_at(t)
        if math.isfinite(fx):
            self._risk_fx = fx
        for st in self.symbols.values():
            frame = self._frames.get(st.name)
            if frame is not None and st.funded:
                st.risk_px = frame.books_at(frame.asof(t))

    def _fx_at(self, t: int) -> float:
        """The latest KRW-USDT mid received at or before ``t`` (nan before the first)."""
        k = int(self._fx_t.searchsorted(t, side="right")) - 1
        return float(self._fx_mid[k]) if k >= 0 else math.nan

    def symbol_pnl_usd(self, st: SymbolState, t: int) -> float:
        frame = self._frames.get(st.name)
        if frame is None:  # no batch reached the symbol yet
            return st.cash_usd
        return st.cash_usd + self._mark_symbol(st, frame, frame.asof(t), t)

    def _exposure(self, st: SymbolState, t: int) -> float:
        """USD size of the symbol's open position (the larger venue leg) at mid as of ``t``."""
        if not (st.delta[UPBIT] or st.delta[BINANCE]):
            return 0.0
        frame = self._frames[st.name]
        _, _, b_bid, b_ask = frame.books_at(frame.asof(t))
        price_usd = (b_bid + b_ask) * 0.5
        if not math.isfinite(price_usd):
            return 0.0
        return max(abs(st.delta[UPBIT]), abs(st.delta[BINANCE])) * price_usd

    def _venue_values(self, t: int) -> dict[str, float]:
        """Each venue's balances in USD at the mids as of ``t`` (KRW at the FX as of ``t``), the
        strategy's unhedged coin exposure (the two venues' positions netted) and its gross
        exposure, in USD at the Binance mid: a ``SeriesRecorder`` mark."""
        fx = self._fx_at(t)
        pf = self.portfolio
        out = dict.fromkeys(MARK_COLUMNS, 0.0)
        out["upbit_krw_usd"] = pf.balance("upbit", "KRW") / fx if fx > 0 else math.nan
        out["binance_usdt_usd"] = pf.balance("binance", "USDT")
        for name, st in self.symbols.items():
            frame = self._frames.get(name)
            if frame is None or not st.funded:
                continue
            u_bid, u_ask, b_bid, b_ask = frame.books_at(frame.asof(t))
            u_mid = _finite_or_zero((u_bid + u_ask) * 0.5 / fx) if fx > 0 else 0.0
            b_mid = _finite_or_zero((b_bid + b_ask) * 0.5)
            out["upbit_coins_usd"] += pf.balance("upbit", name) * u_mid
            out["binance_coins_usd"] += pf.balance("binance", name) * b_mid
            du, db = st.delta
            out["unhedged_usd"] += abs(du + db) * b_mid
            out["gross_exposure_usd"] += max(abs(du), abs(db)) * b_mid
        out["open_round_trips"] = float(sum(1 for st in self.symbols.values() if st.rt is not None))
        return out

    def _sample_equity(self, t: int, names: list[str]) -> None:
        for name in names:
            st = self.symbols[name]
            pnl = self.symbol_pnl_usd(st, t)
            if pnl != st.pnl_sampled:
                self.kpi.add_equity(name, t, pnl - st.pnl_sampled)
                st.pnl_sampled = pnl

    def _grid_after(self, t: int) -> int:
        step = int(self.cfg.mark_interval_s * 1e9)
        return (t // step + 1) * step
