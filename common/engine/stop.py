"""A graceful stop: SIGINT/SIGTERM set a flag that the engine checks between batches.

Raising KeyboardInterrupt in the middle of a settlement could leave a trade half applied; a flag
lets the engine finish the batch it is in, settle what is pending and write every output.
"""

from __future__ import annotations

import signal
import threading

from loguru import logger


class StopFlag:
    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._previous: dict[int, object] = {}

    def request(self, name: str = "stop") -> None:
        if not self.requested:
            logger.warning("{} received: finishing the current batch, settling and writing outputs",
                           name)
        self.requested = True
        self.signal_name = name

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: the user really wants out now
        self.request(signal.Signals(signum).name)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
