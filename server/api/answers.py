"""Answers to a run or a cell: its images and files stored, the agent's report turned into the result body."""

from __future__ import annotations

import logging
from typing import Any

from flask import Response, g, jsonify, request

from models import Image, StoredFile
from server.api.rich_results import BundleImages, client_results
from server.errors import StorageFailed
from server.run_requests import result_body
from server.services import Services, db_session
from server.storage import store_outputs, store_rows

log = logging.getLogger("center")


def public_base_url(svc: Services) -> str:
    """Where image links point: `domain` (scheme optional, https assumed) or the request's own host."""
    if not svc.config.domain:
        return request.host_url.rstrip("/")
    domain = svc.config.domain.rstrip("/")
    return domain if "://" in domain else f"https://{domain}"


def store_outputs_of(svc: Services, report: dict[str, Any],
                     known: dict[str, str] | None = None) -> tuple[dict[str, str], dict[str, str], str | None]:
    """Store the report's images and files; their URLs by name, and what went wrong with the database, if anything.

    `known`: the images this answer stored already (sha256 -> stored name), not stored twice. The run's own
    result is worth more than its outputs: a database that is down leaves them out (said in `image_error`),
    it does not turn the answer into an error.
    """
    urls: dict[type, dict[str, str]] = {Image: {}, StoredFile: {}}
    for model, key, route in ((Image, "images", "image"), (StoredFile, "files", "file")):
        if not report.get(key):
            continue
        try:
            stored, stored_bytes = store_outputs(db_session(), model, report[key], known if model is Image else None)
        except StorageFailed as e:
            log.error("%s: %s", e.message, e.__cause__)
            return {}, {}, e.message
        svc.metrics.image_bytes.inc(stored_bytes)
        base = public_base_url(svc)
        urls[model] = {name: f"{base}/{route}/{filename}" for name, filename in stored.items()}
    return urls[Image], urls[StoredFile], None


def bundle_images(svc: Services, inline: bool) -> BundleImages:
    """An answer's store of rich-result images, linked from where this center is reached."""
    return BundleImages(inline, public_base_url(svc))


def stored_bundles(svc: Services, raw: Any, images: BundleImages) -> tuple[list[dict[str, Any]], str | None]:
    """Bundles in the client's form, the images they brought stored (a short database session of their own:
    a streamed run holds none while it runs); what went wrong with the database, if anything (then the
    images are left out of the bundles, which keep their text)."""
    results = client_results(raw, images)
    rows = images.take_rows()
    if not rows:
        return results, None
    try:
        with svc.database() as db:
            store_rows(db, rows)
    except StorageFailed as e:
        log.error("%s: %s", e.message, e.__cause__)
        lost = {f"{images.base_url}/image/{row.filename}" for row in rows}
        for bundle in results:
            bundle["data"] = {mime: value for mime, value in bundle["data"].items() if value not in lost}
        return results, e.message
    svc.metrics.image_bytes.inc(sum(row.size for row in rows))
    return results, None


def report_body(svc: Services, report: dict[str, Any], language: str, extra: dict[str, Any] | None = None,
                images: BundleImages | None = None, inline: bool = False) -> dict[str, Any]:
    """The result body of an agent report (one-shot or a session's cell), its outputs stored; the run counted.
    `images`: the answer's rich-result images so far (a streamed answer's), else a new store (`inline` or not)."""
    images = images or bundle_images(svc, inline)
    image_urls, file_urls, storage_error = store_outputs_of(svc, report, images.by_content)
    body = result_body(report, image_urls, file_urls)
    images.note_images(report.get("images"), image_urls)
    body["results"], bundle_error = stored_bundles(svc, report.get("results"), images)
    body.update(extra or {})
    if storage_error or bundle_error:
        body["image_error"] = storage_error or bundle_error
    g.run_status = body["status"]
    svc.metrics.observe_run(language, body["status"], body["duration_ms"])
    return body


def answer_report(svc: Services, report: dict[str, Any], language: str,
                  extra: dict[str, Any] | None = None, inline: bool = False) -> tuple[Response, int]:
    """The client's answer to an agent report: 200, or 504 on timeout."""
    body = report_body(svc, report, language, extra, inline=inline)
    return jsonify(body), 504 if body["status"] == "timeout" else 200
