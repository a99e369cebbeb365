"""Upbit: the orderbook WebSocket stream and the public REST calls, parsed in one place.

Wire-format quirks handled here:

* The subscription is one JSON array: ``[{"ticket": ...}, {"type": "orderbook", "codes":
  ["KRW-BTC.15", ...]}, {"format": "DEFAULT"|"SIMPLE"}]``; the ``.15`` suffix asks for 15 levels
  (Upbit serves up to 30).
* Frames arrive as BINARY WebSocket messages holding UTF-8 JSON (some servers send TEXT; both are
  accepted). Each orderbook frame is a full snapshot of the levels asked for, sent only when the
  book changes, so a quiet book is not a stale one.
* ``DEFAULT`` spells fields out (``type, code, timestamp, orderbook_units[{ask_price, bid_price,
  ask_size, bid_size}], stream_type``); ``SIMPLE`` abbreviates them (``ty, cd, tms, obu[{ap, bp,
  as, bs}], st``). Numbers are JSON numbers; ``timestamp`` is epoch milliseconds.
* Keep-alive: the client sends the text ``PING`` and the server answers ``{"status":"UP"}``
  (an idle connection is closed after about 120 s). Errors come as ``{"error": {"name", ...}}``.
* REST quotation calls share a budget of about 10 requests per second per IP, reported in the
  ``Remaining-Req`` header.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from dataclasses import dataclass

import aiohttp
import numpy as np
import orjson
from loguru import logger

from common.marketdata.feed import FeedSink, WsFeed
from common.marketdata.rest import RateLimiter, get_json
from common.marketdata.rows import BookRow, FrameError
from common.types import FX_SYMBOL, UPBIT

#: Upbit's KRW market code of a base asset: ``KRW-BTC``.
KRW_PREFIX = "KRW-"
FX_CODE = KRW_PREFIX + FX_SYMBOL
DEFAULT_LEVELS = 15
MAX_LEVELS = 30

# (DEFAULT name, SIMPLE name) of every field read
_TYPE = ("type", "ty")
_CODE = ("code", "cd")
_TS = ("timestamp", "tms")
_UNITS = ("orderbook_units", "obu")
_UNIT_KEYS = (("bid_price", "bp"), ("bid_size", "bs"), ("ask_price", "ap"), ("ask_size", "as"))


def market_code(symbol: str) -> str:
    return KRW_PREFIX + symbol


def subscription_message(codes: list[str], levels: int = DEFAULT_LEVELS, fmt: str = "DEFAULT",
                         ticket: str | None = None) -> bytes:
    """The JSON-array subscription for the orderbook stream of ``codes`` (e.g. ``KRW-BTC``)."""
    if not 1 <= levels <= MAX_LEVELS:
        raise ValueError(f"Upbit serves 1..{MAX_LEVELS} orderbook levels (got {levels})")
    return orjson.dumps([
        {"ticket": ticket or f"kimchi-{uuid.uuid4()}"},
        {"type": "orderbook", "codes": [f"{c}.{levels}" for c in codes]},
        {"format": fmt},
    ])


def _field(msg: dict, names: tuple[str, str]):
    v = msg.get(names[0])
    return msg.get(names[1]) if v is None else v


_NUMBER_TYPES = frozenset((int, float))


def book_row(msg: dict, recv_ns: int, symbol_of: dict[str, str]) -> BookRow:
    """A ``BookRow`` from one decoded orderbook message (DEFAULT, SIMPLE or the REST shape).

    Raises ``FrameError`` ("malformed": missing or mistyped fields; "unknown_market": a code not
    subscribed). Crossed, unsorted, zero or NaN books are returned as they are: the validator
    counts and drops them.
    """
    code = _field(msg, _CODE) or msg.get("market")
    if not isinstance(code, str):
        raise FrameError("malformed", "orderbook frame without a code")
    symbol = symbol_of.get(code)
    if symbol is None:
        raise FrameError("unknown_market", f"orderbook for unsubscribed {code}")
    ts = _field(msg, _TS)
    units = _field(msg, _UNITS)
    if isinstance(ts, bool) or not isinstance(ts, int) or not isinstance(units, list):
        raise FrameError("malformed", f"{code}: timestamp or orderbook_units missing")
    # one naming per message (DEFAULT or SIMPLE), read in one pass; every value must be a JSON
    # number (not a string, bool or null), checked over all of them at once
    try:
        style = 0 if units and _UNIT_KEYS[0][0] in units[0] else 1
        kb, ks, ka, kz = (k[style] for k in _UNIT_KEYS)
        values = [(u[kb], u[ks], u[ka], u[kz]) for u in units]
    except (KeyError, TypeError) as exc:
        raise FrameError("malformed", f"{code}: bad orderbook unit ({exc!r})") from None
    if not units or not set(map(type, itertools.chain.from_iterable(values))) <= _NUMBER_TYPES:
        bad = next((v for v in itertools.chain.from_iterable(values)
                    if type(v) not in _NUMBER_TYPES), None)
        raise FrameError("malformed", f"{code}: bad orderbook unit (not a number: {bad!r})")
    cols = np.array(values, dtype=np.float64).T
    bid_px, bid_sz, ask_px, ask_sz = (np.ascontiguousarray(c) for c in cols)
    # Upbit pads a thin book with zero units at the far end: those are absent levels, not quotes
    bid_keep = ~((bid_px == 0) & (bid_sz == 0))
    ask_keep = ~((ask_px == 0) & (ask_sz == 0))
    if not bid_keep.all():
        bid_px, bid_sz = bid_px[bid_keep], bid_sz[bid_keep]
    if not ask_keep.all():
        ask_px, ask_sz = ask_px[ask_keep], ask_sz[ask_keep]
    return BookRow(ts * 1_000_000, recv_ns, UPBIT, symbol, bid_px, bid_sz, ask_px, ask_sz)


def parse_frame(data: bytes | str, recv_ns: int, symbol_of: dict[str, str]) -> BookRow | None:
    """One WebSocket frame -> a book row, or None for a frame that is not a book (status, other
    types). Raises ``FrameError`` for frames that cannot be used."""
    try:
        msg = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise FrameError("malformed", "frame is not JSON") from None
    if not isinstance(msg, dict):
        raise FrameError("malformed", f"frame is a JSON {type(msg).__name__}, not an object")
    kind = _field(msg, _TYPE)
    if kind != "orderbook":
        if kind is None and "status" in msg:
            return None  # {"status": "UP"}: the answer to PING
        if kind is None and "error" in msg:
            raise FrameError("venue_error", f"Upbit error {msg['error']}")
        if kind is None:
            raise FrameError("malformed", "frame without a type")
        return None
    return book_row(msg, recv_ns, symbol_of)


# -- REST ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UpbitMarket:
    market: str  # KRW-BTC
    base: str  # BTC
    quote: str  # KRW
    warning: bool  # under an investment warning (market_warning CAUTION / market_event.warning)


def parse_markets(data) -> list[UpbitMarket]:
    """``GET /v1/market/all?isDetails=true`` -> markets (rows that do not parse are skipped)."""
    out = []
    for m in data if isinstance(data, list) else []:
        code = m.get("market") if isinstance(m, dict) else None
        if not isinstance(code, str) or "-" not in code:
            continue
        quote, base = code.split("-", 1)
        event = m.get("market_event") or {}
        warning = m.get("market_warning") == "CAUTION" or bool(
            isinstance(event, dict) and event.get("warning"))
        out.append(UpbitMarket(code, base, quote, warning))
    return out


@dataclass(frozen=True, slots=True)
class UpbitTicker:
    market: str
    trade_price: float  # KRW
    acc_trade_price_24h: float  # KRW traded over the last 24 h


def parse_tickers(data) -> dict[str, UpbitTicker]:
    out = {}
    for t in data if isinstance(data, list) else []:
        try:
            out[t["market"]] = UpbitTicker(t["market"], float(t["trade_price"]),
                                           float(t["acc_trade_price_24h"]))
        except (KeyError, TypeError, ValueError):
            continue
    return out


class UpbitRest:
    """Upbit's public quotation REST calls, rate limited."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str,
                 per_second: float = 8.0) -> None:
        self.session = session
        self.base = base_url.rstrip("/")
        self.limiter = RateLimiter(per_second)

    async def markets(self) -> list[UpbitMarket]:
        data = await get_json(self.session, f"{self.base}/v1/market/all", self.limiter, "Upbit",
                              params={"isDetails": "true"})
        return parse_markets(data)

    async def tickers(self, markets: list[str], chunk: int = 100) -> dict[str, UpbitTicker]:
        out: dict[str, UpbitTicker] = {}
        for i in range(0, len(markets), chunk):
            part = markets[i:i + chunk]
            data = await get_json(self.session, f"{self.base}/v1/ticker", self.limiter, "Upbit",
                                  params={"markets": ",".join(part)})
            out.update(parse_tickers(data))
        return out

    async def orderbooks(self, markets: list[str], symbol_of: dict[str, str],
                         recv_ns: int, chunk: int = 50) -> list[BookRow]:
        """``GET /v1/orderbook``: current books (same unit fields as the stream)."""
        rows = []
        for i in range(0, len(markets), chunk):
            data = await get_json(self.session, f"{self.base}/v1/orderbook", self.limiter,
                                  "Upbit", params={"markets": ",".join(markets[i:i + chunk])})
            for msg in data if isinstance(data, list) else []:
                try:
                    rows.append(book_row(msg, recv_ns, symbol_of))
                except FrameError as exc:
                    logger.warning("Upbit REST orderbook: {}", exc)
        return rows


