"""What E2B serves inside a sandbox, at /e2b/sandbox (E2B_SANDBOX_URL): envd's health and files, and the code
interpreter's /execute, each for the session the E2b-Sandbox-Id header names.

E2B's SDK sends every sandbox's requests to this one URL and names the sandbox in a header; its access
token (X-Access-Token, given at create) is checked on every request that carries it, and required on
all but /contexts (which the SDK sends without it: there the unguessable sandbox id is the secret).
envd's errors are JSON {"code", "message"} (an ended sandbox: 502 "... was not found", which the SDK
takes for a sandbox that is not running); the interpreter's are text (an ended sandbox: 404).
"""

from __future__ import annotations

import gzip
import hmac
import json
import tempfile
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timezone
from typing import IO, Any

from flask import Blueprint, Response, g, jsonify, request, stream_with_context

from models import SessionRecord
from sandbox.contract import ENV_NAME
from server.api.answers import bundle_images, stored_bundles
from server.api.forwarding import forward_to_its_center
from server.api.http import json_body
from server.api.streaming import EVENT, FAILED, KEEPALIVE, RunInThread, RunItems
from server.e2b.wire import HOME, Facts, api_error, error_line, result_line, text_error, workspace_path
from server.errors import BadRequest, Gone, NotBuilt, NotFound, PayloadTooLarge, ServiceError, Unauthorized
from server.run_requests import parse_run_request
from server.services import close_db_session, db_session, services
from server.session_registry import INTERRUPTED_GRACE_SECONDS

blueprint = Blueprint("e2b_sandbox", __name__, url_prefix="/e2b/sandbox")
INTERPRETER_PATHS = ("/e2b/sandbox/execute", "/e2b/sandbox/contexts")
LANGUAGES = {None: "python", "python": "python", "bash": "bash", "sh": "bash"}
SPOOL_CHUNK = 1024 * 1024


def interpreter_route() -> bool:
    """Whether the request is for the code interpreter (text errors) rather than envd (JSON errors)."""
    return request.path.startswith(INTERPRETER_PATHS)


@blueprint.before_request
def find_sandbox() -> Response | None:
    """The sandbox the E2b-Sandbox-Id header names, live; its access token checked. One held by another
    center of the swarm: the request is relayed there (its answer returned)."""
    sandbox_id = request.headers.get("E2b-Sandbox-Id", "")
    if not sandbox_id:
        raise BadRequest("the E2b-Sandbox-Id header is required (E2B's SDK sends it)")
    try:
        record = db_session().get(SessionRecord, sandbox_id) if len(sandbox_id) <= 64 else None
        facts = Facts.of(record) if record is not None else None
        if record is None or facts is None:
            raise Gone("no sandbox has that id")
        token = request.headers.get("X-Access-Token")
        if token is None and not request.path.startswith("/e2b/sandbox/contexts"):
            raise Unauthorized("the sandbox's access token is required (X-Access-Token)")
        if token is not None and not hmac.compare_digest(token.encode(), facts.token.encode()):
            raise Unauthorized("the sandbox's access token is not accepted")
        forwarded = forward_to_its_center(record)  # a sandbox of another center of the swarm is served there
        if forwarded is not None:
            return forwarded
        g.sandbox = services().registry.find(db_session(), sandbox_id, record.owner), facts
    finally:
        close_db_session()
    return None


@blueprint.errorhandler(ServiceError)
def service_error(error: ServiceError) -> Response:
    """The center's errors as the SDK reads them from the interpreter (text; an ended sandbox 404) or from
    envd (JSON; an ended sandbox 502 "... was not found", a sandbox that is not running)."""
    if interpreter_route():
        return text_error(404 if isinstance(error, Gone) else error.status, error.message)
    if isinstance(error, Gone):
        return api_error(502, f"The sandbox {request.headers.get('E2b-Sandbox-Id', '')} was not found: "
                              f"{error.message}")
    return api_error(error.status, error.message)


@blueprint.get("/health")
def health() -> tuple[str, int]:
    """envd's health: 204 while the sandbox lives (is_running())."""
    return "", 204


# --- files --------------------------------------------------------------------------------------------


def _path(raw: str | None) -> str:
    """The workspace path of an SDK path; 400 outside /home/user."""
    if not raw:
        raise BadRequest("path is required")
    path = workspace_path(raw)
    if path is None:
        raise BadRequest(f"{raw} is outside /home/user, the sandbox's working folder (the only one files reach)")
    return path


@blueprint.get("/files")
def read_file() -> Response:
    """files.read: the file's bytes."""
    record, _ = g.sandbox
    path = _path(request.args.get("path"))
    size, chunks = services().registry.download(record, path)
    response = Response(stream_with_context(chunks), mimetype="application/octet-stream")
    response.headers["Content-Length"] = str(size)
    return response


