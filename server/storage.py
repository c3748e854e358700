"""Storage of what programs produce: images and files in the database under unguessable names, and back out.

Images are served at /image/<name> with their type; other files at /file/<name> as downloads.
Both expire after image_retention_days (the sweeper below).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import mimetypes
import re
import secrets
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from sqlalchemy import delete, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import sessionmaker

from models import Image, StoredBlob, StoredFile
from sandbox.contract import IMAGE_TYPES
from server.errors import StorageFailed
from server.periodic import Periodic

log = logging.getLogger(__name__)

Blob = TypeVar("Blob", Image, StoredFile)
RANDOM_PART = r"[A-Za-z0-9_-]{32}"  # secrets.token_urlsafe(24): 192 bits
IMAGE_NAME = re.compile(rf"\A{RANDOM_PART}\.({'|'.join(IMAGE_TYPES.values())})\Z")
FILE_NAME = re.compile(rf"\A{RANDOM_PART}\.[a-z0-9]{{1,10}}\Z")
FILE_EXTENSION = re.compile(r"\.([A-Za-z0-9]{1,10})\Z")
DEFAULT_FILE_TYPE = "application/octet-stream"


def new_filename(extension: str) -> str:
    """32 random URL-safe characters (192 bits) plus the extension."""
    return f"{secrets.token_urlsafe(24)}.{extension}"


def image_row(name: str, mime_type: str, data: bytes) -> Image | None:
    """An Image for a reported image, or None when its type is not one we serve."""
    if mime_type not in IMAGE_TYPES:
        return None
    return Image(filename=new_filename(IMAGE_TYPES[mime_type]), original_name=name[:255], mime_type=mime_type,
                 size=len(data), sha256=hashlib.sha256(data).hexdigest(), data=data)


def file_row(name: str, _mime_type: str | None, data: bytes) -> StoredFile:
    """A StoredFile for a reported file: its type guessed from its name (it is served as a download anyway)."""
    match = FILE_EXTENSION.search(name)
    extension = match.group(1).lower() if match else "bin"
    mime_type = mimetypes.guess_type(f"x.{extension}")[0] or DEFAULT_FILE_TYPE
    return StoredFile(filename=new_filename(extension), original_name=name[:255], mime_type=mime_type,
                      size=len(data), sha256=hashlib.sha256(data).hexdigest(), data=data)


ROW_MAKERS = {Image: image_row, StoredFile: file_row}


def store_outputs(db: DbSession, model: type[Blob], outputs: Iterable[Mapping[str, Any]],
                  known: dict[str, str] | None = None) -> tuple[dict[str, str], int]:
    """Save the agent's base64 outputs as `model` rows; return ({name the program gave: stored name}, bytes).

    `known` (sha256 -> stored name, of what this answer stored already) is not stored again, and learns
    the new rows. Malformed entries (not base64, a type we do not serve) are left out; a database that
    fails is StorageFailed, with nothing half-stored.
    """
    known = {} if known is None else known
    stored: dict[str, str] = {}
    rows: list[StoredBlob] = []
    for output in outputs:
        name = output.get("name")
        try:
            data = base64.b64decode(output.get("data", ""), validate=True)
        except (binascii.Error, TypeError, ValueError):
            continue
        row = ROW_MAKERS[model](name if isinstance(name, str) else "", output.get("mime"), data)
        if row is None:
            continue
        if row.sha256 in known:
            stored[row.original_name or row.filename] = known[row.sha256]
            continue
        rows.append(row)
        stored[row.original_name or row.filename] = known[row.sha256] = row.filename
    if rows:
        store_rows(db, rows)
    return stored, sum(row.size for row in rows)


def store_rows(db: DbSession, rows: list[StoredBlob]) -> None:
    """Add the rows in one commit; StorageFailed (nothing half-stored) when the database fails."""
    try:
        db.add_all(rows)
        db.commit()
    except SQLAlchemyError as e:
        db.rollback()
        raise StorageFailed("the outputs could not be stored: the database is unavailable") from e


def find_stored(db: DbSession, model: type[Blob], filename: str) -> Blob | None:
    """The stored output of that name, or None (malformed names are never looked up)."""
    if not (IMAGE_NAME if model is Image else FILE_NAME).match(filename):
        return None
    try:
        return db.scalars(select(model).where(model.filename == filename)).first()
    except SQLAlchemyError as e:
        db.rollback()
        raise StorageFailed("the output could not be loaded: the database is unavailable") from e


def delete_older_than(db: DbSession, days: float) -> int:
    """Delete images and files stored more than `days` ago; return how many."""
    cutoff = datetime.now(timezone.utc) - timedelta(days=days)
    deleted = 0
    for model in (Image, StoredFile):
        deleted += db.execute(delete(model).where(model.created_at < cutoff)).rowcount or 0
    db.commit()
    return deleted


class RetentionSweeper:
    """Deletes outputs older than the retention period: once at start, then every `interval` seconds."""

    def __init__(self, database: sessionmaker, days: float, interval: float = 3600.0) -> None:
        self.database, self.days = database, days
        self._rounds = Periodic("output-retention", interval, self.sweep, at_start=True)

    def start(self) -> None:
        """Begin sweeping in the background."""
        self._rounds.start()

    def stop(self) -> None:
        """Stop sweeping (waits for a sweep in progress)."""
        self._rounds.stop()

    def sweep(self) -> int:
        """One sweep; a database that is down is tried again at the next one."""
        try:
            with self.database() as db:
                deleted = delete_older_than(db, self.days)
        except SQLAlchemyError as e:
            log.warning("retention sweep failed: %s", type(e).__name__)
            return 0
        if deleted:
            log.info("deleted %d images and files older than %g days", deleted, self.days)
        return deleted
