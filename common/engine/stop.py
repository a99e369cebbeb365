"""A graceful stop: SIGINT/SIGTERM set a flag that the engine checks between batches.

Raising KeyboardInterrupt in the middle of a settlement could leave a trade half applied; a flag
lets the engine finish the batch it is in, settle what is pending and write every output.
"""

from __future__ import annotations

import signal
import threading

from loguru import logger


class StopFlag:
    """The one stop path of both engines. The first SIGINT or SIGTERM asks the engine to stop
    (``requested``, ``signal``); a second one of either aborts at once (KeyboardInterrupt).
    The run's exit code follows from ``signal``: ``report.exit_code``."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    @property
    def signal_name(self) -> str:
        return self.signal or ""

    def request(self, name: str) -> None:
        if self.signal is None:
            logger.warning("{} received: finishing the current batch, settling open trades and "
                           "writing the outputs (again to abort)", name)
            self.signal = name

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt  # a second signal: the user really wants out now
        self.request(signal.Signals(signum).name)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
