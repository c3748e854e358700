"""What the program shows and says, as the worker passes it on: output flushed, figures shown, failures in one line."""

from __future__ import annotations

import sys
from typing import Any


class MagicFailed(Exception):
    """A cell magic that could not run, or a %%bash cell that failed: its one-line reason and exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def flush_output() -> None:
    """Flush whatever the program left buffered in the standard streams (its own replacements too)."""
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass


def shown_as_image(value: Any) -> bool:
    """Whether the value is a matplotlib figure, which then comes back as an image (once while unchanged),
    as a notebook shows `fig` or display(fig)."""
    figure = sys.modules.get("matplotlib.figure")
    if figure is None or not isinstance(value, figure.Figure):
        return False
    import capture_backend  # matplotlib's: loaded only once the program has a figure

    capture_backend.show_figure(value)
    return True


def is_program_file(filename: str | None) -> bool:
    """Whether a code object's file name is the program's own (<code>, a session's <cell N>)."""
    return filename == "<code>" or (filename or "").startswith("<cell ") and (filename or "").endswith(">")
