"""GET/HEAD /image/<filename>: stored images, for browsers too (no token: an <img> tag cannot send one)."""

from __future__ import annotations

from flask import Blueprint, Response, request

from errors import NotFound
from images import find_image
from services import db_session

blueprint = Blueprint("images", __name__)


@blueprint.get("/image/<path:filename>")
def serve_image(filename: str) -> Response:
    """The stored bytes, cacheable forever, never sniffed or scripted."""
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
