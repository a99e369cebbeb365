"""The live market-data source: Upbit and Binance books over WebSocket, TopN, staleness, recording.

Network I/O runs in a background thread with its own asyncio loop (two feeds, the TopN refresh,
a silence watchdog). Rows cross to the engine's thread through one locked list; ``batches()``
yields whatever has arrived as one ``BookBatch`` in ``recv_ns`` order (so a batch is small when
the engine keeps up and grows when it falls behind), with the rows dropped on the way counted by
reason in the pre-rejected dict. ``push_to()`` instead hands each event-loop turn's rows to a
callback in the I/O thread (``live_process.py`` runs a source that way in its own process).

Staleness (no trading on stale data): a venue is stale while it is disconnected, resyncing
(Upbit: not every code has sent its snapshot yet; Binance: a book being rebuilt from a snapshot
blocks its symbol), or silent for ``STALE_MS`` (Upbit is kept talking by PING / ``{"status":
"UP"}``, so silence means a dead link, not a quiet book). While a symbol is blocked none of its
books (either venue) reach the engine, so the engine takes no decision on it; while a venue is
stale nothing does (the FX book is Upbit's). The latest book of each blocked stream is held;
a held book replaced by a newer one is counted as ``stale`` (not during a symbol's first
sync, when it could never have been traded on). When the block lifts, the held books
are emitted again, stamped with the time they are released, so the engine restarts from current
books on both sides. A silent venue is reconnected after three ``STALE_MS``.

Recording (``--record-path``): exactly the batches handed to the engine are recorded, plus TopN
changes, so replaying the directory gives the engine the same rows and the same decisions.
"""

from __future__ import annotations

import asyncio
import atexit
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import aiohttp
from loguru import logger

from common.marketdata.batch import BookBatch, SymbolTable
from common.marketdata.binance import BinanceFeed, BinanceRest
from common.marketdata.record import RecordingWriter
from common.marketdata.replay import DataSourceError
from common.marketdata.rest import RegionRestrictedError, RestError
from common.marketdata.rows import BookRow, rows_to_batch
from common.marketdata.topn import TopNChange, TopNProvider, TopNSelection
from common.marketdata.upbit import DEFAULT_LEVELS, UpbitFeed, UpbitRest
from common.types import BINANCE, FX_SYMBOL, UPBIT, VENUE_NAMES

_VENUES = (UPBIT, BINANCE)
#: GIL switch interval while a live source runs (see LiveSource.start)
GIL_SWITCH_S = 0.001


@dataclass(frozen=True, slots=True)
class LiveConfig:
    upbit_rest_url: str = "https://api.upbit.com"
    upbit_ws_url: str = "wss://api.upbit.com/websocket/v1"
    binance_rest_url: str = "https://api.binance.com"
    binance_ws_url: str = "wss://stream.binance.com:9443"
    topn_size: int = 20
    symbols: tuple[str, ...] = ()  # fixed list instead of TopN
    aliases: dict = field(default_factory=dict)
    deny: tuple[str, ...] = ()
    topn_refresh_s: float = 300.0
    outlier_bps: float = 1500.0
    stale_ms: int = 5000
    upbit_levels: int = DEFAULT_LEVELS
    binance_depth: int = 20
    max_batch_rows: int = 65536
    poll_s: float = 0.05
    max_connection_s: float = 23.5 * 3600
    upbit_ping_s: float = 5.0
    start_timeout_s: float = 60.0

    @classmethod
    def from_settings(cls, s) -> LiveConfig:
        return cls(
            upbit_rest_url=s.upbit_rest_url, upbit_ws_url=s.upbit_ws_url,
            binance_rest_url=s.binance_rest_url, binance_ws_url=s.binance_ws_url,
            topn_size=s.topn_size, symbols=tuple(s.symbols), aliases=dict(s.symbol_aliases),
            deny=tuple(s.symbol_deny), topn_refresh_s=s.topn_refresh_s,
            outlier_bps=s.premium_outlier_bps, stale_ms=s.stale_ms,
            max_batch_rows=s.batch_rows,
            upbit_ping_s=min(5.0, max(0.2, s.stale_ms / 3000.0)),
        )


