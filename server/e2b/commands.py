"""envd's process service (Connect RPC, JSON) for E2B's `commands`: a command runs as a bash cell of the session.

`commands.run` sends `process.Process/Start` as one Connect envelope and reads a stream of envelopes
back: `start{pid}` first, then `data{stdout|stderr}` (base64) as the command prints, then
`end{exitCode, exited, status}`. Here the command is a bash cell of the sandbox's session, in its
workspace (/home/user, or the `cwd` below it) with the command's `envs`; its pid is a number of this
center's own. `SendSignal` stops a command still running (its cell is interrupted), `List` names them.
One cell runs at a time in a session: a command while code runs (or the other way round) is refused
with a clear error, and `background=True` holds the session until the command ends.
"""

from __future__ import annotations

import base64
import itertools
import json
import shlex
import struct
import threading
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, g, jsonify, request, stream_with_context

from server.api.streaming import EVENT, FAILED, KEEPALIVE, RunInThread, RunItems
from server.e2b.sandbox import cell_job, find_sandbox, service_error
from server.e2b.wire import HOME, workspace_path
from server.errors import BadRequest, NotBuilt, NotFound, ServiceError
from server.run_requests import parse_run_request
from server.services import services
from server.session_registry import INTERRUPTED_GRACE_SECONDS

blueprint = Blueprint("e2b_commands", __name__, url_prefix="/e2b/sandbox")
blueprint.before_request(find_sandbox)
blueprint.register_error_handler(ServiceError, service_error)
CONNECT_STREAM = "application/connect+json"  # exactly: the SDK refuses a charset parameter
END_OF_STREAM = 0x02
MAX_ENVELOPE_BYTES = 4 * 1024 * 1024
SIGNAL_SECONDS = 10.0  # for a killed command's cell to end before SendSignal answers


class Running:
    """The commands under way on this center: pid -> (sandbox id, command, its cell)."""

    pids = itertools.count(1000)
    lock = threading.Lock()
    commands: dict[int, tuple[str, dict[str, Any], RunInThread]] = {}


def envelope(message: dict[str, Any], flags: int = 0) -> bytes:
    """One Connect envelope: flags, the JSON's length (big-endian), the JSON."""
    data = json.dumps(message, ensure_ascii=False).encode()
    return struct.pack(">BI", flags, len(data)) + data


def first_message() -> dict[str, Any]:
    """The request's message: the first envelope of a streamed request (or the JSON of a unary one)."""
    raw = request.get_data(cache=False)
    if request.mimetype == CONNECT_STREAM:
        if len(raw) < 5:
            raise BadRequest("the request holds no Connect envelope")
        flags, length = struct.unpack(">BI", raw[:5])
        if flags & 0x01 or length > MAX_ENVELOPE_BYTES or len(raw) < 5 + length:
            raise BadRequest("the request's Connect envelope is compressed, too large or cut short")
        raw = raw[5:5 + length]
    try:
        message = json.loads(raw or b"{}")
    except ValueError:
        raise BadRequest("the request's message is not JSON") from None
    if not isinstance(message, dict):
        raise BadRequest("the request's message must be a JSON object")
    return message


def command_line(process: dict[str, Any]) -> str:
    """The bash line of a process to start: `bash -l -c LINE` (how the SDK wraps a command) is LINE itself,
    anything else its words, quoted."""
    cmd, args = process.get("cmd"), process.get("args") or []
    if not isinstance(cmd, str) or not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise BadRequest("process.cmd must be a string and process.args a list of strings")
    if cmd in ("/bin/bash", "bash", "/bin/sh", "sh") and len(args) >= 2 and args[-2] == "-c":
        return args[-1]
    return shlex.join([cmd, *args])


