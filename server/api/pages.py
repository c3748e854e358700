"""Pages for people and tools: the playground (/), the API docs (/docs) and the OpenAPI document."""

from __future__ import annotations

import secrets
from pathlib import Path

from flask import Blueprint, Response, current_app, jsonify, render_template, send_from_directory, url_for
from werkzeug.exceptions import NotFound
from werkzeug.routing import BuildError

from server.api.openapi import openapi_document
from server.config import PROJECT_DIR
from server.services import EXTENSION_KEY

try:  # Swagger UI's files, from the swagger-ui-bundle-v2 package: /docs works offline, with no CDN.
    from swagger_ui_bundle import swagger_ui_path as _swagger_ui_path

    SWAGGER_UI_DIR: Path | None = Path(str(_swagger_ui_path))
except ImportError:  # the center still serves the API without it; /docs says what is missing
    SWAGGER_UI_DIR = None

SWAGGER_UI_FILES = frozenset({"swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png", "favicon-16x16.png"})

blueprint = Blueprint("web", __name__, template_folder=PROJECT_DIR / "templates")


def _page(template: str, *, own_scripts: bool = False, **context: object) -> Response:
    """Render an HTML page: its inline script runs under a per-response nonce; own_scripts allows /docs/assets."""
    nonce = secrets.token_urlsafe(16)
    script_sources = f"'self' 'nonce-{nonce}'" if own_scripts else f"'nonce-{nonce}'"
    response = Response(render_template(template, nonce=nonce, **context), mimetype="text/html")
    response.headers["Content-Security-Policy"] = (
        f"default-src 'self'; script-src {script_sources}; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data: http: https:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'; form-action 'none'"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-cache"
    return response


@blueprint.get("/")
def playground() -> Response:
    """The playground: run a program once, or cell by cell in a session with its files."""
    try:
        runcode_url = url_for("runs.run_code")
    except BuildError:  # the API's endpoint has another name: the route itself is fixed by the contract
        runcode_url = "/runcode"
    try:
        sessions_url = url_for("sessions.create_session")
    except BuildError:  # an app without the session routes: the page's session calls then say 404
        sessions_url = "/sessions"
    return _page("playground.html", runcode_url=runcode_url, sessions_url=sessions_url)


@blueprint.get("/docs")
def docs() -> Response:
    """Swagger UI on /openapi.json, from the packaged Swagger UI files."""
    if SWAGGER_UI_DIR is None:
        return _page("docs_missing.html")
    return _page("docs.html", own_scripts=True)


@blueprint.get("/docs/assets/<path:filename>")
def docs_asset(filename: str) -> Response:
    """One of Swagger UI's static files."""
    if SWAGGER_UI_DIR is None or filename not in SWAGGER_UI_FILES:
        raise NotFound()
    response = send_from_directory(SWAGGER_UI_DIR, filename, max_age=86400)
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@blueprint.get("/openapi.json")
def openapi_json() -> Response:
    """The OpenAPI document of this server (the bearer token is required when it has auth_tokens)."""
    services = current_app.extensions.get(EXTENSION_KEY)
    config = getattr(services, "config", None)
    auth_required = bool(getattr(config, "auth_tokens", None)) if config is not None else None
    egress_open = bool(config.egress.ceiling) if config is not None else None
    return jsonify(openapi_document(auth_required=auth_required, egress_open=egress_open))
