"""concurrent_test.py, the load client, run as a user runs it: a subprocess against a live center."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from server.config import PROJECT_DIR

pytestmark = pytest.mark.docker

CLIENT = PROJECT_DIR / "concurrent_test.py"


def load_client(*args: str, timeout: float = 600) -> tuple[int, dict[str, Any], str]:
    """Run the client with --json: (exit code, its summary, its stderr)."""
    done = subprocess.run([sys.executable, str(CLIENT), *args, "--json"], capture_output=True, text=True,
                          timeout=timeout, cwd=PROJECT_DIR)
    try:
        summary = json.loads(done.stdout)
    except ValueError:
        pytest.fail(f"no JSON summary (exit {done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return done.returncode, summary, done.stderr


def test_three_sessions_at_once_all_answer_right(live_server: Callable[..., str]) -> None:
    base = live_server(auth_tokens=["load-token"])
    code, summary, stderr = load_client("--url", base, "--token", "load-token", "--sessions", "3",
                                        "--rounds", "3", "--check-conflict")
    assert code == 0, (summary, stderr)
    assert summary["passed"] and summary["successes"] == 3 and summary["sessions"] == 3
    assert summary["wrong"] == summary["busy"] == summary["connection_errors"] == 0
    # per session: 2 opening cells, 3 rounds, bash, the report cell, the slow cell of the conflict check
    assert summary["cells"] == 3 * 8
    steps = summary["step_latency_ms"]
    assert {step: steps[step]["count"] for step in steps} == {
        "create": 3, "upload": 3, "cell": 3 * 7, "files": 3, "download": 6, "conflict": 3, "delete": 3}
    assert all(0 < steps[step]["p50"] <= steps[step]["p95"] <= steps[step]["max"] for step in steps)


def test_a_session_run_without_the_token_fails(live_server: Callable[..., str]) -> None:
    base = live_server(auth_tokens=["load-token"])
    code, summary, _ = load_client("--url", base, "--sessions", "1")
    assert code == 1 and not summary["passed"]
    assert summary["wrong"] == 1 and "create: HTTP 401" in summary["wrong_reasons"][0]["reason"]


def test_the_runcode_load_still_works(live_server: Callable[..., str]) -> None:
    base = live_server()
    code, summary, stderr = load_client("--url", base, "--requests", "3", "--concurrency", "3", "--kind", "pandas")
    assert code == 0, (summary, stderr)
    assert summary["successes"] == 3 and summary["latency_ms"]["p50"] > 0