@blueprint.post("/process.Process/Start")
def start() -> Response:
    """commands.run: the command as a bash cell, streamed as envd's process events."""
    svc = services()
    record, facts = g.sandbox
    message = first_message()
    process = message.get("process")
    if not isinstance(process, dict):
        raise BadRequest("process is required")
    if message.get("pty") is not None:
        raise NotBuilt("pty (a terminal) is not built by this server")
    if message.get("stdin"):
        raise NotBuilt("stdin for a command is not built by this server")
    cwd = process.get("cwd")
    folder = workspace_path(str(cwd)) if cwd not in (None, HOME, f"{HOME}/") else ""
    if folder is None:
        raise BadRequest(f"cwd {cwd} is outside {HOME}, the sandbox's working folder")
    # In E2B's folder by that name (a link to the workspace), so that pwd says what E2B's would.
    line = f"cd {shlex.quote(f'{HOME}/{folder}'.rstrip('/'))} && {{ {command_line(process)}\n}}"
    envs = process.get("envs") or {}
    if not isinstance(envs, dict):
        raise BadRequest("process.envs must be an object of strings")
    run = parse_run_request({"code": line, "languageType": "bash", "timeout": _deadline()}, svc.config)
    job = cell_job(run.job(svc.config), {**facts.envs, **envs}, None)
    cell = RunInThread(lambda listener: svc.registry.run_cell(record, job, run.timeout, listener,
                                                              wait=INTERRUPTED_GRACE_SECONDS))
    early = cell.wait_started()
    pid = next(Running.pids)
    with Running.lock:
        Running.commands[pid] = (record.id, {"cmd": process.get("cmd"), "args": process.get("args") or [],
                                             **({"cwd": cwd} if cwd else {}), **({"envs": envs} if envs else {})},
                                 cell)
    response = Response(stream_with_context(_events(pid, cell, early)), mimetype=CONNECT_STREAM)
    response.headers["Content-Type"] = CONNECT_STREAM
    response.headers["X-Accel-Buffering"] = "no"
    return response


def _deadline() -> float | None:
    """The command's time limit from Connect-Timeout-Ms (None: the center's own)."""
    raw = request.headers.get("Connect-Timeout-Ms", "")
    return int(raw) / 1000 if raw.isdigit() and int(raw) > 0 else None


def _events(pid: int, cell: RunInThread, early: list[tuple[str, Any]]) -> Iterator[bytes]:
    """The command's process events, as they come; the end event last, then the end of the stream."""
    done = False
    try:
        yield envelope({"event": {"start": {"pid": pid}}})
        for kind, item in RunItems(cell, early):
            if kind == KEEPALIVE:
                yield envelope({"event": {"keepalive": {}}})
            elif kind == EVENT:
                if item.get("type") in ("stdout", "stderr"):
                    data = base64.b64encode(item["text"].encode()).decode()
                    yield envelope({"event": {"data": {item["type"]: data}}})
            else:
                done = True
                yield envelope({"event": {"end": _end(kind, item)}})
                yield envelope({}, END_OF_STREAM)
                return
    finally:
        with Running.lock:
            Running.commands.pop(pid, None)
        if not done:
            cell.listener.hangup()


def _end(kind: str, item: Any) -> dict[str, Any]:
    """The end event of a command's cell: its exit code, or why it did not exit."""
    if kind == FAILED:
        reason = item.message if isinstance(item, ServiceError) else f"{type(item).__name__}: {item}"
        return {"exitCode": -1, "exited": False, "status": "signal: killed", "error": reason}
    if item.get("status") == "timeout":
        return {"exitCode": -1, "exited": False, "status": "signal: killed",
                "error": str(item.get("error") or "the command ran past its time limit")}
    code = item.get("exit_code")
    code = code if isinstance(code, int) else 1
    end: dict[str, Any] = {"exitCode": code, "exited": True, "status": f"exit status {code}"}
    if code:
        end["error"] = f"exit status {code}"
    return end


@blueprint.post("/process.Process/List")
def list_processes() -> Response:
    """commands.list: the commands under way in this sandbox."""
    record, _ = g.sandbox
    with Running.lock:
        found = [{"pid": pid, "config": config} for pid, (sandbox, config, _) in Running.commands.items()
                 if sandbox == record.id]
    return jsonify({"processes": found})


@blueprint.post("/process.Process/SendSignal")
def send_signal() -> Response:
    """commands.kill / a handle's kill(): the command's cell is interrupted; not_found once it has ended."""
    record, _ = g.sandbox
    target = first_message().get("process") or {}
    pid = target.get("pid") if isinstance(target, dict) else None
    with Running.lock:
        found = Running.commands.get(pid) if isinstance(pid, int) else None
    if found is None or found[0] != record.id:
        raise NotFound(f"process with pid {pid} not found")
    found[2].listener.hangup()
    found[2].thread.join(SIGNAL_SECONDS)  # answered once it has ended, as a killed process has
    return jsonify({})
