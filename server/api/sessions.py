"""/sessions and /sessions/<id>/...: a notebook that keeps its state between calls, with its files.

Every route is behind the token, and a session is its creator's: another token gets 404 for it,
as for an unknown id. An ended session answers 410 with the reason.
"""

from __future__ import annotations

import math
import mimetypes
from typing import Any

from flask import Response, g, jsonify, request
from flask.blueprints import BlueprintSetupState
from werkzeug.routing import PathConverter
from werkzeug.wsgi import wrap_file

from models import SessionRecord
from server.api.answers import answer_report
from server.api.forwarding import forward_if_elsewhere
from server.api.http import guarded_blueprint, json_body
from server.api.outputs import attachment
from server.api.runs import read_run_request
from server.api.streaming import RunInThread, requested_format, stream_answer
from server.errors import BadRequest, PayloadTooLarge
from server.run_requests import parse_network, workspace_path
from server.services import close_db_session, db_session, services
from server.spool import spool

blueprint = guarded_blueprint("sessions", __name__)
blueprint.before_request(forward_if_elsewhere)  # a session held by another center is served there


class WorkspacePathConverter(PathConverter):
    """Any path, one that starts with a slash too: workspace_path() says what is wrong with it in a 400
    (the router would merge the slashes and answer an HTML redirect, or a 404)."""

    regex = ".+"
    part_isolating = False  # may match "/": said here, as Werkzeug would guess otherwise from a regex without one


@blueprint.record_once
def _register_converter(state: BlueprintSetupState) -> None:
    """The converter, before the routes that name it are added."""
    state.app.url_map.converters["workspace_path"] = WorkspacePathConverter


def _json_object() -> dict[str, Any]:
    """The request's JSON object body, {} when there is none; 400 for anything else."""
    data = request.get_data(cache=False)
    if not data:
        return {}
    body = json_body(data)
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object (or empty)")
    return body


def _idle_timeout(body: dict[str, Any]) -> float | None:
    """The requested idle timeout: a positive finite number of seconds (it can only lower the configured one)."""
    raw = body.get("idle_timeout")
    if raw is None:
        return None
    try:
        seconds = float(raw) if isinstance(raw, (int, float)) and not isinstance(raw, bool) else math.nan
    except OverflowError:  # an integer beyond any float
        seconds = math.inf
    if not 0 < seconds < math.inf:
        raise BadRequest("idle_timeout must be a positive number of seconds")
    return seconds


def owned_session(session_id: str) -> SessionRecord:
    """The caller's live session of that id (404 when unknown or someone else's, 410 when ended).

    The request's database connection goes back to the pool at once: what follows waits on the
    sandbox (a cell, a file), and a connection held through that lets a few slow calls take the
    pool from everyone. The record keeps the values it was read with.
    """
    try:
        return services().registry.find(db_session(), session_id, g.owner)
    finally:
        close_db_session()


@blueprint.post("/sessions")
def create_session() -> tuple[Response, int, dict[str, str]]:
    """POST /sessions: a new session of the caller's, 201 with its description and Location."""
    svc = services()
    body = _json_object()
    idle_timeout = _idle_timeout(body)
    network = parse_network(body.get("network"), svc.config.egress)
    record = svc.registry.create(db_session(), g.owner, idle_timeout, network)
    return jsonify(svc.registry.describe(record)), 201, {"Location": f"/sessions/{record.id}"}


@blueprint.put("/sessions/<session_id>/network")
def set_network(session_id: str) -> Response:
    """PUT /sessions/<id>/network {"allow": [...]}: what the session may reach from its next connection on
    (install first, then lock down); 200 with the session."""
    svc = services()
    record = owned_session(session_id)
    body = _json_object()
    if not body:
        raise BadRequest("send the allow-list as {\"allow\": [...]} ({\"allow\": []} closes the network)")
    network = parse_network(body, svc.config.egress)
    return jsonify(svc.registry.describe(svc.registry.set_network(db_session(), record, network)))