@blueprint.post("/files")
def write_files() -> Response:
    """files.write / write_files: multipart `file` parts (each named by its filename, or by ?path= when one),
    or the raw body (application/octet-stream, gzip or not) for ?path=."""
    svc = services()
    record, _ = g.sandbox
    request.max_content_length = svc.config.max_upload_body_bytes  # an upload, not a run's request
    limit = svc.config.max_upload_bytes
    written = []
    if request.mimetype == "multipart/form-data":
        parts = request.files.getlist("file")
        if not parts:
            raise BadRequest("send the files as multipart/form-data parts named 'file'")
        query_path = request.args.get("path")
        for part in parts:
            target = query_path if query_path and len(parts) == 1 else part.filename
            path = _path(target)
            stream = part.stream
            stream.seek(0, 2)
            size = stream.tell()
            stream.seek(0)
            svc.registry.upload(record, path, stream, size)
            written.append(path)
    else:
        path = _path(request.args.get("path"))
        with _spooled_body(limit) as (stream, size):
            svc.registry.upload(record, path, stream, size)
        written.append(path)
    return jsonify([{"name": path.rsplit("/", 1)[-1], "type": "file", "path": f"/home/user/{path}"}
                    for path in written])


class _spooled_body:
    """The raw request body in a temporary file (gunzipped when sent so), at most `limit` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.file: IO[bytes] = tempfile.TemporaryFile()

    def __enter__(self) -> tuple[IO[bytes], int]:
        source = request.stream
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS) if request.headers.get(
            "Content-Encoding", "").lower() == "gzip" else None
        size = 0
        try:
            while chunk := source.read(SPOOL_CHUNK):
                if inflate is not None:
                    chunk = inflate.decompress(chunk, self.limit + 1 - size)
                size += len(chunk)
                if size > self.limit:
                    raise PayloadTooLarge(f"the file is over the upload limit of {self.limit} bytes")
                self.file.write(chunk)
        except (zlib.error, gzip.BadGzipFile) as e:
            raise BadRequest(f"the gzip body could not be read: {e}") from None
        except BaseException:
            self.file.close()
            raise
        self.file.seek(0)
        return self.file, size

    def __exit__(self, *exc: object) -> None:
        self.file.close()


# --- the code interpreter --------------------------------------------------------------------------------


@blueprint.post("/execute")
def execute() -> Response:
    """run_code: one cell in the sandbox's interpreter, streamed as E2B's lines (stdout, stderr, result,
    error, number_of_executions, end_of_execution)."""
    svc = services()
    record, facts = g.sandbox
    body = json_body(request.get_data(cache=False))
    if not isinstance(body, dict) or not isinstance(body.get("code"), str):
        raise BadRequest("the body must be a JSON object with 'code'")
    context = body.get("context_id")
    if context is not None and body.get("language") is not None:
        raise BadRequest("give a context or a language, not both")
    if context is not None and context not in facts.contexts:
        raise NotFound(f"Context {context} not found")
    language = LANGUAGES.get(facts.contexts[context]["language"] if context is not None else body.get("language"))
    if language is None:
        raise BadRequest(f"language {body.get('language')!r} is not one this server runs (python, bash)")
    env_vars = body.get("env_vars") or {}
    if not isinstance(env_vars, dict):
        raise BadRequest("env_vars must be an object of strings")
    run = parse_run_request({"code": body["code"], "languageType": language}, svc.config)
    run = replace(run, network=svc.registry.network_of(record))
    job = cell_job(run.job(svc.config), {**facts.envs, **env_vars}, context)
    svc.sandboxes.warm_up.note(language, run.code)
    # E2B's SDK times out on its own side and goes on: a cell it gave up on may still be ending.
    cell = RunInThread(lambda listener: svc.registry.run_cell(record, job, run.timeout, listener,
                                                              wait=INTERRUPTED_GRACE_SECONDS))
    early = cell.wait_started()
    response = Response(stream_with_context(_lines(cell, early)), mimetype="application/json")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    return response


def cell_job(job: dict[str, Any], env: dict[str, Any], context: str | None, restart: bool = False) -> bytes:
    """A session cell's job with E2B's parts: its environment variables and its code context."""
    if not all(ENV_NAME.fullmatch(str(name)) and isinstance(value, str) for name, value in env.items()):
        raise BadRequest("envs must be an object of variable names ([A-Za-z_][A-Za-z0-9_]*) to strings")
    job = {**job, "env": env, "context": context, "restart": restart}
    return json.dumps(job, ensure_ascii=False).encode()


@blueprint.post("/contexts")
def create_context() -> Response:
    """create_code_context: an interpreter state of its own in the sandbox (python or bash), in /home/user."""
    svc = services()
    record, facts = g.sandbox
    body = request.get_json(silent=True) or {}
    language = LANGUAGES.get(body.get("language"))
    if language is None:
        raise BadRequest(f"language {body.get('language')!r} is not one this server runs (python, bash)")
    cwd = body.get("cwd") or HOME
    if cwd != HOME:
        raise NotBuilt(f"a code context's own folder is not built by this server (cwd {cwd!r}; contexts run in "
                       f"{HOME})")
    context = str(uuid.uuid4())
    facts.contexts[context] = {"language": language, "cwd": HOME}
    svc.registry.set_e2b(db_session(), record, facts.stored())
    return jsonify({"id": context, "language": language, "cwd": HOME})


@blueprint.get("/contexts")
def list_contexts() -> Response:
    """list_code_contexts: the contexts made in this sandbox."""
    _, facts = g.sandbox
    return jsonify([{"id": context, **about} for context, about in facts.contexts.items()])


def _context(context: str) -> tuple[SessionRecord, Facts]:
    """The sandbox and its facts, when it has that context; 404 else."""
    record, facts = g.sandbox
    if context not in facts.contexts:
        raise NotFound(f"Context {context} not found")
    return record, facts


@blueprint.post("/contexts/<context>/restart")
def restart_context(context: str) -> Response:
    """restart_code_context: the context's state starts afresh (its variables and imports are gone)."""
    svc = services()
    record, facts = _context(context)
    run = parse_run_request({"code": "", "languageType": facts.contexts[context]["language"]}, svc.config)
    svc.registry.run_cell(record, cell_job(run.job(svc.config), {}, context, restart=True), run.timeout)
    return jsonify(None)


