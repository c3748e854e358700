"""POST/GET /runcode: validate, run in a fresh sandbox, store the images, answer (504 on timeout)."""

from __future__ import annotations

import json
import logging
from typing import Any, NamedTuple

from flask import Response, g, jsonify, request
from werkzeug.exceptions import MethodNotAllowed

from api.http import guarded_blueprint
from errors import BadRequest, PayloadTooLarge, StorageFailed
from execution import parse_run_request, result_body
from models import Image, StoredFile
from sandbox.contract import MAX_JOB_BYTES
from services import Services, db_session, services
from storage import store_outputs

log = logging.getLogger("center")
blueprint = guarded_blueprint("runs", __name__)


def public_base_url(svc: Services) -> str:
    """Where image links point: `domain` (scheme optional, https assumed) or the request's own host."""
    if not svc.config.domain:
        return request.host_url.rstrip("/")
    domain = svc.config.domain.rstrip("/")
    return domain if "://" in domain else f"https://{domain}"


class EncodedRun(NamedTuple):
    """What a run needs once its request is read: the agent's job as JSON bytes, and two facts about it."""

    language: str
    timeout: float
    job: bytes


def _parse_body(svc: Services) -> EncodedRun:
    """The validated request, encoded at once: nothing parsed outlives this call."""
    if request.method == "POST":
        # Not request.get_json(): Flask would keep the body and its parsed form for the whole request.
        try:
            fields: Any = json.loads(request.get_data(cache=False))
        except RecursionError:
            raise BadRequest("the request body is nested too deeply") from None
        except ValueError:
            raise BadRequest("the request body is not valid JSON") from None
    else:
        fields = request.args.to_dict()
    run = parse_run_request(fields, svc.config)
    try:
        text = json.dumps(run.job(svc.config), ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise BadRequest("variables hold NaN or Infinity, which JSON does not allow") from None
    try:
        job = text.encode()
    except UnicodeEncodeError:
        raise BadRequest("the request holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not text") from None
    return EncodedRun(run.language, run.timeout, job)


def read_run_request(svc: Services) -> EncodedRun:
    """Parse and validate the request within the body budget, so that concurrent large bodies
    cannot together take the center's memory; the parsed form is let go before the run."""
    with svc.body_budget.reserve(request.content_length or 0, svc.config.queue_wait_seconds):
        run = _parse_body(svc)
    if len(run.job) > MAX_JOB_BYTES:
        raise PayloadTooLarge(f"the program and its variables take {len(run.job)} bytes once encoded, "
                              f"over the sandbox's limit of {MAX_JOB_BYTES}")
    return run


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


def answer_report(svc: Services, report: dict[str, Any], language: str,
                  extra: dict[str, Any] | None = None) -> tuple[Response, int]:
    """The client's answer to an agent report (one-shot or a session's cell): 200, or 504 on timeout."""
    image_urls, file_urls, storage_error = store_outputs_of(svc, report)
    body = result_body(report, image_urls, file_urls)
    body.update(extra or {})
    if storage_error:
        body["image_error"] = storage_error
    g.run_status = body["status"]
    svc.metrics.observe_run(language, body["status"], body["duration_ms"])
    return jsonify(body), 504 if body["status"] == "timeout" else 200


@blueprint.route("/runcode", methods=["GET", "POST"])
def run_code() -> tuple[Response, int]:
    """POST/GET /runcode: validate, run in a fresh sandbox, store images and files, answer (504 on timeout)."""
    svc = services()
    if request.method == "HEAD":  # Flask adds HEAD to GET routes; a HEAD must never run a program
        raise MethodNotAllowed(valid_methods=["GET", "POST"])
    run = read_run_request(svc)
    with svc.pool.sandbox(svc.config.queue_wait_seconds) as sandbox:
        g.slot = sandbox.slot
        report = svc.sandboxes.run(sandbox, run.job, run.timeout)
    return answer_report(svc, report, run.language)
