"""E2B's shapes: a sandbox as its API answers it, an error as its SDK reads it, a result line of /execute."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from flask import Response

from models import SessionRecord
from server.config import Config, size_in_bytes

ENVD_VERSION = "0.6.13"  # the envd whose API this server answers: the SDK enables its features by it
DEFAULT_TIMEOUT_SECONDS = 300  # E2B's, when a create names none
HOME = "/home/user"  # E2B's working folder: the session's workspace
# A bundle's MIME types as E2B's Result names them (the rest go to `extra`).
RESULT_KEYS = {"text/plain": "text", "text/html": "html", "text/markdown": "markdown", "text/latex": "latex",
               "image/svg+xml": "svg", "image/png": "png", "image/jpeg": "jpeg", "application/pdf": "pdf",
               "application/json": "json", "application/javascript": "javascript"}
# The summary's tail after the exception (see the worker's error_summary): where it happened, what it means.
SUMMARY_TAIL = re.compile(r" \((?:line \d+|[^()]*, line \d+)(?::.*)?\)(?: - .*)?$", re.DOTALL)


class Facts:
    """What an E2B sandbox keeps beside its session: template, metadata, environment, access token (the
    record's own column), and its code contexts (id -> {"language", "cwd"})."""

    def __init__(self, template: str, metadata: dict[str, str], envs: dict[str, str], token: str,
                 contexts: dict[str, dict[str, str]] | None = None) -> None:
        self.template, self.metadata, self.envs, self.token = template, metadata, envs, token
        self.contexts = contexts or {}

    @classmethod
    def new(cls, template: str, metadata: dict[str, str], envs: dict[str, str]) -> Facts:
        """A new sandbox's facts, with a fresh access token."""
        return cls(template, metadata, envs, secrets.token_urlsafe(24))

    @classmethod
    def of(cls, record: SessionRecord) -> Facts | None:
        """The facts of an E2B sandbox's record; None for a session made through /sessions."""
        try:
            raw = json.loads(record.e2b) if record.e2b else None
        except ValueError:
            return None
        if not isinstance(raw, dict):
            return None
        return cls(str(raw.get("template", "")), dict(raw.get("metadata") or {}), dict(raw.get("envs") or {}),
                   record.access_token or "", dict(raw.get("contexts") or {}))

    def stored(self) -> str:
        """As the record's `e2b` column keeps them (the token has a column of its own)."""
        return json.dumps({"template": self.template, "metadata": self.metadata, "envs": self.envs,
                           "contexts": self.contexts})


def timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC, as E2B writes it."""
    moment = moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def sandbox_body(record: SessionRecord, facts: Facts) -> dict[str, Any]:
    """The Sandbox object create and connect answer."""
    return {"templateID": facts.template, "sandboxID": record.id, "clientID": record.node or "center",
            "envdVersion": ENVD_VERSION, "envdAccessToken": facts.token, "trafficAccessToken": None, "domain": None}


def sandbox_detail(record: SessionRecord, facts: Facts, config: Config) -> dict[str, Any]:
    """The SandboxDetail object get_info (and, without the token, list) answers."""
    limits = config.resource_limits
    return {
        "templateID": facts.template, "sandboxID": record.id, "clientID": record.node or "center",
        "startedAt": timestamp(record.created_at), "endAt": timestamp(record.lifetime_ends_at),
        "envdVersion": ENVD_VERSION, "cpuCount": max(1, round(float(limits.cpus or 1))),
        "memoryMB": megabytes(limits.memory), "diskSizeMB": megabytes(limits.disk), "state": "running",
        "metadata": facts.metadata, "envdAccessToken": facts.token, "domain": None,
    }


def megabytes(size: str) -> int:
    """A configured size ("512m", "1g") in MB; 0 when unlimited ("")."""
    return size_in_bytes(size) >> 20 if size else 0


def api_error(status: int, message: str) -> Response:
    """An error of the control plane or of envd's HTTP routes: JSON {"code", "message"}, as the SDK parses it.
    Not retried by the SDK (it would send a refused create three more times)."""
    response = Response(json.dumps({"code": status, "message": message}), status=status,
                        mimetype="application/json")
    response.headers["Should-Retry"] = "false"
    return response


def text_error(status: int, message: str) -> Response:
    """An error of the code interpreter's routes: plain text, as E2B's interpreter answers."""
    return Response(message, status=status, mimetype="text/plain")


def result_line(bundle: Mapping[str, Any]) -> dict[str, Any]:
    """A rich result (a MIME bundle in this center's form) as E2B's `result` line."""
    line: dict[str, Any] = {"type": "result", "is_main_result": bool(bundle.get("is_main_result")), "extra": {}}
    data = bundle.get("data")
    for mime, value in (data.items() if isinstance(data, Mapping) else ()):
        key = RESULT_KEYS.get(mime)
        if key is None:
            line["extra"][mime] = value
        else:
            line[key] = value
    if isinstance(bundle.get("chart"), Mapping):
        line["chart"] = bundle["chart"]
    return line


def error_line(summary: str, stderr: str) -> dict[str, Any]:
    """A failed cell as E2B's `error` line: the exception's name and value (from the center's one-line
    summary), and the traceback the program printed."""
    head = SUMMARY_TAIL.sub("", summary.strip())
    name, _, value = head.partition(": ")
    start = stderr.rfind("Traceback (most recent call last):")
    traceback = stderr[start:] if start >= 0 else summary
    return {"type": "error", "name": name or "Error", "value": value, "traceback": traceback}


def workspace_path(path: str) -> str | None:
    """A path the SDK names (absolute under /home/user, or relative to it) as a workspace path; None when it
    lies outside the workspace (this server reaches only the session's folder)."""
    if not path.startswith("/"):
        path = f"{HOME}/{path}"
    parts: list[str] = []
    for part in path.split("/")[1:]:
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return None
            parts.pop()
            continue
        parts.append(part)
    if parts[:2] != ["home", "user"] or len(parts) < 3:
        return None
    return "/".join(parts[2:])
