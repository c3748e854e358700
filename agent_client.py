"""HTTP over a sandbox's Unix socket to its agent: health checks and the one run.

The agent answers JSON on every path (see sandbox/http_server.py). Socket, HTTP and JSON
failures are translated here, once: `AgentUnreachable` when no answer came (the connection
failed or dropped: the container may have died), `AgentRefused` when the agent answered, but
not with a report (it said why, so nobody needs to wait to find out).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from collections.abc import Iterator
from typing import Any, BinaryIO
from urllib.parse import quote

from sandbox.contract import UPLOAD_LIMIT_HEADER

SOCKET_NAME = "agent.sock"
HEALTH_TIMEOUT_SECONDS = 1.0
CHUNK_BYTES = 256 * 1024


class AgentUnreachable(Exception):
    """The agent did not answer (connection refused or dropped, a timeout, a garbled answer)."""


class AgentRefused(Exception):
    """The agent answered with an error status instead of a report; the message is its own."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"the agent answered HTTP {status}: {message}")
        self.status = status
        self.agent_message = message


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a Unix socket."""

    def __init__(self, socket_path: str, timeout: float) -> None:
        super().__init__("agent", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        """Connect to the socket file instead of a TCP address."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class AgentClient:
    """The center's side of one agent's socket."""

    def __init__(self, socket_dir: str) -> None:
        self.socket_path = os.path.join(socket_dir, SOCKET_NAME)

    def request(self, method: str, path: str, body: Any, timeout: float) -> tuple[int, Any]:
        """One HTTP exchange: (status, decoded JSON); AgentUnreachable on any failure to get one."""
        connection = UnixHTTPConnection(self.socket_path, timeout)
        try:
            if body is None:
                payload, headers = None, {}
            else:
                payload = body if isinstance(body, bytes) else json.dumps(body).encode()
                headers = {"Content-Type": "application/json"}
            connection.request(method, path, body=payload, headers=headers)
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        except (OSError, http.client.HTTPException, ValueError) as e:
            raise AgentUnreachable(f"{type(e).__name__}: {e}") from e
        finally:
            connection.close()

    def health(self) -> dict[str, Any] | None:
        """The agent's /healthz answer, or None while it does not answer."""
        if not os.path.exists(self.socket_path):  # cheap: no connection attempt before the agent binds
            return None
        try:
            status, body = self.request("GET", "/healthz", None, timeout=HEALTH_TIMEOUT_SECONDS)
        except AgentUnreachable:
            return None
        return body if status == 200 and isinstance(body, dict) else None

    def run(self, job: dict[str, Any] | bytes, timeout: float, path: str = "/run") -> dict[str, Any]:
        """Send the job (a dict, or its JSON already encoded) and return the agent's report."""
        return self.call("POST", path, job, timeout)

    def call(self, method: str, path: str, body: Any, timeout: float,
             ok: tuple[int, ...] = (200, 201)) -> dict[str, Any]:
        """One exchange whose answer must be a JSON object with an ok status; AgentRefused otherwise."""
        status, answer = self.request(method, path, body, timeout=timeout)
        return self._expect(status, answer, ok)

    @staticmethod
    def _expect(status: int, answer: Any, ok: tuple[int, ...]) -> dict[str, Any]:
        """The answer when its status is one of `ok` and it is a JSON object; else AgentRefused in its words."""
        if status not in ok or not isinstance(answer, dict):
            message = answer.get("error") if isinstance(answer, dict) else None
            raise AgentRefused(status, str(message or answer)[:500])
        return answer

    def upload(self, path: str, stream: BinaryIO, size: int, max_bytes: int, timeout: float) -> dict[str, Any]:
        """PUT /files/<path> with the bytes read from stream (size of them), never holding them whole."""
        connection = UnixHTTPConnection(self.socket_path, timeout)
        try:
            connection.putrequest("PUT", "/files/" + quote(path, safe="/"))
            connection.putheader("Content-Length", str(size))
            connection.putheader("Content-Type", "application/octet-stream")
            connection.putheader(UPLOAD_LIMIT_HEADER, str(max_bytes))
            connection.endheaders()
            while chunk := stream.read(CHUNK_BYTES):
                connection.send(chunk)
            response = connection.getresponse()
            status, answer = response.status, json.loads(response.read())
        except (OSError, http.client.HTTPException, ValueError) as e:
            raise AgentUnreachable(f"{type(e).__name__}: {e}") from e
        finally:
            connection.close()
        return self._expect(status, answer, (201,))

    def download(self, path: str, timeout: float) -> tuple[int, Iterator[bytes]]:
        """GET /files/<path>: (size, the bytes in chunks); AgentRefused (404...) before any byte is given."""
        connection = UnixHTTPConnection(self.socket_path, timeout)
        try:
            connection.request("GET", "/files/" + quote(path, safe="/"))
            response = connection.getresponse()
            if response.status != 200:
                answer = json.loads(response.read() or b"{}")
                connection.close()
                raise AgentRefused(response.status, str(answer.get("error") if isinstance(answer, dict) else answer))
        except (OSError, http.client.HTTPException, ValueError) as e:
            connection.close()
            raise AgentUnreachable(f"{type(e).__name__}: {e}") from e

        def chunks() -> Iterator[bytes]:
            try:
                while chunk := response.read(CHUNK_BYTES):
                    yield chunk
            finally:
                connection.close()

        return int(response.getheader("Content-Length") or 0), chunks()
