"""A few dozen cheap connections must not stop the center (hardening round four).

Each test attacks one way a client without much effort could take the center from everyone (stalled
downloads, half-sent heads, large bodies without a token, uploads of many small parts, concurrent
session calls against the database pool) and checks, by events and counts rather than by the clock,
that /healthz and another user's requests are still answered.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from conftest import CenterProcess, rss_mib, wait_until
from flask import Flask
from sqlalchemy import event

from center import EXTENSION_KEY
from server.containers.docker_sandboxes import Sandbox
from server.waitress_server import make_server

pytestmark = pytest.mark.docker

OWNER = {"Authorization": "Bearer owner-token"}
OTHER = {"Authorization": "Bearer other-token"}
TOKENS = ("owner-token", "other-token")
ANSWER_SECONDS = 120  # bounds a hang only: every answer below is expected at once


@dataclass
class Served:
    """An app served by waitress as center.py serves it."""

    url: str
    app: Flask
    server: Any


@pytest.fixture
def serve(make_app: Callable[..., Flask]) -> Iterator[Callable[..., Served]]:
    """Factory: an app served by waitress as center.py serves it, with config overrides."""
    servers = []

    def start(**overrides: object) -> Served:
        app = make_app(**overrides)
        server = make_server(app, app.extensions[EXTENSION_KEY].config, port=0)
        threading.Thread(target=_run_quietly, args=(server,), daemon=True).start()
        servers.append(server)
        return Served(f"http://127.0.0.1:{server.effective_port}", app, server)

    yield start
    for server in servers:
        server.close()


def _run_quietly(server: Any) -> None:
    try:
        server.run()
    except Exception:  # noqa: BLE001 - closing its sockets under waitress's loop ends it this way
        import traceback
        traceback.print_exc()


def _connect(url: str, receive_buffer: int | None = None) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    connection = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:  # before connecting, so that the window the server sees is small
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    connection.settimeout(ANSWER_SECONDS)
    connection.connect((host, int(port)))
    return connection


def _read_head(connection: socket.socket) -> bytes:
    """Read up to the end of an answer's head (and a little beyond)."""
    seen = b""
    while b"\r\n\r\n" not in seen:
        chunk = connection.recv(4096)
        if not chunk:
            break
        seen += chunk
    return seen


def _others_are_served(url: str, headers: dict[str, str]) -> None:
    """/healthz and another user's run are answered (each within ANSWER_SECONDS: a hang fails)."""
    assert requests.get(f"{url}/healthz", timeout=ANSWER_SECONDS).status_code == 200
    run = requests.post(f"{url}/runcode", json={"code": "print(6 * 7)"}, headers=headers, timeout=ANSWER_SECONDS)
    assert run.status_code == 200 and run.json()["output"] == "42\n", run.text


def _new_session(url: str, headers: dict[str, str]) -> str:
    made = requests.post(f"{url}/sessions", headers=headers, timeout=ANSWER_SECONDS)
    assert made.status_code == 201, made.text
    return made.json()["session_id"]


def test_stalled_downloads_leave_the_server_threads_free(serve: Callable[..., Served]) -> None:
    """Before: each client that did not read a 40 MB download held a server thread for good (waitress
    blocks the writing thread past 16 MB of unsent answer); as many such clients as threads stopped it."""
    served = serve(auth_tokens=TOKENS, server_threads=4, connection_idle_seconds=3)
    url = served.url
    session = _new_session(url, OWNER)
    made = requests.post(f"{url}/sessions/{session}/runcode", headers=OWNER, timeout=ANSWER_SECONDS,
                         json={"code": "open('big.bin', 'wb').write(bytes(40 * 1024 * 1024))"})
    assert made.status_code == 200, made.text
    stalled = []
    try:
        for _ in range(12):  # three times the threads
            connection = _connect(url, receive_buffer=4096)
            connection.sendall(f"GET /sessions/{session}/files/big.bin HTTP/1.1\r\nHost: x\r\n"
                               f"Authorization: Bearer owner-token\r\n\r\n".encode())
            stalled.append(connection)
        for connection in stalled:  # each download was taken up: its answer has begun
            assert _read_head(connection).startswith(b"HTTP/1.1 200")
        _others_are_served(url, OTHER)
        # A client that takes none of its answer for connection_idle_seconds is let go: what it can
        # still read is what was already on its way, far from the 40 MB, then the end.
        assert wait_until(lambda: len(served.server.active_channels) == 0, ANSWER_SECONDS), \
            [(len(c.requests), c.total_outbufs_len, __import__("time").time() - c.last_activity, c.request,
              c.will_close, c.close_when_flushed, c.connected) for c in list(served.server.active_channels.values())]
        received = 0
        while chunk := _recv_or_end(stalled[0]):
            received += len(chunk)
        assert received < 20 * 1024 * 1024, f"{received} bytes: the stalled download was not cut"
    finally:
        for connection in stalled:
            connection.close()


