"""The dispatch center: authenticates, takes a warm sandbox from the pool, runs the code, stores images.

`python3 center.py [--config FILE]` serves it with waitress (a threaded production WSGI server:
the pool lives in this one process). Tests build it with `create_app(config)`.
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import re
import signal
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, current_app, g, jsonify, request
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.exceptions import HTTPException, MethodNotAllowed

import web
from config import Config, ConfigError, load_config
from errors import BadRequest, NotFound, ServiceError, StorageFailed, Unauthorized
from execution import parse_run_request, result_body
from images import RetentionSweeper, find_image, store_images
from metrics import Metrics
from models import create_tables, make_engine, make_session_factory
from pool import SandboxPool
from sandboxes import DockerSandboxes, SandboxStartError

log = logging.getLogger("center")
access_log = logging.getLogger("center.access")
REQUEST_ID = re.compile(r"\A[A-Za-z0-9._-]{1,128}\Z")
EXTENSION_KEY = "code_interpreter"


@dataclass
class Services:
    """What the app's requests share: config, database, the sandboxes and their pool."""

    config: Config
    engine: Engine
    sessions: sessionmaker
    sandboxes: DockerSandboxes
    pool: SandboxPool
    owns_pool: bool
    metrics: Metrics
    retention: RetentionSweeper | None = None
    tables_ready: bool = False

    def ensure_tables(self) -> None:
        """Create the tables once the database answers (it may be down when the center starts)."""
        if self.tables_ready:
            return
        try:
            create_tables(self.engine)
        except SQLAlchemyError as e:
            raise StorageFailed("the image database is unavailable") from e
        self.tables_ready = True

    def close(self) -> None:
        """Release everything: the pool's containers (and any leftovers), the database connections."""
        if self.retention is not None:
            self.retention.stop()
        if self.owns_pool:
            self.pool.close()
            self.sandboxes.remove_leftovers()
        self.engine.dispose()


def services() -> Services:
    """The current app's Services."""
    return current_app.extensions[EXTENSION_KEY]


def db_session() -> Session:
    """This request's database session, opened on first use and closed in teardown."""
    if "db" not in g:
        svc = services()
        svc.ensure_tables()
        g.db = svc.sessions()
    return g.db


def close_db_session(_exc: BaseException | None = None) -> None:
    """teardown_appcontext: give the request's connection back."""
    session = g.pop("db", None)
    if session is not None:
        session.close()


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """Every error as {"error": "<one sentence>"}."""
    response = jsonify(error=message)
    response.status_code = status
    response.headers.update(headers or {})
    return response


def check_token(config: Config) -> None:
    """Bearer authentication against auth_tokens, in constant time; no tokens configured: open."""
    if not config.auth_tokens:
        return
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("a bearer token is required (Authorization: Bearer <token>)")
    presented = token.strip().encode()
    accepted = False
    for candidate in config.auth_tokens:  # no early exit: the time taken does not tell which matched
        accepted |= hmac.compare_digest(presented, candidate.encode())
    if not accepted:
        raise Unauthorized("the bearer token is not accepted")


def public_base_url(config: Config) -> str:
    """Where image links point: `domain` (scheme optional, https assumed) or the request's own host."""
    if not config.domain:
        return request.host_url.rstrip("/")
    domain = config.domain.rstrip("/")
    return domain if "://" in domain else f"https://{domain}"


def run_code() -> tuple[Response, int]:
    """POST/GET /runcode: validate, run in a fresh sandbox, store images, answer (504 on timeout)."""
    svc = services()
    if request.method == "HEAD":  # Flask adds HEAD to GET routes; a HEAD must never run a program
        raise MethodNotAllowed(valid_methods=["GET", "POST"])
    check_token(svc.config)
    if request.method == "POST":
        try:
            fields: Any = request.get_json(force=True, silent=True)
        except RecursionError:
            raise BadRequest("the request body is nested too deeply") from None
        if fields is None:
            raise BadRequest("the request body is not valid JSON")
    else:
        fields = request.args.to_dict()
    run = parse_run_request(fields, svc.config)
    with svc.pool.sandbox(svc.config.queue_wait_seconds) as sandbox:
        g.slot = sandbox.port
        report = svc.sandboxes.run(sandbox, run.job(svc.config))
    image_urls: dict[str, str] = {}
    image_error = None
    if report.get("images"):
        try:
            stored, stored_bytes = store_images(db_session(), report["images"])
        except StorageFailed as e:
            log.error("%s: %s", e.message, e.__cause__)
            image_error = e.message
        else:
            svc.metrics.image_bytes.inc(stored_bytes)
            base = public_base_url(svc.config)
            image_urls = {name: f"{base}/image/{filename}" for name, filename in stored.items()}
    body = result_body(report, image_urls)
    if image_error:
        body["image_error"] = image_error
    g.run_status = body["status"]
    svc.metrics.observe_run(run.language, body["status"], body["duration_ms"])
    return jsonify(body), 504 if body["status"] == "timeout" else 200


def serve_image(filename: str) -> Response:
    """GET/HEAD /image/<filename>: the stored bytes, cacheable forever, never sniffed or scripted."""
    image = find_image(db_session(), filename)
    if image is None:
        raise NotFound("no image of that name")
    response = Response(image.data, mimetype=image.mime_type)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
    # An SVG opened directly must not run script in our origin (where the playground keeps tokens).
    response.headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'; sandbox"
    response.set_etag(image.sha256)
    return response.make_conditional(request)


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


def metrics_page() -> Response:
    """Prometheus exposition of this app's metrics."""
    payload, content_type = services().metrics.render()
    return Response(payload, content_type=content_type)


