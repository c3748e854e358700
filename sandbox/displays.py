"""A run's or cell's rich results as the agent keeps them: the worker's display lines checked, capped, streamed.

The worker sends each display as a line {"display": bundle} on its status pipe (rich_display.py), and
{"clear_output": true} when the program clears its output. The program can write on that pipe too, so a
line is only ever data: it is checked against the shape of a bundle and kept within the job's caps
(images: max_images and max_image_bytes; everything else: max_output_bytes in all). What is left out
is named in the report's `skipped`. Streamed runs send each bundle as a {"type": "display"} event.

In the report, an image of a bundle that is also one of the run's `images` (a figure) is given as
{"image": name}: its bytes travel once, and the center links both to one stored image.
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any

from contract import RICH_IMAGE_TYPES, RICH_JSON_TYPE, RICH_TEXT_TYPES
from job_request import Job
from output_pipes import EventStream

TEXT_TYPES = frozenset(RICH_TEXT_TYPES)
IMAGE_TYPES = frozenset(RICH_IMAGE_TYPES)
BASE64 = re.compile(r"\A[A-Za-z0-9+/]*={0,2}\Z")
MAX_DISPLAY_ID_CHARS = 200
MAX_SKIPPED_DISPLAYS = 20  # entries naming left-out displays, then one saying how many more


def budget_size(bundle: dict[str, Any]) -> int | None:
    """The bytes a bundle takes from max_output_bytes: its JSON, images aside; None when it is not JSON."""
    try:
        return len(json.dumps({**bundle, "data": {mime: value for mime, value in bundle["data"].items()
                                                  if mime not in IMAGE_TYPES}}))
    except (TypeError, ValueError):
        return None


class Displays:
    """The rich results of one run or cell, in the order they were made."""

    def __init__(self, job: Job, events: EventStream | None = None) -> None:
        self.job, self.events = job, events
        self.bundles: list[dict[str, Any]] = []
        self.skipped: list[dict[str, str]] = []
        self.made = 0  # displays received, numbering them in `skipped`
        self.images = 0  # images kept in bundles
        self.budget = int(job.max_output_bytes)  # bytes of bundles (images aside) still allowed
        self.lock = threading.Lock()

    def take(self, message: dict[str, Any]) -> bool:
        """A status line from the worker: kept if it is a display or clear_output; False if it is neither."""
        if message.get("clear_output") is True:
            with self.lock:
                self.bundles.clear()
            return True
        raw = message.get("display")
        if not isinstance(raw, dict):
            return False
        with self.lock:
            self.made += 1
            bundle = self.checked(raw, f"display {self.made}")
            if bundle is None:
                return True
            self.place(bundle)
        if self.events is not None:
            self.events.send({"type": "display", **bundle})
        return True

    def place(self, bundle: dict[str, Any]) -> None:
        """Add the bundle; an update replaces the display of the same id, where it was."""
        if bundle.pop("update", False):
            for index, earlier in enumerate(self.bundles):
                if earlier.get("display_id") == bundle.get("display_id"):
                    self.bundles[index] = bundle
                    return
        self.bundles.append(bundle)

    def checked(self, raw: dict[str, Any], name: str) -> dict[str, Any] | None:
        """The bundle in its well-formed part, within the caps; None when nothing of it can be kept."""
        data = raw.get("data")
        if not isinstance(data, dict):
            return None
        kept: dict[str, Any] = {}
        for mime, value in data.items():
            if mime in TEXT_TYPES and isinstance(value, str):
                kept[mime] = value
            elif mime in IMAGE_TYPES and isinstance(value, str) and BASE64.match(value):
                if self.images >= int(self.job.max_images):
                    self.skip(name, f"{mime}: more than {self.job.max_images} images in rich results")
                elif len(value) // 4 * 3 > int(self.job.max_image_bytes):
                    self.skip(name, f"{mime}: larger than {self.job.max_image_bytes} bytes")
                else:
                    kept[mime] = value
            elif mime == RICH_JSON_TYPE:
                kept[mime] = value
        if not isinstance(kept.get("text/plain"), str):
            kept["text/plain"] = ""
        bundle: dict[str, Any] = {"data": kept, "is_main_result": raw.get("is_main_result") is True}
        if isinstance(raw.get("chart"), dict):
            bundle["chart"] = raw["chart"]
        display_id = raw.get("display_id")
        if isinstance(display_id, str) and len(display_id) <= MAX_DISPLAY_ID_CHARS:
            bundle["display_id"] = display_id
            bundle["update"] = raw.get("update") is True
        left_out = raw.get("left_out")
        if isinstance(left_out, list) and left_out:
            self.skip(name, "; ".join(str(part)[:200] for part in left_out[:5]))
        if not self.within_budget(bundle, name):
            return None
        self.images += sum(1 for mime in IMAGE_TYPES if mime in kept)
        return bundle

    def within_budget(self, bundle: dict[str, Any], name: str) -> bool:
        """Whether the bundle, images aside, fits in what is left of max_output_bytes (then it is taken from it).
        One that does not keeps its text/plain and images when those fit, its other parts named in `skipped`."""
        size = budget_size(bundle)
        if size is None:
            self.skip(name, "not JSON")
            return False
        if size > self.budget:
            data = bundle["data"]
            dropped = [part for part in data if part != "text/plain" and part not in IMAGE_TYPES]
            dropped += ["chart"] if "chart" in bundle else []
            bundle.pop("chart", None)
            bundle["data"] = {mime: value for mime, value in data.items()
                              if mime == "text/plain" or mime in IMAGE_TYPES}
            size = budget_size(bundle) or 0
            over = f"rich results exceeded {self.job.max_output_bytes} bytes (max_output_bytes)"
            if size > self.budget or not dropped:
                self.skip(name, over)
                return False
            self.skip(name, f"{', '.join(dropped)}: {over}")
        self.budget -= size
        return True

    def skip(self, name: str, reason: str) -> None:
        """Name a display (or part of one) that was left out, up to MAX_SKIPPED_DISPLAYS entries."""
        if len(self.skipped) < MAX_SKIPPED_DISPLAYS:
            self.skipped.append({"name": name, "reason": reason})
        elif len(self.skipped) == MAX_SKIPPED_DISPLAYS:
            self.skipped.append({"name": "more displays", "reason": "left out too; see the entries above"})

    def report(self, images: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The bundles for the report, an image that is one of the run's `images` given by its name."""
        by_data = {entry.get("data"): entry.get("name") for entry in images if isinstance(entry, dict)}
        with self.lock:
            bundles = list(self.bundles)
        results = []
        for bundle in bundles:
            data = dict(bundle["data"])
            for mime in IMAGE_TYPES & data.keys():
                name = by_data.get(data[mime])
                if name is not None:
                    data[mime] = {"image": name}
            results.append({key: value for key, value in bundle.items() if key != "data"} | {"data": data})
        return results
