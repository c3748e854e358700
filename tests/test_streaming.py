"""Streaming (SPEC "Streaming"): NDJSON and SSE events while the program runs, over waitress as center.py serves.

Real Docker and the real server: the first event's arrival is measured against the run's end,
streamed results are compared with plain ones over a table of runs, and a client that hangs up
must free its sandbox (one-shot) or interrupt its cell (session), leaving the session's state.
"""

from __future__ import annotations

import base64
import json
import secrets
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import docker
import docker.errors
import pytest
import requests

from tests.conftest import containers_of, wait_until

NDJSON = {"Accept": "application/x-ndjson"}
SSE = {"Accept": "text/event-stream"}


def ndjson_events(response: requests.Response) -> Iterator[tuple[float, dict[str, Any]]]:
    """(arrival time, event) for each line of an NDJSON answer, as it arrives."""
    for line in response.iter_lines(chunk_size=1):
        if line:
            yield time.monotonic(), json.loads(line)


def sse_events(response: requests.Response) -> Iterator[tuple[float, dict[str, Any]]]:
    """(arrival time, event) for each Server-Sent Event, checking that its name is its type."""
    name, data = None, None
    for line in response.iter_lines(chunk_size=1, decode_unicode=True):
        if line.startswith("event: "):
            name = line[len("event: "):]
        elif line.startswith("data: "):
            data = json.loads(line[len("data: "):])
        elif line == "" and data is not None:
            assert data["type"] == name
            yield time.monotonic(), data
            name, data = None, None


def streamed(url: str, body: dict[str, Any], headers: dict[str, str] = NDJSON,
             path: str = "/runcode") -> list[dict[str, Any]]:
    """Every event of a streamed run, checking the framing: 200, the type asked for, the result last."""
    with requests.post(url + path, json=body, headers=headers, stream=True, timeout=120) as response:
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"].startswith(headers["Accept"])
        reader = sse_events if headers is SSE else ndjson_events
        events = [event for _, event in reader(response)]
    assert events and events[-1]["type"] == "result", events
    assert all(event["type"] != "result" for event in events[:-1])
    return events


def comparable(body: dict[str, Any]) -> dict[str, Any]:
    """A result body without what differs from run to run: the duration and the stored names in URLs."""
    body = dict(body)
    body.pop("duration_ms")
    body.pop("type", None)
    body["images"] = sorted(body["images"])
    body["files"] = sorted(body["files"])
    body["results"] = [{**bundle, "data": {mime: "<stored>" if mime.startswith("image/") and "/image/" in value
                                           else value for mime, value in bundle["data"].items()}}
                       for bundle in body["results"]]
    return body