# -- WebSocket ----------------------------------------------------------------------------------


class UpbitFeed(WsFeed):
    """The orderbook stream of ``KRW-<symbol>`` for the symbols given, plus ``KRW-USDT`` (FX).

    Ready (no longer resyncing) once every subscribed code has sent its snapshot since the
    connection opened, or ``ready_timeout_s`` after subscribing (a code that never sends).
    """

    venue = UPBIT

    def __init__(self, sink: FeedSink, session: aiohttp.ClientSession, ws_url: str, *,
                 levels: int = DEFAULT_LEVELS, fmt: str = "DEFAULT", ping_s: float = 5.0,
                 ready_timeout_s: float = 3.0, **kw) -> None:
        super().__init__(sink, session, **kw)
        self.ws_url = ws_url
        self.levels = levels
        self.fmt = fmt
        self.ping_s = ping_s
        self.ready_timeout_s = ready_timeout_s
        self._symbol_of: dict[str, str] = {}
        self._unseen: set[str] = set()
        self._ready = False

    def url(self) -> str:
        return self.ws_url

    def _codes(self) -> list[str]:
        codes = [market_code(s) for s in self.symbols]
        if FX_CODE not in codes:
            codes.append(FX_CODE)
        return codes

    async def on_open(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        codes = self._codes()
        self._symbol_of = {c: c[len(KRW_PREFIX):] for c in codes}
        self._unseen = set(codes)
        self._ready = False
        await ws.send_bytes(subscription_message(codes, self.levels, self.fmt))
        self.spawn(self._keepalive(ws))
        self.spawn(self._ready_after_timeout(ws))

    def resubscribe(self, ws: aiohttp.ClientWebSocketResponse, old: tuple[str, ...]) -> bool:
        # a new subscription on the same connection replaces the old one; Upbit answers with a
        # snapshot of every code, so the books that stay simply continue
        codes = self._codes()
        # codes dropped stay known: frames still in flight are books of a symbol no longer
        # streamed, which the live source ignores, not unknown markets
        self._symbol_of.update({c: c[len(KRW_PREFIX):] for c in codes})
        self.spawn(ws.send_bytes(subscription_message(codes, self.levels, self.fmt)))
        logger.info("Upbit: subscription changed on the open connection ({} codes)", len(codes))
        return True

    async def _keepalive(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while not ws.closed:
            await asyncio.sleep(self.ping_s)
            if ws.closed:
                return
            try:
                await ws.send_str("PING")
            except (aiohttp.ClientError, ConnectionError, RuntimeError):
                return

    async def _ready_after_timeout(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        await asyncio.sleep(self.ready_timeout_s)
        if not ws.closed and not self._ready and self._ws is ws:
            logger.warning("Upbit: no snapshot yet for {}; trading the others",
                           ", ".join(sorted(self._unseen)))
            self._set_ready()

    def _set_ready(self) -> None:
        self._ready = True
        self.sink.on_state(self.venue, connected=True, ready=True)

    def on_close(self) -> None:
        self._ready = False

    def on_frame(self, data: bytes | str, recv_ns: int) -> None:
        self.sink.on_alive(self.venue)
        try:
            row = parse_frame(data, recv_ns, self._symbol_of)
        except FrameError as exc:
            self.sink.on_reject(exc.reason)
            if exc.reason == "venue_error":
                logger.warning("Upbit: {}", exc)
            return
        if row is None:
            return
        if not self._ready:
            self._unseen.discard(market_code(row.symbol))
            if not self._unseen:
                self._set_ready()
        self.sink.on_row(row)
