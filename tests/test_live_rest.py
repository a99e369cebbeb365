"""The REST helper: retries on 429 / 5xx with Retry-After, a clear error on 451 and on other
failures, and the rate limiter reading the venues' budget headers."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from aiohttp import web

from common.marketdata.rest import RateLimiter, RegionRestrictedError, RestError, get_json


async def _serve(statuses: list[int], body: bytes = b'{"ok": true}'):
    calls = []

    async def handler(request: web.Request) -> web.Response:
        calls.append(time.monotonic())
        status = statuses[min(len(calls), len(statuses)) - 1]
        headers = {"Retry-After": "0"} if status == 429 else {}
        return web.Response(body=body if status == 200 else b"{}", status=status,
                            headers=headers, content_type="application/json")

    app = web.Application()
    app.router.add_get("/x", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/x", calls


def _get(statuses, body=b'{"ok": true}', attempts=5):
    async def go():
        runner, url, calls = await _serve(statuses, body)
        try:
            async with aiohttp.ClientSession() as s:
                try:
                    return await get_json(s, url, RateLimiter(100.0), "Venue",
                                          attempts=attempts), calls
                except RestError as exc:
                    return exc, calls
        finally:
            await runner.cleanup()

    return asyncio.run(go())


def test_retries_rate_limits_and_server_errors():
    got, calls = _get([429, 503, 200])
    assert got == {"ok": True} and len(calls) == 3


def test_451_is_a_region_error_without_retry():
    got, calls = _get([451])
    assert isinstance(got, RegionRestrictedError) and len(calls) == 1
    assert "HTTP 451" in str(got) and "region" in str(got)


@pytest.mark.parametrize("statuses,body,text", [
    ([400], b"{}", "HTTP 400"),
    ([500, 500], b"{}", "failed after 2 attempts"),
    ([200], b"<html>", "not JSON"),
])
def test_other_failures_are_one_line_errors(statuses, body, text):
    got, _ = _get(statuses, body, attempts=2)
    assert isinstance(got, RestError) and text in str(got) and "\n" not in str(got)


def test_limiter_pauses_when_the_budget_is_spent():
    lim = RateLimiter(1000.0, weight_limit_1m=6000)
    lim.observe({"Remaining-Req": "group=market; min=100; sec=0"})
    assert lim._pause_until > time.monotonic() + 0.5
    lim2 = RateLimiter(1000.0, weight_limit_1m=6000)
    lim2.observe({"X-MBX-USED-WEIGHT-1m": "5900"})
    assert lim2._pause_until > time.monotonic()
    lim3 = RateLimiter(1000.0, weight_limit_1m=6000)
    lim3.observe({"Remaining-Req": "group=market; min=100; sec=7", "X-MBX-USED-WEIGHT-1m": "10"})
    assert lim3._pause_until == 0.0
