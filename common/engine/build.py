"""From Settings to components: configs, the market-data source and its TopN, run ids.

Shared by the local and the Ray engine so both build exactly the same things.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from common.engine.coordinator import CoordinatorConfig
from common.execution.executor import LatencyConfig
from common.fill.models import FillModelConfig
from common.marketdata.batch import BookBatch, SymbolTable
from common.marketdata.depth import DepthCost
from common.marketdata.mock import MOCK_UNIVERSE, MockConfig, MockMarket, mock_universe_topn
from common.marketdata.record import read_topn_events, recorded_symbols
from common.marketdata.replay import DataSourceError, ReplaySource, scan_symbols
from common.marketdata.validate import BookValidator, count_reasons
from common.portfolio.state import FeeSchedule
from common.risk.guard import RiskLimits
from common.settings import Settings
from common.strategy.costs import CostModelConfig
from common.strategy.signals import StrategyConfig, TopBatch
from common.types import UPBIT

DATA_SOURCES = ("mock", "replay", "real")
#: one hour of mock market unless the user says otherwise
DEFAULT_MOCK_SECONDS = 3600.0


def fill_model_config(s: Settings) -> FillModelConfig:
    return FillModelConfig(
        enable=s.fill_model_enable, kind=s.fill_model_kind,
        partial_enable=s.fill_model_partial_enable, slippage_enable=s.fill_model_slippage_enable,
        slippage_alpha=s.fill_model_slippage_alpha,
        simple_volume_multiplier=s.fill_model_simple_volume_multiplier,
        hidden_depth_ratio=s.fill_model_hidden_depth_ratio,
        impact_exponent=s.fill_model_impact_exponent,
    )


def fee_schedule(s: Settings) -> FeeSchedule:
    return FeeSchedule(upbit_bps=s.upbit_fee_bps, binance_bps=s.binance_fee_bps)


def coordinator_config(s: Settings, lot_steps: dict[str, float] | None = None) -> CoordinatorConfig:
    """The coordinator's settings; ``lot_steps``: exchange quantity steps per symbol (live)."""
    return CoordinatorConfig(
        strategy=StrategyConfig(
            upbit_fee_bps=s.upbit_fee_bps, binance_fee_bps=s.binance_fee_bps,
            expected_slippage_bps=s.expected_slippage_bps, entry_margin_bps=s.entry_margin_bps,
            ewma_halflife_s=s.ewma_halflife_s, warmup_s=s.warmup_s,
            exit_band_bps=s.exit_band_bps, stop_loss_bps=s.stop_loss_bps,
            max_holding_s=s.max_holding_s, trade_notional_usd=s.trade_notional_usd,
        ),
        costs=CostModelConfig(drift_ratio_prior=s.level_drift_prior,
                              latency_cost_prior_bps=s.latency_cost_prior_bps,
                              prior_weight=s.cost_prior_weight),
        limits=RiskLimits(
            max_notional_per_trade_usd=s.max_notional_per_trade_usd,
            max_exposure_per_symbol_usd=s.max_exposure_per_symbol_usd,
            max_total_exposure_usd=s.max_total_exposure_usd,
            max_open_round_trips=s.max_open_round_trips, max_loss_usd=s.max_loss_usd,
        ),
        latency=LatencyConfig(upbit_ms=s.upbit_latency_ms, binance_ms=s.binance_latency_ms,
                              jitter_ms=s.latency_jitter_ms),
        fees=fee_schedule(s),
        max_slippage_bps=s.max_slippage_bps, settle_ms=s.settle_ms,
        initial_krw=s.initial_krw, initial_usdt=s.initial_usdt,
        initial_coin_usd=s.initial_coin_usd, lot_sizes=dict(s.lot_sizes),
        lot_steps=dict(lot_steps or {}), lot_value_usd=s.lot_value_usd, seed=s.seed,
        feed_latency_bound_ms=s.feed_latency_bound_ms, series_interval_s=s.series_interval_s,
    )


def straggler_ns(s: Settings) -> int:
    """The feed-latency bound in ns: a book received later than this after its venue time is a
    straggler (counted, never used), and a leg settles once the clock passed arrival + this."""
    return int(round(s.feed_latency_bound_ms * 1e6))


def book_checks(s: Settings) -> tuple[BookValidator, DepthCost]:
    """What every engine runs each batch through (``validate_batch``): the validator, with the
    feed-latency bound for stragglers, and the entry rule's slippage estimate (one trade's
    notional taken from each book side within the order's limit)."""
    return BookValidator(straggler_ns(s)), DepthCost(s.trade_notional_usd, s.max_slippage_bps)


