"""The agent's HTTP server: JSON over HTTP/1.1 on a Unix socket, one thread per connection, standard library only.

Its one client is the center (http.client over the socket folder that only the container's root
and the center's user can reach), so it speaks the little HTTP that client needs: a request
line, headers, a Content-Length body; one exchange per connection. It needs nothing beyond json
and socket, which the agent uses anyway, where http.server (with email, http.client and ssl)
adds tens of milliseconds to a start-up that every request pays.

A route reads the body itself: as JSON (Request.json) or streamed in chunks (Request.read, for
file uploads); and answers JSON, or raw bytes streamed by a RawResponse (file downloads, and the
events of a run streamed as it goes).
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Callable
from typing import Any, Protocol

from contract import MAX_JOB_BYTES, MAX_PATH_BYTES

MAX_HEADER_LINE = 8192
# The request line names a workspace path percent-encoded, 3 bytes for each of its up to MAX_PATH_BYTES
# (all of them when the text is not ASCII), plus the method, the route (/files/), a query (a listing's
# limit and cursor) and the version: the 8 KiB of a header line left a path of 4 KB unreachable.
MAX_REQUEST_LINE = 3 * MAX_PATH_BYTES + MAX_HEADER_LINE
MAX_HEADERS = 64
MAX_BODY = MAX_JOB_BYTES
REQUEST_SECONDS = 60.0  # for a request to arrive whole; a stalled client does not hold a thread forever
# A body the route did not read (a request refused early) is still read and dropped, up to this size:
# the client (http.client) sends it whole before it reads the answer, and would otherwise get a
# broken pipe instead of the answer. Beyond it the connection is simply closed.
MAX_DISCARDED_BYTES = 1024 * 1024 * 1024
DISCARD_CHUNK = 1024 * 1024
REASONS = {200: "OK", 201: "Created", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 409: "Conflict", 410: "Gone", 411: "Length Required",
           413: "Payload Too Large", 500: "Internal Server Error", 503: "Service Unavailable",
           507: "Insufficient Storage"}


class HTTPError(Exception):
    """A request the agent answers with an error status and a JSON {"error": message}."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def allow(method: str, path: str, *methods: str) -> None:
    """HTTPError 405 unless the method is one of these."""
    if method not in methods:
        raise HTTPError(405, f"{method} is not allowed on {path}")


class ClientGone(Exception):
    """The client went away or stalled while sending its body: nobody is left to answer."""


class Request:
    """One request: its line and headers read, its body (Content-Length bytes) still in the stream."""

    def __init__(self, method: str, target: str, headers: dict[str, str], stream: Any, length: int | None) -> None:
        self.method = method
        self.target = target  # as sent: still percent-encoded, with its query
        self.path = target.partition("?")[0]
        self.headers = headers  # names lower-cased
        self.stream = stream
        self.length = length  # None without a Content-Length header
        self.unread = length or 0

    def json(self) -> Any:
        """The body decoded as JSON; None when there is none or it is not JSON (the route says what it expected)."""
        if not self.length:
            return None
        if self.length > MAX_BODY:
            raise HTTPError(413, f"the body is over {MAX_BODY} bytes")
        data = self.read(self.length)
        if len(data) != self.length:
            raise HTTPError(400, "the body ended early")
        try:
            return json.loads(data)
        except ValueError:
            return None

    def read(self, size: int) -> bytes:
        """Up to size bytes of the body (fewer only at its end); ClientGone when the client stalls or leaves."""
        try:
            data = self.stream.read(min(size, self.unread))
        except OSError as e:  # a timeout (REQUEST_SECONDS between two reads) too
            raise ClientGone(str(e)) from e
        self.unread -= len(data)
        return data

    def discard_body(self) -> None:
        """Read and drop what the route left of the body, when that is not too much (see MAX_DISCARDED_BYTES)."""
        if self.unread > MAX_DISCARDED_BYTES:
            return
        try:
            while self.unread and self.read(DISCARD_CHUNK):
                pass
        except ClientGone:
            pass


class RawResponse:
    """An answer that is not JSON: `length` bytes that `write(sock)` sends after the head (None: as many
    as it sends, the end of the body being the connection's); `close()` after, whatever happened (it
    releases what `write` reads from)."""

    def __init__(self, length: int | None, write: Callable[[socket.socket], None],
                 content_type: str = "application/octet-stream", close: Callable[[], None] | None = None) -> None:
        self.length, self.write, self.content_type = length, write, content_type
        self.close = close or (lambda: None)


# route(request) -> (status, JSON answer or RawResponse, exit after answering?)
Route = Callable[[Request], tuple[int, "dict[str, Any] | RawResponse", bool]]