def tiny_png() -> str:
    """A valid 1x1 PNG, base64-encoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
    return base64.b64encode(png + chunk(b"IEND", b"")).decode()


# A value whose repr and an exception whose message hold a lone UTF-16 surrogate (Python strings can):
# the answer is UTF-8 all the same, the surrogate replaced by U+FFFD.
LONE_SURROGATE_VALUE = "class A:\n    def __repr__(self):\n        return 'x\\ud800y'\nA()"
LONE_SURROGATE_ERROR = "print('before')\nraise ValueError('bad \\udc00 value')"

# The table of runs whose streamed result must equal the plain one (statuses, outputs, images, files).
RUNS: list[tuple[str, dict[str, Any]]] = [
    ("hello", {"code": "print('Hello, World!')"}),
    ("result value", {"code": "x = 6\nx * 7"}),
    ("stderr and exit code", {"code": "import sys\nprint('out')\nprint('err', file=sys.stderr)\nsys.exit(3)"}),
    ("exception", {"code": "print('before')\n1 / 0"}),
    ("timeout", {"code": "import time\nprint('started', flush=True)\ntime.sleep(30)", "timeout": 2}),
    ("output limit", {"code": "while True:\n    print('x' * 100)"}),
    ("plot", {"code": "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.savefig('chart.png')"}),
    ("bash with variables", {"code": 'echo "hello $name"', "languageType": "bash", "variables": {"name": "你好"}}),
    ("files in and out", {"code": "open('out.txt', 'w').write(open('in.txt').read().upper())\nprint('done')",
                          "files": [{"path": "in.txt", "content_base64": base64.b64encode(b"abc").decode()}]}),
    ("image file written", {"code": "import base64\nopen('p.png', 'wb').write(base64.b64decode(p))",
                            "variables": {"p": tiny_png()}}),
    ("nothing printed", {"code": "pass"}),
    ("lone surrogate in the value", {"code": LONE_SURROGATE_VALUE}),
    ("lone surrogate in the error", {"code": LONE_SURROGATE_ERROR}),
]


@pytest.fixture
def center(waitress_server: Callable[..., str]) -> str:
    """A center on the shared pool, served by waitress; 4000 bytes of output at most."""
    return waitress_server(max_output_bytes=4000)


@pytest.mark.parametrize("name, body", RUNS, ids=[name for name, _ in RUNS])
def test_streamed_result_equals_the_plain_answer(center: str, name: str, body: dict[str, Any]) -> None:
    plain = requests.post(center + "/runcode", json=body, timeout=120)
    assert plain.status_code == (504 if name == "timeout" else 200)
    expected = comparable(plain.json())
    for headers in (NDJSON, SSE):
        events = streamed(center, body, headers)
        result = events[-1]
        assert comparable(result) == expected, headers
        # The output events are the output itself (the cut notice ends the result's only, in place of
        # its last characters and a line break).
        output = "".join(event["text"] for event in events if event["type"] == "stdout")
        if result["status"] == "output_limit":
            assert output.startswith(result["output"][:result["output"].rindex("[output cut") - 1])
        else:
            assert output == result["output"]
        assert "".join(event["text"] for event in events if event["type"] == "stderr") == result["stderr"]
        # Each image and file has its event, with the result's URL, before the result.
        assert {e["name"]: e["url"] for e in events if e["type"] == "image"} == result["images"]
        assert {e["name"]: e["url"] for e in events if e["type"] == "file"} == result["files"]
        for url in [*result["images"].values(), *result["files"].values()]:
            assert requests.get(url, timeout=30).status_code == 200


CELLS = [
    ("print", {"code": "print(n)\nn * 2"}),
    ("exception", {"code": "print('before')\nundefined_name"}),
    ("plot", {"code": "import matplotlib.pyplot as plt\n_ = plt.plot([n, 1, n])"}),
    ("timeout", {"code": "import time\nprint('started', flush=True)\ntime.sleep(30)", "timeout": 2}),
    ("bash", {"code": "echo $((6 * 7)) >&2", "languageType": "bash"}),
    ("lone surrogate in the value", {"code": LONE_SURROGATE_VALUE}),
    ("lone surrogate in the error", {"code": LONE_SURROGATE_ERROR}),
]


def test_lone_surrogates_a_program_makes_come_back_as_replacement_characters(center: str) -> None:
    value = requests.post(center + "/runcode", json={"code": LONE_SURROGATE_VALUE}, timeout=120)
    assert value.status_code == 200 and value.json()["result"] == "x\ufffdy", value.text
    error = requests.post(center + "/runcode", json={"code": LONE_SURROGATE_ERROR}, timeout=120)
    assert error.status_code == 200 and "bad \ufffd value" in error.json()["error"], error.text
    created = requests.post(center + "/sessions", timeout=120).json()["session_id"]
    try:
        cell = requests.post(f"{center}/sessions/{created}/runcode", json={"code": LONE_SURROGATE_VALUE}, timeout=60)
        assert cell.status_code == 200 and cell.json()["result"] == "x\ufffdy", cell.text
    finally:
        requests.delete(f"{center}/sessions/{created}", timeout=60)


@pytest.mark.parametrize("name, body", CELLS, ids=[name for name, _ in CELLS])
def test_a_streamed_cell_equals_the_plain_one(center: str, name: str, body: dict[str, Any]) -> None:
    results = {}
    for mode in ("plain", "ndjson", "sse"):  # each in a session of its own, the same cells before
        created = requests.post(center + "/sessions", timeout=120)
        assert created.status_code == 201, created.text
        cells = f"/sessions/{created.json()['session_id']}/runcode"
        try:
            assert requests.post(center + cells, json={"code": "n = 21"}, timeout=60).status_code == 200
            if mode == "plain":
                plain = requests.post(center + cells, json=body, timeout=60)
                assert plain.status_code == (504 if name == "timeout" else 200)
                results[mode] = plain.json()
            else:
                events = streamed(center, body, NDJSON if mode == "ndjson" else SSE, path=cells)
                assert "".join(e["text"] for e in events if e["type"] == "stderr") == events[-1]["stderr"]
                results[mode] = events[-1]
        finally:
            requests.delete(center + cells.removesuffix("/runcode"), timeout=60)
    assert comparable(results["ndjson"]) == comparable(results["plain"]) == comparable(results["sse"])
    assert results["plain"]["execution_count"] == 2


def test_the_first_line_arrives_while_the_program_still_runs(center: str) -> None:
    code = "import time\nprint('first', flush=True)\ntime.sleep(4)\nprint('second')"
    seen, arrived = "", {}
    with requests.post(center + "/runcode", json={"code": code}, headers=NDJSON, stream=True, timeout=60) as r:
        for at, event in ndjson_events(r):
            seen += event.get("text", "") if event["type"] == "stdout" else ""
            for mark in ("first\n", "second\n"):
                if mark in seen:
                    arrived.setdefault(mark, at)
            if event["type"] == "result":
                arrived["end"], result = at, event
    assert seen == "first\nsecond\n" == result["output"] and result["status"] == "ok"
    # The program slept 4 s between its two lines: the first came while it slept, not with the end.
    assert arrived["second\n"] - arrived["first\n"] > 2 and arrived["end"] - arrived["first\n"] > 2


def test_a_silent_program_gets_keepalives(center: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("server.api.streaming.KEEPALIVE_SECONDS", 0.5)
    events = streamed(center, {"code": "import time\ntime.sleep(3)\nprint('done')"})
    kinds = [event["type"] for event in events]
    assert kinds.count("keepalive") >= 2 and kinds[-2:] == ["stdout", "result"]


@pytest.mark.parametrize("accept", ["application/json", "text/html", "*/*", "application/x-ndjson;q=0", ""])
def test_other_accept_values_get_the_plain_answer(center: str, accept: str) -> None:
    response = requests.post(center + "/runcode", json={"code": "print(1)"}, headers={"Accept": accept}, timeout=60)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["output"] == "1\n"


@pytest.mark.parametrize("headers", [NDJSON, SSE])
def test_errors_before_the_run_are_ordinary_json_errors(waitress_server: Callable[..., str],
                                                         headers: dict[str, str]) -> None:
    url = waitress_server(auth_tokens=("s3cret",))
    unauthorised = requests.post(url + "/runcode", json={"code": "print(1)"}, headers=headers, timeout=30)
    assert unauthorised.status_code == 401 and "token" in unauthorised.json()["error"]
    bad = requests.post(url + "/runcode", data="{not json", timeout=30,
                        headers={**headers, "Authorization": "Bearer s3cret"})
    assert bad.status_code == 400 and bad.headers["Content-Type"] == "application/json"
    assert "JSON" in bad.json()["error"]


def pool_busy(url: str) -> int:
    """How many of the pool's sandboxes are running a program now."""
    return requests.get(url + "/readyz", timeout=10).json()["pool"]["busy"]


