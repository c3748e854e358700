"""Rich results: what the program displays, as Jupyter's MIME bundles, sent to the agent as it is made.

IPython's own display machinery makes the bundles: IPython.core.formatters calls the objects'
_repr_html_, _repr_markdown_, _repr_png_ ... and _repr_mimebundle_, and IPython.display's HTML,
Markdown, Image ... are its own. There is no IPython shell here (get_ipython() stays None, so libraries
do not take the sandbox for a notebook front end); IPython's display(), publish_display_data() and
clear_output() are pointed at this module instead, which publishes each bundle as one line
{"display": bundle} on the status pipe (the agent reads it there, see displays.py).

A figure's bundle is made where the figure becomes an image (capture_backend calls figure_shown): its
image/png is the file the figure became (the agent finds it among the run's images, so it is stored
once), its "chart" the data behind it, as e2b-charts reads it from the figure.

Everything here is imported only once a run shows something: a program that prints pays nothing, and
the warm-up imports the formatters with pandas and the chart reader with the first figure.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from contract import (
    MAX_DISPLAY_IMAGE_BYTES,
    MAX_STATUS_LINE_BYTES,
    RICH_IMAGE_TYPES,
    RICH_JSON_TYPE,
    RICH_TEXT_TYPES,
    WORKSPACE,
    cut_result,
)

# A figure's chart lists every point: past this many, the bundle keeps its image and says the chart was left out.
MAX_CHART_POINTS = 10000
# Values whose text form IPython's pretty printer makes exactly as repr() does: shown without importing IPython.
PLAIN_TYPES = (int, float, bool, str, bytes, complex)

_channel: int | None = None  # the status pipe, once the worker says where it is
_formatter: Any = None  # IPython's DisplayFormatter, made on first use
_ids = 0  # display ids this module made (display_id=True)
_main = False  # a figure shown now is the cell's last expression


def start(status_fd: int) -> None:
    """Bundles go to the agent on this descriptor from now on."""
    global _channel
    _channel = status_fd


def publish(data: dict[str, Any], main: bool = False, chart: dict[str, Any] | None = None,
            display_id: str | None = None, update: bool = False, left_out: list[str] | None = None) -> None:
    """One bundle to the agent, as a line (ASCII JSON: no byte of it is a newline); `left_out`: what of it
    was left out, and why, for the run's `skipped`."""
    if _channel is None:
        return  # not the worker (a program the program started): nobody to tell
    bundle: dict[str, Any] = {"data": data, "is_main_result": main}
    if chart:
        bundle["chart"] = chart
    if left_out:
        bundle["left_out"] = left_out
    if display_id is not None:
        bundle["display_id"] = display_id
        if update:
            bundle["update"] = True
    write_line({"display": bundle})


def write_line(message: dict[str, Any]) -> None:
    """A JSON line to the agent. A bundle too long for a line keeps its text/plain and names the rest in
    "left_out"; one that cannot be encoded is said on stderr, not lost silently."""
    try:
        line = json.dumps(message, default=str).encode()
        bundle = message.get("display")
        if len(line) >= MAX_STATUS_LINE_BYTES and bundle is not None:
            data = bundle["data"]
            parts = [mime for mime in data if mime != "text/plain"] + (["chart"] if "chart" in bundle else [])
            reason = f"over {MAX_STATUS_LINE_BYTES} bytes with the rest of the display"
            bundle["left_out"] = bundle.get("left_out", []) + [f"{part}: {reason}" for part in parts]
            bundle["data"] = {"text/plain": data.get("text/plain", "")}
            bundle.pop("chart", None)
            line = json.dumps(message, default=str).encode()
    except (TypeError, ValueError) as e:
        print(f"(sandbox: a display could not be sent: {e})", file=sys.stderr)
        return
    data = memoryview(line + b"\n")
    try:
        while data:
            data = data[os.write(_channel, data):]
    except OSError:
        pass  # the program closed the pipe: its displays are lost, its output is not


def display_formatter() -> Any:
    """IPython's DisplayFormatter (every formatter Jupyter has), made once."""
    global _formatter
    if _formatter is None:
        from IPython.core.formatters import DisplayFormatter

        _formatter = DisplayFormatter()
    return _formatter


def formatted(obj: Any, include: Any = None, exclude: Any = None) -> dict[str, Any]:
    """The object's MIME bundle, as Jupyter makes it, with only the types a bundle may hold; {} when the
    object displayed itself (_ipython_display_). text/plain is always there, cut as `result` is."""
    if type(obj) in PLAIN_TYPES and _formatter is None:
        return {"text/plain": cut_result(repr(obj))}
    data, _metadata = display_formatter().format(obj, include=include, exclude=exclude)
    return kept_types(data, obj) if data else {}


def kept_types(data: dict[str, Any], obj: Any = None) -> dict[str, Any]:
    """The bundle's types a result may hold, each in its wire form: text as str, PNG and JPEG in base64,
    JSON as the value itself."""
    kept: dict[str, Any] = {}
    for mime, value in data.items():
        if mime in RICH_TEXT_TYPES:
            if isinstance(value, bytes):
                value = value.decode("utf-8", "replace")
            kept[mime] = value if isinstance(value, str) else str(value)
        elif mime in RICH_IMAGE_TYPES:
            if isinstance(value, (bytes, bytearray)):
                import base64  # only for images given as bytes (a PIL image's _repr_png_, say)

                value = base64.b64encode(value).decode("ascii")
            if isinstance(value, str):
                kept[mime] = "".join(value.split())  # base64 as IPython gives it, line breaks or not
        elif mime == RICH_JSON_TYPE:
            kept[mime] = value
    plain = kept.get("text/plain")
    if plain is None:
        plain = safe_repr(obj)
    kept["text/plain"] = cut_result(plain)
    return kept


