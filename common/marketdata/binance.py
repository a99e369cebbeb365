"""Binance spot: diff-depth streams kept in sync with REST snapshots, and the public REST calls.

Wire-format quirks handled here:

* Combined streams: ``<ws>/stream?streams=btcusdt@depth@100ms/ethusdt@depth@100ms``; every
  message is ``{"stream": "<name>", "data": {...}}``. Numbers are JSON strings (``"0.01000000"``).
* A diff-depth event ``{"e": "depthUpdate", "E": <ms>, "s": "BTCUSDT", "U": first, "u": last,
  "b": [[px, qty], ...], "a": [...]}`` carries absolute quantities; qty ``"0"`` removes a level.
* Keeping a local book (Binance's documented procedure): buffer events, fetch ``GET
  /api/v3/depth?symbol=&limit=``; drop buffered events with ``u <= lastUpdateId``; the first
  applied event must have ``U <= lastUpdateId + 1 <= u`` (else the snapshot is too old: fetch
  again); then each event must start at ``U == previous u + 1``. Any gap means updates were
  lost: the symbol is resynced from a new snapshot and the gap counted (``sequence_gap``).
* The server pings every 20 s and drops a connection that does not pong within a minute
  (aiohttp answers); a connection lives at most 24 h, so it is renewed before that.
* HTTP 451 on REST means Binance refuses the region (``RegionRestrictedError``).
"""

from __future__ import annotations

import asyncio
import bisect
import math
from dataclasses import dataclass

import aiohttp
import numpy as np
import orjson
from loguru import logger

from common.marketdata.feed import FeedSink, WsFeed
from common.marketdata.rest import RateLimiter, RestError, get_json
from common.marketdata.rows import BookRow, FrameError
from common.types import BINANCE

QUOTE = "USDT"
DEFAULT_DEPTH = 20
SNAPSHOT_LIMIT = 100


def stream_url(ws_base: str, pairs: list[str]) -> str:
    """The combined-stream URL of the diff-depth streams of ``pairs`` (e.g. ``BTCUSDT``)."""
    streams = "/".join(f"{p.lower()}@depth@100ms" for p in pairs)
    return f"{ws_base.rstrip('/')}/stream?streams={streams}"


def _levels(raw) -> list[tuple[float, float]]:
    if not isinstance(raw, list):
        raise TypeError("levels are not a list")
    return [(float(px), float(qty)) for px, qty in raw]


@dataclass(frozen=True, slots=True)
class DepthUpdate:
    pair: str  # BTCUSDT
    first_id: int  # U
    last_id: int  # u
    event_ms: int  # E
    bids: list[tuple[float, float]]
    asks: list[tuple[float, float]]