def test_a_client_that_hangs_up_frees_the_sandbox(waitress_server: Callable[..., str]) -> None:
    url = waitress_server(timeout_seconds=120)
    assert wait_until(lambda: pool_busy(url) == 0, 30)
    code = "import time\nprint('running', flush=True)\ntime.sleep(100)"
    with requests.post(url + "/runcode", json={"code": code}, headers=NDJSON, stream=True, timeout=60) as r:
        events = ndjson_events(r)
        first = next(event for _, event in events if event["type"] == "stdout")
        assert first["text"].startswith("running")
        busy = pool_busy(url)
        assert busy == 1, f"busy {busy}; the rest of the stream: {[event for _, event in events]}"
    # Hung up: the program would sleep for 100 s more; its sandbox is given back long before.
    assert wait_until(lambda: pool_busy(url) == 0, 45)
    assert requests.post(url + "/runcode", json={"code": "print(2)"}, timeout=60).json()["output"] == "2\n"


def test_a_session_client_that_hangs_up_interrupts_the_cell(waitress_server: Callable[..., str]) -> None:
    url = waitress_server(timeout_seconds=120)
    created = requests.post(url + "/sessions", timeout=60)
    assert created.status_code == 201, created.text
    cells = f"{url}/sessions/{created.json()['session_id']}/runcode"
    try:
        assert requests.post(cells, json={"code": "x = 41"}, timeout=60).json()["status"] == "ok"
        code = "import time\nx += 1\nprint('sleeping', flush=True)\ntime.sleep(100)"
        with requests.post(cells, json={"code": code}, headers=NDJSON, stream=True, timeout=60) as r:
            assert next(e for _, e in ndjson_events(r) if e["type"] == "stdout")["text"].startswith("sleeping")
        # The cell was interrupted (not the 100 s sleep): the next one runs, with the state kept.
        answers: list[requests.Response] = []

        def next_cell_runs() -> bool:
            answers.append(requests.post(cells, json={"code": "print(x)"}, timeout=60))
            return answers[-1].status_code != 409

        assert wait_until(next_cell_runs, 45, 0.5)
        assert answers[-1].status_code == 200 and answers[-1].json()["output"] == "42\n"
        streamed_cell = streamed(url, {"code": "print(x + 1)\nx"}, path=cells[len(url):])
        assert streamed_cell[-1]["output"] == "43\n" and streamed_cell[-1]["result"] == "42"
        assert streamed_cell[-1]["execution_count"] == 4
    finally:
        requests.delete(f"{url}/sessions/{created.json()['session_id']}", timeout=60)