def _recv_or_end(connection: socket.socket) -> bytes:
    """The next bytes, b"" at the end or when the server reset the connection."""
    try:
        return connection.recv(4096)
    except ConnectionResetError:
        return b""


def test_half_sent_heads_neither_fill_the_server_nor_stay(serve: Callable[..., Served]) -> None:
    """Before: ~98 heads sent a byte a minute kept /healthz from being answered (waitress took 100
    connections, and closed one only after 120 s without a byte)."""
    url = serve(auth_tokens=TOKENS, request_head_seconds=2).url
    half_open = [_connect(url) for _ in range(150)]
    try:
        for connection in half_open:
            connection.sendall(b"GET /healthz HTTP/1.1\r\nHo")
        _others_are_served(url, OTHER)
        # One that keeps trickling a byte at a time is cut once its head has taken request_head_seconds.
        trickler = half_open[0]
        cut = False
        for _ in range(ANSWER_SECONDS * 4):
            try:
                trickler.sendall(b"s")
                trickler.settimeout(0.25)
                if trickler.recv(1024) == b"":
                    cut = True
                    break
            except TimeoutError:
                continue
            except (ConnectionResetError, BrokenPipeError):
                cut = True
                break
        assert cut, "a head that never ends was never cut"
    finally:
        for connection in half_open:
            connection.close()


def _answer_to_head(url: str, head: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
    """Send only a request's head (its body announced, never sent) and read the answer."""
    with _connect(url) as connection:
        connection.sendall(head)
        raw = b""
        while True:
            chunk = connection.recv(65536)
            if not chunk:
                break
            raw += chunk
    raw_head, _, body = raw.partition(b"\r\n\r\n")
    lines = raw_head.decode().split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, json.loads(body)


def test_large_bodies_are_judged_on_their_head(serve: Callable[..., Served]) -> None:
    """Before: 20 bodies of 100 MiB without a token were read (and kept on disk) before their 401."""
    url = serve(auth_tokens=TOKENS).url
    big = 100 * 1024 * 1024 - 1
    for head in (f"POST /runcode HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {big}\r\n\r\n".encode(),
                 b"POST /runcode HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\nContent-Length: 70000\r\n\r\n",
                 b"POST /sessions/x/files HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"):
        status, headers, body = _answer_to_head(url, head)
        assert status == 401 and headers.get("www-authenticate") == "Bearer", (status, body)
        assert "bearer token" in body["error"]
    # With a token, a body over max_request_bytes is a 413 at once outside the upload route.
    status, _, body = _answer_to_head(url, f"POST /runcode HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer owner-token"
                                           f"\r\nContent-Length: {big}\r\n\r\n".encode())
    assert status == 413 and "over the limit" in body["error"], body
    # A small body without a token still reaches the app, which answers as before.
    small = requests.post(f"{url}/runcode", json={"code": "print(1)"}, timeout=ANSWER_SECONDS)
    assert small.status_code == 401 and small.json()["error"].startswith("a bearer token is required")
    _others_are_served(url, OTHER)


def test_uploads_of_many_small_parts_go_to_disk(center_process: Callable[..., CenterProcess]) -> None:
    """Before: twelve uploads of 250 parts of 400 KB took the center from 66 to 1,240 MiB (Werkzeug
    keeps parts under 500 KB in memory)."""
    center = center_process(auth_tokens=list(TOKENS), queue_wait_seconds=60).start()
    assert center.process is not None
    session = _new_session(center.url, OWNER)
    boundary = "cheapconnections"
    part = b"x" * 400_000
    pieces = []
    for index in range(250):
        name = "../escape.bin" if index == 0 else f"part{index}.bin"
        pieces.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                      f"Content-Type: application/octet-stream\r\n\r\n".encode() + part + b"\r\n")
    body = b"".join(pieces) + f"--{boundary}--\r\n".encode()
    headers = {**OWNER, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    before = rss_mib(center.process.pid)
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.02):
            peak = max(peak, rss_mib(center.process.pid))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with ThreadPoolExecutor(12) as executor:
            answers = list(executor.map(lambda _: requests.post(f"{center.url}/sessions/{session}/files",
                                                                data=body, headers=headers,
                                                                timeout=ANSWER_SECONDS), range(12)))
    finally:
        done.set()
        sampler.join()
    assert [answer.status_code for answer in answers] == [400] * 12, [answer.text for answer in answers]
    assert all("'..'" in answer.json()["error"] or ".." in answer.json()["error"] for answer in answers)
    assert peak - before < 250, f"the center grew by {peak - before:.0f} MiB while the uploads were read"
    listing = requests.get(f"{center.url}/sessions/{session}/files", headers=OWNER, timeout=ANSWER_SECONDS)
    assert listing.json()["files"] == [], "nothing of a refused upload is written"


