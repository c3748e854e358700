"""Periodic (pure logic): rounds in the background until stopped, surviving a round that fails."""

from __future__ import annotations

import threading
import time

from server.periodic import Periodic


def test_rounds_repeat_and_outlive_a_failing_one() -> None:
    calls: list[int] = []
    third = threading.Event()

    def action() -> None:
        calls.append(len(calls))
        if len(calls) == 1:
            raise RuntimeError("one bad round")
        if len(calls) == 3:
            third.set()

    rounds = Periodic("test-rounds", 0.01, action)
    rounds.start()
    assert third.wait(10), calls
    rounds.stop()
    stopped_at = len(calls)
    assert not rounds._thread.is_alive()
    time.sleep(0.05)
    assert len(calls) == stopped_at  # no round after stop


def test_at_start_runs_a_round_before_the_first_wait() -> None:
    ran = threading.Event()
    rounds = Periodic("test-at-start", 3600, ran.set, at_start=True)
    rounds.start()
    assert ran.wait(10)
    rounds.stop()
    assert not rounds._thread.is_alive()


def test_without_at_start_nothing_runs_before_the_interval() -> None:
    ran = threading.Event()
    rounds = Periodic("test-later", 3600, ran.set)
    rounds.start()
    rounds.stop()
    assert not ran.is_set()
