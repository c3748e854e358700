"""The HTTP edge every route shares: bearer authentication, request ids, the access log, CORS, JSON errors."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from flask import Blueprint, Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from server.auth import presented_token, token_accepted
from server.config import Config
from server.errors import BadRequest, ServiceError, Unauthorized
from server.services import services
from server.session_registry import owner_of

log = logging.getLogger("center")
access_log = logging.getLogger("center.access")

REQUEST_ID = re.compile(r"\A[A-Za-z0-9._-]{1,128}\Z")
MAX_LOGGED_PATH = 256  # the access log takes at most this much of a request's path
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def json_body(data: bytes | None = None) -> Any:
    """The request's body (or `data`, read from it) parsed as JSON; 400 when it is not JSON or is
    nested too deeply.

    Not request.get_json(): Flask would keep the body and its parsed form for the whole request, and
    lets a RecursionError through as a 500.
    """
    try:
        return json.loads(request.get_data(cache=False) if data is None else data)
    except RecursionError:
        raise BadRequest("the request body is nested too deeply") from None
    except ValueError:
        raise BadRequest("the request body is not valid JSON") from None


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """Every error as {"error": "<one sentence>"}."""
    response = jsonify(error=message)
    response.status_code = status
    response.headers.update(headers or {})
    return response


def check_token(config: Config) -> str | None:
    """Bearer authentication against auth_tokens, in constant time; the accepted token (None: no tokens configured)."""
    if not config.auth_tokens:
        return None
    token = presented_token(request.headers.get("Authorization", ""))
    if token is None:
        raise Unauthorized("a bearer token is required (Authorization: Bearer <token>)")
    if not token_accepted(config.auth_tokens, token):
        raise Unauthorized("the bearer token is not accepted")
    return token


def require_token() -> None:
    """before_request of the API blueprints: every route behind it needs an accepted bearer token.

    A CORS preflight carries no credentials by design, so it passes (it runs nothing).
    """
    if request.method != "OPTIONS":
        g.owner = owner_of(check_token(services().config))


def guarded_blueprint(name: str, import_name: str) -> Blueprint:
    """A blueprint whose every route requires the bearer token, as flaskr's login_required guards its views."""
    blueprint = Blueprint(name, import_name)
    blueprint.before_request(require_token)
    return blueprint


def method_label() -> str:
    """The request's method as a metrics label and log field: one of a known few, else "other"."""
    return request.method if request.method in KNOWN_METHODS else "other"


def begin_request() -> None:
    """before_request: a request id (the client's X-Request-ID when it is sane) and the start time."""
    incoming = request.headers.get("X-Request-ID", "")
    g.request_id = incoming if REQUEST_ID.match(incoming) else uuid.uuid4().hex
    g.started = time.perf_counter()


def finish_request(response: Response) -> Response:
    """after_request: echo the request id, count the answer, write one bounded structured log line."""
    response.headers["X-Request-ID"] = g.get("request_id", "")
    method = method_label()
    services().metrics.count_request(method, response.status_code)
    access_log.info(json.dumps({
        "request_id": g.get("request_id"), "method": method, "path": request.path[:MAX_LOGGED_PATH],
        "status": response.status_code,
        "duration_ms": round((time.perf_counter() - g.get("started", time.perf_counter())) * 1000, 1),
        "slot": g.get("slot"), "run_status": g.get("run_status"),
    }))
    return response


def add_cors_headers(response: Response) -> Response:
    """after_request: grant CORS (preflight included) to the configured browser origins only."""
    origins = services().config.cors_origins
    origin = request.headers.get("Origin")
    if origin and (origin in origins or "*" in origins):
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = "Retry-After, X-Request-ID"
        response.vary.add("Origin")
        if request.method == "OPTIONS":
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, X-Request-ID"
            response.headers["Access-Control-Max-Age"] = "600"
    return response


def register_error_handlers(app: Flask) -> None:
    """Every error becomes JSON; unexpected ones are logged and never leak a traceback."""

    @app.errorhandler(ServiceError)
    def service_error(e: ServiceError) -> Response:
        return error_response(e.status, e.message, e.headers)

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException) -> Response:
        messages = {404: "no such route", 405: f"method {method_label()} is not allowed here",
                    413: f"the request body is over the limit of {services().config.max_request_bytes} bytes"}
        response = error_response(e.code or 500, messages.get(e.code, e.description or e.name))
        if e.code == 405 and e.valid_methods:
            response.headers["Allow"] = ", ".join(e.valid_methods)
        return response

    @app.errorhandler(Exception)
    def unexpected_error(e: Exception) -> Response:
        log.exception("unexpected error in the center")
        return error_response(500, "the center failed to handle this request")


def install(app: Flask) -> None:
    """Wire the shared edge into the app: request ids, access log, CORS, JSON errors."""
    app.before_request(begin_request)
    app.after_request(finish_request)
    app.after_request(add_cors_headers)
    register_error_handlers(app)
