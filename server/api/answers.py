"""Answers to a run or a cell: its images and files stored, the agent's report turned into the result body."""

from __future__ import annotations

import logging
from typing import Any

from flask import Response, g, jsonify, request

from models import Image, StoredFile
from server.errors import StorageFailed
from server.run_requests import result_body
from server.services import Services, db_session
from server.storage import store_outputs

log = logging.getLogger("center")


def public_base_url(svc: Services) -> str:
    """Where image links point: `domain` (scheme optional, https assumed) or the request's own host."""
    if not svc.config.domain:
        return request.host_url.rstrip("/")
    domain = svc.config.domain.rstrip("/")
    return domain if "://" in domain else f"https://{domain}"


def store_outputs_of(svc: Services, report: dict[str, Any]) -> tuple[dict[str, str], dict[str, str], str | None]:
    """Store the report's images and files; their URLs by name, and what went wrong with the database, if anything.

    The run's own result is worth more than its outputs: a database that is down leaves them out
    (said in `image_error`), it does not turn the answer into an error.
    """
    urls: dict[type, dict[str, str]] = {Image: {}, StoredFile: {}}
    for model, key, route in ((Image, "images", "image"), (StoredFile, "files", "file")):
        if not report.get(key):
            continue
        try:
            stored, stored_bytes = store_outputs(db_session(), model, report[key])
        except StorageFailed as e:
            log.error("%s: %s", e.message, e.__cause__)
            return {}, {}, e.message
        svc.metrics.image_bytes.inc(stored_bytes)
        base = public_base_url(svc)
        urls[model] = {name: f"{base}/{route}/{filename}" for name, filename in stored.items()}
    return urls[Image], urls[StoredFile], None


def report_body(svc: Services, report: dict[str, Any], language: str,
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The result body of an agent report (one-shot or a session's cell), its outputs stored; the run counted."""
    image_urls, file_urls, storage_error = store_outputs_of(svc, report)
    body = result_body(report, image_urls, file_urls)
    body.update(extra or {})
    if storage_error:
        body["image_error"] = storage_error
    g.run_status = body["status"]
    svc.metrics.observe_run(language, body["status"], body["duration_ms"])
    return body


def answer_report(svc: Services, report: dict[str, Any], language: str,
                  extra: dict[str, Any] | None = None) -> tuple[Response, int]:
    """The client's answer to an agent report: 200, or 504 on timeout."""
    body = report_body(svc, report, language, extra)
    return jsonify(body), 504 if body["status"] == "timeout" else 200