def safe_repr(obj: Any) -> str:
    """repr(obj), or a placeholder when its repr fails (a display never fails on it)."""
    try:
        return repr(obj)
    except Exception:  # noqa: BLE001 - the program's own __repr__ is broken: the bundle still says what it is
        return f"<{type(obj).__name__} object>"


def show(obj: Any, main: bool = False) -> None:
    """A value as a notebook shows it: a figure as its image (see figure_shown), anything else as its bundle."""
    global _main
    from program_io import shown_as_image

    _main = main
    try:
        if shown_as_image(obj):
            return
    finally:
        _main = False
    data = formatted(obj)
    if data:
        publish(data, main=main)


def text_form(obj: Any) -> str | None:
    """What display(obj) prints into the output for clients that read only that: a string as itself, the
    text IPython.display's HTML, Markdown ... hold, anything else as its repr; None for a figure."""
    if isinstance(obj, str):
        return obj
    core_display = sys.modules.get("IPython.core.display")
    if core_display is not None and isinstance(obj, core_display.TextDisplayObject) and isinstance(obj.data, str):
        return obj.data
    return safe_repr(obj)


def display(*objs: Any, include: Any = None, exclude: Any = None, metadata: Any = None, transient: Any = None,
            display_id: Any = None, raw: bool = False, clear: bool = False, **kwargs: Any) -> Any:
    """IPython's display(), publishing to the agent: each object's bundle (or, raw, the dict given as one),
    its text form printed too; with display_id, the handle that updates it."""
    global _ids
    if display_id is True:
        _ids += 1
        display_id = f"display-{_ids}"
    update = bool(kwargs.get("update"))
    if update and not display_id:
        raise TypeError("display_id required for update_display")
    if clear:
        clear_output(wait=True)
    if not objs and display_id:
        objs, raw = ({},), True  # an empty output to update later, as IPython makes it
    for obj in objs:
        if raw:
            data = kept_types(obj) if isinstance(obj, dict) else {}
        else:
            figure_module = sys.modules.get("matplotlib.figure")
            if figure_module is not None and isinstance(obj, figure_module.Figure):
                show(obj)
                continue
            data = formatted(obj, include, exclude)
            text = text_form(obj)
            if text is not None and not update:
                print(text)
        if data:
            publish(data, display_id=display_id if display_id else None, update=update)
    if display_id:
        from IPython.core.display_functions import DisplayHandle

        return DisplayHandle(display_id)
    return None


def publish_display_data(data: Any, metadata: Any = None, *, transient: Any = None, **kwargs: Any) -> None:
    """IPython's publish_display_data(): a bundle made by the caller, published as it is."""
    if isinstance(data, dict):
        display_id = (transient or {}).get("display_id")
        publish(kept_types(data), display_id=display_id, update=bool(kwargs.get("update")))


def clear_output(wait: bool = False) -> None:
    """IPython's clear_output(): the displays shown so far in this run or cell are dropped from its results."""
    write_line({"clear_output": True})


def patch_ipython(display_functions: Any) -> None:
    """Point IPython's display functions at this module's (IPython.display imports them from this module
    after this runs, as do IPython.core.display and DisplayHandle's methods, which look them up in it)."""
    display_functions.display = display
    display_functions.publish_display_data = publish_display_data
    display_functions.clear_output = clear_output


def figure_shown(figure: Any, name: str) -> None:
    """capture_backend's word that a figure is an image now, the working folder's file `name`: its bundle,
    the file's bytes in it (read now: the program may replace the file later in the run)."""
    data: dict[str, Any] = {"text/plain": safe_repr(figure)}
    mime = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}.get(os.path.splitext(name)[1].lower())
    if mime is not None:
        try:
            with open(os.path.join(WORKSPACE, name), "rb") as f:
                image = f.read(MAX_DISPLAY_IMAGE_BYTES + 1)
        except OSError:
            image = b""
        if 0 < len(image) <= MAX_DISPLAY_IMAGE_BYTES:
            data = kept_types({**data, mime: image})
    points = data_points(figure)
    if points > MAX_CHART_POINTS:
        publish(data, main=_main, left_out=[f"chart: the figure has {points} points, over {MAX_CHART_POINTS}"])
    else:
        publish(data, main=_main, chart=chart_of(figure))


def data_points(figure: Any) -> int:
    """How many points the figure's lines and collections hold (reading a chart costs time by the point)."""
    total = 0
    for axes in figure.axes:
        for line in axes.lines:
            total += len(line.get_xdata(orig=False))
        for collection in axes.collections:
            total += len(collection.get_offsets())
        total += len(axes.patches)
    return total


def chart_of(figure: Any) -> dict[str, Any] | None:
    """The data behind a matplotlib figure, as E2B's code interpreter gives it (e2b-charts); None when it
    cannot be read (e2b-charts not installed, or a figure it does not understand)."""
    try:
        from e2b_charts import chart_figure_to_dict
    except ImportError:
        return None
    stale = figure.stale
    try:
        chart = chart_figure_to_dict(figure)
    except Exception:  # noqa: BLE001 - a chart it cannot read: the image is still there
        return None
    finally:
        # Reading tick labels marks the figure stale, as if the program had changed it: it is not, and
        # must not come back as an image a second time (capture_backend goes by that flag).
        figure.stale = stale
    if not chart:
        return None
    return json.loads(json.dumps(chart, default=str))  # numbers and dates as JSON has them

