"""The agent client on its own, against a stand-in agent on a real Unix socket (no container needed)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sandbox.contract import AGENT_SOCKET_NAME
from server.containers.agent_client import AgentClient, AgentRefused, AgentUnreachable

Answer = Callable[[socket.socket], None]


@pytest.fixture
def fake_agent(tmp_path: Path) -> Iterator[Callable[[Answer], AgentClient]]:
    """Factory: serve each connection on a Unix socket with `answer`; returns a client of it."""
    listeners: list[socket.socket] = []

    def start(answer: Answer) -> AgentClient:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(tmp_path / AGENT_SOCKET_NAME))
        listener.listen(4)
        listeners.append(listener)

        def serve() -> None:
            while True:
                try:
                    connection, _ = listener.accept()
                except OSError:
                    return
                with connection:
                    read_request(connection)
                    answer(connection)

        threading.Thread(target=serve, daemon=True).start()
        return AgentClient(str(tmp_path))

    yield start
    for listener in listeners:
        listener.close()


def read_request(connection: socket.socket) -> bytes:
    """The whole request, as the agent reads it: head, then a Content-Length body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        body += connection.recv(65536)
    return data


def http_answer(status: int, body: object) -> Answer:
    """An answer as the agent's http_server writes it."""
    payload = json.dumps(body).encode()
    head = f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    return lambda connection: connection.sendall(head.encode() + payload)


def test_a_report_comes_back_as_a_dict(fake_agent: Callable[[Answer], AgentClient]) -> None:
    client = fake_agent(http_answer(200, {"stdout": "hi\n", "status": "ok"}))
    assert client.run({"code": "print('hi')", "timeout": 5}, timeout=5) == {"stdout": "hi\n", "status": "ok"}


@pytest.mark.parametrize("status", [400, 409, 413, 500])
def test_an_error_answer_is_refused_at_once_with_the_agents_words(fake_agent: Callable[[Answer], AgentClient],
                                                                   status: int) -> None:
    client = fake_agent(http_answer(status, {"error": "timeout must be a finite number"}))
    began = time.monotonic()
    with pytest.raises(AgentRefused) as excinfo:
        client.run(b'{"timeout": NaN}', timeout=30)
    assert time.monotonic() - began < 5, "no waiting on an agent that already answered"
    assert excinfo.value.status == status and "finite" in excinfo.value.agent_message


@pytest.mark.parametrize("answer", [
    lambda connection: None,  # hangs up without a word
    lambda connection: connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nnot json!!"),
    lambda connection: connection.sendall(b"garbage\r\n\r\n"),
])
def test_no_usable_answer_is_agent_unreachable(fake_agent: Callable[[Answer], AgentClient], answer: Answer) -> None:
    client = fake_agent(answer)
    with pytest.raises(AgentUnreachable):
        client.run({"timeout": 1}, timeout=5)


def test_health_is_none_until_the_socket_answers(tmp_path: Path,
                                                 fake_agent: Callable[[Answer], AgentClient]) -> None:
    assert AgentClient(str(tmp_path)).health() is None, "no socket yet"
    client = fake_agent(http_answer(200, {"ok": True}))
    assert client.health() == {"ok": True}
