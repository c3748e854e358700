"""The center's HTTP edge against hostile requests that need no token: bounded labels, logs, heads, memory."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable

import pytest
import requests
from conftest import CenterProcess, rss_mib
from flask import Flask

from server.config import Config
from server.errors import ServiceUnavailable
from server.services import SMALL_BODY_BYTES, BodyBudget


def raw_request(url: str, head: bytes, body: bytes = b"") -> tuple[int, bytes, bytes]:
    """Send bytes as they are while reading the answer; returns (status, raw head, body) of the answer.

    A server that refuses a request part-way closes with unread bytes, which resets the connection:
    reading while sending gets the answer before the reset does.
    """
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        def send() -> None:
            try:
                connection.sendall(head + body)
            except OSError:
                pass  # refused part-way: the answer is already on its way

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        answer = b""
        try:
            while chunk := connection.recv(65536):
                answer += chunk
        except ConnectionResetError:
            assert answer, "reset before any answer"
        sender.join(10)
    raw_head, _, raw_body = answer.partition(b"\r\n\r\n")
    return int(raw_head.split()[1]), raw_head, raw_body


def test_unknown_methods_add_no_metric_label_and_a_bounded_log_line(make_app: Callable[..., Flask],
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    client = make_app().test_client()
    caplog.set_level(logging.INFO, logger="center.access")
    methods = [f"X{n}" + "A" * 20_000 for n in range(20)]
    for method in methods:
        response = client.open("/healthz?" + "q" * 5000, method=method)
        assert response.status_code == 405 and response.is_json
        assert len(response.get_json()["error"]) < 200, "the error does not echo the method back"
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "AAAA" not in metrics
    assert 'method="other",status="405"' in metrics and "20.0" in metrics.split('method="other",status="405"')[1][:8]
    lines = [record.getMessage() for record in caplog.records if record.name == "center.access"]
    assert len(lines) >= 20 and max(len(line) for line in lines) < 1000, "each log line is bounded"
    assert all(json.loads(line)["method"] in ("other", "GET") for line in lines)


def test_statuses_are_a_bounded_label(make_app: Callable[..., Flask]) -> None:
    client = make_app().test_client()
    for path in ("/nope", "/image/nope.png", "/runcode"):
        client.get(path)
    metrics = client.get("/metrics").get_data(as_text=True)
    statuses = {part.split('status="')[1].split('"')[0] for part in metrics.splitlines()
                if part.startswith("code_interpreter_http_requests_total{")}
    assert statuses <= {"200", "400", "404", "405", "other"}, statuses


@pytest.fixture
def center(center_process: Callable[..., CenterProcess]) -> CenterProcess:
    """A real center process (waitress), one sandbox slot."""
    return center_process(interpreter_port_range={"start": 1, "end": 1}).start()


def test_absurd_request_heads_get_a_json_4xx_and_the_center_keeps_serving(center: CenterProcess) -> None:
    status, head, body = raw_request(center.url, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Junk: "
                                     + b"j" * 300_000 + b"\r\n\r\n")
    assert 400 <= status < 500
    assert b"application/json" in head.lower() and "error" in json.loads(body)
    status, _, body = raw_request(center.url, b"GET /" + b"p" * 300_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert 400 <= status < 500 and "error" in json.loads(body)
    assert requests.get(f"{center.url}/healthz", timeout=10).status_code == 200


def peak_rss_while(pid: int, action: Callable[[], None]) -> float:
    """The highest resident memory of the process seen while `action` runs (sampled every 10 ms)."""
    peak, done = rss_mib(pid), threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.01):
            peak = max(peak, rss_mib(pid))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        action()
    finally:
        done.set()
        sampler.join()
    return peak


def test_four_concurrent_large_variable_bodies_keep_memory_flat(
        center_process: Callable[..., CenterProcess]) -> None:
    # The budget lets one large body parse at a time and the others wait their turn for up to
    # queue_wait_seconds; the wait here is long enough for any machine, so that all six are served and
    # only the memory decides (a body that cannot get its turn in time is a 503, tested below).
    # The sandbox gets room to spare too: 2.3 million lists bound as a variable come near 512 MB once the
    # worker has warmed up its libraries, which it may or may not have done when the job comes.
    center = center_process(interpreter_port_range={"start": 1, "end": 1}, queue_wait_seconds=600,
                            timeout_seconds=120, resource_limits={"memory": "1536m", "cpus": "1"}).start()
    assert center.process is not None
    pid = center.process.pid
    # ~9 MB of empty lists: the shape that costs the most memory per byte once parsed (~16x).
    body = json.dumps({"code": "print(len(v))", "variables": {"v": [[] for _ in range(2_300_000)]}}).encode()
    answers: list[requests.Response] = []

    def post() -> None:
        answers.append(requests.post(f"{center.url}/runcode", data=body, timeout=1200,
                                     headers={"Content-Type": "application/json"}))

    def post_four_at_once() -> None:
        threads = [threading.Thread(target=post) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    post()  # the first large body sets up what any large body needs
    before = rss_mib(pid)
    one = peak_rss_while(pid, post) - before
    four = peak_rss_while(pid, post_four_at_once) - before
    after = rss_mib(pid) - before
    assert [(a.status_code, a.json()["output"]) for a in answers] == [(200, "2300000\n")] * 6, \
        [a.json().get("error") for a in answers]
    # Before: each body's parsed form lived as long as its run (~150 MB each: ~600 MB for four), and
    # ~260 MB were never given back.
    assert four < 1.5 * one + 30, f"four at once took {four:.0f} MiB, one alone {one:.0f} MiB"
    assert after < 40, f"{after:.0f} MiB kept after the requests"


def test_a_large_body_that_cannot_get_its_turn_in_time_is_a_503_with_retry_after() -> None:
    """The budget's contract when bodies at the size limit arrive together: each waits its turn for the
    queue wait, and one that does not get it in time is a 503 that says why and when to come back."""
    budget = BodyBudget(Config().max_request_bytes + SMALL_BODY_BYTES)
    first = budget.take(Config().max_request_bytes, timeout=0)
    assert budget.take(SMALL_BODY_BYTES, timeout=0) == 0, "a small body never waits"
    with pytest.raises(ServiceUnavailable) as refused:
        budget.take(Config().max_request_bytes, timeout=0.01)
    assert refused.value.status == 503 and "busy reading other large requests" in str(refused.value)
    assert int(refused.value.headers["Retry-After"]) >= 1
    served: list[int] = []
    waiter = threading.Thread(target=lambda: served.append(budget.take(Config().max_request_bytes, timeout=600)))
    waiter.start()
    budget.give_back(first)  # the first body is parsed: the one waiting takes its turn
    waiter.join(600)
    assert served == [Config().max_request_bytes]


def test_large_downloads_give_their_memory_back(center: CenterProcess) -> None:
    """Each 20 MB download of a session's file left ~17 MB in a server thread's arena, for good."""
    assert center.process is not None
    pid = center.process.pid
    session = requests.post(f"{center.url}/sessions", timeout=120).json()["session_id"]
    files = f"{center.url}/sessions/{session}/files"
    try:
        made = requests.post(f"{center.url}/sessions/{session}/runcode", timeout=120,
                             json={"code": "open('big.bin', 'wb').write(bytes(range(256)) * 80_000)"})
        assert made.status_code == 200, made.text

        def download() -> None:
            with requests.get(f"{files}/big.bin", stream=True, timeout=120) as answer:
                assert answer.status_code == 200
                assert sum(len(chunk) for chunk in answer.iter_content(1024 * 1024)) == 20_480_000

        download()  # the first sets up what any large answer needs
        before = rss_mib(pid)
        for _ in range(6):
            download()
        kept = rss_mib(pid) - before
        assert kept < 40, f"{kept:.0f} MiB kept after six 20 MB downloads"
    finally:
        requests.delete(f"{center.url}/sessions/{session}", timeout=60)
