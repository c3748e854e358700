"""Requests for a session held by another center go to that center, streamed both ways.

Hooked into the sessions blueprint as a before_request (after the token check): when the registry
says the caller's session lives on another node, the request is relayed there as it came (method,
path, query, headers, body) and the answer comes back as it goes (status, headers, body, chunk by
chunk, so uploads, downloads and NDJSON/SSE streams pass through without being held in memory).
The peer checks the token itself. A relayed request carries FORWARDED_HEADER and is never relayed
again. A session whose center has left (no heartbeat, see server/peers.py) answers 410.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import IO, Any
from urllib.parse import quote, unquote

import requests
from flask import Response, g, request
from sqlalchemy.exc import SQLAlchemyError

from models import SessionRecord
from server.errors import BadRequest, Gone, SandboxFailed, ServiceUnavailable
from server.run_requests import workspace_path
from server.services import close_db_session, db_session, services

log = logging.getLogger(__name__)

FORWARDED_HEADER = "X-CIA-Forwarded-By"
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "trailers", "transfer-encoding", "upgrade", "host", "content-length", "expect"})
CONNECT_SECONDS = 5.0
# Between two bytes of the peer's answer: a cell answers within its limit plus the agent's graces,
# a stream sends a keepalive every 10 s, an upload is written within sessions.UPLOAD_SECONDS (600).
READ_SECONDS = 660.0
CHUNK_BYTES = 64 * 1024


class RequestBody:
    """The incoming body as a file of known length, read as the peer takes it (never held whole)."""

    def __init__(self, stream: IO[bytes], length: int) -> None:
        self.stream, self.remaining, self.length = stream, length, length

    def __len__(self) -> int:
        return self.length

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes of what is left of the body."""
        if self.remaining <= 0:
            return b""
        size = self.remaining if size is None or size < 0 else min(size, self.remaining)
        data = self.stream.read(size)
        self.remaining -= len(data)
        return data

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(CHUNK_BYTES):
            yield chunk


def forward_if_elsewhere() -> Response | None:
    """before_request of the sessions blueprint: relay the request when the session is on another center.

    Returns None (the route answers here) for everything that is not the caller's live session on a
    peer: unknown ids, someone else's, ended ones, this center's own, and requests already relayed.
    """
    session_id = (request.view_args or {}).get("session_id")
    svc = services()
    if session_id is None or request.method == "OPTIONS" or not svc.peers.enabled \
            or request.headers.get(FORWARDED_HEADER) or len(session_id) > 64:
        return None
    try:
        record = db_session().get(SessionRecord, session_id)
    except SQLAlchemyError:
        db_session().rollback()
        return None  # the route meets the same database and answers 503
    if record is None or record.owner != g.owner:
        return None
    return forward_to_its_center(record)


def forward_to_its_center(record: SessionRecord) -> Response | None:
    """Relay this request to the center holding the session (None: it is this one, has ended, or the
    request was relayed already); 410 when that center has left the deployment."""
    svc = services()
    if not svc.peers.enabled or request.headers.get(FORWARDED_HEADER) or record.ended_at is not None \
            or record.node == svc.registry.node:
        return None
    try:
        peer = svc.peers.find(record.node)
    except SQLAlchemyError:
        db_session().rollback()
        return None  # the route meets the same database and answers 503
    if peer is None or not peer.alive:
        reason = "its center (node) has left the deployment"
        try:
            svc.registry.end(db_session(), record, reason)
        except ServiceUnavailable:
            pass  # the 410 stands; the registry is told by the next request
        raise Gone(f"the session has ended: {reason}")
    close_db_session()  # no connection held while the peer answers
    check_forwarded_path()
    return relay(peer.url)


def check_forwarded_path() -> None:
    """Refuse here what the peer's route would refuse: the path must reach the peer as the same route.

    A file path with a '.' or '..' part ('files/../../../metrics', also '..%2F') would be collapsed on
    its way (HTTP libraries resolve dot segments) and reach another route of the peer's.
    """
    path = (request.view_args or {}).get("path")
    if path is not None:
        workspace_path(path)
    raw = raw_target().split("?", 1)[0]
    if any(part in (".", "..") for part in unquote(raw).split("/")):
        raise BadRequest("a path with '.' or '..' parts is not forwarded")


def raw_target() -> str:
    """The request's target (path and query) as the client sent it, byte for byte."""
    raw = request.environ.get("REQUEST_URI") or request.environ.get("RAW_URI")
    if raw:
        return raw
    query = request.query_string.decode()
    return quote(request.path, safe="/") + (f"?{query}" if query else "")


def relay(base_url: str) -> Response:
    """Send this request to the center at base_url and stream its answer back."""
    url = base_url + raw_target()
    headers = {name: value for name, value in request.headers.items() if name.lower() not in HOP_BY_HOP}
    headers["Host"] = request.host  # the peer builds image links on the host the client used
    headers["X-Request-ID"] = g.get("request_id", "")
    headers[FORWARDED_HEADER] = services().registry.node
    length = request.content_length or 0
    body: Any = RequestBody(request.environ["wsgi.input"], length) if length else None
    if body is None and request.headers.get("Transfer-Encoding", "").lower() == "chunked":
        # A streamed body of unknown length (E2B's Connect streams): passed on as it comes, chunked.
        stream = request.stream
        body = iter(lambda: stream.read(CHUNK_BYTES), b"")
    try:
        with requests.Session() as client:
            prepared = client.prepare_request(requests.Request(request.method, url, headers=headers, data=body))
            prepared.url = url  # byte for byte: preparing it would resolve dot segments and re-encode
            upstream = client.send(prepared, stream=True, allow_redirects=False,
                                   timeout=(CONNECT_SECONDS, READ_SECONDS))
    except (requests.ConnectionError, requests.ConnectTimeout) as e:
        if isinstance(body, RequestBody) and body.remaining < length:
            raise SandboxFailed("the session's center stopped answering while it took the request") from e
        log.warning("the center at %s does not answer: %s", base_url, type(e).__name__)
        raise ServiceUnavailable("the session's center does not answer (it may be restarting); try again shortly",
                                 retry_after=5) from e
    except requests.RequestException as e:
        raise SandboxFailed("the session's center did not answer in time") from e
    g.forwarded_to = base_url
    response_headers = [(name, value) for name, value in upstream.raw.headers.items()
                        if name.lower() not in HOP_BY_HOP or name.lower() == "content-length"]
    return Response(_chunks(upstream), status=upstream.status_code, headers=response_headers)


def _chunks(upstream: requests.Response) -> Iterator[bytes]:
    """The peer's body as it arrives (a hang-up on our side closes the peer's connection too)."""
    try:
        yield from upstream.raw.stream(CHUNK_BYTES, decode_content=False)
    finally:
        upstream.close()
