"""The live source in a process of its own, beside the engine instead of inside its interpreter.

At ~4,000 books/s, receiving and parsing the WebSocket frames (JSON, Binance's diff books, the
staleness gate) costs about as much CPU as the engine's work on them; in one process the two
share one GIL, so a book that arrives while the engine computes waits for it, and the engine
waits for the parser. ``LiveFeedProcess`` runs a ``LiveSource`` (clients, parsers, TopN,
staleness: unchanged) in a child process and has the same interface as a ``LiveSource``.

The child pushes from its event loop (``LiveSource.push_to``): after each turn in which anything
arrived, one compact binary message of the rows (``encode_rows``: raw columns, no pickle), led
by a small pickled one when reject counts, TopN events, counters or new symbol names came with
them. Those messages never block the child's event loop (``_Outbox``: what the socket does not
take waits in memory), so a busy engine never delays the WebSocket reads or their receive
times. The engine's side takes everything that arrived since it last asked as one batch, in
``recv_ns`` order (small when the engine keeps up, larger when it falls behind), records exactly
what it hands to the engine and forwards ``release`` to the child (over a second socket).

The child ignores Ctrl-C and runs in its own session (the parent stops it, so the recording and
the KPIs see one end of the run), ends when the parent's end of the socket closes, and sends its
log records to the parent, which logs them through its own loguru sinks as if logged where they
were made. Symbol ids: each process interns names in its own order (the engine interns the TopN
members itself), so the parent maps the child's ids to its own table when it decodes rows.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
from loguru import logger

from common.marketdata.batch import BookBatch, SymbolTable
from common.marketdata.live import EngineSide, LiveConfig, LiveSource, add_counts
from common.marketdata.record import RecordingWriter
from common.marketdata.replay import DataSourceError
from common.marketdata.rows import rows_to_batch
from common.marketdata.topn import TopNSelection

#: seconds the child may take to start Python and import the clients, beyond the REST set-up
SPAWN_SLACK_S = 30.0
#: messages taken per ask at most (the rest wait for the next batch: bounded work per batch)
MAX_MESSAGES = 4096


class LiveFeedProcess(EngineSide):
    """A ``LiveSource`` run in a child process (see module doc); same interface."""

    def __init__(self, cfg: LiveConfig, symtab: SymbolTable | None = None,
                 record_path: str | None = None, duration_s: float | None = None) -> None:
        self.cfg = cfg
        self.symtab = symtab if symtab is not None else SymbolTable()
        self.symtab.fx_id  # noqa: B018 - the FX book gets a stable id first (as in LiveSource)
        self.duration_s = duration_s
        self.recorder = RecordingWriter(record_path) if record_path else None
        self.selection: TopNSelection | None = None
        self.symbols: tuple[str, ...] = ()
        self.lot_steps: dict[str, float] = {}
        self.topn_events: list[dict] = []
        self.stats: dict[str, int] = {"reconnects": 0, "sequence_gaps": 0, "stale_periods": 0,
                                      "rows_emitted": 0}
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None  # the child's messages
        self._ctl: Connection | None = None  # orders to the child
        self._send_lock = threading.Lock()
        self._started = False
        self._stopped = False
        self._child_ended = False
        self._child_names: tuple[str, ...] = ()
        self._lut = np.zeros(0, dtype=np.int32)  # the child's symbol id -> ours

    # == lifecycle =================================================================================
    def start(self) -> tuple[str, ...]:
        """Start the child, which selects TopN and opens both streams; the same one-line
        ``DataSourceError`` as ``LiveSource.start`` when the exchanges cannot be used."""
        if self._started:
            return self.symbols
        self._started = True
        # a fresh interpreter (no fork of a process with threads: loguru, Ray), started as a
        # module so that nothing depends on how the parent's main script was written; its own
        # session, so a Ctrl-C in the terminal reaches only the parent
        # two socket pairs: the books come up one (never blocking the child's event loop), the
        # orders go down the other (read by the child's main thread, blocking)
        data_mine, data_theirs = socket.socketpair()
        ctl_mine, ctl_theirs = socket.socketpair()
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ,
               "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        fds = (data_theirs.fileno(), ctl_theirs.fileno())
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "common.marketdata.live_process", *map(str, fds)],
                pass_fds=fds, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        except OSError as exc:
            data_mine.close()
            ctl_mine.close()
            raise DataSourceError(f"--data-source real: cannot start the market-data process "
                                  f"({exc})") from None
        finally:
            data_theirs.close()
            ctl_theirs.close()
        self._conn = Connection(data_mine.detach())
        self._ctl = Connection(ctl_mine.detach())
        atexit.register(self.stop)
        self._send(("config", self.cfg, self.symtab.names))
        deadline = time.monotonic() + self.cfg.start_timeout_s + SPAWN_SLACK_S
        while True:
            left = deadline - time.monotonic()
            msg = self._recv(max(left, 0.0)) if left > 0 else None
            if msg is None:
                self.stop()
                if self._child_ended:
                    raise DataSourceError("--data-source real: the market-data process ended "
                                          f"while starting (exit code {self._proc.poll()})")
                raise DataSourceError("--data-source real: the exchanges' REST APIs did not "
                                      f"answer within {self.cfg.start_timeout_s:g} s")
            kind = msg[0]
            if kind == "log":
                _relog(msg)
            elif kind == "error":
                self.stop()
                raise DataSourceError(msg[1])
            elif kind == "started":
                _, self.symbols, self.lot_steps, self.selection, names = msg
                self._set_child_names(names)
                return self.symbols

    def stop(self) -> None:
        """Stop the child (bounded wait: never blocks shutdown) and close the recording."""
        if self._stopped:
            return
        self._stopped = True
        if self._proc is not None and self._conn is not None:
            self._send(("stop",))
            deadline = time.monotonic() + 5.0
            while not self._child_ended and time.monotonic() < deadline:
                msg = self._recv(max(deadline - time.monotonic(), 0.0))
                if msg is None:
                    break
                if msg[0] == "log":
                    _relog(msg)
                elif msg[0] == "meta":  # (rows never handed to the engine are dropped)
                    self._take_meta(msg)
                elif msg[0] == "end":
                    self._take_end(msg)
            try:
                self._proc.wait(timeout=3.0)
            except subprocess.TimeoutExpired:
                logger.warning("market-data process did not stop in time; terminating it")
                self._proc.terminate()
                try:
                    self._proc.wait(timeout=2.0)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            self._conn.close()
            self._ctl.close()
        self._close_outputs()

    def release(self, symbol: str) -> None:
        """A symbol that left TopN is flat: the child stops streaming it."""
        if not self._stopped:
            self._send(("release", symbol))

    # == the engine side ===========================================================================
    def batches(self) -> Iterator[tuple[BookBatch, dict[str, int]]]:
        """Batches of the rows received, in recv_ns order, until the duration or Ctrl-C."""
        self.start()
        carry: dict[str, int] = {}
        try:
            for wait in self._poll_waits(lambda: not self._child_ended):
                parts: list[BookBatch] = []
                for msg in self._drain(wait):
                    kind = msg[0]
                    if kind == "rows":
                        parts.append(self._decode(msg[1]))
                    elif kind == "meta":
                        add_counts(carry, msg[2])
                        self._take_meta(msg)
                    elif kind == "log":
                        _relog(msg)
                    elif kind == "end":  # the child ended without being asked to
                        self._take_end(msg)
                if self._child_ended:
                    logger.error("the market-data process ended unexpectedly (exit code {}); "
                                 "ending the run", self._proc.poll())
                if not parts:
                    continue
                whole = BookBatch.concat(parts)
                step = self.cfg.max_batch_rows
                for i in range(0, len(whole), step):
                    batch = whole if len(whole) <= step else whole.take(
                        np.arange(i, min(i + step, len(whole))))
                    out, carry = carry, {}
                    yield self._handed_over(batch), out
            if carry:
                yield rows_to_batch([], self.symtab), carry
        finally:
            self.stop()

    # -- helpers ----------------------------------------------------------------------------------
    def _recv(self, timeout: float):
        """One message, None on timeout or when the child is gone (``_child_ended`` set)."""
        try:
            if not self._conn.poll(timeout):
                return None
            data = self._conn.recv_bytes()
        except (EOFError, OSError):
            self._child_ended = True
            return None
        if data[:1] == _ROWS:
            return ("rows", data)
        return pickle.loads(memoryview(data)[_TAG_BYTES:])

    def _drain(self, timeout: float) -> list:
        """Everything that has arrived (waiting up to ``timeout`` for the first message)."""
        first = self._recv(timeout)
        if first is None:
            return []
        out = [first]
        while len(out) < MAX_MESSAGES:
            msg = self._recv(0.0)
            if msg is None:
                break
            out.append(msg)
        return out

    def _send(self, msg) -> None:
        with self._send_lock:
            try:
                self._ctl.send(msg)
            except (OSError, ValueError):
                pass  # the child is gone (or the pipe closed): nothing left to tell it

    def _decode(self, data: bytes) -> BookBatch:
        """A rows message as a batch with this process's symbol ids."""
        b = decode_rows(data, self._child_names)
        return dataclasses.replace(b, sym=self._lut[b.sym], symbols=self.symtab.names)

    def _take_meta(self, msg) -> None:
        _, names, _rejects, events, stats = msg
        if names is not None:
            self._set_child_names(names)
        self._take_events(events)
        if stats is not None:
            self._take_stats(stats)

    def _take_end(self, msg) -> None:
        self._take_events(msg[1])
        self._take_stats(msg[2])
        self._child_ended = True

    def _take_stats(self, stats: dict[str, int]) -> None:
        for k, v in stats.items():
            if k != "rows_emitted":
                self.stats[k] = v

    def _set_child_names(self, names: tuple[str, ...]) -> None:
        """The child's symbol table grew: map its ids to this process's table (the engine may
        have interned the TopN members in its own order meanwhile); new names are added."""
        self._child_names = tuple(names)
        self._lut = np.fromiter((self.symtab.id_of(n) for n in names), dtype=np.int32,
                                count=len(names))


