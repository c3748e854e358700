"""When a fresh sandbox warms up: at once while recent programs use the preloaded libraries, else when idle.

A sandbox's worker can import numpy, matplotlib, pandas and seaborn before its program comes (see
sandbox/worker.py preload). That pays off for programs that use them and is wasted CPU for those that
do not, which matters under load: a busy 2-core host has none to spare. By default an agent warms up
after WARM_DELAY_SECONDS of idleness, so a sandbox taken at once under load never pays for it. But a
stream of plots back to back (a batch job, an evaluation harness) then always finds sandboxes cold,
and each pays the imports while its client waits. So the center looks at the programs it ran lately
and starts the next sandboxes with no delay while most of them used those libraries.
"""

from __future__ import annotations

import threading
from collections import deque

from sandbox.contract import PRELOADED_LIBRARIES, WARM_DELAY_SECONDS

WINDOW = 16  # programs remembered
MIN_SEEN = 4  # before that many, the default delay holds


class WarmUpPolicy:
    """The warm-up delay for the next sandbox, learned from the last WINDOW one-shot programs."""

    def __init__(self, idle_delay: float = WARM_DELAY_SECONDS) -> None:
        self.idle_delay = idle_delay
        self.recent: deque[bool] = deque(maxlen=WINDOW)
        self.lock = threading.Lock()

    def note(self, language: str, code: str) -> None:
        """One program was asked to run."""
        uses = language == "python" and PRELOADED_LIBRARIES.search(code) is not None
        with self.lock:
            self.recent.append(uses)

    def delay(self) -> float:
        """Seconds a new sandbox waits idle before its warm-up: none while most recent programs used
        the libraries."""
        with self.lock:
            seen, using = len(self.recent), sum(self.recent)
        return 0.0 if seen >= MIN_SEEN and 2 * using >= seen else self.idle_delay
