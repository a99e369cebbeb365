"""Readers of the real recorded exchange frames in /work/shared/data/exchange-recordings (read in
place, never copied): REST bodies and WebSocket payloads of cryptofeed's raw recorder files.

Line formats: ``<request url> -> <unix time>: <body>`` (REST), ``<unix time>: <payload>``
(received frame; Upbit's binary frames are written as a Python bytes literal ``b'...'``).
"""

from __future__ import annotations

import ast
from pathlib import Path

RECORDINGS = Path(__file__).resolve().parents[3] / "shared" / "data" / "exchange-recordings"
RAW = RECORDINGS / "cryptofeed_sample_data"


def available(*names: str) -> bool:
    return all((RAW / n).is_file() for n in names)


def rest_body(name: str, url_part: str) -> bytes:
    """The body of the first recorded REST response whose request URL contains ``url_part``."""
    with open(RAW / name, "rb") as f:
        for line in f:
            head, sep, rest = line.partition(b" -> ")
            if sep and url_part.encode() in head:
                return rest.split(b": ", 1)[1].rstrip(b"\n")
    raise KeyError(f"{name}: no REST response for {url_part}")


def frames(name: str, contains: str) -> list[tuple[float, bytes]]:
    """Received WebSocket payloads (time, raw bytes) that contain ``contains``."""
    out = []
    needle = contains.encode()
    with open(RAW / name, "rb") as f:
        for line in f:
            if needle not in line or b" -> " in line or b" <- " in line or b" <-> " in line:
                continue
            ts, sep, payload = line.partition(b": ")
            if not sep:
                continue
            try:
                t = float(ts)
            except ValueError:
                continue
            payload = payload.rstrip(b"\n")
            if payload.startswith(b"b'") or payload.startswith(b'b"'):
                payload = ast.literal_eval(payload.decode("utf-8"))
            out.append((t, payload))
    return out


def depth_snapshots(name: str) -> list[tuple[float, str, bytes]]:
    """Recorded Binance depth snapshots: (time, symbol, body)."""
    out = []
    with open(RAW / name, "rb") as f:
        for line in f:
            head, sep, rest = line.partition(b" -> ")
            if sep and b"/depth?symbol=" in head:
                sym = head.split(b"symbol=")[1].split(b"&")[0].decode()
                t, body = rest.split(b": ", 1)
                out.append((float(t), sym, body.rstrip(b"\n")))
    return out
