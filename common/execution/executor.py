"""The PaperExecutor: one per symbol, fills each leg against that venue's L2 book at arrival.

Two clocks: a book's ``recv_ns`` (when the trader saw it; decisions run on it) and its
``ts_ns`` (the venue's time of that state). A leg sent at ``decision_ts`` reaches the venue at
``arrival = decision_ts + order latency`` and meets the venue's book as of that moment: the
latest valid book of that venue with ``ts_ns <= arrival``, which the trader may not have
received yet. The executor keeps the symbol's two L2 books and the FX book by venue time (the
current batch's rows plus copies of the earlier books a leg may still meet). A leg can be filled
once every book with ``ts_ns <= arrival`` is in: the coordinator collects it only when the engine
clock passed ``arrival`` + the feed-latency bound (later books are stragglers, rejected by the
validator). Liquidity a fill took from a book is remembered until a newer book of that venue
arrives. Filled quantities are whole lots (``Trade.lot``): a fill below one lot is no fill.
"""

from __future__ import annotations

import math
import zlib
from bisect import bisect_right
from dataclasses import dataclass

import numpy as np

from common.fill.models import FillModelConfig, create_fill_model
from common.marketdata.batch import BookBatch
from common.portfolio.state import FeeSchedule, PortfolioState
from common.risk.guard import RiskGuard
from common.types import (
    BINANCE,
    FX_SYMBOL,
    UPBIT,
    VENUE_CODES,
    VENUE_NAMES,
    ExecutionResult,
    LegFill,
    Side,
    Trade,
    classify_result,
)


def symbol_seed(seed: int, symbol: str, salt: str) -> int:
    """A stable per-symbol seed (Python's hash() is salted per process; crc32 is not)."""
    return (seed * 1_000_003 + zlib.crc32(f"{salt}:{symbol}".encode())) & 0x7FFF_FFFF


@dataclass(frozen=True, slots=True)
class LatencyConfig:
    upbit_ms: float = 30.0
    binance_ms: float = 120.0
    jitter_ms: float = 10.0


class LatencyModel:
    """Per-venue order latency with seeded uniform jitter, one RNG per symbol."""

    def __init__(self, cfg: LatencyConfig, seed: int, symbol: str) -> None:
        self.cfg = cfg
        self._rng = np.random.default_rng(symbol_seed(seed, symbol, "latency"))

    def draw_ns(self, venue: int) -> int:
        base = self.cfg.upbit_ms if venue == UPBIT else self.cfg.binance_ms
        jitter = self._rng.random() * self.cfg.jitter_ms if self.cfg.jitter_ms > 0 else 0.0
        return int(round((base + jitter) * 1e6))

    @property
    def max_ns(self) -> int:
        return int(round((max(self.cfg.upbit_ms, self.cfg.binance_ms) + self.cfg.jitter_ms) * 1e6))

    def get_state(self) -> dict:
        return self._rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self._rng.bit_generator.state = state


#: what a venue or the FX book has in a batch without its rows (shared, never written to)
_NO_ROWS = np.zeros(0, dtype=np.int64)
_KEY_SHIFT = 1 << 32


