"""Rich results as the client gets them (SPEC "Rich results"): the agent's bundles, their images stored once and
linked, or left in as base64 when the request asked for them inline.

The agent's bundles are checked again here (the sandbox's side of the line is the program's): only the
types of the SPEC with values of the right kind pass. A bundle's image is base64 (a display streamed, an
image made by a formatter) or {"image": name}, one of the run's `images` (a figure): then it is that
image's URL. A base64 image is stored like `images`, once per content in an answer, so a figure
displayed while streaming and then collected with the run's images has one URL.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from typing import Any

from models import Image
from sandbox.contract import RICH_IMAGE_TYPES, RICH_JSON_TYPE, RICH_TEXT_TYPES
from server.storage import image_row

MAX_RESULTS = 1000  # bundles in one answer (the agent keeps them within max_output_bytes already)


class BundleImages:
    """The images of one answer: the run's stored `images` by name, and those of its bundles stored by content."""

    def __init__(self, inline: bool, base_url: str) -> None:
        self.inline, self.base_url = inline, base_url
        self.by_content: dict[str, str] = {}  # sha256 of an image stored for this answer -> its stored name
        self.images: dict[str, str] = {}  # the run's images: the name the program gave -> URL
        self.images_data: dict[str, str] = {}  # and -> base64 (for inline)
        self.pending: list[Image] = []  # rows made since the last take_rows()

    def note_images(self, report_images: Any, urls: Mapping[str, str]) -> None:
        """The run's `images` as stored: a bundle naming one gets its URL (or its base64, inline)."""
        self.images.update(urls)
        for entry in report_images if isinstance(report_images, list) else ():
            if isinstance(entry, dict) and isinstance(entry.get("name"), str) and isinstance(entry.get("data"), str):
                self.images_data[entry["name"]] = entry["data"]

    def link(self, mime: str, value: Any) -> str | None:
        """What the client gets for a bundle's image: a URL (stored now unless stored already) or base64."""
        if isinstance(value, dict):
            name = value.get("image")
            if not isinstance(name, str):
                return None
            return self.images_data.get(name) if self.inline else self.images.get(name)
        if not isinstance(value, str):
            return None
        if self.inline:
            return value
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return None
        digest = hashlib.sha256(data).hexdigest()
        stored = self.by_content.get(digest)
        if stored is None:
            row = image_row("display", mime, data)
            if row is None:
                return None
            self.pending.append(row)
            stored = self.by_content[digest] = row.filename
        return f"{self.base_url}/image/{stored}"

    def take_rows(self) -> list[Image]:
        """The rows made since the last call, for the caller to store (before it hands out their URLs)."""
        rows, self.pending = self.pending, []
        return rows


def client_bundle(raw: Any, images: BundleImages) -> dict[str, Any] | None:
    """The client's form of one bundle from the agent; None when it is not one."""
    if not isinstance(raw, Mapping) or not isinstance(raw.get("data"), Mapping):
        return None
    data: dict[str, Any] = {}
    for mime, value in raw["data"].items():
        if mime in RICH_TEXT_TYPES and isinstance(value, str):
            data[mime] = value
        elif mime in RICH_IMAGE_TYPES:
            linked = images.link(mime, value)
            if linked is not None:
                data[mime] = linked
        elif mime == RICH_JSON_TYPE:
            data[mime] = value
    data.setdefault("text/plain", "")
    bundle: dict[str, Any] = {"data": data, "is_main_result": raw.get("is_main_result") is True}
    if isinstance(raw.get("chart"), Mapping):
        bundle["chart"] = raw["chart"]
    if isinstance(raw.get("display_id"), str):
        bundle["display_id"] = raw["display_id"]
    return bundle


def client_results(raw: Any, images: BundleImages) -> list[dict[str, Any]]:
    """The report's `results` as the client gets them (at most MAX_RESULTS)."""
    if not isinstance(raw, list):
        return []
    bundles = (client_bundle(item, images) for item in raw[:MAX_RESULTS])
    return [bundle for bundle in bundles if bundle is not None]
