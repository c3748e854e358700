"""For operators and load balancers: /healthz, /readyz and /metrics (no token: probes carry none)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from server.errors import StorageFailed
from server.services import db_session, services

blueprint = Blueprint("ops", __name__)


@blueprint.get("/healthz")
def healthz() -> Response:
    """Liveness: the process serves."""
    return jsonify(status="ok")


@blueprint.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Readiness: the database answers and sandboxes can be handed out (ready, busy, or starting without failing)."""
    svc = services()
    pool = svc.pool.stats()
    try:
        db_session().execute(text("SELECT 1"))
        database = "ok"
    except (SQLAlchemyError, StorageFailed) as e:
        database = f"unavailable ({type(e).__name__})"
    ready = database == "ok" and svc.pool.can_serve()
    return jsonify(ready=ready, database=database, pool=pool), 200 if ready else 503


@blueprint.get("/metrics")
def metrics_page() -> Response:
    """Prometheus exposition of this app's metrics."""
    payload, content_type = services().metrics.render()
    return Response(payload, content_type=content_type)
