"""The WebSocket connection loop shared by the exchange feeds: connect, read, reconnect.

A feed runs in the live source's asyncio loop. It reports to a ``FeedSink`` (the live source):
rows, rejects by reason, liveness, connection and sync state. After any drop it reconnects with
exponential backoff and resubscribes, which makes the exchange send full books again (a full
resync). A connection is also renewed before ``max_connection_s`` (Binance closes connections
after 24 h). Pings are answered by aiohttp (``autoping``); the heartbeat detects dead peers.
"""

from __future__ import annotations

import abc
import asyncio
import time
from typing import Protocol

import aiohttp
from loguru import logger

from common.marketdata.rows import BookRow
from common.types import VENUE_NAMES


class FeedSink(Protocol):
    """Where a feed reports (implemented by the live source; called in its event loop)."""

    def now_ns(self) -> int: ...

    def on_row(self, row: BookRow) -> None: ...

    def on_reject(self, reason: str, n: int = 1) -> None: ...

    def on_alive(self, venue: int) -> None: ...

    def on_state(self, venue: int, connected: bool, ready: bool) -> None: ...

    def on_symbol_sync(self, venue: int, symbol: str, synced: bool) -> None: ...

    def on_gap(self, venue: int, what: str) -> None: ...


class WsFeed(abc.ABC):
    """Base class: subclasses give the URL, the opening handshake and the frame handler."""

    venue: int = -1

    def __init__(self, sink: FeedSink, session: aiohttp.ClientSession, *,
                 max_connection_s: float = 23.5 * 3600, backoff_max_s: float = 30.0,
                 heartbeat_s: float = 20.0) -> None:
        self.sink = sink
        self.session = session
        self.max_connection_s = max_connection_s
        self.backoff_max_s = backoff_max_s
        self.heartbeat_s = heartbeat_s
        self.symbols: tuple[str, ...] = ()
        self.reconnects = 0
        self.connections = 0
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._stopping = False
        self._tasks: set[asyncio.Task] = set()

    @property
    def name(self) -> str:
        return VENUE_NAMES[self.venue]

    # -- subclass hooks ----------------------------------------------------------------------
    @abc.abstractmethod
    def url(self) -> str:
        """The WebSocket URL for the current symbols."""

    async def on_open(self, ws: aiohttp.ClientWebSocketResponse) -> None:  # noqa: B027 (optional)
        """Subscribe / start the resync after a (re)connect."""

    @abc.abstractmethod
    def on_frame(self, data: bytes | str, recv_ns: int) -> None:
        """Parse one received frame and hand its rows to the sink."""

    def on_close(self) -> None:  # noqa: B027 (an optional hook)
        """Forget the connection's state (books, buffers)."""

    # -- control -----------------------------------------------------------------------------
    def set_symbols(self, symbols: tuple[str, ...]) -> None:
        """Change the subscription: on the open connection where the venue allows it (the
        symbols that stay keep streaming), else by renewing the connection."""
        if tuple(symbols) == self.symbols:
            return
        old, self.symbols = self.symbols, tuple(symbols)
        ws = self._ws
        if ws is not None and not ws.closed and self.resubscribe(ws, old):
            return
        self.force_reconnect("subscription changed")

    def resubscribe(self, ws: aiohttp.ClientWebSocketResponse, old: tuple[str, ...]) -> bool:
        """Change the streams of the open connection from ``old`` to ``self.symbols``; False
        when the venue cannot (the connection is then renewed)."""
        return False

    def force_reconnect(self, why: str) -> None:
        ws = self._ws
        if ws is not None and not ws.closed:
            logger.info("{}: renewing the connection ({})", self.name, why)
            self.spawn(ws.close())

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            logger.error("{}: background task failed ({}: {}); renewing the connection",
                         self.name, type(exc).__name__, exc)
            self.force_reconnect("background task failed")

    async def stop(self) -> None:
        self._stopping = True
        ws = self._ws
        if ws is not None and not ws.closed:
            await ws.close()
        for t in list(self._tasks):
            t.cancel()

    # -- the loop ----------------------------------------------------------------------------
    async def run(self) -> None:
        attempt = 0
        while not self._stopping:
            if not self.symbols:
                await asyncio.sleep(0.1)
                continue
            opened = time.monotonic()
            reason = "closed by the exchange"
            got_frames = False
            try:
                async with self.session.ws_connect(
                    self.url(), heartbeat=self.heartbeat_s, autoping=True,
                    max_msg_size=16 * 1024 * 1024, timeout=aiohttp.ClientWSTimeout(ws_close=2.0),
                ) as ws:
                    self._ws = ws
                    self.connections += 1
                    self.sink.on_state(self.venue, connected=True, ready=False)
                    await self.on_open(ws)
                    deadline = opened + self.max_connection_s
                    while True:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            reason = "planned renewal before the connection time limit"
                            break
                        try:
                            msg = await ws.receive(timeout=left)
                        except TimeoutError:
                            continue
                        if msg.type in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
                            got_frames = True
                            self.on_frame(msg.data, self.sink.now_ns())
                        elif msg.type == aiohttp.WSMsgType.ERROR:
                            reason = f"error: {ws.exception()}"
                            break
                        elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                                          aiohttp.WSMsgType.CLOSED):
                            reason = f"closed (code {ws.close_code})"
                            break
            except asyncio.CancelledError:
                raise
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # a bug in a handler must not end the feed: log, reconnect
                logger.exception("{}: unexpected error in the feed", self.name)
                reason = f"{type(exc).__name__}: {exc}"
            finally:
                self._ws = None
                self.on_close()
                self.sink.on_state(self.venue, connected=False, ready=False)
            if self._stopping:
                return
            self.reconnects += 1
            self.sink.on_gap(self.venue, "reconnect")
            if got_frames:
                attempt = 0
            delay = min(self.backoff_max_s, 0.25 * (2 ** attempt))
            attempt += 1
            logger.warning("{}: connection lost after {:.1f} s ({}); gap: reconnecting in "
                           "{:.2f} s with a full resync", self.name, time.monotonic() - opened,
                           reason, delay)
            await asyncio.sleep(delay)
