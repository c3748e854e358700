"""How a fresh sandbox warms up: which libraries first, and when, learned from the programs run lately.

A sandbox's worker can import numpy, matplotlib, pandas, scipy and seaborn before its program comes
(see sandbox/worker.py preload, and the groups in sandbox/contract.py). That pays off for programs
that use them and is wasted CPU for those that do not, which matters under load: a busy 2-core host
has none to spare. By default an agent warms up after WARM_DELAY_SECONDS of idleness, so a sandbox
taken at once under load never pays for it. But a stream of plots back to back (a batch job, an
evaluation harness) then always finds sandboxes cold, and each pays the imports while its client
waits. So the center looks at the programs it ran lately: while most of them used those libraries,
the next sandboxes start warming at once, and only the groups those programs used (a stream of
plots needs numpy and matplotlib, ~0.3 s of CPU, not pandas, scipy and seaborn, ~0.5 s more); the
other groups follow only if the sandbox then stays idle for WARM_REST_SECONDS.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import NamedTuple

from sandbox.contract import (
    PRELOADED_LIBRARIES,
    WARM_DELAY_SECONDS,
    WARM_REST_SECONDS,
    WARM_UP_GROUP_NAMES,
    WARM_UP_GROUPS,
)

WINDOW = 16  # programs remembered
MIN_SEEN = 4  # before that many, the default delay holds


class WarmUpPlan(NamedTuple):
    """What a new sandbox's agent is told (--warm-delay, --warm-first, --warm-rest)."""

    delay: float  # idle seconds before the warm-up starts
    first: tuple[str, ...]  # the groups taken first
    rest_delay: float  # idle seconds after them before the others


class WarmUpPolicy:
    """The warm-up plan for the next sandbox, learned from the last WINDOW one-shot programs."""

    def __init__(self, idle_delay: float = WARM_DELAY_SECONDS, rest_delay: float = WARM_REST_SECONDS) -> None:
        self.idle_delay, self.rest_delay = idle_delay, rest_delay
        self.recent: deque[frozenset[str]] = deque(maxlen=WINDOW)  # the groups each program used
        self.lock = threading.Lock()

    def note(self, language: str, code: str) -> None:
        """One program was asked to run."""
        used: frozenset[str] = frozenset()
        # One search settles most programs: every group's libraries are among PRELOADED_LIBRARIES.
        if language == "python" and PRELOADED_LIBRARIES.search(code) is not None:
            used = frozenset(group.name for group in WARM_UP_GROUPS if group.used_by.search(code) is not None)
        with self.lock:
            self.recent.append(used)

    def plan(self) -> WarmUpPlan:
        """At once and only the groups recent programs used, while most of them used one; else all of
        them once the sandbox sits idle."""
        with self.lock:
            recent = list(self.recent)
        using = [groups for groups in recent if groups]
        if len(recent) < MIN_SEEN or 2 * len(using) < len(recent):
            return WarmUpPlan(self.idle_delay, WARM_UP_GROUP_NAMES, self.rest_delay)
        used = frozenset().union(*using)
        return WarmUpPlan(0.0, tuple(name for name in WARM_UP_GROUP_NAMES if name in used), self.rest_delay)