@blueprint.delete("/contexts/<context>")
def remove_context(context: str) -> Response:
    """remove_code_context: the context is forgotten (a run naming it is a 404)."""
    svc = services()
    record, facts = _context(context)
    del facts.contexts[context]
    svc.registry.set_e2b(db_session(), record, facts.stored())
    return jsonify(None)


def _now() -> str:
    """This moment as E2B's output lines stamp it."""
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _encode(line: dict[str, Any]) -> bytes:
    return (json.dumps(line, ensure_ascii=False) + "\n").encode()


def _lines(cell: RunInThread, early: list[tuple[str, Any]]) -> Iterator[bytes]:
    """The cell's events as E2B's lines while it runs, its outcome last; a client gone interrupts it."""
    svc = services()
    images = bundle_images(svc, inline=True)  # E2B's results carry images as base64
    items = RunItems(cell, early)
    stderr: list[str] = []
    done = False
    try:
        for kind, item in items:
            if kind == KEEPALIVE:
                yield _encode({"type": "keepalive"})
                continue
            if kind == EVENT:
                if item["type"] in ("stdout", "stderr"):
                    item = items.joined(item)
                    if item["type"] == "stderr":
                        stderr.append(item["text"])
                    yield _encode({"type": item["type"], "text": item["text"], "timestamp": _now()})
                elif item["type"] == "display":
                    bundles, _ = stored_bundles(svc, [item], images)
                    for bundle in bundles:
                        yield _encode(result_line(bundle))
                continue
            done = True
            yield from _outcome(kind, item, "".join(stderr))
            return
    finally:
        if not done:
            cell.listener.hangup()


def _outcome(kind: str, item: Any, stderr: str) -> Iterator[bytes]:
    """The last lines of a cell: its error if any, its execution count, the end."""
    if kind == FAILED:
        message = item.message if isinstance(item, ServiceError) else f"{type(item).__name__}: {item}"
        yield _encode({"type": "error", "name": "UnexpectedEndOfExecution", "value": message, "traceback": message})
    elif item.get("status") == "timeout":
        reason = str(item.get("error") or "the cell ran past its time limit")
        yield _encode({"type": "error", "name": "TimeoutError", "value": reason, "traceback": reason})
    elif item.get("status") != "ok" and item.get("error"):
        yield _encode(error_line(str(item["error"]), item.get("stderr") or stderr))
    if kind != FAILED and item.get("execution_count") is not None:
        yield _encode({"type": "number_of_executions", "execution_count": item["execution_count"]})
    yield _encode({"type": "end_of_execution"})


@blueprint.route("/<path:rest>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
def not_built(rest: str) -> Response:
    """Any other route of a sandbox (envd's filesystem and process services...): 501 naming it."""
    return api_error(501, f"{request.method} /{rest} (E2B's sandbox API) is not built by this server")