def _relog(msg) -> None:
    """A child's log record, logged here as if where it was made (module, function, line)."""
    _, level, text, where = msg
    logger.patch(lambda r: r.update(where)).log(level, "{}", text)


# == the wire format of a rows message =============================================================
# tag (8 bytes, for alignment), then rows n, bid levels, ask levels (int64 each), then the
# columns: the 8-byte ones first, so that every array after the header stays aligned
_TAG_BYTES = 8
_ROWS = b"R"
_OBJ = b"P"
_HEADER = struct.Struct("<qqq")
_COLUMNS = (("ts_ns", np.int64, "n"), ("recv_ns", np.int64, "n"), ("bid_off", np.int64, "n1"),
            ("ask_off", np.int64, "n1"), ("bid_px", np.float64, "nb"),
            ("bid_sz", np.float64, "nb"), ("ask_px", np.float64, "na"),
            ("ask_sz", np.float64, "na"), ("sym", np.int32, "n"), ("venue", np.int8, "n"),
            ("quote_ok", np.bool_, "n"))


def encode_rows(batch: BookBatch) -> bytes:
    """A batch (compact, offsets from 0, as ``rows_to_batch`` makes them) as one bytes object."""
    n = len(batch)
    nb, na = int(batch.bid_off[-1]), int(batch.ask_off[-1])
    parts = [_ROWS.ljust(_TAG_BYTES, b"\0"), _HEADER.pack(n, nb, na)]
    for name, dtype, _ in _COLUMNS:
        parts.append(np.ascontiguousarray(getattr(batch, name), dtype=dtype).tobytes())
    return b"".join(parts)


