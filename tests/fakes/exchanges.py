"""Loopback fake Upbit and Binance servers (test doubles) that speak the exchanges' wire formats.

* Upbit: ``GET /v1/market/all?isDetails=true``, ``/v1/ticker?markets=``, ``/v1/orderbook?markets=``
  and the WebSocket ``/websocket/v1`` (JSON-array subscription with ticket / type+codes with the
  ``.N`` level suffix / format; BINARY frames; DEFAULT or SIMPLE field names; a snapshot per code
  on subscribe, then a full book whenever it changes; ``PING`` -> ``{"status":"UP"}``).
* Binance: ``GET /api/v3/exchangeInfo``, ``/api/v3/ticker/24hr``, ``/api/v3/depth`` and combined
  diff-depth streams ``/stream?streams=<pair>@depth@100ms/...`` (``{"stream", "data"}`` TEXT
  frames, string numbers, ``U``/``u`` update ids continuing the snapshots' ``lastUpdateId``).

Prices follow a deterministic path: a Binance mid per asset, FX 1400 KRW per USDT and a premium
that swings ``premium_amp_bps`` around ``premium_level_bps`` with period ``period_s``, so the
strategy finds entries and exits within seconds. Test controls: ``drop(venue)`` closes every
connection, ``gap(pair)`` skips update ids, ``inject(venue, frame)`` sends a raw frame,
``silence(venue, s)``, ``binance_451`` refuses the region. Run alone with
``python -m tests.fakes.exchanges`` (prints the environment variables pointing at it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import threading
import time
from dataclasses import dataclass

import orjson
from aiohttp import WSMsgType, web

FX = 1400.0


@dataclass(frozen=True)
class FakeAsset:
    symbol: str  # Upbit base
    price_usd: float
    upbit_value_usd: float  # 24 h traded value
    binance_value_usd: float
    binance_base: str | None = None  # when Binance spells it differently
    warning: bool = False
    premium_offset_bps: float = 0.0  # added to this asset's premium (outliers)
    binance_trading: bool = True

    @property
    def pair(self) -> str:
        return (self.binance_base or self.symbol) + "USDT"


DEFAULT_ASSETS = (
    FakeAsset("BTC", 95000.0, 900e6, 20e9),
    FakeAsset("ETH", 3500.0, 500e6, 10e9),
    FakeAsset("XRP", 2.3, 700e6, 2e9),
    FakeAsset("SOL", 180.0, 200e6, 3e9),
    FakeAsset("DOGE", 0.35, 150e6, 1e9),
    FakeAsset("ADA", 0.9, 80e6, 5e8),
    FakeAsset("LINK", 20.0, 60e6, 4e8),
    FakeAsset("AVAX", 35.0, 40e6, 3e8),
)


def _tick(p: float, digits: int) -> float:
    return 10.0 ** (math.floor(math.log10(p)) - digits)


class FakeExchanges:
    """Both fake servers on one asyncio loop in a background thread, on 127.0.0.1."""

    def __init__(self, assets=DEFAULT_ASSETS, *, rate_hz: float = 10.0, period_s: float = 8.0,
                 premium_level_bps: float = 200.0, premium_amp_bps: float = 120.0,
                 levels: int = 30, recorded_lists: bool = False, seed: int = 1) -> None:
        self.assets = tuple(assets)
        self.rate_hz = rate_hz
        self.period_s = period_s
        self.premium_level_bps = premium_level_bps
        self.premium_amp_bps = premium_amp_bps
        self.levels = levels
        self.recorded_lists = recorded_lists
        self.seed = seed
        self.binance_451 = False
        self.stats = {"upbit_connections": 0, "binance_connections": 0, "depth_requests": 0,
                      "upbit_pings": 0, "upbit_subscriptions": []}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runners: list[web.AppRunner] = []
        self.upbit_port = self.binance_port = 0
        self._t0 = time.monotonic()
        self._upbit_clients: set = set()  # (ws, codes, fmt)
        self._binance_clients: dict = {}  # ws -> set of pairs (SUBSCRIBE / UNSUBSCRIBE)
        self._bn_last_id = {a.pair: 1_000_000 + 1000 * i for i, a in enumerate(self.assets)}
        self._bn_book: dict[str, tuple[dict, dict]] = {}
        self._gap: set[str] = set()
        self._inject: list[tuple[str, bytes | str]] = []
        self._silent_until = {"upbit": 0.0, "binance": 0.0}
        self._by_pair = {a.pair: a for a in self.assets}
        self._step = 0

    # -- prices ----------------------------------------------------------------------------------
    def t(self) -> float:
        return time.monotonic() - self._t0

    def binance_mid(self, a: FakeAsset, t: float) -> float:
        return a.price_usd * (1 + 0.002 * math.sin(2 * math.pi * t / 37.0 + len(a.symbol)))

    def premium(self, a: FakeAsset, t: float) -> float:
        phase = (sum(map(ord, a.symbol)) % 7) * 0.3 * self.seed
        return (self.premium_level_bps + a.premium_offset_bps + self.premium_amp_bps
                * math.sin(2 * math.pi * t / self.period_s + phase)) / 1e4

    def fx_mid(self, t: float) -> float:
        return FX * (1 + 0.0002 * math.sin(2 * math.pi * t / 50.0))

    def _ladder(self, mid: float, tick: float, size: float, n: int) -> tuple[list, list]:
        best_bid = math.floor(mid / tick) * tick
        bids = [(best_bid - k * tick, size * (1 + 0.1 * (k % 3))) for k in range(n)]
        asks = [(best_bid + (k + 1) * tick, size * (1 + 0.1 * ((k + 1) % 3))) for k in range(n)]
        return bids, asks

    def upbit_book(self, code: str, t: float) -> tuple[list, list]:
        sym = code.split("-", 1)[1]
        if sym == "USDT":
            mid = self.fx_mid(t)
            return self._ladder(mid, _tick(mid, 3), 2_000_000.0, self.levels)
        a = next(x for x in self.assets if x.symbol == sym)
        mid = self.binance_mid(a, t) * self.fx_mid(t) * (1 + self.premium(a, t))
        return self._ladder(mid, _tick(mid, 4), 40_000.0 / a.price_usd, self.levels)

    def binance_levels(self, a: FakeAsset, t: float) -> tuple[dict, dict]:
        mid = self.binance_mid(a, t)
        tick = _tick(mid, 5)
        bids, asks = self._ladder(mid, tick, 40_000.0 / a.price_usd, 40)
        f = lambda x: f"{x:.8f}"  # noqa: E731
        return ({f(p): f(q) for p, q in bids}, {f(p): f(q) for p, q in asks})

    # -- frames ----------------------------------------------------------------------------------
    def upbit_frame(self, code: str, t: float, fmt: str, n: int, stream_type: str) -> bytes:
        bids, asks = self.upbit_book(code, t)
        units = [(asks[k][0], bids[k][0], asks[k][1], bids[k][1]) for k in range(min(n, len(bids)))]
        ts = int(time.time() * 1000)
        if fmt == "SIMPLE":
            msg = {"ty": "orderbook", "cd": code, "tms": ts,
                   "tas": sum(u[2] for u in units), "tbs": sum(u[3] for u in units),
                   "obu": [{"ap": u[0], "bp": u[1], "as": u[2], "bs": u[3]} for u in units],
                   "st": stream_type, "lv": 0}
        else:
            msg = {"type": "orderbook", "code": code, "timestamp": ts,
                   "total_ask_size": sum(u[2] for u in units),
                   "total_bid_size": sum(u[3] for u in units),
                   "orderbook_units": [{"ask_price": u[0], "bid_price": u[1], "ask_size": u[2],
                                        "bid_size": u[3]} for u in units],
                   "stream_type": stream_type, "level": 0}
        return orjson.dumps(msg)

    def _binance_update(self, a: FakeAsset, t: float) -> bytes | None:
        new_b, new_a = self.binance_levels(a, t)
        old_b, old_a = self._bn_book.get(a.pair, ({}, {}))
        db = [[p, q] for p, q in new_b.items() if old_b.get(p) != q]
        db += [[p, "0.00000000"] for p in old_b if p not in new_b]
        da = [[p, q] for p, q in new_a.items() if old_a.get(p) != q]
        da += [[p, "0.00000000"] for p in old_a if p not in new_a]
        self._bn_book[a.pair] = (new_b, new_a)
        last = self._bn_last_id[a.pair]
        first = last + 1
        if a.pair in self._gap:
            self._gap.discard(a.pair)
            first = last + 7  # ids last+1 .. last+6 never sent: a sequence gap
        u = first + 1 + (self._step % 3)
        self._bn_last_id[a.pair] = u
        msg = {"stream": f"{a.pair.lower()}@depth@100ms",
               "data": {"e": "depthUpdate", "E": int(time.time() * 1000), "s": a.pair,
                        "U": first, "u": u, "b": db, "a": da}}
        return orjson.dumps(msg)

    # -- controls (thread-safe) ------------------------------------------------------------------
    def drop(self, venue: str) -> None:
        """Close every WebSocket connection of ``venue`` (``upbit`` / ``binance``)."""
        for ws in self._sockets(venue):
            asyncio.run_coroutine_threadsafe(ws.close(), self._loop)

    def _sockets(self, venue: str) -> list:
        if venue == "upbit":
            return [c[0] for c in list(self._upbit_clients)]
        return list(self._binance_clients)

    def gap(self, pair: str) -> None:
        self._gap.add(pair)

    def inject(self, venue: str, frame: bytes | str) -> None:
        self._inject.append((venue, frame))

    def silence(self, venue: str, seconds: float) -> None:
        self._silent_until[venue] = time.monotonic() + seconds

    # -- REST ------------------------------------------------------------------------------------
    def _upbit_markets(self) -> list[dict]:
        out = []
        if self.recorded_lists:
            from tests.fakes.recordings import rest_body

            out = [m for m in orjson.loads(rest_body("UPBIT.0", "/v1/market/all"))
                   if m["market"].split("-")[1] not in {a.symbol for a in self.assets}]
            for m in out:
                m.update({"market_warning": "NONE", "market_event": {"warning": False}})
        for a in self.assets:
            out.append({"market": f"KRW-{a.symbol}", "korean_name": a.symbol,
                        "english_name": a.symbol,
                        "market_warning": "CAUTION" if a.warning else "NONE",
                        "market_event": {"warning": a.warning, "caution": {}}})
        out.append({"market": "KRW-USDT", "korean_name": "테더", "english_name": "Tether",
                    "market_warning": "NONE", "market_event": {"warning": False, "caution": {}}})
        return out

    async def _upbit_market_all(self, request: web.Request) -> web.Response:
        markets = self._upbit_markets()
        if request.query.get("isDetails") != "true":
            markets = [{k: m[k] for k in ("market", "korean_name", "english_name")}
                       for m in markets]
        return self._json(markets, {"Remaining-Req": "group=market; min=599; sec=9"})

    async def _upbit_ticker(self, request: web.Request) -> web.Response:
        t = self.t()
        out = []
        for code in request.query.get("markets", "").split(","):
            if not code:
                continue
            sym = code.split("-", 1)[-1]
            a = next((x for x in self.assets if x.symbol == sym), None)
            if sym == "USDT":
                price, value = self.fx_mid(t), 5e11
            elif a is not None:
                b, k = self.upbit_book(code, t)
                price, value = (b[0][0] + k[0][0]) / 2, a.upbit_value_usd * FX
            else:
                price, value = 1000.0 + sum(map(ord, sym)), 1e6 * FX
            out.append({"market": code, "trade_price": price, "acc_trade_price_24h": value,
                        "acc_trade_price": value / 2, "timestamp": int(time.time() * 1000)})
        return self._json(out, {"Remaining-Req": "group=ticker; min=599; sec=9"})

    async def _upbit_orderbook(self, request: web.Request) -> web.Response:
        t = self.t()
        codes = [c for c in request.query.get("markets", "").split(",") if c]
        msgs = [orjson.loads(self.upbit_frame(c, t, "DEFAULT", 15, "SNAPSHOT")) for c in codes]
        for m in msgs:
            m["market"] = m.pop("code")
        return self._json(msgs, {"Remaining-Req": "group=orderbook; min=599; sec=9"})

    def _json(self, body, headers=None, status=200) -> web.Response:
        return web.Response(body=orjson.dumps(body), status=status,
                            content_type="application/json", headers=headers or {})

    def _refuse(self) -> web.Response | None:
        if self.binance_451:
            return self._json({"code": 0, "msg": "Service unavailable from a restricted location "
                               "according to 'b. Eligibility' in https://www.binance.com/en/terms."
                               }, status=451)
        return None

    async def _binance_info(self, request: web.Request) -> web.Response:
        if (r := self._refuse()) is not None:
            return r
        syms = []
        if self.recorded_lists:
            from tests.fakes.recordings import rest_body

            info = orjson.loads(rest_body("BINANCE.0", "/api/v3/exchangeInfo"))
            ours = {a.pair for a in self.assets}
            syms = [s for s in info["symbols"] if s["symbol"] not in ours]
        for a in self.assets:
            step = _tick(40_000.0 / a.price_usd, 3)
            syms.append({
                "symbol": a.pair, "status": "TRADING" if a.binance_trading else "BREAK",
                "baseAsset": a.binance_base or a.symbol, "quoteAsset": "USDT",
                "isSpotTradingAllowed": True,
                "filters": [
                    {"filterType": "PRICE_FILTER", "minPrice": "0.00000001",
                     "maxPrice": "1000000.00000000",
                     "tickSize": f"{_tick(a.price_usd, 5):.8f}"},
                    {"filterType": "LOT_SIZE", "minQty": f"{step:.8f}",
                     "maxQty": "9000000.00000000", "stepSize": f"{step:.8f}"},
                ]})
        return self._json({"timezone": "UTC", "serverTime": int(time.time() * 1000),
                           "rateLimits": [], "exchangeFilters": [], "symbols": syms},
                          {"X-MBX-USED-WEIGHT-1m": "20"})

    async def _binance_ticker(self, request: web.Request) -> web.Response:
        if (r := self._refuse()) is not None:
            return r
        t = self.t()
        out = [{"symbol": a.pair, "lastPrice": f"{self.binance_mid(a, t):.8f}",
                "quoteVolume": f"{a.binance_value_usd:.8f}", "volume": "1.0"}
               for a in self.assets]
        return self._json(out, {"X-MBX-USED-WEIGHT-1m": "100"})

    async def _binance_depth(self, request: web.Request) -> web.Response:
        if (r := self._refuse()) is not None:
            return r
        pair = request.query.get("symbol", "")
        a = self._by_pair.get(pair)
        if a is None:
            return self._json({"code": -1121, "msg": "Invalid symbol."}, status=400)
        self.stats["depth_requests"] += 1
        limit = int(request.query.get("limit", "100"))
        bids, asks = self._bn_book.get(pair) or self.binance_levels(a, self.t())
        bl = sorted(bids.items(), key=lambda kv: -float(kv[0]))[:limit]
        al = sorted(asks.items(), key=lambda kv: float(kv[0]))[:limit]
        return self._json({"lastUpdateId": self._bn_last_id[pair],
                           "bids": [list(x) for x in bl], "asks": [list(x) for x in al]},
                          {"X-MBX-USED-WEIGHT-1m": "25"})

    # -- WebSockets ------------------------------------------------------------------------------
    async def _upbit_ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=None)
        await ws.prepare(request)
        self.stats["upbit_connections"] += 1
        client = None
        try:
            async for msg in ws:
                if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    continue
                data = msg.data
                if data in ("PING", b"PING"):
                    self.stats["upbit_pings"] += 1
                    await ws.send_str('{"status":"UP"}')
                    continue
                try:
                    req = orjson.loads(data)
                    fmt = next((x["format"] for x in req if "format" in x), "DEFAULT")
                    sub = next(x for x in req if x.get("type") == "orderbook")
                    codes = []
                    n = 15
                    for c in sub["codes"]:
                        code, _, lv = c.partition(".")
                        n = int(lv) if lv else 15
                        codes.append(code)
                    assert any("ticket" in x for x in req)
                except (ValueError, StopIteration, KeyError, TypeError, AssertionError):
                    await ws.send_bytes(orjson.dumps(
                        {"error": {"name": "WRONG_FORMAT", "message": "bad request"}}))
                    continue
                self.stats["upbit_subscriptions"].append(list(sub["codes"]))
                known = {f"KRW-{a.symbol}" for a in self.assets} | {"KRW-USDT"}
                codes = [c for c in codes if c in known]
                if client is not None:
                    self._upbit_clients.discard(client)
                t = self.t()
                for c in codes:
                    await ws.send_bytes(self.upbit_frame(c, t, fmt, n, "SNAPSHOT"))
                client = (ws, tuple(codes), fmt, n)
                self._upbit_clients.add(client)
        finally:
            if client is not None:
                self._upbit_clients.discard(client)
        return ws

    async def _binance_ws(self, request: web.Request) -> web.WebSocketResponse:
        if (r := self._refuse()) is not None:
            return r
        streams = request.query.get("streams", "")
        pairs = tuple(s.split("@")[0].upper() for s in streams.split("/") if s)
        ws = web.WebSocketResponse(heartbeat=20.0)
        await ws.prepare(request)
        self.stats["binance_connections"] += 1
        self._binance_clients[ws] = set(pairs)
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    req = orjson.loads(msg.data)
                    streams = {s.split("@")[0].upper() for s in req["params"]}
                    method = req["method"]
                except (ValueError, KeyError, TypeError, AttributeError):
                    await ws.send_str('{"code":2,"msg":"Invalid request"}')
                    continue
                if method == "SUBSCRIBE":
                    self._binance_clients[ws] |= streams
                elif method == "UNSUBSCRIBE":
                    self._binance_clients[ws] -= streams
                self.stats.setdefault("binance_requests", []).append(method)
                await ws.send_str(orjson.dumps({"result": None, "id": req.get("id")}).decode())
        finally:
            self._binance_clients.pop(ws, None)
        return ws

    # -- the market clock ------------------------------------------------------------------------
    async def _ticker_loop(self) -> None:
        """Every book changes ``rate_hz`` times a second; the streams' sends are spread evenly
        over each interval (as independent markets would be), not sent in one burst."""
        interval = 1.0 / self.rate_hz
        nxt = time.monotonic()
        while True:
            self._step += 1
            t = self.t()
            while self._inject:
                venue, frame = self._inject.pop(0)
                for ws in self._sockets(venue):
                    if isinstance(frame, bytes):
                        await _safe(ws.send_bytes(frame))
                    else:
                        await _safe(ws.send_str(frame))
            jobs = [("binance", a) for a in self.assets]
            codes = sorted({c for _, cs, _, _ in list(self._upbit_clients) for c in cs})
            jobs += [("upbit", c) for c in codes]
            for k, (venue, what) in enumerate(jobs):
                delay = nxt + k * interval / len(jobs) - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                silent = time.monotonic() < self._silent_until[venue]
                if venue == "binance":
                    payload = self._binance_update(what, t)  # the book moves on even if silent
                    if silent:
                        continue
                    text = payload.decode()
                    for ws, pairs in list(self._binance_clients.items()):
                        if what.pair in pairs:
                            await _safe(ws.send_str(text))
                elif not silent:
                    for ws, cs, fmt, n in list(self._upbit_clients):
                        if what in cs:
                            await _safe(ws.send_bytes(self.upbit_frame(what, t, fmt, n,
                                                                       "REALTIME")))
            nxt += interval
            delay = nxt - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -1.0:
                nxt = time.monotonic()  # far behind: do not try to catch up in a burst

    # -- lifecycle -------------------------------------------------------------------------------
    async def _start(self) -> None:
        up = web.Application()
        up.add_routes([web.get("/v1/market/all", self._upbit_market_all),
                       web.get("/v1/ticker", self._upbit_ticker),
                       web.get("/v1/orderbook", self._upbit_orderbook),
                       web.get("/websocket/v1", self._upbit_ws)])
        bn = web.Application()
        bn.add_routes([web.get("/api/v3/exchangeInfo", self._binance_info),
                       web.get("/api/v3/ticker/24hr", self._binance_ticker),
                       web.get("/api/v3/depth", self._binance_depth),
                       web.get("/stream", self._binance_ws)])
        ports = []
        for app in (up, bn):
            runner = web.AppRunner(app, handle_signals=False, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self._runners.append(runner)
            ports.append(runner.addresses[0][1])
        self.upbit_port, self.binance_port = ports
        for a in self.assets:
            self._bn_book[a.pair] = self.binance_levels(a, self.t())
        self._clock = asyncio.get_running_loop().create_task(self._ticker_loop())

    def start(self) -> FakeExchanges:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-exchanges",
                                        daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _stop(self) -> None:
        self._clock.cancel()
        for ws in self._sockets("upbit") + self._sockets("binance"):
            await _safe(ws.close())
        for r in self._runners:
            await r.cleanup()

    def stop(self) -> None:
        if self._loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop = None

    def __enter__(self) -> FakeExchanges:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def env(self) -> dict[str, str]:
        """Environment variables pointing the trader at these fakes."""
        return {
            "UPBIT_REST_URL": f"http://127.0.0.1:{self.upbit_port}",
            "UPBIT_WS_URL": f"ws://127.0.0.1:{self.upbit_port}/websocket/v1",
            "BINANCE_REST_URL": f"http://127.0.0.1:{self.binance_port}",
            "BINANCE_WS_URL": f"ws://127.0.0.1:{self.binance_port}",
        }


async def _safe(coro) -> None:
    try:
        await coro
    except (ConnectionError, RuntimeError):
        pass


def main() -> None:
    p = argparse.ArgumentParser(description="Run the fake exchanges until killed.")
    p.add_argument("--symbols", type=int, default=len(DEFAULT_ASSETS))
    p.add_argument("--rate-hz", type=float, default=10.0)
    args = p.parse_args()
    assets = list(DEFAULT_ASSETS)
    i = 0
    while len(assets) < args.symbols:
        i += 1
        assets.append(FakeAsset(f"C{i:02d}", 1.0 + i, 20e6 - i * 1e5, 1e8 - i * 1e6))
    fakes = FakeExchanges(assets[: args.symbols], rate_hz=args.rate_hz).start()
    print(json.dumps(fakes.env()), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        fakes.stop()


if __name__ == "__main__":
    main()