class EngineSide:
    """What a live source does on the engine's side, however its books arrive: pace the polls
    until the duration, keep (and record) the TopN events, record and count each batch handed
    to the engine with the reject counts gathered since the last one."""

    cfg: LiveConfig
    duration_s: float | None
    recorder: RecordingWriter | None
    topn_events: list[dict]
    stats: dict[str, int]

    def _poll_waits(self, running: Callable[[], bool]) -> Iterator[float]:
        """How long each poll may wait, until the duration has passed or ``running()`` fails."""
        t_end = None if self.duration_s is None else time.monotonic() + self.duration_s
        while running():
            wait = self.cfg.poll_s
            if t_end is not None:
                left = t_end - time.monotonic()
                if left <= 0:
                    return
                wait = min(wait, left)
            yield wait

    def _take_events(self, events: list[dict]) -> None:
        for ev in events:
            self.topn_events.append(ev)
            if self.recorder is not None:
                self.recorder.write_event(ev)

    def _close_outputs(self) -> None:
        """The end of the source: the recording closed (its last part readable), no exit hook."""
        if self.recorder is not None:
            self.recorder.close()
        atexit.unregister(self.stop)

    def _handed_over(self, batch: BookBatch) -> BookBatch:
        """``batch`` recorded and counted, as it goes to the engine."""
        if self.recorder is not None:
            self.recorder.write(batch)
        self.stats["rows_emitted"] += len(batch)
        return batch


def add_counts(into: dict[str, int], counts: dict[str, int]) -> None:
    for k, v in counts.items():
        into[k] = into.get(k, 0) + v


