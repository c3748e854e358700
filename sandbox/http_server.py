"""The agent's HTTP server: JSON over HTTP/1.1 on a Unix socket, one thread per connection, standard library only.

Its one client is the center (http.client over the socket folder that only the container's root
and the center's user can reach), so it speaks the little HTTP that client needs: a request
line, headers, a Content-Length body; one exchange per connection. It needs nothing beyond json
and socket, which the agent uses anyway, where http.server (with email, http.client and ssl)
adds tens of milliseconds to a start-up that every request pays.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from contract import MAX_JOB_BYTES

MAX_HEADER_LINE = 8192
MAX_HEADERS = 64
MAX_BODY = MAX_JOB_BYTES
REQUEST_SECONDS = 60.0  # for a request to arrive whole; a stalled client does not hold a thread forever
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
           411: "Length Required", 413: "Payload Too Large", 500: "Internal Server Error"}

# route(method, path, decoded JSON body or None) -> (status, JSON answer, exit after answering?)
Route = Callable[[str, str, Any], tuple[int, dict[str, Any], bool]]


class HTTPError(Exception):
    """A request the agent answers with an error status and a JSON {"error": message}."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def read_request(stream: Any) -> tuple[str, str, Any]:
    """(method, path, JSON body or None) of one request; HTTPError when it is not one we take."""
    request_line = stream.readline(MAX_HEADER_LINE + 1)
    parts = request_line.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HTTPError(400, "malformed request line")
    method, path, _ = parts
    headers: dict[str, str] = {}
    while True:
        line = stream.readline(MAX_HEADER_LINE + 1)
        if line in (b"\r\n", b"\n"):
            break
        if not line.endswith(b"\n") or len(headers) >= MAX_HEADERS:
            raise HTTPError(400, "malformed or oversized headers")
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if "transfer-encoding" in headers:
        raise HTTPError(411, "send a Content-Length body")
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError as e:
        raise HTTPError(400, "bad Content-Length") from e
    if not 0 <= length <= MAX_BODY:
        raise HTTPError(413, f"the body is over {MAX_BODY} bytes")
    if length == 0:
        return method, path, None
    data = stream.read(length)
    if len(data) != length:
        raise HTTPError(400, "the body ended early")
    try:
        return method, path, json.loads(data)
    except ValueError:
        return method, path, None  # the route says what it expected


def encode_json(answer: dict[str, Any]) -> bytes:
    """UTF-8 JSON, non-ASCII text as is: the size the agent's output cap counts (escaped, a CJK character takes 6)."""
    try:
        return json.dumps(answer, ensure_ascii=False, allow_nan=False).encode()
    except UnicodeEncodeError:  # a lone surrogate has no UTF-8: the ASCII form escapes it
        return json.dumps(answer, allow_nan=False).encode()


def write_response(sock: socket.socket, status: int, answer: dict[str, Any]) -> None:
    """One JSON response (a 500 that says why when the answer is not JSON); the connection closes after it."""
    try:
        body = encode_json(answer)
    except (TypeError, ValueError) as e:
        status, body = 500, encode_json({"error": f"agent error: the answer could not be encoded: {e}"})
    head = (f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    sock.sendall(head + body)


def handle_connection(sock: socket.socket, route: Route) -> None:
    """Read one request, answer it, close the connection; every error becomes a JSON answer, never a crash
    or a dropped connection.

    When the route says so, the whole process exits once the answer is out: a container that stops
    by itself is removed without the engine's kill round trip.
    """
    exit_after = False
    with sock, sock.makefile("rb") as stream:
        try:
            sock.settimeout(REQUEST_SECONDS)
            request = read_request(stream)
            sock.settimeout(None)  # a run takes as long as it takes; the answer may be large
        except HTTPError as e:
            status, answer = e.status, {"error": str(e)}
        except OSError:
            return  # the client went away, or stalled mid-request
        else:
            try:
                status, answer, exit_after = route(*request)
            except HTTPError as e:
                status, answer = e.status, {"error": str(e)}
            except Exception as e:  # noqa: BLE001 - an OSError too: the agent's own, answered like any other
                status, answer = 500, {"error": f"agent error: {type(e).__name__}: {e}"}
        try:
            write_response(sock, status, answer)  # a Unix socket: once sent, the answer is the client's
        except OSError:
            pass
    if exit_after:
        os._exit(0)


def serve_unix_socket(path: str, route: Route) -> None:
    """Listen on a Unix socket at `path` and answer each connection in its own thread, forever.

    The center may run as another user, so the socket is made connectable by all (umask 0 at
    bind time; a chmod afterwards is refused under gVisor): /agent, root's only, keeps the
    program away from it and the host folder's private parents keep other host users away.
    """
    if os.path.exists(path):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    previous_umask = os.umask(0)
    try:
        listener.bind(path)
    finally:
        os.umask(previous_umask)
    listener.listen(16)
    while True:
        connection, _ = listener.accept()
        threading.Thread(target=handle_connection, args=(connection, route), daemon=True).start()
