"""E2B's control plane at /e2b: create, connect, list, get, kill and set_timeout of sandboxes (sessions).

Behind the center's tokens, which the SDK sends as X-API-KEY (E2B_API_KEY); a sandbox is its creating
key's alone: another key gets 404 for it, as for an unknown id. Errors are E2B's JSON {"code",
"message"}, so the SDK raises what it raises at E2B (401 AuthenticationException, 429
RateLimitException, 404 NotFound...); what is not built answers 501 naming it.
"""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import parse_qsl, unquote

from flask import Blueprint, Response, g, jsonify, request

from models import SessionRecord
from server.api.forwarding import forward_to_its_center
from server.api.http import json_body
from server.auth import token_accepted
from server.e2b.wire import DEFAULT_TIMEOUT_SECONDS, Facts, api_error, sandbox_body, sandbox_detail
from server.errors import (
    BadRequest,
    Gone,
    NotBuilt,
    NotFound,
    PoolExhausted,
    ServiceError,
    SessionsExhausted,
    Unauthorized,
)
from server.services import close_db_session, db_session, services
from server.session_registry import owner_of

blueprint = Blueprint("e2b_control", __name__, url_prefix="/e2b")
MAX_LISTED = 100  # sandboxes per page of a list


@blueprint.before_request
def require_key() -> None:
    """Every route needs one of the center's tokens, as X-API-KEY (or a bearer token)."""
    config = services().config
    if not config.auth_tokens:
        g.owner = owner_of(None)
        return
    key = request.headers.get("X-API-KEY", "").strip()
    if not key:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        key = token.strip() if scheme.lower() == "bearer" else ""
    if not key or not token_accepted(list(config.auth_tokens), key):
        raise Unauthorized("the API key is not accepted (E2B_API_KEY must be one of this center's tokens)")
    g.owner = owner_of(key)


@blueprint.before_request
def forward_elsewhere() -> Response | None:
    """A request about a sandbox another center of the swarm holds is relayed there (after the key's check)."""
    sandbox_id = (request.view_args or {}).get("sandbox_id")
    if sandbox_id is None or len(sandbox_id) > 64:
        return None
    record = db_session().get(SessionRecord, sandbox_id)
    if record is None or record.owner != g.owner:
        return None
    return forward_to_its_center(record)


@blueprint.errorhandler(ServiceError)
def service_error(error: ServiceError) -> Response:
    """The center's errors in E2B's shape: an ended sandbox is not found, and a limit (every session in use,
    no sandbox free) a 429 with its Retry-After, which the SDK raises as RateLimitException, as at E2B."""
    limit = isinstance(error, (SessionsExhausted, PoolExhausted))
    status = 404 if isinstance(error, Gone) else 429 if limit else error.status
    response = api_error(status, error.message)
    response.headers.update(error.headers)
    return response


def _body() -> dict[str, Any]:
    """The JSON object body ({} when empty)."""
    data = request.get_data(cache=False)
    body = json_body(data) if data else {}
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def _timeout(raw: Any, default: float | None) -> float | None:
    """A timeout in seconds: a positive finite number (E2B sends integers)."""
    if raw is None:
        return default
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw) or raw <= 0:
        raise BadRequest("timeout must be a positive number of seconds")
    return float(raw)