def new_run_id() -> str:
    return datetime.now(tz=UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


@dataclass
class MarketSource:
    """A market-data source ready to stream: its symbols, table and batches."""

    kind: str
    symbols: list[str]  # the TopN symbols traded
    symtab: SymbolTable
    _batches: Iterator[tuple[BookBatch, dict[str, int]]]
    description: str
    duration_s: float | None
    #: polled before every batch: TopN membership changes (event time, members) since last asked
    universe_events: Callable[[], list[tuple[int, list[str]]]] | None = None
    #: told when a symbol that left TopN is flat and drained (the live source stops streaming it)
    on_drained: Callable[[str], None] | None = None
    #: exchange quantity steps per symbol (live data and its recordings): lots are multiples
    lot_steps: dict[str, float] = field(default_factory=dict)
    #: where the data comes from, for the run folder: seed and volatility of the mock, the
    #: replay's path, the live run's recording path
    origin: dict = field(default_factory=dict)

    def batches(self) -> Iterator[tuple[BookBatch, dict[str, int]]]:
        return self._batches


def topn_membership(events: list[dict]) -> list[tuple[int, list[str]]]:
    """The membership changes among live-source / recording events, in order."""
    return [(int(ev["recv_ns"]), [str(x) for x in ev["members"]]) for ev in events
            if ev.get("event") == "topn" and "members" in ev]


def recorded_lot_steps(events: list[dict]) -> dict[str, float]:
    """The quantity steps a recorded live run sized its lots with (its first TopN event)."""
    for ev in events:
        if ev.get("event") == "topn":
            steps = ev.get("lot_steps") or {}
            out = {}
            for k, v in steps.items() if isinstance(steps, dict) else ():
                try:
                    out[str(k)] = float(v)
                except (TypeError, ValueError):
                    continue  # a damaged entry: that symbol's lot is derived from its price
            return out
    return {}


def _event_poller(events: list[dict]) -> Callable[[], list[tuple[int, list[str]]]]:
    """Hands out the membership changes appended to ``events`` since the last call."""
    seen = 0

    def poll() -> list[tuple[int, list[str]]]:
        nonlocal seen
        new, seen = events[seen:], len(events)
        return topn_membership(new)

    return poll


def open_source(kind: str, s: Settings, replay_path: str | None,
                duration_s: float | None, record_path: str | None = None) -> MarketSource:
    """Build the data source of ``kind``. Raises DataSourceError with a one-line message."""
    if kind == "mock":
        symbols = list(s.symbols) if s.symbols else list(mock_universe_topn(s.topn_size))
        unknown = [x for x in symbols if x not in MOCK_UNIVERSE]
        if unknown:
            raise DataSourceError(f"SYMBOLS: the mock market has no {', '.join(unknown)} "
                                  f"(it knows {', '.join(sorted(MOCK_UNIVERSE))})")
        symbols = [x for x in symbols if x not in s.symbol_deny][: s.topn_size]
        market = MockMarket(MockConfig(
            seed=s.seed, symbols=tuple(symbols), upbit_feed_latency_ms=s.upbit_feed_latency_ms,
            binance_feed_latency_ms=s.binance_feed_latency_ms,
            feed_jitter_ms=s.feed_latency_jitter_ms, volatility=s.mock_volatility))
        seconds = DEFAULT_MOCK_SECONDS if duration_s is None else duration_s
        gen = ((b, {}) for b in market.batches(seconds, batch_rows=s.batch_rows))
        return MarketSource("mock", symbols, market.symtab, gen,
                            f"mock market, {len(symbols)} symbols, {seconds:g} s, seed {s.seed}",
                            seconds, origin={"seed": s.seed, "volatility": s.mock_volatility,
                                             "seconds": seconds})
    if kind == "replay":
        if not replay_path:
            raise DataSourceError("--replay-path is required with --data-source replay")
        ranked = scan_symbols(replay_path)
        events: list[dict] = []
        changes: list[tuple[int, list[str]]] = []
        if s.symbols:
            symbols = [x for x in s.symbols if x not in s.symbol_deny]
            missing = [x for x in symbols if x not in ranked]
            if missing:
                raise DataSourceError(f"SYMBOLS: {', '.join(missing)} not on both venues in "
                                      f"{replay_path}")
        elif (recorded := recorded_symbols(replay_path)) is not None:
            symbols = recorded  # a live recording: trade the universe the live run traded
            events = read_topn_events(replay_path)
            changes = topn_membership(events)
        else:
            symbols = [x for x in ranked if x not in s.symbol_deny][: s.topn_size]
        if not symbols:
            raise DataSourceError(f"{replay_path}: no symbol has books on both upbit and binance")
        symtab = SymbolTable()
        # a recording's later TopN changes apply at their recorded times, as they did live
        wanted = set(symbols).union(*(m for _, m in changes)) if changes else set(symbols)
        src = ReplaySource(replay_path, symtab, batch_rows=s.batch_rows, symbols=wanted)
        gen = src.batches()
        if duration_s is not None:
            gen = _limit_duration(gen, duration_s)
        return MarketSource("replay", symbols, symtab, gen,
                            f"replay of {replay_path} ({src.rows_total} rows), "
                            f"{len(symbols)} symbols", duration_s,
                            universe_events=_event_poller(events) if changes else None,
                            lot_steps=recorded_lot_steps(events),
                            origin={"path": str(Path(replay_path).resolve()),
                                    "rows": src.rows_total, "seconds": duration_s})
    if kind == "real":
        from common.marketdata.live_process import open_live

        live = open_live(s, duration_s, record_path)
        sel = live.selection
        how = "SYMBOLS" if s.symbols else f"TopN by 24 h value, refreshed every {s.topn_refresh_s:g} s"
        return MarketSource("real", list(live.symbols), live.symtab, live.batches(),
                            f"live Upbit + Binance books, {len(live.symbols)} symbols ({how}; "
                            f"USDT/KRW {sel.fx_krw:,.2f})"
                            + (f", recording to {record_path}" if record_path else ""),
                            duration_s, universe_events=_event_poller(live.topn_events),
                            on_drained=live.release, lot_steps=dict(live.lot_steps),
                            origin={"record_path": record_path})
    raise DataSourceError(f"--data-source: unknown source {kind!r} (choose from "
                          f"{', '.join(DATA_SOURCES)})")


def _limit_duration(gen, duration_s: float):
    """Stop a replay ``duration_s`` event-seconds after its first row."""
    start = None
    for batch, rejects in gen:
        if len(batch) == 0:
            yield batch, rejects
            continue
        if start is None:
            start = int(batch.recv_ns[0])
        end = start + int(duration_s * 1e9)
        if batch.recv_ns[-1] < end:
            yield batch, rejects
            continue
        keep = int(np.searchsorted(batch.recv_ns, end, side="left"))
        if keep:
            yield batch.take(np.arange(keep)), rejects
        return


@dataclass(frozen=True, slots=True)
class ValidatedBatch:
    """A batch as the engines consume it: the rows, which are valid, and the top of book."""

    batch: BookBatch
    valid_rows: np.ndarray
    top: TopBatch
    rows_in: int
    rejected: dict[str, int]


_NO_ROWS = np.zeros(0, dtype=np.int64)


def executor_rows(vb: ValidatedBatch, symbol_ids: dict[str, int], fx_id: int
                  ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """The rows each symbol's executor takes from a validated batch, for both engines alike:
    per symbol, its valid Upbit rows and its valid Binance rows; and the valid FX (Upbit) rows,
    which every executor takes. Indices into the batch, each ascending, no copies of rows."""
    valid, top = vb.valid_rows, vb.top
    fx = top.rows_of(fx_id)
    fx_rows = valid[fx[top.venue[fx] == UPBIT]]
    out = {}
    for name, sid in symbol_ids.items():
        mine = top.rows_of(sid)
        if mine.size:
            # rows_of keeps row order, so each venue's part stays ascending
            on_upbit = top.venue[mine] == UPBIT
            out[name] = (valid[mine[on_upbit]], valid[mine[~on_upbit]])
        else:
            out[name] = (_NO_ROWS, _NO_ROWS)
    return out, fx_rows


def validate_batch(validator: BookValidator, batch: BookBatch,
                   pre_rejected: dict[str, int], depth: DepthCost | None = None) -> ValidatedBatch:
    """Validate every book once; the coordinator's light stream is the valid rows' top of book,
    with each book side's expected slippage for one trade (``depth``; None: unknown)."""
    codes = validator.validate(batch)
    valid = np.flatnonzero(codes == 0)
    rejected = count_reasons(codes)
    for k, v in pre_rejected.items():
        rejected[k] = rejected.get(k, 0) + v
    bid = batch.bid_px[batch.bid_off[valid]]
    ask = batch.ask_px[batch.ask_off[valid]]
    n = len(batch)
    sym = batch.sym[valid]
    n_sym = len(batch.symbols)
    # symbol ids are small: a 16-bit stable sort is a radix sort, linear in the rows
    order = np.argsort(sym.astype(np.int16) if n_sym < 32768 else sym, kind="stable")
    start = np.searchsorted(sym[order], np.arange(n_sym + 1))
    slip_bid, slip_ask = depth.slippage(batch, valid) if depth is not None else (None, None)
    top = TopBatch(recv_ns=batch.recv_ns[valid], venue=batch.venue[valid], sym=sym,
                   bid=bid, ask=ask,
                   start_ns=int(batch.recv_ns[0]) if n else -1,
                   end_ns=int(batch.recv_ns.max()) if n else -1,
                   sym_order=order, sym_start=start, slip_bid=slip_bid, slip_ask=slip_ask)
    return ValidatedBatch(batch, valid, top, n + sum(pre_rejected.values()), rejected)
