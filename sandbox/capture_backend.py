"""matplotlib backend for sandboxed programs: Agg rendering; every figure comes back as an image once.

Images are files in the working folder, where the agent collects them. This backend makes them:

- plt.show() renders each open figure as figure_N.png and closes it, as a notebook's inline backend
  does (the next plot starts a new figure); the worker calls save_open_figures() at the end of a run
  and of each session cell, which does the same for the figures still open;
- a figure the program saved into the working folder itself (plt.savefig('chart.png'), any format,
  any subfolder) is not rendered again while it stays unchanged: it comes back once, under its name;
  changed after that savefig, it is captured again (what the program shows is its final state);
- plt.savefig() after plt.show() saves the figure just shown: matplotlib would save the new, empty
  figure that plt.savefig() makes (the commonest surprise in LLM-written plots). A savefig of a figure
  captured in this run and unchanged since replaces its figure_N.png, so it comes back once;
- a figure shown as a value (`fig` as a cell's last expression, display(fig)) becomes an image then, as
  in a notebook, unless it comes back unchanged already;
- a blank figure (no axes, no artists) never becomes an image;
- a savefig into a subfolder of the working folder that does not exist yet makes it first (LLM-written
  code often saves into output/ without making it);
- saves into subfolders are listed in SAVED_LIST at the end of each run and cell: the agent looks at
  the top of the working folder only otherwise.

"Unchanged" is matplotlib's own `stale` flag: a change to any artist marks its figure stale (that is
how interactive backends know to redraw); the figure is marked fresh once rendered.

matplotlib imports this module when pyplot first needs its backend, before anything is drawn, so
it also installs the font fallbacks (capture_fonts.py). It must stay cheap: it is imported by every plot.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any

import capture_fonts
import matplotlib
from matplotlib import font_manager, pyplot
from matplotlib._pylab_helpers import Gcf
from matplotlib.backend_bases import FigureManagerBase
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _agent_contract() -> ModuleType:
    """contract.py, where the agent names the paths it shares with this backend.

    A Python the program starts itself (python3 plot.py) has only this backend and its fonts on its
    path (links in /opt/matplotlib-backend, see Dockerfile.sandbox), not the agent's folder: the file is
    read from beside this one's real path, under a name of its own, so a program's contract.py neither
    stands in for it nor is displaced by it.
    """
    path = os.path.join(os.path.dirname(os.path.realpath(__file__)), "contract.py")
    spec = importlib.util.spec_from_file_location("sandbox_contract", path)
    contract = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(contract)
    return contract


_contract = _agent_contract()
# Figures go to the working folder, where the agent collects images, wherever the program chdir'ed.
OUTPUT_DIR: str = _contract.WORKSPACE
# Paths (relative to OUTPUT_DIR) of files the program saved figures to below the top of the working
# folder, in the last run or cell: a JSON list, rewritten at each end (see save_open_figures).
SAVED_LIST: str = _contract.SAVED_FIGURES
BACKEND = "module://capture_backend"

_captured = 0  # N of the last figure_N.png
_captured_now: set[str] = set()  # figure_N.png files made by this run or cell: a savefig may replace them
_saved_below: list[str] = []  # saves into subfolders, for SAVED_LIST
_listed = False  # SAVED_LIST was written once: from then on it is rewritten at each end, never left stale
_last_shown: Figure | None = None  # the current figure when figures last became images (for plt.savefig)
_original_savefig = getattr(Figure.savefig, "__wrapped__", Figure.savefig)
# The worker's listener (rich_display.figure_shown): told each time a figure is shown as an image, with the
# image's file name, so that it joins the run's rich results. None in a Python the program started itself.
on_image: Callable[[Figure, str], None] | None = None


class FigureCanvasCapture(FigureCanvasAgg):
    """The Agg canvas, minus redraws that would change nothing."""

    def draw_idle(self, *args: Any, **kwargs: Any) -> None:
        """Draw only a figure changed since it was last drawn.

        Nothing is displayed here: plt.savefig() calls this right after saving, which would otherwise
        render the whole figure a second time.
        """
        if self.figure.stale:
            super().draw_idle(*args, **kwargs)


FigureCanvas = FigureCanvasCapture
FigureManager = FigureManagerBase


def _free_name() -> str:
    """figure_N.png for the next N whose file does not exist yet (never overwrite the program's files)."""
    global _captured
    while True:
        _captured += 1
        name = f"figure_{_captured}.png"
        if not os.path.lexists(os.path.join(OUTPUT_DIR, name)):
            return name


def _is_blank(figure: Figure) -> bool:
    """Whether the figure has nothing to draw (no axes, no artists of its own)."""
    return not (figure.axes or figure.artists or figure.lines or figure.patches or figure.texts or figure.images
                or figure.legends or figure.subfigs)


def _returned_as(figure: Figure) -> tuple[str, str] | None:
    """("saved" or "captured", file name) of the image that holds the figure as it is now, or None."""
    return None if figure.stale else getattr(figure, "_sandbox_image", None)


def _capture(figure: Figure) -> str | None:
    """Render the figure as the next figure_N.png, unless it is blank or comes back unchanged already; the name."""
    if _is_blank(figure) or _returned_as(figure) is not None:
        return None
    name = _free_name()
    # As plt.savefig() does by default; a tight bounding box would cost a second full draw.
    _original_savefig(figure, os.path.join(OUTPUT_DIR, name), format="png")
    figure.stale = False
    figure._sandbox_image = ("captured", name)
    _captured_now.add(name)
    _tell(figure, name)
    return name


def _tell(figure: Figure, name: str) -> None:
    """The worker's listener hears that the figure is shown as the image `name` (never twice in a row for one)."""
    figure._sandbox_told = name
    if on_image is not None:
        try:
            on_image(figure, name)
        except Exception:  # noqa: BLE001 - the image is there whatever its rich result became
            pass


def _capture_and_close() -> list[str]:
    """Every open figure becomes an image (once, in the order they were made), then all are closed; the names."""
    global _last_shown
    active = Gcf.get_active()
    if active is not None and not _is_blank(active.canvas.figure):
        _last_shown = active.canvas.figure
    names, error = [], None
    for manager in sorted(Gcf.get_all_fig_managers(), key=lambda manager: manager.num):
        figure = manager.canvas.figure
        try:
            name = _capture(figure)
        except Exception as e:  # noqa: BLE001 - one figure that cannot be drawn does not cost the others theirs
            error = error or e
            continue
        if name is not None:
            names.append(name)
        elif (returned := _returned_as(figure)) is not None and getattr(figure, "_sandbox_told", None) != returned[1]:
            _tell(figure, returned[1])  # saved by the program, unchanged: shown as that file, as a notebook shows it
    pyplot.close("all")
    if error is not None:
        raise error
    return names


def _workspace_path(fname: Any, file_format: str | None) -> str | None:
    """The path, relative to the working folder, of the file savefig(fname) wrote; None outside it or for a buffer."""
    if isinstance(fname, (str, os.PathLike)):
        path = os.fspath(fname)
        if isinstance(path, str) and file_format is None and not os.path.splitext(path)[1][1:]:
            path = path.rstrip(".") + "." + matplotlib.rcParams["savefig.format"]  # as print_figure names it
    else:
        path = getattr(fname, "name", None)  # an open file: its path, when it has one
    if not isinstance(path, str):
        return None
    full = os.path.realpath(path)
    return full[len(OUTPUT_DIR) + 1:] if full.startswith(OUTPUT_DIR + "/") else None


def _replace_capture(name: str) -> None:
    """Remove figure_N.png, made by this run or cell, that a save of the same figure now holds."""
    global _captured
    try:
        os.unlink(os.path.join(OUTPUT_DIR, name))
    except OSError:
        return
    _captured_now.discard(name)
    if name == f"figure_{_captured}.png":
        _captured -= 1  # the next capture takes its number again: no gap in the names the client sees


def savefig(self: Figure, fname: Any, *args: Any, **kwargs: Any) -> Any:
    """Figure.savefig that notes what the program saved, and saves the figure just shown rather than a blank one."""
    figure = self
    if _last_shown is not None and _last_shown is not self and _is_blank(self):
        figure = _last_shown
    before = _returned_as(figure)
    try:
        saved = _workspace_path(fname, kwargs.get("format"))
    except Exception:  # noqa: BLE001 - matplotlib says what is wrong with a name it cannot save under
        saved = None
    if saved is not None and "/" in saved:
        # LLM-written code often saves into output/ without making it: the chart would be lost to a
        # FileNotFoundError. Only folders inside the working folder are made.
        try:
            os.makedirs(os.path.join(OUTPUT_DIR, os.path.dirname(saved)), exist_ok=True)
        except OSError:
            pass  # a file in the way, no room...: savefig itself says so
    result = _original_savefig(figure, fname, *args, **kwargs)
    try:
        _note_saved(figure, saved, before)
    except Exception:  # noqa: BLE001 - the program's savefig succeeded: the bookkeeping never makes it fail
        figure._sandbox_image = None
    return result


savefig.__wrapped__ = _original_savefig  # type: ignore[attr-defined]
savefig.__doc__ = _original_savefig.__doc__


def _note_saved(figure: Figure, saved: str | None, before: tuple[str, str] | None) -> None:
    """After a savefig: the figure is fresh again; it comes back as the saved file if that is in the working folder."""
    # Fresh: rendered just now (savefig's own restoring of colours and dpi marked it stale), so only a
    # later change marks it stale again, and plt.savefig's draw_idle has nothing to redraw.
    figure.stale = False
    if saved is None:
        figure._sandbox_image = before  # a buffer, or a file outside the folder: returned as before, if at all
        return
    if before is not None and before[0] == "captured" and before[1] in _captured_now:
        _replace_capture(before[1])
    figure._sandbox_image = ("saved", saved)
    if "/" in saved and saved not in _saved_below:
        _saved_below.append(saved)


def _write_saved_list() -> None:
    """SAVED_LIST: this run's or cell's saves into subfolders (written once any was, then at every end)."""
    global _listed
    if not (_saved_below or _listed):
        return
    try:
        with open(SAVED_LIST, "w", encoding="utf-8") as f:
            json.dump(_saved_below, f)
        _listed = True
    except OSError:
        pass  # the program took /tmp away: its subfolder figures are not listed
    _saved_below.clear()


def show(*args: Any, **kwargs: Any) -> None:
    """Like a notebook's inline backend: open figures become images (once each) and are closed."""
    _capture_and_close()


def show_figure(figure: Figure) -> str | None:
    """A figure the program shows as a value (`fig` last in a cell, display(fig)): an image now, unless it
    comes back unchanged already (then the listener hears of that image again) or is blank; the new name."""
    name = _capture(figure)
    if name is None and (returned := _returned_as(figure)) is not None:
        _tell(figure, returned[1])
    return name


def save_open_figures() -> list[str]:
    """The end of a run or cell: open figures become images (once each) and are closed; the new files' names."""
    try:
        return _capture_and_close()
    finally:
        _write_saved_list()
        _captured_now.clear()


def switch_backend(newbackend: str) -> None:
    """pyplot.switch_backend, with "agg" meaning this backend (Agg too): `matplotlib.use('Agg')` keeps plt.show()."""
    if isinstance(newbackend, str) and newbackend.lower() == "agg":
        newbackend = BACKEND
    _switch_backend(newbackend)


_switch_backend = getattr(pyplot.switch_backend, "__wrapped__", pyplot.switch_backend)
switch_backend.__wrapped__ = _switch_backend  # type: ignore[attr-defined]
Figure.savefig = savefig
pyplot.switch_backend = switch_backend
capture_fonts.install(font_manager)