class _VenueBook:
    """One venue's books of one symbol (or the FX book), searchable by venue time ``ts_ns``.

    The current batch's rows are held by reference; books of earlier batches that a leg may
    still meet are kept as copies (``old``), so a snapshot never needs more than the current
    batch. Which earlier books are kept: the latest one with ``ts_ns`` at or before the
    ``keep_from`` time passed to ``replace`` and every later one; nothing that arrives at or
    after ``keep_from`` can meet an older book.
    """

    __slots__ = ("batch", "rows", "ts", "recv", "serial", "old", "old_ts", "consumed_key",
                 "consumed_bid", "consumed_ask")

    def __init__(self) -> None:
        self.batch: BookBatch | None = None
        self.rows = _NO_ROWS
        self.ts = _NO_ROWS
        self.recv = _NO_ROWS
        self.serial = 0
        #: copied earlier books, ts ascending: (key, ts_ns, recv_ns, bid_px, bid_sz, ask_px, ask_sz)
        self.old: list[tuple] = []
        self.old_ts: list[int] = []
        self.consumed_key = -1
        self.consumed_bid = 0.0
        self.consumed_ask = 0.0

    def replace(self, batch: BookBatch, rows: np.ndarray, serial: int, keep_from: int) -> None:
        """Make ``rows`` of ``batch`` the current books, keeping the earlier books a leg
        arriving at or after ``keep_from`` (venue time) may still meet."""
        if self.rows.size:
            k = int(np.searchsorted(self.ts, keep_from, side="right")) - 1
            if k >= 0:
                self.old, self.old_ts = [], []  # a current book supersedes every older one
            for j in range(max(k, 0), self.rows.size):
                row = int(self.rows[j])
                bpx, bsz = self.batch.levels(row, True)
                apx, asz = self.batch.levels(row, False)
                self.old.append((self.serial * _KEY_SHIFT + row, int(self.ts[j]),
                                 int(self.recv[j]), bpx.copy(), bsz.copy(), apx.copy(),
                                 asz.copy()))
                self.old_ts.append(int(self.ts[j]))
        if len(self.old) > 1:
            k = bisect_right(self.old_ts, keep_from) - 1
            if k > 0:
                del self.old[:k], self.old_ts[:k]
        self.batch, self.rows, self.serial = batch, rows, serial
        if rows.size:
            self.ts, self.recv = batch.ts_ns[rows], batch.recv_ns[rows]
        else:
            self.ts = self.recv = _NO_ROWS

    def at(self, arrival_ns: int):
        """(key, ts_ns, recv_ns, bid_px, bid_sz, ask_px, ask_sz) of the latest book with
        ``ts_ns <= arrival_ns``, or None if there is none."""
        k = int(np.searchsorted(self.ts, arrival_ns, side="right")) - 1
        if k >= 0:
            row = int(self.rows[k])
            bpx, bsz = self.batch.levels(row, True)
            apx, asz = self.batch.levels(row, False)
            return (self.serial * _KEY_SHIFT + row, int(self.ts[k]), int(self.recv[k]),
                    bpx, bsz, apx, asz)
        k = bisect_right(self.old_ts, arrival_ns) - 1
        return self.old[k] if k >= 0 else None

    def mid_at(self, arrival_ns: int) -> float:
        """Mid of the latest book with ``ts_ns <= arrival_ns`` (nan if none)."""
        found = self.at(arrival_ns)
        return math.nan if found is None else float(found[3][0] + found[5][0]) * 0.5

    @property
    def holds_rows(self) -> bool:
        return bool(self.rows.size)

    def get_state(self) -> dict:
        return {"old": list(self.old), "rows": self.rows, "serial": self.serial,
                "consumed": (self.consumed_key, self.consumed_bid, self.consumed_ask)}

    def set_state(self, state: dict, batch: BookBatch | None) -> None:
        self.old = list(state["old"])
        self.old_ts = [b[1] for b in self.old]
        self.serial, self.rows = state["serial"], state["rows"]
        self.batch = batch
        if batch is not None and self.rows.size:
            self.ts, self.recv = batch.ts_ns[self.rows], batch.recv_ns[self.rows]
        else:
            self.ts = self.recv = _NO_ROWS
        self.consumed_key, self.consumed_bid, self.consumed_ask = state["consumed"]


