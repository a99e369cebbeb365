"""Public REST calls of the exchanges: one GET helper with rate limiting, retries and clear errors.

Both exchanges publish their limits in response headers (Upbit ``Remaining-Req: group=market;
min=599; sec=9``, Binance ``X-MBX-USED-WEIGHT-1m``); the ``RateLimiter`` spaces requests and
slows down when a header says the budget is nearly spent. HTTP 429 / 418 / 5xx are retried with
backoff (``Retry-After`` honoured); HTTP 451 means the venue refuses this region, which no retry
can fix, so it raises ``RegionRestrictedError`` with a message meant for the user.
"""

from __future__ import annotations

import asyncio
import re
import time

import aiohttp
import orjson
from loguru import logger

_SEC_RE = re.compile(r"sec=(\d+)")


class RestError(Exception):
    """A REST call that failed for good; the message is one line."""


class RegionRestrictedError(RestError):
    """HTTP 451: the exchange refuses requests from this location."""


class RateLimiter:
    """Spaces requests to at most ``per_second`` and backs off when the venue's headers say so."""

    def __init__(self, per_second: float, weight_limit_1m: int | None = None) -> None:
        self._interval = 1.0 / per_second
        self._next = 0.0
        self._lock = asyncio.Lock()
        self._weight_limit = weight_limit_1m
        self._pause_until = 0.0

    async def acquire(self) -> None:
        async with self._lock:
            now = time.monotonic()
            wait = max(self._next, self._pause_until) - now
            if wait > 0:
                await asyncio.sleep(wait)
                now = time.monotonic()
            self._next = now + self._interval

    def observe(self, headers) -> None:
        """Read the venue's remaining-budget headers; pause when nearly exhausted."""
        remaining = headers.get("Remaining-Req")
        if remaining:
            m = _SEC_RE.search(remaining)
            if m and int(m.group(1)) <= 1:
                self._pause_until = max(self._pause_until, time.monotonic() + 1.0)
        used = headers.get("X-MBX-USED-WEIGHT-1m") or headers.get("x-mbx-used-weight-1m")
        if used and self._weight_limit:
            try:
                if int(used) >= self._weight_limit * 0.9:
                    # wait for the next minute window to start
                    self._pause_until = max(self._pause_until,
                                            time.monotonic() + 60.0 - time.time() % 60.0)
            except ValueError:
                pass


async def get_json(session: aiohttp.ClientSession, url: str, limiter: RateLimiter, venue: str,
                   params: dict | None = None, attempts: int = 5, timeout_s: float = 10.0):
    """GET ``url`` and decode its JSON body; raises ``RestError`` / ``RegionRestrictedError``."""
    delay = 0.5
    last = ""
    for attempt in range(attempts):
        await limiter.acquire()
        try:
            async with session.get(url, params=params,
                                   timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                limiter.observe(resp.headers)
                body = await resp.read()
                if resp.status == 451:
                    raise RegionRestrictedError(
                        f"{venue} refuses requests from this location (HTTP 451 on {url}); "
                        f"{venue} public market data is not available in your region: run from "
                        "an allowed region or use --data-source mock|replay")
                if resp.status in (418, 429) or resp.status >= 500:
                    retry_after = resp.headers.get("Retry-After")
                    wait = float(retry_after) if retry_after and retry_after.isdigit() else delay
                    last = f"HTTP {resp.status}"
                    logger.warning("{} REST {}: HTTP {}, retrying in {:.1f} s", venue, url,
                                   resp.status, wait)
                    await asyncio.sleep(wait)
                    delay = min(delay * 2, 30.0)
                    continue
                if resp.status != 200:
                    text = body[:200].decode("utf-8", "replace").replace("\n", " ")
                    raise RestError(f"{venue} REST {url}: HTTP {resp.status}: {text}")
                try:
                    return orjson.loads(body)
                except orjson.JSONDecodeError as exc:
                    raise RestError(f"{venue} REST {url}: response is not JSON ({exc})") from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            last = f"{type(exc).__name__}: {exc}".strip()
            if attempt + 1 < attempts:
                logger.warning("{} REST {}: {}, retrying in {:.1f} s", venue, url, last, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
    raise RestError(f"{venue} REST {url}: failed after {attempts} attempts ({last})")