class Activity(Protocol):
    """Told of each connection as it is accepted and once it is done (see serve_unix_socket)."""

    def begin(self) -> None:
        """A connection was accepted."""

    def end(self) -> None:
        """The connection is answered (or given up)."""


def read_request(stream: Any) -> Request:
    """One request's line and headers; HTTPError when it is not one we take. The body is left to the route."""
    request_line = stream.readline(MAX_REQUEST_LINE + 1)
    if not request_line.endswith(b"\n"):
        raise HTTPError(400, f"malformed request line (or over {MAX_REQUEST_LINE} bytes)")
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
    length = None
    if "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError as e:
            raise HTTPError(400, "bad Content-Length") from e
        if length < 0:
            raise HTTPError(400, "bad Content-Length")
    return Request(method, path, headers, stream, length)


def encode_json(answer: dict[str, Any]) -> bytes:
    """UTF-8 JSON, non-ASCII text as is: the size the agent's output cap counts (escaped, a CJK character takes 6)."""
    try:
        return json.dumps(answer, ensure_ascii=False, allow_nan=False).encode()
    except UnicodeEncodeError:  # a lone surrogate has no UTF-8: the ASCII form escapes it
        return json.dumps(answer, allow_nan=False).encode()


def response_head(status: int, content_type: str, length: int | None) -> bytes:
    """The status line and headers of an answer; the connection closes after it (which ends a body of
    no stated length)."""
    length_header = "" if length is None else f"Content-Length: {length}\r\n"
    return (f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\nContent-Type: {content_type}\r\n"
            f"{length_header}Connection: close\r\n\r\n").encode()


def write_response(sock: socket.socket, status: int, answer: dict[str, Any] | RawResponse) -> None:
    """One JSON response (a 500 that says why when the answer is not JSON), or a raw one streamed."""
    if isinstance(answer, RawResponse):
        try:
            sock.sendall(response_head(status, answer.content_type, answer.length))
            answer.write(sock)
        finally:
            answer.close()
        return
    try:
        body = encode_json(answer)
    except (TypeError, ValueError) as e:
        status, body = 500, encode_json({"error": f"agent error: the answer could not be encoded: {e}"})
    sock.sendall(response_head(status, "application/json", len(body)) + body)


def handle_connection(sock: socket.socket, route: Route) -> None:
    """Read one request, answer it, close the connection; every error becomes a JSON answer, never a crash
    or a dropped connection.

    When the route says so, the whole process exits once the answer is out: a container that stops
    by itself is removed without the engine's kill round trip.
    """
    exit_after = False
    answer: dict[str, Any] | RawResponse
    with sock, sock.makefile("rb") as stream:
        try:
            # Also bounds each read of the body, which the route does: a stalled client is let go.
            sock.settimeout(REQUEST_SECONDS)
            request = read_request(stream)
        except HTTPError as e:
            status, answer = e.status, {"error": str(e)}
        except OSError:
            return  # the client went away, or stalled mid-request
        else:
            try:
                status, answer, exit_after = route(request)
            except ClientGone:
                return
            except HTTPError as e:
                status, answer = e.status, {"error": str(e)}
            except Exception as e:  # noqa: BLE001 - an OSError too: the agent's own, answered like any other
                status, answer = 500, {"error": f"agent error: {type(e).__name__}: {e}"}
            request.discard_body()
        try:
            sock.settimeout(None)  # a run takes as long as it takes; the answer may be large
            write_response(sock, status, answer)  # a Unix socket: once sent, the answer is the client's
        except OSError:
            pass  # the client went away; a raw answer cut short (its file shrank) ends here too
    if exit_after:
        os._exit(0)


def handle_counted(sock: socket.socket, route: Route, activity: Activity) -> None:
    """handle_connection, then tell `activity` the connection is done (its begin() was the accept loop's)."""
    try:
        handle_connection(sock, route)
    finally:
        activity.end()


def serve_unix_socket(path: str, route: Route, activity: Activity | None = None) -> None:
    """Listen on a Unix socket at `path` and answer each connection in its own thread, forever.

    The center may run as another user, so the socket is made connectable by all (umask 0 at
    bind time; a chmod afterwards is refused under gVisor): /agent, root's only, keeps the
    program away from it and the host folder's private parents keep other host users away.
    `activity`, when given, hears of each connection from its accept to its end (a cell's whole run).
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
        if activity is None:
            threading.Thread(target=handle_connection, args=(connection, route), daemon=True).start()
            continue
        activity.begin()  # here, not in the thread: no moment between the accept and the count
        try:
            threading.Thread(target=handle_counted, args=(connection, route, activity), daemon=True).start()
        except BaseException:
            activity.end()
            connection.close()
            raise
