"""The warm-up policy (pure logic): fresh sandboxes warm at once while most recent programs use the libraries."""

from __future__ import annotations

import pytest

from sandbox.contract import WARM_DELAY_SECONDS
from warm_up import MIN_SEEN, WINDOW, WarmUpPolicy

PLOT = "import matplotlib.pyplot as plt\nplt.plot([1, 2])"
PRINT = "print('hello')"


def test_with_no_history_a_sandbox_waits_for_an_idle_moment() -> None:
    policy = WarmUpPolicy()
    assert policy.delay() == WARM_DELAY_SECONDS
    for _ in range(MIN_SEEN - 1):
        policy.note("python", PLOT)
    assert policy.delay() == WARM_DELAY_SECONDS  # too few programs seen to decide


@pytest.mark.parametrize("plots, prints, eager", [(4, 0, True), (8, 8, True), (7, 9, False), (0, 16, False)])
def test_most_recent_programs_decide(plots: int, prints: int, eager: bool) -> None:
    policy = WarmUpPolicy()
    for code in [PLOT] * plots + [PRINT] * prints:
        policy.note("python", code)
    assert policy.delay() == (0.0 if eager else WARM_DELAY_SECONDS)


def test_only_the_last_window_counts() -> None:
    policy = WarmUpPolicy()
    for _ in range(100):
        policy.note("python", PRINT)
    for _ in range(WINDOW):
        policy.note("python", "import pandas as pd\npd.DataFrame()")
    assert policy.delay() == 0.0
    for _ in range(WINDOW // 2 + 1):
        policy.note("python", PRINT)
    assert policy.delay() == WARM_DELAY_SECONDS


def test_bash_that_names_a_library_does_not_count() -> None:
    policy = WarmUpPolicy()
    for _ in range(WINDOW):
        policy.note("bash", "echo numpy pandas matplotlib")
    assert policy.delay() == WARM_DELAY_SECONDS
