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
import re
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO
from urllib.parse import quote

from sandbox.contract import AGENT_SOCKET_NAME, STREAM_TYPE, UPLOAD_LIMIT_HEADER

HEALTH_TIMEOUT_SECONDS = 1.0
CHUNK_BYTES = 256 * 1024


# A lone UTF-16 surrogate, as JSON escapes it: a program can put one in a repr or an exception message
# (Python strings hold them), the agent's JSON carries it escaped, and json.loads makes it a character
# again, which no UTF-8 answer of the center could then hold (valid pairs are joined by json.loads).
ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
SURROGATE = re.compile("[\ud800-\udfff]")


def decoded(raw: bytes) -> Any:
    """The agent's JSON answer, any lone surrogate in its strings replaced by U+FFFD; ValueError if not JSON."""
    value = json.loads(raw)
    return _without_surrogates(value) if ESCAPED_SURROGATE.search(raw) else value


def _without_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_without_surrogates(key): _without_surrogates(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_surrogates(item) for item in value]
    return value


class AgentUnreachable(Exception):
    """The agent did not answer (connection refused or dropped, a timeout, a garbled answer)."""


class AgentRefused(Exception):
    """The agent answered with an error status instead of a report; the message is its own."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"the agent answered HTTP {status}: {message}")
        self.status = status
        self.agent_message = message


# A streamed run's events as the center hands them on: {"type": "started"} once the agent took the
# run, then {"type": "stdout"|"stderr", "text"} as the program writes and {"type": "display", "data", ...}
# as it displays.
EventSink = Callable[[dict[str, Any]], None]
OUTPUT_EVENTS = ("stdout", "stderr")


class Hangup:
    """Lets another thread end a streamed exchange at once: its socket is shut down, the reader fails.

    The center's client went away: a silent program gives the reading thread nothing to notice it by.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sock: socket.socket | None = None
        self.done = False

    def attach(self, sock: socket.socket) -> None:
        """The exchange's socket (shut down at once if the hangup came first)."""
        with self.lock:
            self.sock = sock
            if self.done:
                self._shut()

    def __call__(self) -> None:
        """Hang up."""
        with self.lock:
            self.done = True
            self._shut()

    def _shut(self) -> None:
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Listener:
    """Who wants a run's events as they come (`on_event`), and the way to hang up on it (`hangup`)."""

    def __init__(self, on_event: EventSink) -> None:
        self.on_event = on_event
        self.hangup = Hangup()


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
        self.socket_path = os.path.join(socket_dir, AGENT_SOCKET_NAME)

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
            return response.status, decoded(response.read())
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

    def run(self, job: dict[str, Any] | bytes, timeout: float, path: str = "/run",
            listener: Listener | None = None) -> dict[str, Any]:
        """Send the job (a dict, or its JSON already encoded) and return the agent's report (streamed to
        the listener as it runs, when there is one)."""
        if listener is not None:
            return self.stream(path, job, timeout, listener)
        return self.call("POST", path, job, timeout)

    def stream(self, path: str, job: dict[str, Any] | bytes, timeout: float, listener: Listener) -> dict[str, Any]:
        """Send the job asking for its events as it runs; hand each to on_event, return the report.

        A refusal before the run is AgentRefused, as without streaming; an exchange that breaks off
        (or is hung up) is AgentUnreachable.
        """
        connection = UnixHTTPConnection(self.socket_path, timeout)
        try:
            connection.connect()
            listener.hangup.attach(connection.sock)
            payload = job if isinstance(job, bytes) else json.dumps(job).encode()
            connection.request("POST", path, body=payload,
                               headers={"Content-Type": "application/json", "Accept": STREAM_TYPE})
            response = connection.getresponse()
            if response.status != 200 or response.getheader("Content-Type") != STREAM_TYPE:
                return self._expect(response.status, decoded(response.read()), ())
            on_event = listener.on_event
            on_event({"type": "started"})
            while line := response.readline():
                event = decoded(line)
                kind = event.get("type") if isinstance(event, dict) else None
                if kind in OUTPUT_EVENTS and isinstance(event.get("text"), str):
                    on_event({"type": kind, "text": event["text"]})
                elif kind == "display" and isinstance(event.get("data"), dict):
                    on_event(event)  # a rich result: checked again where the client's form is made
                elif kind == "report" and isinstance(event.get("report"), dict):
                    return event["report"]
                elif kind == "error":
                    raise AgentRefused(500, str(event.get("error"))[:500])
            raise AgentUnreachable("the agent's answer ended before its report")
        except (OSError, http.client.HTTPException, ValueError) as e:
            raise AgentUnreachable(f"{type(e).__name__}: {e}") from e
        finally:
            connection.close()

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
            status, answer = response.status, decoded(response.read())
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
                answer = decoded(response.read() or b"{}")
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