def begin_request() -> None:
    """before_request: a request id (the client's X-Request-ID when it is sane) and the start time."""
    incoming = request.headers.get("X-Request-ID", "")
    g.request_id = incoming if REQUEST_ID.match(incoming) else uuid.uuid4().hex
    g.started = time.perf_counter()


def finish_request(response: Response) -> Response:
    """after_request: echo the request id, count the answer, write one structured log line."""
    response.headers["X-Request-ID"] = g.get("request_id", "")
    services().metrics.http_requests.labels(method=request.method, status=str(response.status_code)).inc()
    access_log.info(json.dumps({
        "request_id": g.get("request_id"), "method": request.method, "path": request.path,
        "status": response.status_code,
        "duration_ms": round((time.perf_counter() - g.get("started", time.perf_counter())) * 1000, 1),
        "slot": g.get("slot"), "run_status": g.get("run_status"),
    }))
    return response


def healthz() -> Response:
    """Liveness: the process serves."""
    return jsonify(status="ok")


def readyz() -> tuple[Response, int]:
    """Readiness: the database answers and at least one sandbox is ready."""
    svc = services()
    pool = svc.pool.stats()
    try:
        db_session().execute(text("SELECT 1"))
        database = "ok"
    except (SQLAlchemyError, StorageFailed) as e:
        database = f"unavailable ({type(e).__name__})"
    ready = database == "ok" and pool["ready"] > 0
    return jsonify(ready=ready, database=database, pool=pool), 200 if ready else 503


def register_error_handlers(app: Flask) -> None:
    """Every error becomes JSON; unexpected ones are logged and never leak a traceback."""

    @app.errorhandler(ServiceError)
    def service_error(e: ServiceError) -> Response:
        return error_response(e.status, e.message, e.headers)

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException) -> Response:
        messages = {404: "no such route", 405: f"method {request.method} is not allowed here",
                    413: f"the request body is over the limit of {services().config.max_request_bytes} bytes"}
        response = error_response(e.code or 500, messages.get(e.code, e.description or e.name))
        if e.code == 405 and e.valid_methods:
            response.headers["Allow"] = ", ".join(e.valid_methods)
        return response

    @app.errorhandler(Exception)
    def unexpected_error(e: Exception) -> Response:
        log.exception("unexpected error in the center")
        return error_response(500, "the center failed to handle this request")


def create_app(config: Config | None = None, *, pool: SandboxPool | None = None) -> Flask:
    """App factory. Without a pool it starts its own (and removes its containers on close)."""
    config = config or load_config()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = config.max_request_bytes
    app.json.sort_keys = False
    app.json.ensure_ascii = False

    engine = make_engine(config.resolved_database_url())
    owns_pool = pool is None
    sandboxes = DockerSandboxes(config) if pool is None else pool.launcher
    if pool is None:
        sandboxes.prepare()
        pool = SandboxPool(sandboxes, config.interpreter_port_range.ports)
        pool.start()
    svc = Services(config, engine, make_session_factory(engine), sandboxes, pool, owns_pool, Metrics(pool))
    try:
        svc.ensure_tables()
    except StorageFailed as e:
        log.warning("%s at start (%s); the tables will be created when it answers", e.message, e.__cause__)
    if config.image_retention_days > 0:
        svc.retention = RetentionSweeper(svc.sessions, config.image_retention_days)
        svc.retention.start()
    app.extensions[EXTENSION_KEY] = svc

    app.add_url_rule("/runcode", view_func=run_code, methods=["GET", "POST"])
    app.add_url_rule("/image/<path:filename>", view_func=serve_image, methods=["GET"])
    app.add_url_rule("/healthz", view_func=healthz)
    app.add_url_rule("/readyz", view_func=readyz)
    app.add_url_rule("/metrics", view_func=metrics_page)
    app.before_request(begin_request)
    app.after_request(finish_request)
    app.register_blueprint(web.blueprint)
    app.teardown_appcontext(close_db_session)
    app.after_request(add_cors_headers)
    register_error_handlers(app)
    return app


def serve(app: Flask, config: Config) -> None:
    """Serve with waitress until interrupted (SIGTERM/SIGINT raise SystemExit in main)."""
    from waitress.server import create_server

    # waitress's own body limit sits above ours so that Flask answers 413 as JSON.
    server = create_server(app, host=config.host, port=config.scheduler_port, threads=config.server_threads,
                           max_request_body_size=config.max_request_bytes * 2 + 8 * 1024 * 1024,
                           ident="code-interpreter")
    log.info("serving on http://%s:%s", config.host, server.effective_port)
    try:
        server.run()
    finally:
        server.close()


def _exit_on_signal(signum: int, _frame: Any) -> None:
    log.info("received %s, shutting down", signal.Signals(signum).name)
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    """Command line: python3 center.py [--config FILE]."""
    parser = argparse.ArgumentParser(description="Code Interpreter API dispatch center")
    parser.add_argument("--config", help="config file (default: config.yaml beside this script)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"center.py: {e}", file=sys.stderr)
        return 2
    # Installed before the pool starts, so that a signal at any point still removes its containers.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGINT, _exit_on_signal)
    app = None
    try:
        app = create_app(config)
        serve(app, config)
    except (SandboxStartError, SQLAlchemyError) as e:
        print(f"center.py: cannot start: {e}", file=sys.stderr)
        return 1
    finally:
        if app is not None:
            started = time.monotonic()
            app.extensions[EXTENSION_KEY].close()
            log.info("stopped; sandboxes removed in %.1f s", time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