class PaperExecutor:
    """Fills a symbol's trades leg by leg through its FillModel against the books at arrival.

    Use either the batch protocol (``ingest`` the symbol's validated rows, ``submit`` trades at
    decision time, ``collect`` results once the engine clock has passed their arrival), or the
    seed's one-shot ``execute_trades`` on books already ingested. When a ``portfolio_state`` is
    given, ``execute_trades`` also applies the fills to it (the seed's single-process use); the
    engines keep balances in the coordinator and pass none.
    """

    def __init__(
        self,
        symbol: str,
        fill_model_config: FillModelConfig,
        fees: FeeSchedule,
        seed: int,
        portfolio_state: PortfolioState | None = None,
        risk_guard: RiskGuard | None = None,
    ) -> None:
        self.symbol = symbol
        self.fees = fees
        self.portfolio_state = portfolio_state
        self.risk_guard = risk_guard
        self.fill_model = create_fill_model(fill_model_config, symbol_seed(seed, symbol, "fill"))
        self._books = (_VenueBook(), _VenueBook())
        self._fx = _VenueBook()  # the KRW-USDT book: USD per KRW at a leg's arrival
        self._serial = 0
        #: submitted trades not complete yet: {"trade", "buy", "sell"}, a leg _WAITING until filled
        self._pending: list[dict] = []
        self._done: list[ExecutionResult] = []
        self.watermark_ns = -1

    # -- market data ---------------------------------------------------------------------------
    def ingest(self, batch: BookBatch, watermark_ns: int, rows: np.ndarray | None = None) -> None:
        """Take this symbol's validated rows (both venues, plus FX rows) of the next batch.

        ``rows``: the indices of the batch's rows meant for this executor (valid rows of its
        symbol and of the FX book, each group ascending); None means every row of ``batch``.
        ``watermark_ns`` is the engine clock at the start of the batch: every leg arriving
        before it is filled now against the books it can see, before they are replaced.
        """
        names = batch.symbols
        fx_id = names.index(FX_SYMBOL) if FX_SYMBOL in names else -2
        my_id = names.index(self.symbol) if self.symbol in names else -2
        sel = np.arange(len(batch)) if rows is None else np.asarray(rows, dtype=np.int64)
        sym, venue = batch.sym[sel], batch.venue[sel]
        self.ingest_split(batch, watermark_ns, sel[(sym == my_id) & (venue == UPBIT)],
                          sel[(sym == my_id) & (venue == BINANCE)],
                          sel[(sym == fx_id) & (venue == UPBIT)])

    def ingest_split(self, batch: BookBatch, watermark_ns: int, up: np.ndarray, bn: np.ndarray,
                     fx_rows: np.ndarray) -> None:
        """``ingest`` with the rows already split: this symbol's Upbit rows, its Binance rows
        and the FX book's (Upbit) rows, each ascending (both engines split a batch for all
        executors at once: ``common.engine.build.executor_rows``).

        Books are kept by venue time: a leg arriving at ``arrival`` later meets the latest book
        with ``ts_ns <= arrival``, which may be one of this batch or of an earlier one (every
        earlier book a pending or future leg can meet is kept)."""
        if not (up.size or bn.size or fx_rows.size or self._pending) and self._quiet:
            # nothing new and nothing to fill: the books seen so far are already kept; only
            # the batch (none of whose rows are held) is the current one, as after any ingest
            self._books[UPBIT].batch = self._books[BINANCE].batch = self._fx.batch = batch
            self.watermark_ns = max(self.watermark_ns, watermark_ns)
            return
        # future legs arrive after the watermark; pending ones at their own arrival
        keep = [watermark_ns, watermark_ns, watermark_ns]
        for p in self._pending:
            t = p["trade"]
            if p["buy"] == _WAITING:
                v = VENUE_CODES[t.buy_exchange]
                keep[v] = min(keep[v], t.buy_arrival_ns)
                keep[2] = min(keep[2], t.buy_arrival_ns)
            if p["sell"] == _WAITING:
                v = VENUE_CODES[t.sell_exchange]
                keep[v] = min(keep[v], t.sell_arrival_ns)
                keep[2] = min(keep[2], t.sell_arrival_ns)
        self._serial += 1
        self._books[UPBIT].replace(batch, up, self._serial, keep[UPBIT])
        self._books[BINANCE].replace(batch, bn, self._serial, keep[BINANCE])
        self._fx.replace(batch, fx_rows, self._serial, keep[2])
        self.watermark_ns = max(self.watermark_ns, watermark_ns)

    @property
    def _quiet(self) -> bool:
        """No rows of the last batch held: every book seen is among the kept copies."""
        return not (self._books[UPBIT].holds_rows or self._books[BINANCE].holds_rows
                    or self._fx.holds_rows)

    def fx_mid_at(self, t_ns: int) -> float:
        """KRW per USDT: the mid of the latest FX book with venue time at or before ``t_ns``."""
        return self._fx.mid_at(t_ns)

    # -- trades --------------------------------------------------------------------------------
    def submit(self, trades: list[Trade]) -> None:
        for t in trades:
            self._pending.append({
                "trade": t,
                "buy": _WAITING if t.buy_exchange is not None else None,
                "sell": _WAITING if t.sell_exchange is not None else None,
            })

    def collect(self, up_to_ns: int) -> list[ExecutionResult]:
        """Fill every pending leg that arrived at or before ``up_to_ns``; return the trades
        completed since the last collect (all their legs filled), in submission order."""
        self._fill_pending(up_to_ns)
        done, self._done = self._done, []
        return done

    def execute_trades(self, trades: list[Trade]) -> list[ExecutionResult]:
        """The seed's entry point: fill these trades now against the ingested books."""
        self.submit(trades)
        results = self.collect(max(max(t.buy_arrival_ns, t.sell_arrival_ns) for t in trades))
        if self.portfolio_state is not None:
            for r in results:
                for leg in (r.buy, r.sell):
                    if leg is not None:
                        self.portfolio_state.apply_fill(leg, self.symbol)
        return results

    def _fill_pending(self, up_to_ns: int) -> None:
        """Fill every pending leg that arrived at or before ``up_to_ns``, leg by leg.

        Legs fill one at a time, not trade by trade: a leg must meet the books as they were at
        its own arrival, even when the other leg of its trade arrives after the next batch.
        """
        if not self._pending:
            return
        legs = []
        for i, p in enumerate(self._pending):
            for side in ("buy", "sell"):
                if p[side] == _WAITING and _arrival(p["trade"], side) <= up_to_ns:
                    legs.append((_arrival(p["trade"], side), p["trade"].trade_id, side, i))
        for _, _, side, i in sorted(legs):
            p = self._pending[i]
            t = p["trade"]
            if side == "buy":
                p["buy"] = self._fill_leg(t, VENUE_CODES[t.buy_exchange], Side.BUY, t.buy_price,
                                          t.buy_limit, t.buy_arrival_ns)
            else:
                p["sell"] = self._fill_leg(t, VENUE_CODES[t.sell_exchange], Side.SELL,
                                           t.sell_price, t.sell_limit, t.sell_arrival_ns)
        still = []
        for p in self._pending:
            if p["buy"] == _WAITING or p["sell"] == _WAITING:
                still.append(p)
                continue
            legs_done = [x for x in (p["buy"], p["sell"]) if x is not None]
            self._done.append(ExecutionResult(
                trade=p["trade"], buy=p["buy"], sell=p["sell"],
                trade_result=classify_result(legs_done),
                fill_ts_ns=max(x.arrival_ns for x in legs_done)))
        self._pending = still

    def _fill_leg(self, trade: Trade, venue: int, side: Side, decision_px: float, limit: float,
                  arrival: int) -> LegFill:
        book = self._books[venue]
        usd_per_quote = 1.0 if venue == BINANCE else 1.0 / self.fx_mid_at(arrival)
        found = book.at(arrival)
        qty = trade.quantity
        if found is None:
            return LegFill(VENUE_NAMES[venue], int(side), qty, 0.0, 0.0, decision_px, math.nan,
                           limit, 0.0, _quote_of(venue), arrival, -1, usd_per_quote, -1,
                           trade.lot)
        key, ts, recv, bpx, bsz, apx, asz = found
        if book.consumed_key != key:
            book.consumed_key, book.consumed_bid, book.consumed_ask = key, 0.0, 0.0
        if side == Side.BUY:
            px, sz, consumed = apx, asz, book.consumed_ask
        else:
            px, sz, consumed = bpx, bsz, book.consumed_bid
        out = self.fill_model.fill(int(side), qty, limit, px, sz, consumed, trade.lot)
        if side == Side.BUY:
            book.consumed_ask += out.consumed_qty
        else:
            book.consumed_bid += out.consumed_qty
        best = float(px[0]) if px.size else math.nan
        if out.filled_qty > 0:
            fee, fee_asset = self.fees.fee_of(venue, int(side), out.filled_qty, out.vwap_price,
                                              self.symbol)
        else:
            fee, fee_asset = 0.0, _quote_of(venue)
        return LegFill(VENUE_NAMES[venue], int(side), qty, out.filled_qty, out.vwap_price,
                       decision_px, best, limit, fee, fee_asset, arrival, recv, usd_per_quote,
                       ts, trade.lot)

    # -- snapshots -----------------------------------------------------------------------------
    def get_state(self) -> dict:
        """Everything needed to continue exactly: the current batch's rows (pending legs may still
        need them), the kept earlier books, consumed liquidity, the fill model's RNG, pending
        trades."""
        return {
            "batch": self._books[UPBIT].batch,
            "books": [b.get_state() for b in self._books],
            "fx": self._fx.get_state(),
            "fill_model": self.fill_model.get_state(),
            "pending": [dict(p) for p in self._pending],
            "done": list(self._done),
            "serial": self._serial,
            "watermark_ns": self.watermark_ns,
        }

    def set_state(self, state: dict) -> None:
        for b, s in zip(self._books, state["books"], strict=True):
            b.set_state(s, state["batch"])
        self._fx.set_state(state["fx"], state["batch"])
        self.fill_model.set_state(state["fill_model"])
        self._pending = [dict(p) for p in state["pending"]]
        self._done = list(state["done"])
        self._serial = state["serial"]
        self.watermark_ns = state["watermark_ns"]


#: marks a leg that has not arrived yet (a string survives pickling as an equal value)
_WAITING = "waiting"


def _arrival(trade: Trade, side: str) -> int:
    return trade.buy_arrival_ns if side == "buy" else trade.sell_arrival_ns


def _quote_of(venue: int) -> str:
    return "KRW" if venue == UPBIT else "USDT"


class ExecutorFactory:
    """Creates one PaperExecutor per symbol, lazily, all with the same fill model settings."""

    def __init__(self, fees: FeeSchedule | None = None, seed: int = 0) -> None:
        self.fees = fees or FeeSchedule()
        self.seed = seed
        self.executors: dict[str, PaperExecutor] = {}

    def create_paper_executor(
        self,
        symbol: str,
        portfolio_state: PortfolioState | None,
        risk_guard: RiskGuard | None,
        fill_model_config: FillModelConfig,
    ) -> PaperExecutor:
        ex = self.executors.get(symbol)
        if ex is None:
            ex = PaperExecutor(symbol, fill_model_config, self.fees, self.seed,
                               portfolio_state=portfolio_state, risk_guard=risk_guard)
            self.executors[symbol] = ex
        return ex
