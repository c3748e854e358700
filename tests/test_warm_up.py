"""The warm-up policy (pure logic): fresh sandboxes warm at once, and only what recent programs used,
while most of them use the libraries; else all of it when idle."""

from __future__ import annotations

import pytest

from sandbox.contract import WARM_DELAY_SECONDS, WARM_UP_GROUP_NAMES
from server.containers.warm_up import MIN_SEEN, WINDOW, WarmUpPolicy

PLOT = "import matplotlib.pyplot as plt\nplt.plot([1, 2])"
PRINT = "print('hello')"


def test_with_no_history_a_sandbox_waits_for_an_idle_moment() -> None:
    policy = WarmUpPolicy()
    assert policy.plan().delay == WARM_DELAY_SECONDS
    for _ in range(MIN_SEEN - 1):
        policy.note("python", PLOT)
    assert policy.plan().delay == WARM_DELAY_SECONDS  # too few programs seen to decide


@pytest.mark.parametrize("plots, prints, eager", [(4, 0, True), (8, 8, True), (7, 9, False), (0, 16, False)])
def test_most_recent_programs_decide(plots: int, prints: int, eager: bool) -> None:
    policy = WarmUpPolicy()
    for code in [PLOT] * plots + [PRINT] * prints:
        policy.note("python", code)
    assert policy.plan().delay == (0.0 if eager else WARM_DELAY_SECONDS)


def test_only_the_last_window_counts() -> None:
    policy = WarmUpPolicy()
    for _ in range(100):
        policy.note("python", PRINT)
    for _ in range(WINDOW):
        policy.note("python", "import pandas as pd\npd.DataFrame()")
    assert policy.plan().delay == 0.0
    for _ in range(WINDOW // 2 + 1):
        policy.note("python", PRINT)
    assert policy.plan().delay == WARM_DELAY_SECONDS


def test_bash_that_names_a_library_does_not_count() -> None:
    policy = WarmUpPolicy()
    for _ in range(WINDOW):
        policy.note("bash", "echo numpy pandas matplotlib")
    assert policy.plan().delay == WARM_DELAY_SECONDS


@pytest.mark.parametrize("programs, first", [
    ([PLOT] * 8 + [PRINT] * 8, ("numpy", "matplotlib")),
    (["import pandas as pd\npd.DataFrame()"] * 3 + [PLOT] * 5, ("numpy", "matplotlib", "pandas")),
    (["import seaborn as sns"] + [PRINT] + ["import numpy as np"] * 6, WARM_UP_GROUP_NAMES),
    (["from scipy import stats"] * 4, ("numpy", "seaborn")),  # scipy's steps belong to seaborn's group
])
def test_an_eager_warm_up_takes_first_only_the_groups_recent_programs_used(
        programs: list[str], first: tuple[str, ...]) -> None:
    policy = WarmUpPolicy()
    for code in programs:
        policy.note("python", code)
    plan = policy.plan()
    assert (plan.delay, plan.first) == (0.0, first)


def test_an_idle_warm_up_takes_every_group() -> None:
    policy = WarmUpPolicy()
    for code in [PLOT] * 4 + [PRINT] * 12:
        policy.note("python", code)
    assert policy.plan().first == WARM_UP_GROUP_NAMES
