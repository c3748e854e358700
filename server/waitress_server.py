"""The center's HTTP server: waitress, with the defences a server facing untrusted clients needs.

waitress reads a whole request (head and body) in its event loop before a thread runs the app, and
writes an answer from the app's thread. Left at its defaults, a few dozen cheap connections stop it:
heads sent a byte a minute hold the 100 connections it takes, a client that does not read a large
download holds a thread for good, and a body of 100 MB is read (and stored in a temporary file)
before the app can say that its sender has no token. Here:

- a request's head must arrive within `request_head_seconds`, whatever its pace; a connection that
  sends nothing and takes none of its answer for `connection_idle_seconds` is closed (install_deadlines);
- the connection limit is CONNECTION_LIMIT (open files permitting), so slow clients cannot fill it;
- the body is judged on the head (EdgeParser): a body larger than SMALL_BODY_BYTES from a client without
  an accepted token is a 401 at once, and a body over max_request_bytes outside the upload route a 413,
  before a byte of it is read;
- waitress's own refusals answer JSON, like the app's errors.

Large answers leave the app's thread at once by handing waitress a file (see server/spool.py and the
download route in server/api/sessions.py): the event loop sends it at the client's pace.
"""

from __future__ import annotations

import copy
import json
import re
import resource
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import create_server
from waitress.task import ErrorTask
from waitress.utilities import Error

from server.auth import presented_token, token_accepted
from server.config import Config
from server.services import EXTENSION_KEY

# What waitress itself takes of a request before the app sees it: the request line and headers
# (a GET's code travels in its URL: ~100 KB of it fits).
MAX_REQUEST_HEAD_BYTES = 128 * 1024
SMALL_BODY_BYTES = 64 * 1024  # what a client without an accepted token may still send (its answer is a 401)
MAINTENANCE_SECONDS = 1.0  # how often connections are checked against their deadlines
CONNECTION_LIMIT = 1000  # open connections at once (each costs a descriptor, no thread)
DESCRIPTORS_SPARE = 200  # descriptors kept for the rest: the database, sandboxes' sockets, temporary files
# The routes that take bodies over max_request_bytes: a session's upload, and E2B's files.write.
UPLOAD_ROUTE = re.compile(r"\A(?:/sessions/[^/]+/files/?|/e2b/sandbox/files)\Z")
SANDBOX_ROUTE = "/e2b/sandbox/"  # E2B's sandbox routes: their credential is the sandbox's access token


class Refusal(Error):
    """A request refused on its head by the center's own rule; its body is already one sentence."""


class Unauthorized(Refusal):
    """A large body from a client without an accepted token."""

    code = 401
    reason = "Unauthorized"


class BodyTooLarge(Refusal):
    """A body over max_request_bytes sent to a route that takes no more."""

    code = 413
    reason = "Request Entity Too Large"


def largest_body_bytes(config: Config) -> int:
    """What waitress reads of one body at most: an upload's files with their multipart framing."""
    return max(config.max_request_bytes + SMALL_BODY_BYTES, config.max_upload_body_bytes)


def body_refusal(config: Config, method: str, path: str, headers: Mapping[str, str], length: int | None,
                 known_sandbox_token: Callable[[str], bool] = lambda _: False) -> Error | None:
    """Why a request's body is refused on its head alone (None: read it). `length` None: chunked, unknown.
    A large body needs a credential: an accepted token (as a bearer token, or E2B's X-API-KEY), or on E2B's
    sandbox routes the access token of a live sandbox of this center."""
    large = length is None or length > SMALL_BODY_BYTES
    if large and config.auth_tokens:
        token = presented_token(headers.get("AUTHORIZATION", "")) or headers.get("X_API_KEY", "").strip() or None
        sandbox_token = headers.get("X_ACCESS_TOKEN", "") if path.startswith(SANDBOX_ROUTE) else ""
        if not ((token is not None and token_accepted(config.auth_tokens, token))
                or (sandbox_token and known_sandbox_token(sandbox_token))):
            return Unauthorized("a bearer token is required to send a request body of this size")
    upload = method == "POST" and UPLOAD_ROUTE.match(path) is not None
    if not upload and length is not None and length > config.max_request_bytes:
        return BodyTooLarge(f"the request body is over the limit of {config.max_request_bytes} bytes")
    return None