def test_a_request_holds_one_database_connection_and_none_while_its_sandbox_works(
        serve: Callable[..., Served], monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: a session call held its connection until the view returned and asked for a second one
    to record the use; fifteen concurrent calls took the pool (5 + 10) and everyone waited 30 s."""
    served = serve(auth_tokens=TOKENS, server_threads=40)
    url, app = served.url, served.app
    engine = app.extensions[EXTENSION_KEY].db_engine
    held: dict[int, int] = {}
    most_held = [0]
    held_while_sandbox_works: list[int] = []
    lock = threading.Lock()

    def checkout(*_: Any) -> None:
        with lock:
            held[threading.get_ident()] = held.get(threading.get_ident(), 0) + 1
            most_held[0] = max(most_held[0], held[threading.get_ident()])

    def checkin(*_: Any) -> None:
        with lock:
            held[threading.get_ident()] = held.get(threading.get_ident(), 0) - 1

    event.listen(engine, "checkout", checkout)
    event.listen(engine, "checkin", checkin)
    run_cell = Sandbox.run_cell

    def watched_run_cell(self: Sandbox, *args: Any, **kwargs: Any) -> Any:
        held_while_sandbox_works.append(held.get(threading.get_ident(), 0))
        return run_cell(self, *args, **kwargs)

    monkeypatch.setattr(Sandbox, "run_cell", watched_run_cell)
    session = _new_session(url, OWNER)
    assert requests.post(f"{url}/sessions/{session}/runcode", headers=OWNER, json={"code": "x = 1"},
                         timeout=ANSWER_SECONDS).status_code == 200
    with ThreadPoolExecutor(30) as executor:
        listings = list(executor.map(lambda _: requests.get(f"{url}/sessions/{session}/files", headers=OWNER,
                                                            timeout=ANSWER_SECONDS), range(30)))
        other = requests.post(f"{url}/sessions", headers=OTHER, timeout=ANSWER_SECONDS)
    assert [answer.status_code for answer in listings] == [200] * 30
    assert other.status_code == 201, other.text
    assert most_held[0] == 1, f"a request held {most_held[0]} database connections at once"
    assert held_while_sandbox_works == [0], "a connection was held while the cell ran"
    requests.delete(f"{url}/sessions/{session}", headers=OWNER, timeout=ANSWER_SECONDS)
    requests.delete(f"{url}/sessions/{other.json()['session_id']}", headers=OTHER, timeout=ANSWER_SECONDS)