@blueprint.get("/sessions")
def list_sessions() -> Response:
    """GET /sessions: the caller's live sessions on every center of the deployment (E2B sandboxes too), oldest
    first."""
    registry = services().registry
    return jsonify(sessions=[registry.describe(record) for record in registry.owned(db_session(), g.owner)])


@blueprint.get("/sessions/<session_id>")
def get_session(session_id: str) -> Response:
    """GET /sessions/<id>: the session's state."""
    return jsonify(services().registry.describe(owned_session(session_id)))


@blueprint.delete("/sessions/<session_id>")
def delete_session(session_id: str) -> tuple[str, int]:
    """DELETE /sessions/<id>: end it now; its container is removed at once."""
    record = owned_session(session_id)
    services().registry.end(db_session(), record, "it was deleted by its owner")
    return "", 204


@blueprint.post("/sessions/<session_id>/runcode")
def run_cell(session_id: str) -> tuple[Response, int]:
    """POST /sessions/<id>/runcode: one cell in the session's interpreter (409 while another runs)."""
    svc = services()
    record = owned_session(session_id)
    run = read_run_request(svc, svc.registry.network_of(record))
    fmt = requested_format()
    if fmt is not None:
        cell = RunInThread(lambda listener: svc.registry.run_cell(record, run.job, run.timeout, listener))
        return stream_answer(svc, fmt, run.language, cell,
                             lambda report: {"execution_count": report.get("execution_count")}, run.inline)
    report = svc.registry.run_cell(record, run.job, run.timeout)
    return answer_report(svc, report, run.language, {"execution_count": report.get("execution_count")}, run.inline)


@blueprint.post("/sessions/<session_id>/files")
def upload_files(session_id: str) -> tuple[Response, int]:
    """POST /sessions/<id>/files: multipart `file` parts into the workspace (a part's filename may hold folders)."""
    svc = services()
    record = owned_session(session_id)
    request.max_content_length = svc.config.max_upload_body_bytes
    # The parts go to temporary files (DiskFormRequest), as many bytes at once as the disk budget allows.
    with svc.spool_budget.reserve(request.content_length or 0, svc.config.queue_wait_seconds):
        parts = request.files.getlist("file")
        if not parts:
            raise BadRequest("send the files as multipart/form-data parts named 'file'")
        # Every name is checked before any file is written.
        paths = [workspace_path(part.filename, "a file part's filename") for part in parts]
        uploaded = []
        for path, part in zip(paths, parts, strict=True):
            stream = part.stream
            stream.seek(0, 2)
            size = stream.tell()
            stream.seek(0)
            if size > svc.config.max_upload_bytes:
                raise PayloadTooLarge(f"{path} has {size} bytes, over the upload limit of "
                                      f"{svc.config.max_upload_bytes}")
            answer = svc.registry.upload(record, path, stream, size)
            uploaded.append({"path": answer.get("path", path), "size": answer.get("size", size)})
        for part in parts:
            part.close()
    return jsonify(files=uploaded), 201


@blueprint.get("/sessions/<session_id>/files")
def list_files(session_id: str) -> Response:
    """GET /sessions/<id>/files[?limit=N&cursor=C]: the workspace, recursively, a page at a time."""
    page = {key: request.args[key] for key in ("limit", "cursor") if key in request.args}
    return jsonify(services().registry.list_files(owned_session(session_id), page))


@blueprint.get("/sessions/<session_id>/files/<workspace_path:path>", merge_slashes=False)
def download_file(session_id: str, path: str) -> Response:
    """GET /sessions/<id>/files/<path>: the bytes as a download, with their type."""
    svc = services()
    path = workspace_path(path)
    size, chunks = svc.registry.download(owned_session(session_id), path)
    # Spooled, then handed to the server as a file: this thread is free at once, however slowly the
    # client reads (a client that never reads is let go after the server's idle limit).
    answer = spool(chunks, size, svc.spool_budget, svc.config.queue_wait_seconds)
    name = path.rsplit("/", 1)[-1]
    mime_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    response = Response(wrap_file(request.environ, answer), mimetype=mime_type, direct_passthrough=True)
    response.headers["Content-Length"] = str(size)
    response.headers["Content-Disposition"] = attachment(name)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-store"
    return response