def edge_parser(config: Config, known_sandbox_token: Callable[[str], bool] = lambda _: False
                ) -> type[HTTPRequestParser]:
    """waitress's request parser, judging each body on its request's head (see body_refusal)."""

    class EdgeParser(HTTPRequestParser):
        """One request as waitress reads it, with the time it began and the center's limits on its body."""

        refusal: Error | None = None

        def __init__(self, adj: Any) -> None:
            super().__init__(adj)
            self.began = time.monotonic()

        def parse_header(self, header_plus: bytes) -> None:
            """The head as waitress parses it; then the body's limits for this request."""
            super().parse_header(header_plus)
            length = None if self.chunked else self.content_length
            self.refusal = body_refusal(config, self.command, self.path, self.headers, length, known_sandbox_token)
            if self.chunked and self.refusal is None and not UPLOAD_ROUTE.match(self.path):
                # A chunked body's size shows only as it arrives: cap it as a declared one would be.
                self.adj = copy.copy(self.adj)
                self.adj.max_request_body_size = config.max_request_bytes + 1

        def received(self, data: bytes) -> int:
            """Take bytes of the request; a refused body ends it at its head (the connection then closes)."""
            consumed = super().received(data)
            if self.refusal is not None and not self.completed:
                self.error, self.completed = self.refusal, True
            elif self.refusal is not None and self.error is None:
                self.error = self.refusal
            return consumed

    return EdgeParser


class JSONErrorTask(ErrorTask):
    """waitress's own refusals (a request head over the limit, a malformed request) as JSON, like ours."""

    def execute(self) -> None:
        """Answer {"error": ...} with waitress's status; the connection closes after it."""
        error = self.request.error
        message = error.body if isinstance(error, Refusal) else f"{error.reason.lower()}: {error.body}"
        body = json.dumps({"error": message}).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        if error.code == 401:
            self.response_headers.append(("WWW-Authenticate", "Bearer"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


def json_error_channel(config: Config, known_sandbox_token: Callable[[str], bool] = lambda _: False
                       ) -> type[HTTPChannel]:
    """waitress's connection, with the edge's parser and JSON errors."""

    class JSONErrorChannel(HTTPChannel):
        """One client connection."""

        error_task_class = JSONErrorTask
        parser_class = edge_parser(config, known_sandbox_token)

    return JSONErrorChannel


def overdue(channel: Any, config: Config, now_wall: float, now: float) -> bool:
    """Whether a connection has had its time: a head still arriving after request_head_seconds, or
    nothing sent or taken for connection_idle_seconds while no request of it is being served."""
    request = channel.request
    if request is not None and not request.headers_finished \
            and now - getattr(request, "began", now) > config.request_head_seconds:
        return True
    return not channel.requests and channel.last_activity < now_wall - config.connection_idle_seconds


def raise_descriptor_limit(wanted: int) -> int:
    """Raise this process's open-files limit towards `wanted` (within the hard limit); the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def make_server(app: Flask, config: Config, port: int | None = None) -> Any:
    """The waitress server for the app, not yet serving (port: the config's unless given; 0 picks a free one)."""
    descriptors = raise_descriptor_limit(CONNECTION_LIMIT + DESCRIPTORS_SPARE + config.server_threads)
    server = create_server(app, host=config.host, port=config.scheduler_port if port is None else port,
                           threads=config.server_threads,
                           max_request_body_size=largest_body_bytes(config),
                           max_request_header_size=MAX_REQUEST_HEAD_BYTES, ident="code-interpreter",
                           connection_limit=max(100, min(CONNECTION_LIMIT, descriptors - DESCRIPTORS_SPARE)),
                           channel_timeout=config.connection_idle_seconds, cleanup_interval=MAINTENANCE_SECONDS,
                           # A client that hangs up is noticed while its streamed run is silent: waitress
                           # then keeps reading the connection and offers waitress.client_disconnected.
                           channel_request_lookahead=1)
    registry = app.extensions[EXTENSION_KEY].registry if EXTENSION_KEY in app.extensions else None
    server.channel_class = json_error_channel(config, registry.knows_access_token if registry else lambda _: False)
    install_deadlines(server, config)
    # A streamed event goes out as soon as it is written: waitress otherwise holds a running answer's
    # writes until 18 KB have gathered. Passing send_bytes is deprecated in waitress 3 (hence set here,
    # where its channels still read it); tests/test_streaming.py fails if a release stops honouring it.
    server.adj.send_bytes = 1
    return server


def install_deadlines(server: Any, config: Config) -> None:
    """Make the server's periodic maintenance close overdue connections (see overdue())."""

    closing: weakref.WeakSet[Any] = weakref.WeakSet()  # channels whose close is queued already

    def maintenance(now_wall: float) -> None:
        now = time.monotonic()
        for channel in list(server.active_channels.values()):
            if channel in closing or not overdue(channel, config, now_wall, now):
                continue
            if channel.requests:
                channel.will_close = True  # a thread is answering it: it closes once that is done
            else:
                # waitress's own will_close waits for the socket to become writable, which a client that
                # reads nothing never lets happen: the channel is closed by the event loop, right after
                # its next select() (maintenance runs while the loop lists the sockets to select on,
                # and a socket closed then would be handed to select() closed).
                closing.add(channel)
                server.trigger.pull_trigger(channel.handle_close)

    server.maintenance = maintenance
