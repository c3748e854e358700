"""The session's routes: POST /session/start and /session/cell, and the workspace's files (/files).

POST /session/start (on a fresh agent only) hands the worker over: from then on the agent does not
exit after answering (the center removes its container; with no center left, see life_watch.py).
POST /session/cell takes /run's job and answers its cell's report (see session.py); a dead session
answers 410, a busy one 409. Files of the workspace: PUT /files/<path> (raw body), GET
/files?limit=N&cursor=C (a page of the listing, see workspace.task_list), GET /files/<path> (raw bytes),
POST /fs (stat, list, mkdir, move, remove: see workspace.file_operation).

Imported only when a session (or a file route) is asked for.
"""

from __future__ import annotations

import os
import re
from typing import Any

import workspace
from agent_state import Agent
from contract import DEFAULT_LIST_LIMIT, DEFAULT_MAX_UPLOAD_BYTES, MAX_LISTED_FILES, UPLOAD_LIMIT_HEADER, check_path
from http_server import HTTPError, RawResponse, Request, allow
from job_request import Job
from output_pipes import wants_stream
from session import CHUNK, Session


def route(agent: Agent, request: Request) -> tuple[int, dict[str, Any] | RawResponse, bool]:
    """/session/start, /session/cell and /files[/<path>]: (status, answer, False); a session's agent does not
    exit after answering (see life_watch.LifeWatch for when it ends itself)."""
    method, path = request.method, request.path
    if path == "/session/start":
        allow(method, path, "POST")
        return (*start(agent), False)
    session: Session | None = agent.session
    if session is None:
        return 409, {"error": "this sandbox is not in session mode: POST /session/start first"}, False
    if path == "/session/cell":
        allow(method, path, "POST")
        try:
            job = Job.from_json(request.json(), agent.options)
        except ValueError as e:
            return 400, {"error": str(e)}, False
        return (*session.cell(job, stream=wants_stream(request)), False)
    if path == "/fs":
        allow(method, path, "POST")
        body = request.json()
        return (*workspace_call(lambda: (200, workspace.file_operation(agent.options.uid, body))), False)
    if path == "/files":
        allow(method, path, "GET")
        try:
            limit, after = listing_query(request.target.partition("?")[2])
        except ValueError as e:
            return 400, {"error": str(e)}, False
        return (*workspace_call(lambda: (200, workspace.list_files(agent.options.uid, limit, after))), False)
    allow(method, path, "GET", "PUT")
    try:
        file_path = check_path(decode_path(path[len("/files/"):]))
    except ValueError as e:
        return 400, {"error": str(e)}, False
    if method == "PUT":
        return (*workspace_call(lambda: put_file(agent, request, file_path)), False)
    return (*workspace_call(lambda: get_file(agent, file_path)), False)


def start(agent: Agent) -> tuple[int, dict[str, Any]]:
    """POST /session/start: a fresh agent becomes a session's."""
    refusal = agent.take("session")
    if refusal is not None:
        return 409, {"error": refusal}
    session = Session(agent.worker, agent.options.uid)
    agent.session = session
    try:
        session.start()
    except RuntimeError as e:
        return 500, {"error": str(e)}
    finally:
        # From when the center hears of it: it counts the session's lifetime from a moment later still.
        agent.life.session_started()
    return 200, {"ok": True}


def listing_query(query: str) -> tuple[int, str | None]:
    """GET /files's (limit, path the page starts after) from `limit` and `cursor`; ValueError saying which
    is bad. Other parameters are ignored."""
    from urllib.parse import parse_qsl  # only for a listing: a session that never lists pays nothing for it

    fields = dict(parse_qsl(query, keep_blank_values=True, max_num_fields=16))
    limit_text = fields.get("limit", str(DEFAULT_LIST_LIMIT))
    # Digits only, and few of them: int() takes "+5", " 5", "5_0", and refuses 5000 digits only after a while.
    if not (limit_text.isascii() and limit_text.isdigit() and len(limit_text) <= 6
            and 1 <= int(limit_text) <= MAX_LISTED_FILES):
        raise ValueError(f"limit must be a whole number from 1 to {MAX_LISTED_FILES}")
    cursor = fields.get("cursor", "")
    return int(limit_text), workspace.cursor_path(cursor) if cursor else None


def workspace_call(call: Any) -> tuple[int, Any]:
    """Run a file operation; a WorkspaceError becomes its JSON error answer."""
    try:
        return call()
    except workspace.WorkspaceError as e:
        return e.status, {"error": e.message}


def decode_path(text: str) -> str:
    """A request path's percent-encoded UTF-8 as text; ValueError when it is not UTF-8."""
    raw = text.encode("latin-1")  # the request line was read as latin-1: these are its bytes
    raw = re.sub(rb"%([0-9A-Fa-f]{2})", lambda match: bytes([int(match[1], 16)]), raw)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("the path is not valid UTF-8") from None


def put_file(agent: Agent, request: Request, path: str) -> tuple[int, dict[str, Any]]:
    """PUT /files/<path>: the body, streamed into the file (through a temporary one), folders made as needed."""
    limit_text = request.headers.get(UPLOAD_LIMIT_HEADER.lower())
    try:
        limit = int(limit_text) if limit_text is not None else DEFAULT_MAX_UPLOAD_BYTES
    except ValueError:
        limit = -1
    if limit < 0:
        return 400, {"error": f"{UPLOAD_LIMIT_HEADER} must be a whole number of bytes"}
    if request.length is None:
        raise HTTPError(411, "send the file with a Content-Length")
    if request.length > limit:  # the body is dropped unread (see http_server.Request.discard_body)
        return 413, {"error": f"the file is {request.length} bytes, over the limit of {limit} bytes"}
    upload = workspace.Upload(agent.options.uid, path)
    try:
        left, failure = request.length, None
        while left:
            chunk = request.read(min(CHUNK, left))  # ClientGone when the client stalls or leaves
            if not chunk:
                raise HTTPError(400, "the body ended early")
            left -= len(chunk)
            if failure is None:
                try:
                    upload.write(chunk)
                except OSError as e:
                    failure = e  # the rest of the body is still read, so that the client gets the answer
        upload.finish(commit=failure is None)
        if failure is not None:
            raise workspace.os_error(failure, path)
    except BaseException:
        if upload.fd >= 0:  # not finished: the partial file goes
            try:
                upload.finish(commit=False)
            except workspace.WorkspaceError:
                pass
        raise
    finally:
        upload.close()
    return 201, {"path": path, "size": request.length}


def get_file(agent: Agent, path: str) -> tuple[int, RawResponse]:
    """GET /files/<path>: the file's bytes, streamed."""
    fd, size = workspace.open_file(agent.options.uid, path)

    def send(sock: Any) -> None:
        left = size
        while left:
            chunk = os.read(fd, min(CHUNK, left))
            if not chunk:  # the program shortened it meanwhile: the client sees a short body
                raise OSError("the file shrank while it was sent")
            sock.sendall(chunk)
            left -= len(chunk)

    return 200, RawResponse(size, send, close=lambda: os.close(fd))
