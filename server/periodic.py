"""Work a service repeats in the background (sweeps, heartbeats): every few seconds, until it is stopped."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Periodic:
    """Calls `action` every `interval` seconds in a daemon thread of its own (once at once too, with
    `at_start`) until stopped. An action that raises is logged and called again next time: the thread
    outlives any one bad round."""

    def __init__(self, name: str, interval: float, action: Callable[[], object], at_start: bool = False) -> None:
        self.name, self.interval, self.action, self.at_start = name, interval, action, at_start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        """Begin the rounds."""
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """End the rounds (waits for one in progress, at most `timeout`)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout)

    def _loop(self) -> None:
        if self.at_start:
            self._round()
        while not self._stop.wait(self.interval):
            self._round()

    def _round(self) -> None:
        try:
            self.action()
        except Exception:  # noqa: BLE001 - the rounds must outlive any one that fails
            log.exception("%s: a round failed", self.name)
