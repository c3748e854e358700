"""envd's filesystem service (Connect RPC, unary JSON) for E2B's `files`: list, exists, get_info, make_dir,
rename and remove, done in the session's workspace by its agent (as the program's user, never through a
symbolic link). Paths are E2B's: absolute under /home/user, or relative to it.

An error is JSON {"code", "message"} with the HTTP status of its meaning, which the SDK reads as envd's
Connect codes: 404 not_found (exists() is False), 409 already_exists (make_dir() is False), 400
invalid_argument.
"""

from __future__ import annotations

import stat
from datetime import datetime, timezone
from typing import Any

from flask import Blueprint, Response, g, jsonify

from server.e2b.commands import first_message
from server.e2b.sandbox import find_sandbox, service_error
from server.e2b.wire import HOME, workspace_path
from server.errors import BadRequest, NotBuilt, ServiceError
from server.services import services

blueprint = Blueprint("e2b_filesystem", __name__, url_prefix="/e2b/sandbox/filesystem.Filesystem")
blueprint.before_request(find_sandbox)
blueprint.register_error_handler(ServiceError, service_error)
FILE_TYPES = {"file": "FILE_TYPE_FILE", "dir": "FILE_TYPE_DIRECTORY", "symlink": "FILE_TYPE_SYMLINK"}
GO_DIRECTORY_BIT = 1 << 31  # envd's mode is Go's os.FileMode: a folder has this bit


def _path(raw: Any, name: str = "path") -> str:
    """The workspace path ("" for /home/user itself) of an SDK path; 400 outside /home/user."""
    if not isinstance(raw, str) or not raw:
        raise BadRequest(f"{name} is required")
    if raw.rstrip("/") == HOME:
        return ""
    path = workspace_path(raw)
    if path is None:
        raise BadRequest(f"{raw} is outside {HOME}, the sandbox's working folder (the only one files reach)")
    return path


def entry_info(entry: dict[str, Any]) -> dict[str, Any]:
    """An entry of the agent's answer as envd's EntryInfo."""
    mode = int(entry.get("mode", 0))
    kind = entry.get("type")
    letters = "".join(flag if mode & bit else "-" for flag, bit in zip(
        "rwxrwxrwx", (stat.S_IRUSR, stat.S_IWUSR, stat.S_IXUSR, stat.S_IRGRP, stat.S_IWGRP, stat.S_IXGRP,
                      stat.S_IROTH, stat.S_IWOTH, stat.S_IXOTH), strict=True))
    path = f"{HOME}/{entry['path']}" if entry.get("path") else HOME
    info: dict[str, Any] = {
        "name": entry.get("name") or "user", "type": FILE_TYPES.get(str(kind), "FILE_TYPE_UNSPECIFIED"),
        "path": path, "size": str(entry.get("size", 0)),
        "mode": mode | (GO_DIRECTORY_BIT if kind == "dir" else 0),
        "permissions": ("d" if kind == "dir" else "l" if kind == "symlink" else "-") + letters,
        "owner": "user", "group": "user",
        "modifiedTime": datetime.fromtimestamp(float(entry.get("modified", 0)), timezone.utc).isoformat()
        .replace("+00:00", "Z"),
    }
    if kind == "symlink":
        info["symlinkTarget"] = entry.get("target", "")
    return info


def _operation(operation: dict[str, Any]) -> dict[str, Any]:
    """The agent's answer to one file operation in the sandbox's workspace."""
    record, _ = g.sandbox
    return services().registry.file_operation(record, operation)


@blueprint.post("/Stat")
def stat_entry() -> Response:
    """files.exists / files.get_info."""
    answer = _operation({"op": "stat", "path": _path(first_message().get("path"))})
    return jsonify({"entry": entry_info(answer["entry"])})


@blueprint.post("/ListDir")
def list_dir() -> Response:
    """files.list(path, depth)."""
    message = first_message()  # its depth is checked by the agent (1 to 16), whose 400 says so
    answer = _operation({"op": "list", "path": _path(message.get("path")), "depth": message.get("depth", 1)})
    return jsonify({"entries": [entry_info(entry) for entry in answer["entries"]]})


@blueprint.post("/MakeDir")
def make_dir() -> Response:
    """files.make_dir: the folder and those above it; already_exists (409) when it is there."""
    answer = _operation({"op": "mkdir", "path": _path(first_message().get("path"))})
    return jsonify({"entry": entry_info(answer["entry"])})


@blueprint.post("/Move")
def move() -> Response:
    """files.rename."""
    message = first_message()
    answer = _operation({"op": "move", "path": _path(message.get("source"), "source"),
                         "to": _path(message.get("destination"), "destination")})
    return jsonify({"entry": entry_info(answer["entry"])})


@blueprint.post("/Remove")
def remove() -> Response:
    """files.remove: a file, or a folder with all it holds."""
    _operation({"op": "remove", "path": _path(first_message().get("path"))})
    return jsonify({})


@blueprint.post("/<method>")
def not_built(method: str) -> Response:
    """The watchers (watch_dir) and the rest of the service: 501 naming it."""
    raise NotBuilt(f"filesystem.Filesystem/{method} (E2B's files API) is not built by this server")