def test_streamed_runs_are_counted_in_the_metrics(center: str) -> None:
    def ok_runs() -> float:
        for line in requests.get(center + "/metrics", timeout=30).text.splitlines():
            if line.startswith("code_interpreter_executions_total{") and 'status="ok"' in line and "python" in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = ok_runs()
    streamed(center, {"code": "print(1)"})
    streamed(center, {"code": "print(2)"}, SSE)
    assert ok_runs() == before + 2


def holds_file(docker_client: docker.DockerClient, container_id: str, path: str) -> bool:
    """Whether the container has the file; False for one that is gone or going meanwhile (the pool
    replaces sandboxes all the time)."""
    try:
        return docker_client.containers.get(container_id).exec_run(["test", "-e", path]).exit_code == 0
    except docker.errors.APIError:
        return False


def test_a_sandbox_that_dies_midway_ends_the_stream_with_an_error_and_the_result(
        waitress_server: Callable[..., str], docker_client: docker.DockerClient, base_config: Any) -> None:
    url = waitress_server(timeout_seconds=120)
    marker = f"/tmp/streaming-{secrets.token_hex(8)}"
    code = f"import time\nopen({marker!r}, 'w').close()\nprint('going', flush=True)\ntime.sleep(100)"
    with requests.post(url + "/runcode", json={"code": code}, headers=NDJSON, stream=True, timeout=120) as r:
        events = ndjson_events(r)
        assert next(event for _, event in events if event["type"] == "stdout")["text"].startswith("going")
        # The one container of the test pool that holds the marker runs the program: kill it.
        running = [c["Id"] for c in containers_of(docker_client, base_config.deployment)
                   if c["State"] == "running" and holds_file(docker_client, c["Id"], marker)]
        assert len(running) == 1
        docker_client.api.kill(running[0])
        rest = [event for _, event in events]
    kinds = [event["type"] for event in rest if event["type"] != "keepalive"]
    assert kinds[-2:] == ["error", "result"], rest
    error, result = rest[-2], rest[-1]
    assert error["status"] == 502 and "sandbox" in error["error"]
    assert result["status"] == "error" and result["error"] == error["error"]
    assert result["output"].startswith("going")
