"""Requests built to hurt the center: texts that make parsing slow, values that make it hungry, and
values the sandbox could not hand to bash.

The parse-time test runs its measurements in a child process (this file, run as a script): there the
allocator is set to keep freed memory, and the CPU caches are flushed before each measurement, so that
the times compare the parser's work at each size rather than page faults and cache sizes.

It decides on the shape of the growth, not on this machine's speed: each rung is eight times the last,
so linear work grows about 8x and quadratic work 64x, and the test draws the line at 24x, a factor of
three from either. A deliberately quadratic parser climbs the same ladder in the same run and must be
caught by it, so the line is shown to separate the two on whatever machine runs the test.
"""

from __future__ import annotations

import functools
import gc
import itertools
import json
import os
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests

from server.config import Config
from server.errors import BadRequest
from server.run_requests import (
    MAX_ENVIRONMENT_BYTES,
    MAX_ENVIRONMENT_STRING_BYTES,
    MAX_VARIABLE_DEPTH,
    parse_run_request,
)

if TYPE_CHECKING:
    from conftest import CenterProcess
    from flask.testing import FlaskClient

PROJECT_DIR = Path(__file__).resolve().parents[1]
CONFIG = replace(Config(), timeout_seconds=30.0)
MAX_REQUEST_BYTES = Config().max_request_bytes
# 20 KiB to 10 MiB, eight times larger at each rung: a quadratic parser fails within its first rungs.
STEP = 8
LADDER = [MAX_REQUEST_BYTES // STEP ** power for power in range(3, -1, -1)]
# Linear work grows STEP times (a little more once the text outgrows the CPU's caches), quadratic work
# STEP**2 times: the line sits three times above the one and below the other.
MAX_RATIO = 3.0 * STEP
SAMPLES = 3
# Freed memory stays in the heap (no mmap, no trimming): a large string costs the same at every size.
MALLOC_TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967296"
CACHE_FLUSH_BYTES = 64 * 1024 * 1024  # beyond the last-level cache


def _code(text: Callable[[int], str]) -> Callable[[int], dict[str, Any]]:
    return lambda n: {"code": text(n)}


def _with_language(make: Callable[[int], dict[str, Any]], language: str) -> Callable[[int], dict[str, Any]]:
    return lambda n: {**make(n), "languageType": language}


# Texts of about n characters shaped to make a fence parser backtrack (or do any work per character twice).
TEXTS: dict[str, Callable[[int], str]] = {
    "unterminated-fence-then-blanks": lambda n: "```python\n" + " " * n,
    "unterminated-fence-then-crlf-blank-lines": lambda n: "```python\r\n" + " \t\r\n" * (n // 4),
    "prose-then-unterminated-fence": lambda n: "Here:\n```python\n" + " " * n,
    "fence-around-blanks": lambda n: "```python\n" + " " * n + "```",
    "fence-lines": lambda n: "```\n" * (n // 4),
    "python-fence-lines": lambda n: "```python\n" * (n // 10),
    "crlf-python-fence-lines": lambda n: "```Python \r\n" * (n // 12),
    "backticks": lambda n: "`" * n,
    "blanks-after-backticks": lambda n: "```" + " " * n + "x",
    "blanks-after-the-tag": lambda n: "```python" + " \t" * (n // 2) + "x",
    "nested-fences": lambda n: "```bash\n```python\n" * (n // 18) + "x",
    "bash-blocks": lambda n: "```bash\nx\n```\n" * (n // 14),
    "prose": lambda n: "word " * (n // 5),
}
CASES: dict[str, Callable[[int], dict[str, Any]]] = {
    **{name: _code(text) for name, text in TEXTS.items()},
    # python skips bash blocks on its way to a python one; bash looks at whole fences only.
    **{f"{name}-python": _with_language(_code(TEXTS[name]), "python")
       for name in ("prose-then-unterminated-fence", "nested-fences", "bash-blocks")},
    **{f"{name}-bash": _with_language(_code(TEXTS[name]), "bash")
       for name in ("unterminated-fence-then-blanks", "fence-around-blanks", "blanks-after-the-tag")},
    "wide-variable": lambda n: {"code": "x", "variables": {"v": [0] * (n // 2)}},
    "many-variables": lambda n: {"code": "x", "variables": {f"v{i}": i for i in range(n // 12)}},
    "nested-variables": lambda n: {"code": "x", "variables": {"v": [[[[[[[[0]]]]]]]] * (n // 17)}},
    "many-bash-variables": lambda n: {"code": "x", "languageType": "bash",
                                      "variables": {f"v{i}": "x" for i in range(n // 12)}},
    "long-bash-variable": lambda n: {"code": "x", "languageType": "bash", "variables": {"v": "x" * n}},
    "long-timeout-integer": lambda n: {"code": "x", "timeout": "0" * n + "1"},
    "long-timeout-decimal": lambda n: {"code": "x", "timeout": "0." + "0" * n + "1"},
    "long-language": lambda n: {"code": "x", "languageType": "python" * (n // 6)},
}


@functools.cache
def _cache_flusher() -> tuple[bytearray, bytes]:
    return bytearray(CACHE_FLUSH_BYTES), bytes(CACHE_FLUSH_BYTES // 64)


def _flush_caches() -> None:
    buffer, zeros = _cache_flusher()
    buffer[::64] = zeros  # one write per cache line


def _parse_seconds(fields: dict[str, Any], parse: Callable[[dict[str, Any]], Any]) -> float:
    """CPU time of one parse (CPU, not wall-clock: other processes on the machine do not count).

    Without the garbage collector: a full collection lands in one parse or the next depending on
    what came before, which would make one rung look three times as slow as its neighbour.
    """
    _flush_caches()
    gc.collect()
    gc.disable()
    started = time.process_time()
    try:
        parse(fields)
    except BadRequest:
        pass
    finally:
        elapsed = time.process_time() - started
        gc.enable()
    return elapsed


def _quadratic_reference(fields: dict[str, Any]) -> None:
    """A parser gone wrong on purpose: it rescans the text from its start at every line (the bug a
    backtracking pattern or a `text[:i]` in a loop makes), so its work grows with the square of the size."""
    code = fields["code"]
    for end in range(0, len(code), 256):
        code.count("`", 0, end)


PARSERS: dict[str, Callable[[dict[str, Any]], Any]] = {"center": lambda fields: parse_run_request(fields, CONFIG),
                                                       "quadratic-reference": _quadratic_reference}


def _best_seconds(case: str, size: int, parser: str = "center") -> float:
    fields = CASES[case](size)
    return min(_parse_seconds(fields, PARSERS[parser]) for _ in range(SAMPLES))


def climb(case: str, parser: str = "center") -> list[tuple[int, float]]:
    """Best-of-SAMPLES parse time at each rung of LADDER; stops above a rung that took over MAX_RATIO times longer."""
    rungs: list[tuple[int, float]] = []
    for size in LADDER:
        rungs.append((size, _best_seconds(case, size, parser)))
        if len(rungs) > 1 and rungs[-1][1] > MAX_RATIO * rungs[-2][1]:
            # A step too steep once may be the machine's doing (another process, the hypervisor):
            # both rungs are measured afresh, and only a step that is steep again counts.
            rungs[-2:] = [(rung_size, _best_seconds(case, rung_size, parser)) for rung_size, _ in rungs[-2:]]
            if rungs[-1][1] > MAX_RATIO * rungs[-2][1]:
                break  # super-linear: the next rungs could take hours
    return rungs


REFERENCE_CASE = "quadratic-reference"  # the ladders' key for the deliberately quadratic parser's climb


@pytest.fixture(scope="module")
def ladders() -> dict[str, list[list[float]]]:
    """Every case's climb, measured in one child process (see the module docstring)."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_DIR), "GLIBC_TUNABLES": MALLOC_TUNABLES}
    child = subprocess.run([sys.executable, __file__], env=env, cwd=PROJECT_DIR, capture_output=True, text=True,
                           check=False)
    assert child.returncode == 0, child.stderr[-3000:]
    return json.loads(child.stdout)


def test_the_ladder_catches_a_quadratic_parser_on_this_machine(ladders: dict[str, list[list[float]]]) -> None:
    """The line between linear and quadratic, drawn by the test below, separates them here and now."""
    rungs = ladders[REFERENCE_CASE]
    shown = ", ".join(f"{size // 1024} KiB: {seconds * 1000:.2f} ms" for size, seconds in rungs)
    assert len(rungs) < len(LADDER), f"a quadratic parser climbed the whole ladder: {shown}"
    assert rungs[-1][1] > MAX_RATIO * rungs[-2][1], shown


@pytest.mark.parametrize("case", list(CASES))
def test_parse_time_is_linear_up_to_the_request_limit(ladders: dict[str, list[list[float]]], case: str) -> None:
    rungs = ladders[case]
    shown = ", ".join(f"{size // 1024} KiB: {seconds * 1000:.2f} ms" for size, seconds in rungs)
    assert [size for size, _ in rungs] == LADDER, \
        f"parse time grew over {MAX_RATIO:.0f}x when the text grew {STEP}x: {shown}"
    ratios = [later / earlier for (_, earlier), (_, later) in itertools.pairwise(rungs)]
    assert max(ratios) < MAX_RATIO, shown


def _body_of_size(prefix: str, filler: str, **fields: Any) -> bytes:
    """A JSON body of exactly max_request_bytes whose code is prefix + filler repeated."""
    empty = json.dumps({"code": prefix, **fields}).encode()
    return json.dumps({"code": prefix + filler * (MAX_REQUEST_BYTES - len(empty)), **fields}).encode()


def _post_seconds(url: str, body: bytes, timeout: float) -> tuple[requests.Response, float]:
    started = time.perf_counter()
    response = requests.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=timeout)
    return response, time.perf_counter() - started


def test_bad_timeout_is_reported_after_the_code_is_unwrapped(monkeypatch: pytest.MonkeyPatch) -> None:
    # The center test below relies on it: a bad timeout makes the whole parse happen, then a 400, no sandbox.
    import server.run_requests as execution
    seen: list[str] = []
    original = execution.unwrap_fence
    monkeypatch.setattr(execution, "unwrap_fence", lambda code, language=None: (seen.append(code), original(code))[1])
    with pytest.raises(BadRequest, match="timeout"):
        parse_run_request({"code": "```python\n", "timeout": "never"}, CONFIG)
    assert seen == ["```python\n"]


@pytest.mark.docker
def test_center_answers_healthz_while_it_parses_a_hostile_body(
        center_process: Callable[..., CenterProcess]) -> None:
    center = center_process().start()
    url = f"{center.url}/runcode"
    # Both end in a 400 for their timeout once parsed: they measure the parse, never a sandbox.
    hostile = _body_of_size("```python\n", " ", timeout="never")
    benign = _body_of_size("print(1)\n#", " ", timeout="never")
    assert len(hostile) == len(benign) == MAX_REQUEST_BYTES
    benign_seconds = 0.0
    for _ in range(3):
        response, seconds = _post_seconds(url, benign, timeout=600)
        assert response.status_code == 400 and "timeout" in response.json()["error"], response.text
        benign_seconds = max(benign_seconds, seconds)
    # The old parser took hours over this body; the same work as the benign body's, give or take, is expected.
    budget = 20 * benign_seconds
    outcome: dict[str, Any] = {}

    def post_hostile() -> None:
        try:
            outcome["response"], outcome["seconds"] = _post_seconds(url, hostile, timeout=budget)
        except requests.RequestException as e:
            outcome["failure"] = e

    poster = threading.Thread(target=post_hostile, daemon=True)
    poster.start()
    probes: list[int | str] = []
    while poster.is_alive():
        try:
            probes.append(requests.get(f"{center.url}/healthz", timeout=budget).status_code)
        except requests.RequestException as e:
            probes.append(type(e).__name__)
        time.sleep(0.01)
    poster.join()
    assert "failure" not in outcome, f"the hostile request got no answer within {budget:.2f} s: {outcome}"
    response = outcome["response"]
    assert response.status_code == 400 and "timeout" in response.json()["error"], response.text
    assert all(probe == 200 for probe in probes), f"/healthz while the hostile body was parsed: {probes}"


# --- variables: memory and work bounded by the depth -------------------------------------------------------

def _peak_bytes_of_parse(fields: dict[str, Any]) -> int:
    """The least peak of a few parses: tracemalloc also counts other threads (a pool warming up,
    a server another test left draining), whose allocations only ever add to the figure."""
    peaks = []
    for _ in range(5):
        tracemalloc.start()
        try:
            parse_run_request(fields, CONFIG)
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    return min(peaks)


@pytest.mark.parametrize("shape", ["list", "object", "lists-in-a-list"])
def test_depth_check_memory_does_not_grow_with_the_element_count(shape: str) -> None:
    make: Callable[[int], Any] = {
        "list": lambda n: [0] * n,
        "object": lambda n: {f"k{i}": i for i in range(n)},
        "lists-in-a-list": lambda n: [[[0, 1]]] * n,
    }[shape]
    small, large = ({"code": "x", "variables": {"v": make(n)}} for n in (2_000, 200_000))
    # One iterator per level: the same few hundred bytes for a hundred times the elements.
    assert _peak_bytes_of_parse(large) <= _peak_bytes_of_parse(small) + 1024
    assert _peak_bytes_of_parse(large) < 64 * 1024


def test_depth_check_memory_grows_with_the_depth_only() -> None:
    deep: Any = [0] * 1000
    for _ in range(MAX_VARIABLE_DEPTH - 2):
        deep = [deep, [0] * 1000]
    assert parse_run_request({"code": "x", "variables": {"v": deep}}, CONFIG).variables == {"v": deep}
    assert _peak_bytes_of_parse({"code": "x", "variables": {"v": deep}}) < 64 * 1024


class Untouchable(list):
    """A list the depth check must never look into."""

    def __iter__(self) -> Any:
        raise AssertionError("the depth check went on past a level too deep")


def test_depth_check_stops_at_the_first_level_too_deep() -> None:
    too_deep: Any = 0
    for _ in range(MAX_VARIABLE_DEPTH + 1):
        too_deep = [too_deep]
    for variables in ({"a": too_deep, "b": Untouchable([0] * 10)}, {"a": [too_deep, Untouchable()]}):
        with pytest.raises(BadRequest, match="nested deeper"):
            parse_run_request({"code": "x", "variables": variables}, CONFIG)


# --- error messages do not echo what they refuse -----------------------------------------------------------

@pytest.mark.parametrize("fields", [
    {"code": "x", "languageType": "ruby" * 250_000},
    {"code": "x", "languageType": ["python"] * 250_000},
    {"code": "x", "variables": {"a-" * 500_000: 1}},
    {"code": "x", "languageType": "bash", "variables": {"v" * 200_000: 1}},
], ids=["language", "language-list", "variable-name", "bash-variable-name"])
def test_error_message_shows_only_the_start_of_a_huge_value(fields: dict[str, Any]) -> None:
    with pytest.raises(BadRequest) as excinfo:
        parse_run_request(fields, CONFIG)
    assert len(excinfo.value.message) < 400, excinfo.value.message[:400]


# --- bash variables become environment variables -----------------------------------------------------------

def _bash(variables: dict[str, Any]) -> dict[str, Any]:
    return {"code": "echo ${#v}", "languageType": "bash", "variables": variables}


def _largest_value(name: str) -> str:
    return "a" * (MAX_ENVIRONMENT_STRING_BYTES - len(name) - 1)


@pytest.mark.parametrize(("variables", "words"), [
    ({"v": "a\0b"}, ["'v'", "NUL"]),
    ({"ok": "x", "v": "\0"}, ["'v'", "NUL"]),
    ({"v": "a\ud800b"}, ["'v'", "surrogate"]),
    ({"v": _largest_value("v") + "a"}, ["'v'", str(MAX_ENVIRONMENT_STRING_BYTES)]),
    ({"v": "é" * (MAX_ENVIRONMENT_STRING_BYTES // 2)}, ["'v'", str(MAX_ENVIRONMENT_STRING_BYTES)]),
    ({"v": ["a" * MAX_ENVIRONMENT_STRING_BYTES]}, ["'v'", str(MAX_ENVIRONMENT_STRING_BYTES)]),
    ({f"v{i}": "a" * 100_000 for i in range(11)}, ["'v10'", str(MAX_ENVIRONMENT_BYTES)]),
    ({f"v{i}": "" for i in range(MAX_ENVIRONMENT_BYTES // 13 + 1)}, [str(MAX_ENVIRONMENT_BYTES)]),
], ids=["nul", "nul-in-second", "lone-surrogate", "one-byte-over", "utf8-over", "json-encoded-over", "total-over",
        "many-empty"])
def test_bash_variables_execve_cannot_take_are_a_bad_request(variables: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(BadRequest) as excinfo:
        parse_run_request(_bash(variables), CONFIG)
    message = excinfo.value.message
    assert all(word in message for word in words), message
    assert excinfo.value.status == 400 and "\n" not in message
    # Python variables are not environment variables: the same values are accepted there.
    assert parse_run_request({**_bash(variables), "languageType": "python"}, CONFIG).variables == variables


@pytest.mark.parametrize("variables", [
    {"v": _largest_value("v")},
    {"long_name": _largest_value("long_name")},
    {f"v{i}": "a" * 100_000 for i in range(10)},
    {"v": {"k": [1.5, None, "\0"]}},  # JSON-encoded, the NUL is an escape
], ids=["largest", "largest-with-long-name", "total-under", "json-escaped-nul"])
def test_bash_variables_within_the_limits_are_accepted(variables: dict[str, Any]) -> None:
    assert parse_run_request(_bash(variables), CONFIG).variables == variables


def test_bash_variables_are_checked_when_bash_comes_from_the_fence() -> None:
    with pytest.raises(BadRequest, match="NUL"):
        parse_run_request({"code": "```bash\necho $v\n```", "variables": {"v": "\0"}}, CONFIG)


# --- through the API (a real sandbox) -----------------------------------------------------------------------

def _run(client: FlaskClient, fields: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    response = client.post("/runcode", json=fields)
    return response.status_code, response.get_json()


@pytest.mark.docker
def test_bash_heredoc_with_a_fenced_block_runs_as_bash(client: FlaskClient) -> None:
    program = "cat <<'EOF'\nExample:\n```python\nprint('python ran')\n```\nEOF\necho \"bash ran: $((6 * 7))\"\n"
    status, body = _run(client, {"code": program, "languageType": "bash"})
    assert status == 200 and body["status"] == "ok", body
    assert body["output"] == "Example:\n```python\nprint('python ran')\n```\nbash ran: 42\n"


@pytest.mark.docker
def test_bash_variables_at_the_limits_reach_bash(client: FlaskClient) -> None:
    status, body = _run(client, _bash({"v": _largest_value("v")}))
    assert (status, body["status"], body["output"]) == (200, "ok", f"{MAX_ENVIRONMENT_STRING_BYTES - 2}\n"), body
    many = {f"v{i}": "a" * 100_000 for i in range(10)}
    status, body = _run(client, {"code": 'echo "${#v0} ${#v9}"', "languageType": "bash", "variables": many})
    assert (status, body["status"], body["output"]) == (200, "ok", "100000 100000\n"), body


@pytest.mark.docker
@pytest.mark.parametrize("variables", [{"v": "a\0b"}, {"v": "a" * MAX_ENVIRONMENT_STRING_BYTES}],
                         ids=["nul", "over-the-limit"])
def test_bash_variables_execve_cannot_take_are_400_over_http(client: FlaskClient, variables: dict[str, Any]) -> None:
    status, body = _run(client, _bash(variables))
    assert status == 400 and "'v'" in body["error"], body
    status, body = _run(client, {"code": "print(len(v))", "variables": variables})
    assert (status, body["status"], body["output"]) == (200, "ok", f"{len(variables['v'])}\n"), body


@pytest.mark.docker
@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])
def test_non_finite_json_timeout_is_400(client: FlaskClient, literal: str) -> None:
    response = client.post("/runcode", data=f'{{"code": "print(1)", "timeout": {literal}}}',
                           content_type="application/json")
    assert response.status_code == 400 and "timeout" in response.get_json()["error"], response.get_json()


@pytest.mark.docker
@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf", "Infinity", "1e999"])
def test_non_finite_query_timeout_is_400(client: FlaskClient, text: str) -> None:
    response = client.get("/runcode", query_string={"code": "print(1)", "timeout": text})
    assert response.status_code == 400 and "timeout" in response.get_json()["error"], response.get_json()


if __name__ == "__main__":  # the child process of `ladders`
    climbs = {case: climb(case) for case in sys.argv[1:] or CASES}
    climbs[REFERENCE_CASE] = climb("prose", parser="quadratic-reference")
    print(json.dumps(climbs))


@pytest.mark.docker
@pytest.mark.parametrize("body, word", [
    ('{"code": "print(v)", "variables": {"v": NaN}}', "NaN"),
    ('{"code": "print(v)", "variables": {"v": [1, -Infinity]}}', "NaN"),
    ('{"code": "print(\'\\ud800\')"}', "surrogate"),
    ('{"code": "print(v)", "variables": {"v": "\\udfff"}}', "surrogate"),
])
def test_json_that_cannot_become_a_job_is_400_not_500(client: FlaskClient, body: str, word: str) -> None:
    response = client.post("/runcode", data=body, content_type="application/json")
    assert response.status_code == 400 and word in response.get_json()["error"], response.get_json()
