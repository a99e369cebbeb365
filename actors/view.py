"""The live view of a Ray run: an in-place ANSI table on a terminal, periodic log lines otherwise."""

from __future__ import annotations

import math
import sys
import time

from loguru import logger

from common.engine.report import progress_text


def coins(x: float) -> str:
    """A coin position for a person: whole coins with separators when large, six significant
    digits otherwise, and 0 for float dust (no exponent either way)."""
    if not math.isfinite(x):
        return "nan"
    if abs(x) < 1e-9:
        return "0"
    if abs(x) >= 1e5:
        return f"{x:,.0f}"
    digits = max(0, 5 - int(math.floor(math.log10(abs(x)))))
    return f"{x:,.{digits}f}".rstrip("0").rstrip(".")


class LiveView:
    """Fed the coordinator's per-batch status; draws at most every ``every_s`` wall seconds."""

    def __init__(self, duration_s: float | None, live: bool, enabled: bool = True,
                 every_s: float = 2.0, max_rows: int = 25, stream=None) -> None:
        self.stream = stream or sys.stdout
        # the live table comes with monitoring on a terminal, the periodic log lines otherwise;
        # --quiet (``enabled`` False) turns both off
        self.tty = live and enabled and self.stream.isatty()
        self.enabled = enabled
        self.duration_s = duration_s
        self.every_s = 0.5 if self.tty else every_s
        self.max_rows = max_rows
        self._t0 = time.perf_counter()
        self._next = self._t0 + self.every_s
        self._start_ns: int | None = None
        self._drawn = 0
        self.events = 0
        self.rejected = 0
        self.trades = 0
        self.last: dict | None = None

    def start(self, first_event_ns: int) -> None:
        """The event time the run starts at (the first batch's first row)."""
        if self._start_ns is None:
            self._start_ns = first_event_ns

    def update(self, status: dict, events: int, rejected: int) -> None:
        self.events += events
        self.rejected += rejected
        self.trades += status.get("rows", 0)
        self.last = status
        if not self.enabled:
            return
        now = time.perf_counter()
        if self._start_ns is None and status["clock_ns"] > 0:
            self._start_ns = status["clock_ns"]
        if now < self._next:
            return
        self._next = now + self.every_s
        self.draw(now)

    def draw(self, now: float | None = None) -> None:
        status = self.last
        if status is None:
            return
        now = now or time.perf_counter()
        ev_s = (status["clock_ns"] - (self._start_ns or status["clock_ns"])) / 1e9
        syms = status["symbols"]
        pnl = sum(s["pnl_usd"] for s in syms.values())
        head = progress_text(ev_s, self.duration_s, self.events, self.rejected, self.trades, pnl,
                             now - self._t0)
        if not self.tty:
            # bound as progress: the terminal shows it only when it is one (run.log always)
            logger.bind(progress=True).info(head)
            return
        ranked = sorted(syms.items(), key=lambda kv: (-abs(kv[1]["pnl_usd"]), kv[0]))
        lines = [head, f"{'symbol':<8} {'premium bps':>12} {'pos upbit':>14} {'pos binance':>14} "
                       f"{'PnL USD':>12}  state"]
        for name, s in ranked[: self.max_rows]:
            prem = s["premium_bps"]
            lines.append(f"{name:<8} {prem if math.isfinite(prem) else float('nan'):>12.2f} "
                         f"{coins(s['position_upbit']):>14} {coins(s['position_binance']):>14} "
                         f"{s['pnl_usd']:>12.2f}  {s['status']}")
        if len(ranked) > self.max_rows:
            lines.append(f"... {len(ranked) - self.max_rows} more symbols")
        out = []
        if self._drawn:
            out.append(f"\x1b[{self._drawn}F")  # back to the first line drawn last time
        out.extend(line + "\x1b[K\n" for line in lines)
        out.append("\x1b[J")
        self.stream.write("".join(out))
        self.stream.flush()
        self._drawn = len(lines)