def decode_rows(data: bytes, symbols: tuple[str, ...]) -> BookBatch:
    """The batch ``encode_rows`` made (arrays are read-only views of ``data``)."""
    n, nb, na = _HEADER.unpack_from(data, _TAG_BYTES)
    counts = {"n": n, "n1": n + 1, "nb": nb, "na": na}
    pos = _TAG_BYTES + _HEADER.size
    cols = {}
    for name, dtype, size in _COLUMNS:
        a = np.frombuffer(data, dtype=dtype, count=counts[size], offset=pos)
        pos += a.nbytes
        cols[name] = a
    if pos != len(data):
        raise ValueError(f"rows message of {len(data)} bytes, expected {pos}")
    return BookBatch(symbols=symbols, **cols)


# == the child process =============================================================================
class _Outbox:
    """Messages to the parent, in ``Connection``'s framing, sent without ever blocking the event
    loop: what the socket does not take at once waits here (as the thread feed's list would)
    and goes out when the socket is writable again, so a parent busy for a while never stalls
    the WebSocket reads (and their receive times). Any thread may ``put``."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._fd = sock.fileno()
        sock.setblocking(False)
        self._buf = bytearray()
        self._lock = threading.Lock()
        self._loop = None
        self._armed = False  # a writer callback is registered with the loop
        self.gone = False  # the parent closed its end

    def attach(self, loop) -> None:
        """From now on, wait for writability in ``loop`` (the I/O thread's)."""
        with self._lock:
            self._loop = loop

    def put(self, data: bytes) -> None:
        with self._lock:
            if self.gone:
                return
            self._buf += struct.pack("!i", len(data))
            self._buf += data
            if self._armed:
                return
            self._send_some()
            if self._buf:
                if self._loop is None:
                    self._wait_sent(30.0)  # starting up: nothing else to do meanwhile
                else:
                    self._armed = True
                    self._loop.call_soon_threadsafe(self._loop.add_writer, self._fd, self._writable)

    def flush(self, timeout: float) -> None:
        """Send what is left (the loop has stopped), waiting up to ``timeout`` for the parent."""
        with self._lock:
            self._wait_sent(timeout)

    def _writable(self) -> None:
        with self._lock:
            self._send_some()
            if not self._buf:
                self._armed = False
                self._loop.remove_writer(self._fd)

    def _send_some(self) -> None:
        try:
            while self._buf:
                del self._buf[:self._sock.send(self._buf)]
        except BlockingIOError:
            pass
        except OSError:
            self._buf.clear()
            self.gone = True

    def _wait_sent(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self._buf and not self.gone:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            select.select([], [self._fd], [], left)
            self._send_some()


def _child_main(data_fd: int, ctl_fd: int) -> None:
    """Run a LiveSource, pushing what it receives to the parent (see module doc)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when the run ends
    ctl = Connection(ctl_fd)
    out = _Outbox(socket.socket(fileno=data_fd))
    try:
        _, cfg, names = ctl.recv()
    except (EOFError, OSError):
        return  # the parent gave up before we were ready

    def send_obj(obj) -> None:
        out.put(_OBJ.ljust(_TAG_BYTES, b"\0") + pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))

    def forward(m) -> None:
        # the formatted message: loguru appends a traceback to it when there is one
        r = m.record
        send_obj(("log", r["level"].name, str(m).rstrip("\n"),
                  {"name": r["name"], "function": r["function"], "line": r["line"]}))

    logger.remove()
    logger.add(forward, level="DEBUG", format="{message}")
    src = LiveSource(cfg, SymbolTable(names))
    try:
        src.start()
    except DataSourceError as exc:
        send_obj(("error", str(exc)))
        out.flush(5.0)
        return
    except Exception as exc:  # noqa: BLE001 - whatever it is, the parent gets one line
        send_obj(("error", f"--data-source real: {type(exc).__name__}: {exc}"))
        src.stop()
        out.flush(5.0)
        return
    out.attach(src.io_loop)
    send_obj(("started", src.symbols, dict(src.lot_steps), src.selection, src.symtab.names))
    told = {"names": len(src.symtab), "stats": _counters(src), "events": 0}

    def push(batch: BookBatch | None, rejects: dict[str, int], events: list[dict]) -> None:
        # (the I/O thread) what changed besides the rows first, so the parent can map them
        names = src.symtab.names
        new_names = names if len(names) != told["names"] else None
        stats = _counters(src)
        new_stats = stats if stats != told["stats"] else None
        if new_names or rejects or events or new_stats:
            send_obj(("meta", new_names, rejects, events, new_stats))
            told.update(names=len(names), stats=stats, events=told["events"] + len(events))
        if batch is not None:
            out.put(encode_rows(batch))

    src.push_to(push)
    while True:
        try:
            msg = ctl.recv()
        except (EOFError, OSError):
            break  # the parent is gone
        if msg[0] == "release":
            src.release(msg[1])
        elif msg[0] == "stop":
            break
    src.stop()
    send_obj(("end", src.topn_events[told["events"]:], _counters(src)))
    out.flush(5.0)


def _counters(src: LiveSource) -> dict[str, int]:
    return {k: v for k, v in src.stats.items() if k != "rows_emitted"}


if __name__ == "__main__":
    _child_main(int(sys.argv[1]), int(sys.argv[2]))


def open_live(settings, duration_s: float | None, record_path: str | None = None,
              symtab: SymbolTable | None = None):
    """A started live source for ``settings`` (TopN selected, streams opening).

    With ``LIVE_FEED_PROCESS`` (the default) the clients run in a process of their own
    (``LiveFeedProcess``), so that parsing the books does not take the engine's interpreter;
    else in a thread beside it (``LiveSource``)."""
    kind = LiveFeedProcess if settings.live_feed_process else LiveSource
    try:
        src = kind(LiveConfig.from_settings(settings), symtab, record_path, duration_s)
    except FileExistsError as exc:
        raise DataSourceError(str(exc)) from None
    src.start()
    return src
