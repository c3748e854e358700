"""GET/HEAD /image/<name> and /file/<name>: what programs produced, for browsers too (no token: an <img>
tag or a download link cannot send one; the names are unguessable)."""

from __future__ import annotations

from urllib.parse import quote

from flask import Blueprint, Response, request

from models import Image, StoredBlob, StoredFile
from server.errors import NotFound
from server.services import db_session
from server.storage import find_stored

blueprint = Blueprint("outputs", __name__)


def stored_response(blob: StoredBlob) -> Response:
    """The stored bytes with their type, cacheable forever, never sniffed or scripted."""
    response = Response(blob.data, mimetype=blob.mime_type)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
    # An SVG (or an HTML file) opened directly must not run script in our origin, where the playground keeps tokens.
    response.headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'; sandbox"
    response.set_etag(blob.sha256)
    return response.make_conditional(request)


def attachment(path: str) -> str:
    """Content-Disposition for a download under the program's own file name (RFC 6266 with RFC 5987);
    a file from a subfolder ("out/report.csv") is saved under its own name, as a browser would."""
    name = path.rpartition("/")[2] or "file"
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\;' else "_" for c in name) or "file"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


@blueprint.get("/image/<path:filename>")
def serve_image(filename: str) -> Response:
    """An image a run produced."""
    image = find_stored(db_session(), Image, filename)
    if image is None:
        raise NotFound("no image of that name")
    return stored_response(image)


@blueprint.get("/file/<path:filename>")
def serve_file(filename: str) -> Response:
    """A file other than an image that a one-shot run wrote: always a download."""
    stored = find_stored(db_session(), StoredFile, filename)
    if stored is None:
        raise NotFound("no file of that name")
    response = stored_response(stored)
    response.headers["Content-Disposition"] = attachment(stored.original_name or filename)
    return response
