"""The agent's life watch: it ends the agent, and so its container, once no center is left to end it."""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import NoReturn

from contract import SESSION_END_GRACE_SECONDS
from worker_process import kill_sandbox_processes

MAX_WATCH_WAIT = 3600.0  # the life watch looks again at least this often (any bound, however large, works)


class LifeWatch:
    """Ends the agent, and with it the container, once no center is left to end it.

    A center removes its containers: a one-shot one after its run, a session's at its end, a fresh
    one when it closes. A center that crashed, or came back under another deployment label, removes
    none of them, and a session's container would run (and hold its memory) for good. So the agent
    ends itself past the session's lifetime (`session_lifetime` after the session started, plus
    SESSION_END_GRACE_SECONDS: the center, which counts from a moment later, ends it first when it
    can), and after `max_silence` seconds with no request at all (the center passes a bound past
    any idle time it allows a session, and asks every agent for its health every few seconds). A
    request counts from its accept to its answer's end, so a cell that runs is never silence; nor
    does the agent end past its lifetime while a request is still being answered.
    """

    def __init__(self, session_lifetime: float, max_silence: float) -> None:
        self.session_lifetime, self.max_silence = session_lifetime, max_silence
        self.changed = threading.Condition()  # a request began or ended, a session started
        self.in_flight = 0
        self.last = time.monotonic()  # the last moment a request began or ended
        self.session_ends: float | None = None  # once a session's: when the agent ends itself

    def begin(self) -> None:
        """A connection was accepted."""
        with self.changed:
            self.in_flight += 1
            self.last = time.monotonic()

    def end(self) -> None:
        """A connection is done."""
        with self.changed:
            self.in_flight -= 1
            self.last = time.monotonic()
            self.changed.notify_all()

    def session_started(self) -> None:
        """The agent became a session's: its lifetime runs from now."""
        if self.session_lifetime:
            with self.changed:
                self.session_ends = time.monotonic() + self.session_lifetime + SESSION_END_GRACE_SECONDS
                self.changed.notify_all()

    def reason_to_end(self, now: float) -> tuple[str | None, float | None]:
        """(Why the agent ends now, or None; when to look again, None: when a request ends). Lock held."""
        wake = []
        if self.session_ends is not None:
            if now < self.session_ends:
                wake.append(self.session_ends)
            elif not self.in_flight:
                return f"the session reached its lifetime ({self.session_lifetime:g} s)", None
        if self.max_silence and not self.in_flight:
            if now - self.last >= self.max_silence:
                return f"no request came for {self.max_silence:g} s: no center is left to end this sandbox", None
            wake.append(self.last + self.max_silence)
        return None, min(wake) if wake else None

    def watch(self) -> NoReturn:
        """The watch's thread: wait until a bound is passed, then end the agent."""
        with self.changed:
            while True:
                now = time.monotonic()
                reason, wake = self.reason_to_end(now)
                if reason is not None:
                    break
                # No wake-up while nothing can be due: an idle sandbox takes no CPU.
                self.changed.wait(MAX_WATCH_WAIT if wake is None else min(wake - now, MAX_WATCH_WAIT))
            # Still holding the lock: no request is begun meanwhile (one accepted now meets a closed socket).
            print(f"agent: ending: {reason}", file=sys.stderr, flush=True)
            kill_sandbox_processes()
            os._exit(0)

    def start(self) -> None:
        """Watch in a thread of its own, when there is a bound to watch."""
        if self.session_lifetime or self.max_silence:
            threading.Thread(target=self.watch, name="life-watch", daemon=True).start()

