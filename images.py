"""Image storage: programs' images into the database under unguessable names, and back out."""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import re
import secrets
import threading
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from errors import StorageFailed
from models import Image
from sandbox.contract import IMAGE_TYPES

log = logging.getLogger(__name__)
STORED_NAME = re.compile(rf"\A[A-Za-z0-9_-]{{32}}\.({'|'.join(IMAGE_TYPES.values())})\Z")


def new_filename(mime_type: str) -> str:
    """32 random URL-safe characters (192 bits) plus the extension of the type."""
    return f"{secrets.token_urlsafe(24)}.{IMAGE_TYPES[mime_type]}"


def store_images(session: Session, images: Iterable[Mapping[str, Any]]) -> tuple[dict[str, str], int]:
    """Save the agent's base64 images; return ({name the program gave: stored file name}, bytes stored)."""
    stored: dict[str, str] = {}
    rows = []
    for image in images:
        mime_type = image.get("mime")
        if mime_type not in IMAGE_TYPES:
            continue
        try:
            data = base64.b64decode(image.get("data", ""), validate=True)
        except (binascii.Error, TypeError, ValueError):
            continue
        filename = new_filename(mime_type)
        rows.append(Image(filename=filename, original_name=str(image.get("name", ""))[:255],
                          mime_type=mime_type, size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                          data=data))
        stored[str(image.get("name", filename))] = filename
    if not rows:
        return {}, 0
    try:
        session.add_all(rows)
        session.commit()
    except SQLAlchemyError as e:
        session.rollback()
        raise StorageFailed("the images could not be stored: the database is unavailable") from e
    return stored, sum(row.size for row in rows)


def find_image(session: Session, filename: str) -> Image | None:
    """The stored image of that name, or None (malformed names are never looked up)."""
    if not STORED_NAME.match(filename):
        return None
    try:
        return session.scalars(select(Image).where(Image.filename == filename)).first()
    except SQLAlchemyError as e:
        session.rollback()
        raise StorageFailed("the image could not be loaded: the database is unavailable") from e


def delete_images_older_than(session: Session, days: float) -> int:
    """Delete images stored more than `days` ago; return how many."""
    cutoff = datetime.now(timezone.utc) - timedelta(days=days)
    result = session.execute(delete(Image).where(Image.created_at < cutoff))
    session.commit()
    return result.rowcount or 0


class RetentionSweeper:
    """Deletes images older than the retention period: once at start, then every `interval` seconds."""

    def __init__(self, sessions: sessionmaker, days: float, interval: float = 3600.0) -> None:
        self.sessions, self.days, self.interval = sessions, days, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="image-retention", daemon=True)

    def start(self) -> None:
        """Begin sweeping in the background."""
        self._thread.start()

    def stop(self) -> None:
        """Stop sweeping (waits for a sweep in progress)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def sweep(self) -> int:
        """One sweep; a database that is down is tried again at the next one."""
        try:
            with self.sessions() as session:
                deleted = delete_images_older_than(session, self.days)
        except SQLAlchemyError as e:
            log.warning("image retention sweep failed: %s", type(e).__name__)
            return 0
        if deleted:
            log.info("deleted %d images older than %g days", deleted, self.days)
        return deleted

    def _loop(self) -> None:
        while True:
            self.sweep()
            if self._stop.wait(self.interval):
                return