class LiveSource(EngineSide):
    """Streams ``(BookBatch, pre-rejected counts)`` from the live exchanges (see module doc)."""

    def __init__(self, cfg: LiveConfig, symtab: SymbolTable | None = None,
                 record_path: str | None = None, duration_s: float | None = None) -> None:
        self.cfg = cfg
        self.symtab = symtab if symtab is not None else SymbolTable()
        self.symtab.fx_id  # noqa: B018 - the FX book gets a stable id first
        self.duration_s = duration_s
        self.recorder = RecordingWriter(record_path) if record_path else None
        self.selection: TopNSelection | None = None
        self.symbols: tuple[str, ...] = ()
        self.lot_steps: dict[str, float] = {}
        self._switch_s: float | None = None  # the GIL switch interval before start()
        self.topn_events: list[dict] = []
        self.stats: dict[str, int] = {"reconnects": 0, "sequence_gaps": 0, "stale_periods": 0,
                                      "rows_emitted": 0}
        # -- shared with the I/O thread (under _cond) ---------------------------------------------
        self._cond = threading.Condition()
        self._out: list[BookRow] = []
        self._rejects: dict[str, int] = {}
        self._events: list[dict] = []
        # -- I/O-thread state ---------------------------------------------------------------------
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._session: aiohttp.ClientSession | None = None
        self._provider: TopNProvider | None = None
        self._feeds: dict[int, object] = {}
        self._tasks: list[asyncio.Task] = []
        self._last_now = 0
        self._stale_ns = cfg.stale_ms * 1_000_000
        self._connected = {v: False for v in _VENUES}
        self._ready = {v: False for v in _VENUES}
        self._alive_ns = {v: 0 for v in _VENUES}
        self._silent_flag = {v: False for v in _VENUES}
        self._renewed_ns = {v: 0 for v in _VENUES}
        self._unsynced: dict[str, set[int]] = {}
        self._held: dict[tuple[int, str], BookRow] = {}
        self._awaiting_ready: dict[str, set[int]] = {}
        self._subscribed: list[str] = []
        self._stopped = False
        self._started = False
        self._flowing: set[str] = set()  # symbols whose books have reached the engine
        # -- push mode (see push_to) ----------------------------------------------------------------
        self._push_cb: Callable[[BookBatch | None, dict[str, int], list[dict]], None] | None = None
        self._push_due = False

    # == lifecycle (engine thread) =================================================================
    def start(self) -> tuple[str, ...]:
        """Start the I/O thread, select TopN (or check ``SYMBOLS``) and open both streams.

        Raises ``DataSourceError`` with one line when the exchanges cannot be used."""
        if self._started:
            return self.symbols
        self._started = True
        # the I/O thread and the engine share the GIL: with Python's default 5 ms switch
        # interval, a book parsed while the engine computes waits up to 5 ms to be handed over
        # (measured at 10x the realistic rate: feed p50 2.0 ms; with 1 ms, 0.6 ms)
        self._switch_s = sys.getswitchinterval()
        sys.setswitchinterval(min(self._switch_s, GIL_SWITCH_S))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="live-marketdata",
                                        daemon=True)
        self._thread.start()
        atexit.register(self.stop)
        fut = asyncio.run_coroutine_threadsafe(self._setup(), self._loop)
        try:
            sel = fut.result(timeout=self.cfg.start_timeout_s)
        except RegionRestrictedError as exc:
            self.stop()
            raise DataSourceError(f"--data-source real: {exc}") from None
        except (RestError, aiohttp.ClientError, OSError) as exc:
            self.stop()
            raise DataSourceError(f"--data-source real: cannot reach the exchanges' REST APIs "
                                  f"({' '.join(str(exc).split())}); internet access is "
                                  "needed (no API keys)") from None
        except TimeoutError:
            self.stop()
            raise DataSourceError("--data-source real: the exchanges' REST APIs did not answer "
                                  f"within {self.cfg.start_timeout_s:g} s") from None
        if not sel.members:
            self.stop()
            why = ", ".join(f"{k}: {v}" for k, v in sorted(sel.excluded.items())[:10])
            raise DataSourceError("--data-source real: no symbol is listed on both Upbit (KRW) "
                                  f"and Binance (USDT){' (' + why + ')' if why else ''}")
        self.selection = sel
        self.symbols = sel.members
        if self.cfg.symbols and len(sel.members) < len(self.cfg.symbols):
            missing = [s for s in self.cfg.symbols if s not in sel.members]
            logger.warning("SYMBOLS: {} not tradable on both venues; trading {}",
                           ", ".join(missing), ", ".join(sel.members))
        #: Binance quantity steps of every listed symbol (joiners included): the coordinator
        #: makes lots whole multiples of them; recorded, so that a replay sizes trades the same
        self.lot_steps = {c.symbol: c.step_size for c in sel.ranked
                          if c.step_size > 0 and math.isfinite(c.step_size)}
        first = TopNChange(self._now_wall(), sel.members, sel.members, ()).to_json()
        first["lot_steps"] = dict(self.lot_steps)
        self._publish_event(first)
        asyncio.run_coroutine_threadsafe(self._run(), self._loop)
        return self.symbols

    def stop(self) -> None:
        """Stop the I/O thread (bounded wait: never blocks shutdown) and close the recording."""
        if self._stopped:
            return
        self._stopped = True
        if self._switch_s is not None:
            sys.setswitchinterval(self._switch_s)
        loop = self._loop
        if loop is not None and loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=3.0)
            except Exception as exc:  # noqa: BLE001 - shutdown must go on whatever happened
                logger.debug("live source shutdown: {}", exc)
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        self._flush_events()
        self._close_outputs()

    def release(self, symbol: str) -> None:
        """A symbol that left TopN is flat: stop streaming it (called by the coordinator)."""
        if self._loop is not None and not self._stopped:
            self._loop.call_soon_threadsafe(self._drain, symbol)

    # == the engine side ===========================================================================
    def batches(self) -> Iterator[tuple[BookBatch, dict[str, int]]]:
        """Batches of the rows received, in recv_ns order, until the duration, Ctrl-C or
        ``stop()`` (from another thread)."""
        self.start()
        carry: dict[str, int] = {}
        try:
            for wait in self._poll_waits(lambda: not self._stopped):
                rows, rejects, events = self._take(wait)
                add_counts(carry, rejects)
                self._take_events(events)
                step = self.cfg.max_batch_rows
                for i in range(0, len(rows), step):
                    out, carry = carry, {}
                    yield self._handed_over(rows_to_batch(rows[i:i + step], self.symtab)), out
            if carry:
                yield rows_to_batch([], self.symtab), carry
        finally:
            self.stop()

    def _take(self, timeout: float) -> tuple[list[BookRow], dict[str, int], list[dict]]:
        with self._cond:
            if not self._out and not self._events:
                self._cond.wait(timeout)
            rows, self._out = self._out, []
            rejects, self._rejects = self._rejects, {}
            events, self._events = self._events, []
        return rows, rejects, events

    @property
    def io_loop(self) -> asyncio.AbstractEventLoop | None:
        """The I/O thread's event loop (None before ``start``)."""
        return self._loop

    def push_to(self, callback: Callable[[BookBatch | None, dict[str, int], list[dict]], None]
                ) -> tuple[str, ...]:
        """Instead of ``batches()``: hand ``callback(batch or None, rejects, events)`` what has
        arrived, from the I/O thread, once per turn of its event loop in which anything arrived
        (every book parsed in one turn travels together; no hand-over to another thread).
        Runs until ``stop()``; events are also appended to ``topn_events``."""
        self.start()
        self._push_cb = callback
        self._loop.call_soon_threadsafe(self._push)  # what start() published already
        return self.symbols

    def _wake(self) -> None:
        """(Under ``_cond``) something arrived: wake ``batches()``, or schedule one push."""
        self._cond.notify()
        if self._push_cb is not None and not self._push_due:
            self._push_due = True
            if threading.get_ident() == self._thread.ident:
                self._loop.call_soon(self._push)
            else:
                self._loop.call_soon_threadsafe(self._push)

    def _push(self) -> None:
        with self._cond:
            self._push_due = False
            rows, self._out = self._out, []
            rejects, self._rejects = self._rejects, {}
            events, self._events = self._events, []
        self.topn_events.extend(events)
        batch = None
        if rows:
            batch = rows_to_batch(rows, self.symtab)
            self.stats["rows_emitted"] += len(batch)
        if batch is not None or rejects or events:
            self._push_cb(batch, rejects, events)

    def _flush_events(self) -> None:
        """Events published after the last batch (e.g. a drain) still reach ``topn_events``."""
        with self._cond:
            events, self._events = self._events, []
        self._take_events(events)

    # == the I/O thread ============================================================================
    async def _setup(self) -> TopNSelection:
        # trust_env: honour HTTP(S)_PROXY / NO_PROXY like other clients do
        self._session = aiohttp.ClientSession(headers={"Accept": "application/json"},
                                              trust_env=True)
        up = UpbitRest(self._session, self.cfg.upbit_rest_url)
        bn = BinanceRest(self._session, self.cfg.binance_rest_url)
        self._provider = TopNProvider(up, bn, self.cfg.topn_size, self.cfg.aliases,
                                      self.cfg.deny, self.cfg.outlier_bps, self.cfg.symbols)
        sel = await self._provider.select()
        self._provider.members = sel.members
        common = dict(max_connection_s=self.cfg.max_connection_s)
        self._feeds = {
            UPBIT: UpbitFeed(self, self._session, self.cfg.upbit_ws_url,
                             levels=self.cfg.upbit_levels, ping_s=self.cfg.upbit_ping_s,
                             ready_timeout_s=max(1.0, self.cfg.stale_ms / 1000.0), **common),
            BINANCE: BinanceFeed(self, self._session, self.cfg.binance_ws_url, bn,
                                 aliases=self.cfg.aliases, depth=self.cfg.binance_depth,
                                 **common),
        }
        return sel

    async def _run(self) -> None:
        self._subscribed = list(self.symbols)
        self._set_subscription()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(f.run()) for f in self._feeds.values()]
        self._tasks.append(loop.create_task(self._watchdog()))
        if not self.cfg.symbols:
            self._tasks.append(loop.create_task(self._topn_refresh()))

    def _set_subscription(self) -> None:
        syms = tuple(self._subscribed)
        for sym in syms:
            if sym not in self._unsynced:  # a new symbol: blocked until its book is synced
                self._unsynced[sym] = {BINANCE}
        self._feeds[UPBIT].set_symbols(syms)
        self._feeds[BINANCE].set_symbols(syms)

    async def _shutdown(self) -> None:
        for f in self._feeds.values():
            await f.stop()
        for t in self._tasks:
            t.cancel()
        if self._session is not None:
            await self._session.close()

    async def _watchdog(self) -> None:
        step = min(0.25, self.cfg.stale_ms / 4000.0)
        while True:
            await asyncio.sleep(step)
            now = time.monotonic_ns()
            for v in _VENUES:
                if not self._connected[v]:
                    continue
                silent = now - self._alive_ns[v]
                if silent > self._stale_ns and not self._silent_flag[v]:
                    self._silent_flag[v] = True
                    self.stats["stale_periods"] += 1
                    logger.warning("{}: silent for {:.1f} s: stale, not trading", VENUE_NAMES[v],
                                   silent / 1e9)
                if silent > 3 * self._stale_ns and now - self._renewed_ns[v] > 3 * self._stale_ns:
                    self._renewed_ns[v] = now  # one renewal per three STALE_MS of silence
                    self._feeds[v].force_reconnect(f"silent for {silent / 1e9:.1f} s")

    async def _topn_refresh(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.topn_refresh_s)
            try:
                change = await self._provider.refresh(self.now_ns())
            except (RestError, aiohttp.ClientError, OSError) as exc:
                logger.warning("TopN refresh failed ({}); keeping {}", exc,
                               ", ".join(self._provider.members))
                continue
            if change is None:
                continue
            logger.info("TopN changed: +{} -{} (exit-only until flat)", ",".join(change.added),
                        ",".join(change.removed))
            self._publish_event(change.to_json())
            for s in change.added:
                if s not in self._subscribed:
                    self._subscribed.append(s)
                self._awaiting_ready[s] = set()
            self._set_subscription()

    def _drain(self, symbol: str) -> None:
        if symbol in self._subscribed and symbol not in self._provider.members:
            self._subscribed.remove(symbol)
            self._unsynced.pop(symbol, None)
            for key in [k for k in self._held if k[1] == symbol]:
                del self._held[key]
            self._publish_event({"recv_ns": self.now_ns(), "event": "drained",
                                 "symbols": [symbol]})
            self._set_subscription()

    def _publish_event(self, ev: dict) -> None:
        with self._cond:
            self._events.append(ev)
            self._wake()

    # -- FeedSink (called in the I/O loop) ----------------------------------------------------------
    def now_ns(self) -> int:
        """time.time_ns(), never going backwards (rows must stay in recv order)."""
        t = time.time_ns()
        if t <= self._last_now:
            t = self._last_now
        self._last_now = t
        return t

    def _now_wall(self) -> int:
        return time.time_ns()

    def _venue_ok(self, v: int, now_mono: int) -> bool:
        return (self._connected[v] and self._ready[v]
                and now_mono - self._alive_ns[v] <= self._stale_ns)

    def _blocked(self, symbol: str, now_mono: int) -> bool:
        if not (self._venue_ok(UPBIT, now_mono) and self._venue_ok(BINANCE, now_mono)):
            return True
        return bool(self._unsynced.get(symbol))

    def on_alive(self, venue: int) -> None:
        self._alive_ns[venue] = time.monotonic_ns()
        if self._silent_flag[venue]:
            self._silent_flag[venue] = False
            logger.info("{}: talking again", VENUE_NAMES[venue])
        if self._held:
            self._release()

    def on_state(self, venue: int, connected: bool, ready: bool) -> None:
        was = self._connected[venue]
        self._connected[venue] = connected
        self._ready[venue] = ready
        if connected:
            self._alive_ns[venue] = time.monotonic_ns()
        if not connected and was:
            # books held from before the drop are no longer current
            for key in [k for k in self._held if k[0] == venue]:
                del self._held[key]
                if key[1] in self._flowing:
                    self._count("stale")
        elif ready and self._held:
            self._release()

    def on_symbol_sync(self, venue: int, symbol: str, synced: bool) -> None:
        s = self._unsynced.setdefault(symbol, set())
        if synced:
            s.discard(venue)
            if self._held:
                self._release()
        else:
            s.add(venue)

    def on_gap(self, venue: int, what: str) -> None:
        if what == "reconnect":
            self.stats["reconnects"] += 1
        elif what == "sequence_gap":
            self.stats["sequence_gaps"] += 1

    def on_reject(self, reason: str, n: int = 1) -> None:
        if n:
            self._count(reason, n)

    def _count(self, reason: str, n: int = 1) -> None:
        with self._cond:
            self._rejects[reason] = self._rejects.get(reason, 0) + n
            if self._push_cb is not None:
                self._wake()

    def on_row(self, row: BookRow) -> None:
        if row.symbol != FX_SYMBOL and row.symbol not in self._unsynced:
            return  # a symbol no longer subscribed (a frame in flight while renewing)
        if self._blocked(row.symbol, time.monotonic_ns()):
            key = (row.venue, row.symbol)
            if key in self._held and row.symbol in self._flowing:
                self._count("stale")  # (books replaced during a symbol's first sync are not)
            self._held[key] = row
            return
        self._flowing.add(row.symbol)
        if self._awaiting_ready:
            self._note_ready(row)
        with self._cond:
            self._out.append(row)
            if len(self._out) == 1:
                self._wake()

    def _release(self) -> None:
        now_mono = time.monotonic_ns()
        free = [k for k in self._held if not self._blocked(k[1], now_mono)]
        if not free:
            return
        rows = sorted((self._held.pop(k) for k in free), key=lambda r: r.recv_ns)
        self._flowing.update(r.symbol for r in rows)
        # the stamp of the frame being handled (its own row follows these), else the clock
        now = self._last_now or self.now_ns()
        with self._cond:
            self._out.extend(r.restamped(now) for r in rows)
            self._wake()

    def _note_ready(self, row: BookRow) -> None:
        seen = self._awaiting_ready.get(row.symbol)
        if seen is None:
            return
        seen.add(row.venue)
        if len(seen) == 2:
            del self._awaiting_ready[row.symbol]
            self._publish_event({"recv_ns": row.recv_ns, "event": "synced",
                                 "symbols": [row.symbol]})