def parse_message(data: bytes | str) -> DepthUpdate | None:
    """A combined-stream message -> its depth update (None for other event types).

    Raises ``FrameError``: "malformed" (not JSON, missing or mistyped fields), "non_finite" /
    "non_positive" (a level whose price is NaN/inf or not > 0, or whose quantity is negative):
    such an update cannot be applied, so the book it belongs to must be resynced.
    """
    try:
        msg = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise FrameError("malformed", "frame is not JSON") from None
    if not isinstance(msg, dict):
        raise FrameError("malformed", "frame is not a JSON object")
    if "result" in msg and "id" in msg:
        return None  # the answer to a SUBSCRIBE / LIST_SUBSCRIPTIONS request
    d = msg.get("data", msg)
    if not isinstance(d, dict):
        raise FrameError("malformed", "data is not an object")
    if d.get("e") != "depthUpdate":
        if "e" in d:
            return None
        raise FrameError("malformed", "message without an event type")
    try:
        upd = DepthUpdate(str(d["s"]), int(d["U"]), int(d["u"]), int(d["E"]),
                          _levels(d["b"]), _levels(d["a"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise FrameError("malformed", f"depthUpdate: {type(exc).__name__} {exc}") from None
    for px, qty in upd.bids + upd.asks:
        if not (math.isfinite(px) and math.isfinite(qty)):
            raise FrameError("non_finite", f"{upd.pair}: level {px} x {qty}")
        if px <= 0 or qty < 0:
            raise FrameError("non_positive", f"{upd.pair}: level {px} x {qty}")
    return upd


class DiffBook:
    """One symbol's local L2 book, kept by snapshot + diff events with U/u sequencing."""

    def __init__(self, pair: str) -> None:
        self.pair = pair
        self.bids: dict[float, float] = {}
        self.asks: dict[float, float] = {}
        # the prices of each side, ascending, kept in step with the dicts: the top of the book
        # is a slice (a diff mostly changes quantities; a new or removed price is one bisect)
        self._bid_px: list[float] = []
        self._ask_px: list[float] = []
        self.last_id: int | None = None  # None: not synced
        self.buffer: list[DepthUpdate] = []
        self.last_event_ms = 0

    @property
    def synced(self) -> bool:
        return self.last_id is not None

    def reset(self) -> None:
        self.bids.clear()
        self.asks.clear()
        self._bid_px.clear()
        self._ask_px.clear()
        self.last_id = None
        self.buffer = []

    def load_snapshot(self, last_update_id: int, bids, asks) -> str:
        """Load a snapshot and apply the buffered events after it.

        Returns "ok", "too_old" (the buffer starts after the snapshot: fetch a newer one) or
        "gap" (the buffered events themselves have a hole).
        """
        pending = [e for e in self.buffer if e.last_id > last_update_id]
        if pending and pending[0].first_id > last_update_id + 1:
            return "too_old"
        # the snapshot has no event time: it is at least as new as every event it covers
        if self.buffer:
            self.last_event_ms = max(self.last_event_ms, max(e.event_ms for e in self.buffer))
        self.bids = {px: q for px, q in bids if q > 0}
        self.asks = {px: q for px, q in asks if q > 0}
        self._bid_px = sorted(self.bids)
        self._ask_px = sorted(self.asks)
        self.last_id = last_update_id
        self.buffer = []
        for e in pending:
            if self.apply(e) == "gap":
                self.reset()
                return "gap"
        return "ok"

    def apply(self, e: DepthUpdate) -> str:
        """Apply a live event: "ok", "old" (already in the book: ignored) or "gap"."""
        assert self.last_id is not None
        if e.last_id <= self.last_id:
            return "old"
        if e.first_id > self.last_id + 1:
            return "gap"
        for side, prices, levels in ((self.bids, self._bid_px, e.bids),
                                     (self.asks, self._ask_px, e.asks)):
            for px, qty in levels:
                if qty == 0:
                    if side.pop(px, None) is not None:
                        del prices[bisect.bisect_left(prices, px)]
                else:
                    if px not in side:
                        bisect.insort(prices, px)
                    side[px] = qty
        self.last_id = e.last_id
        self.last_event_ms = e.event_ms
        return "ok"

    def top(self, depth: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(bid_px, bid_sz, ask_px, ask_sz), best first, at most ``depth`` levels per side."""
        bid = self._bid_px[:-depth - 1:-1] if depth > 0 else []
        ask = self._ask_px[:depth]
        bids, asks = self.bids, self.asks
        return (np.array(bid, dtype=np.float64), np.array([bids[p] for p in bid], dtype=np.float64),
                np.array(ask, dtype=np.float64), np.array([asks[p] for p in ask], dtype=np.float64))


# -- REST ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BinanceSymbol:
    pair: str  # BTCUSDT
    base: str
    quote: str
    trading: bool  # status TRADING
    step_size: float  # LOT_SIZE stepSize
    tick_size: float  # PRICE_FILTER tickSize


def parse_exchange_info(data) -> dict[str, BinanceSymbol]:
    """``GET /api/v3/exchangeInfo`` -> symbols by pair."""
    out = {}
    syms = data.get("symbols") if isinstance(data, dict) else None
    for s in syms if isinstance(syms, list) else []:
        try:
            filters = {f.get("filterType"): f for f in s.get("filters", [])}
            step = float(filters.get("LOT_SIZE", {}).get("stepSize", "nan"))
            tick = float(filters.get("PRICE_FILTER", {}).get("tickSize", "nan"))
            trading = s.get("status") == "TRADING" and s.get("isSpotTradingAllowed", True)
            out[s["symbol"]] = BinanceSymbol(s["symbol"], s["baseAsset"], s["quoteAsset"],
                                             bool(trading), step, tick)
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
    return out


@dataclass(frozen=True, slots=True)
class BinanceTicker:
    pair: str
    last_price: float
    quote_volume: float  # 24 h traded value in the quote asset


def parse_tickers(data) -> dict[str, BinanceTicker]:
    out = {}
    for t in data if isinstance(data, list) else []:
        try:
            out[t["symbol"]] = BinanceTicker(t["symbol"], float(t["lastPrice"]),
                                             float(t["quoteVolume"]))
        except (KeyError, TypeError, ValueError):
            continue
    return out


def parse_snapshot(data) -> tuple[int, list, list]:
    try:
        return int(data["lastUpdateId"]), _levels(data["bids"]), _levels(data["asks"])
    except (KeyError, TypeError, ValueError) as exc:
        raise RestError(f"Binance depth snapshot is malformed ({exc})") from None


class BinanceRest:
    """Binance's public spot REST calls, with the request-weight budget respected."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str,
                 per_second: float = 10.0) -> None:
        self.session = session
        self.base = base_url.rstrip("/")
        self.limiter = RateLimiter(per_second, weight_limit_1m=6000)

    async def exchange_info(self) -> dict[str, BinanceSymbol]:
        data = await get_json(self.session, f"{self.base}/api/v3/exchangeInfo", self.limiter,
                              "Binance")
        return parse_exchange_info(data)

    async def tickers(self) -> dict[str, BinanceTicker]:
        data = await get_json(self.session, f"{self.base}/api/v3/ticker/24hr", self.limiter,
                              "Binance")
        return parse_tickers(data)

    async def depth(self, pair: str, limit: int = SNAPSHOT_LIMIT) -> tuple[int, list, list]:
        data = await get_json(self.session, f"{self.base}/api/v3/depth", self.limiter, "Binance",
                              params={"symbol": pair, "limit": str(limit)})
        return parse_snapshot(data)


# -- WebSocket ----------------------------------------------------------------------------------


class BinanceFeed(WsFeed):
    """Diff-depth books of ``<alias(symbol)>USDT`` for the symbols given, top ``depth`` levels
    emitted per update; ``aliases`` maps our symbol (Upbit's ticker) to Binance's base asset."""

    venue = BINANCE

    def __init__(self, sink: FeedSink, session: aiohttp.ClientSession, ws_url: str,
                 rest: BinanceRest, *, aliases: dict[str, str] | None = None,
                 depth: int = DEFAULT_DEPTH, snapshot_limit: int = SNAPSHOT_LIMIT, **kw) -> None:
        super().__init__(sink, session, **kw)
        self.ws_url = ws_url
        self.rest = rest
        self.aliases = dict(aliases or {})
        self.depth = depth
        self.snapshot_limit = snapshot_limit
        self.books: dict[str, DiffBook] = {}
        self._symbol_of: dict[str, str] = {}
        self._syncing: set[str] = set()
        self._request_id = 0
        self._retired: set[str] = set()  # unsubscribed pairs whose events may still be in flight
        self.gaps = 0

    def pair_of(self, symbol: str) -> str:
        return self.aliases.get(symbol, symbol) + QUOTE

    def url(self) -> str:
        return stream_url(self.ws_url, [self.pair_of(s) for s in self.symbols])

    async def on_open(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._retired = set()
        self._symbol_of = {self.pair_of(s): s for s in self.symbols}
        self.books = {p: DiffBook(p) for p in self._symbol_of}
        self._syncing = set()
        self.sink.on_state(self.venue, connected=True, ready=True)
        for pair in self.books:
            self._resync(pair, ws)

    def resubscribe(self, ws: aiohttp.ClientWebSocketResponse, old: tuple[str, ...]) -> bool:
        """SUBSCRIBE / UNSUBSCRIBE on the open combined stream; new books sync from snapshots."""
        want = {self.pair_of(s): s for s in self.symbols}
        added = [p for p in want if p not in self._symbol_of]
        removed = [p for p in self._symbol_of if p not in want]
        for method, pairs in (("UNSUBSCRIBE", removed), ("SUBSCRIBE", added)):
            if pairs:
                self._request_id += 1
                msg = {"method": method, "params": [f"{p.lower()}@depth@100ms" for p in pairs],
                       "id": self._request_id}
                self.spawn(ws.send_str(orjson.dumps(msg).decode()))
        for p in removed:
            del self._symbol_of[p]
            self.books.pop(p, None)
            self._retired.add(p)
        for p in added:
            self._retired.discard(p)
            self._symbol_of[p] = want[p]
            self.books[p] = DiffBook(p)
            self._resync(p, ws)
        logger.info("Binance: subscription changed on the open connection (+{} -{})",
                    ",".join(added), ",".join(removed))
        return True

    def on_close(self) -> None:
        for pair, sym in self._symbol_of.items():
            self.sink.on_symbol_sync(self.venue, sym, False)
            self.books[pair].reset()
        self._syncing = set()

    def _resync(self, pair: str, ws) -> None:
        self.books[pair].reset()
        self.sink.on_symbol_sync(self.venue, self._symbol_of[pair], False)
        if pair not in self._syncing:
            self._syncing.add(pair)
            self.spawn(self._sync(pair, ws))

    async def _sync(self, pair: str, ws) -> None:
        """Fetch snapshots until one lines up with the buffered events."""
        try:
            for attempt in range(10):
                if ws.closed or self._ws is not ws:
                    return
                # wait for the first event so the snapshot can be lined up with the buffer
                for _ in range(50):
                    if self.books[pair].buffer or ws.closed:
                        break
                    await asyncio.sleep(0.02)
                try:
                    last_id, bids, asks = await self.rest.depth(pair, self.snapshot_limit)
                except RestError as exc:
                    logger.warning("Binance {}: snapshot failed ({}); retrying", pair, exc)
                    await asyncio.sleep(min(5.0, 0.5 * (attempt + 1)))
                    continue
                if ws.closed or self._ws is not ws:
                    return
                book = self.books[pair]
                status = book.load_snapshot(last_id, bids, asks)
                if status == "ok":
                    self.sink.on_symbol_sync(self.venue, self._symbol_of[pair], True)
                    if book.last_event_ms:  # else the first live event gives the book a time
                        self._emit(pair, book, self.sink.now_ns())
                    return
                logger.info("Binance {}: snapshot {} ({}); fetching again", pair, last_id,
                            status)
                await asyncio.sleep(0.05 * (attempt + 1))
            logger.error("Binance {}: could not line a snapshot up with the stream; "
                         "renewing the connection", pair)
            self.force_reconnect(f"{pair} unsyncable")
        finally:
            self._syncing.discard(pair)

    def _emit(self, pair: str, book: DiffBook, recv_ns: int) -> None:
        bp, bs, ap, as_ = book.top(self.depth)
        ts = book.last_event_ms * 1_000_000
        self.sink.on_row(BookRow(ts, recv_ns, BINANCE, self._symbol_of[pair], bp, bs, ap, as_))

    def on_frame(self, data: bytes | str, recv_ns: int) -> None:
        self.sink.on_alive(self.venue)
        try:
            upd = parse_message(data)
        except FrameError as exc:
            self.sink.on_reject(exc.reason)
            pair = _pair_in(data)
            if pair in self.books and self.books[pair].synced:
                # an update we cannot apply leaves the book wrong: start over from a snapshot
                self._resync(pair, self._ws)
            return
        if upd is None:
            return
        book = self.books.get(upd.pair)
        if book is None:
            if upd.pair not in self._retired:
                self.sink.on_reject("unknown_market")
            return
        if not book.synced:
            book.buffer.append(upd)
            if len(book.buffer) > 1000:
                book.buffer = book.buffer[-1000:]
            return
        status = book.apply(upd)
        if status == "ok":
            self._emit(upd.pair, book, recv_ns)
        elif status == "gap":
            self.gaps += 1
            self.sink.on_reject("sequence_gap")
            self.sink.on_gap(self.venue, "sequence_gap")
            logger.warning("Binance {}: sequence gap (have {}, next event starts at {}); "
                           "resyncing from a snapshot", upd.pair, book.last_id, upd.first_id)
            self._resync(upd.pair, self._ws)
            book.buffer.append(upd)
        else:
            self.sink.on_reject("out_of_sequence")


def _pair_in(data: bytes | str) -> str | None:
    """Best effort: the pair a malformed message was about (from its stream name)."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    i = text.find('"stream":"')
    if i < 0:
        return None
    j = text.find("@", i)
    return text[i + 10:j].upper() if j > i else None