def _strings(raw: Any, name: str) -> dict[str, str]:
    """A JSON object of strings (metadata, envVars)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
        raise BadRequest(f"{name} must be an object of strings")
    return dict(raw)


def owned_sandbox(sandbox_id: str) -> tuple[SessionRecord, Facts]:
    """The caller's live E2B sandbox of that id; 404 when unknown, someone else's or ended."""
    svc = services()
    try:
        record = svc.registry.find(db_session(), sandbox_id, g.owner)
    finally:
        close_db_session()
    facts = Facts.of(record)
    if facts is None:
        raise NotFound(f"sandbox {sandbox_id} not found")
    return record, facts


@blueprint.post("/v2/sandboxes")
def create() -> tuple[Response, int]:
    """Sandbox.create: a new session with E2B's lifetime (timeout, default 300 s), metadata and envs."""
    svc = services()
    body = _body()
    template = body.get("templateID") or "base"
    templates = svc.config.templates
    if not isinstance(template, str) or template not in templates:
        raise NotFound(f"template '{template}' not found (this center has: {', '.join(templates)})")
    if templates[template] != svc.config.interpreter_image:
        raise NotBuilt(f"template '{template}' is the image {templates[template]}: sandboxes of images other than "
                       f"interpreter_image ({svc.config.interpreter_image}) are not built by this server")
    for unbuilt in ("autoPause", "autoResume", "volumeMounts", "mcp"):
        if body.get(unbuilt):
            raise NotBuilt(f"{unbuilt} is not built by this server")
    timeout = _timeout(body.get("timeout"), DEFAULT_TIMEOUT_SECONDS)
    facts = Facts.new(str(template), _strings(body.get("metadata"), "metadata"),
                      _strings(body.get("envVars"), "envVars"))
    record = svc.registry.create(db_session(), g.owner, None, svc.config.egress.default_patterns, lifetime=timeout,
                                 e2b=facts.stored(), access_token=facts.token)
    return jsonify(sandbox_body(record, facts)), 201


@blueprint.post("/v2/sandboxes/<sandbox_id>/connect")
def connect(sandbox_id: str) -> Response:
    """Sandbox.connect: the sandbox again (its lifetime moved when a timeout is given)."""
    record, facts = owned_sandbox(sandbox_id)
    timeout = _timeout(_body().get("timeout"), None)
    if timeout is not None:
        record = services().registry.set_lifetime(db_session(), record, timeout)
    return jsonify(sandbox_body(record, facts))


@blueprint.get("/sandboxes/<sandbox_id>")
def get_info(sandbox_id: str) -> Response:
    """get_info: the sandbox's details."""
    record, facts = owned_sandbox(sandbox_id)
    return jsonify(sandbox_detail(record, facts, services().config))


@blueprint.get("/v2/sandboxes")
def list_sandboxes() -> Response:
    """Sandbox.list: the caller's running sandboxes, filtered by metadata, a page at a time (x-next-token)."""
    svc = services()
    wanted = {unquote(k): unquote(v) for k, v in parse_qsl(request.args.get("metadata", ""))}
    states = set(request.args.get("state", "running").split(","))
    try:
        limit = min(max(int(request.args.get("limit", MAX_LISTED)), 1), MAX_LISTED)
        start = int(request.args.get("nextToken") or 0)
    except ValueError:
        raise BadRequest("limit and nextToken must be integers") from None
    found = []
    for record in svc.registry.owned(db_session(), g.owner):
        facts = Facts.of(record)
        if facts is None or "running" not in states:
            continue
        if all(facts.metadata.get(k) == v for k, v in wanted.items()):
            detail = sandbox_detail(record, facts, svc.config)
            del detail["envdAccessToken"]
            found.append(detail)
    response = jsonify(found[start:start + limit])
    if start + limit < len(found):
        response.headers["x-next-token"] = str(start + limit)
    return response


@blueprint.delete("/sandboxes/<sandbox_id>")
def kill(sandbox_id: str) -> tuple[str, int]:
    """kill: end the sandbox now (its container is removed at once)."""
    record, _ = owned_sandbox(sandbox_id)
    services().registry.end(db_session(), record, "it was killed by its owner")
    return "", 204


@blueprint.post("/sandboxes/<sandbox_id>/timeout")
def set_timeout(sandbox_id: str) -> tuple[str, int]:
    """set_timeout: the sandbox ends `timeout` seconds from now (at most its maximum lifetime)."""
    record, _ = owned_sandbox(sandbox_id)
    timeout = _timeout(_body().get("timeout"), None)
    if timeout is None:
        raise BadRequest("timeout is required")
    services().registry.set_lifetime(db_session(), record, timeout)
    return "", 204


@blueprint.route("/<path:rest>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
def not_built(rest: str) -> Response:
    """Any other route of E2B's API: a clear error naming it, never a hang or a 500."""
    return api_error(501, f"{request.method} /{rest} of E2B's API is not built by this server")
