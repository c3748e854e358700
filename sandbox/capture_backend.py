"""matplotlib backend for sandboxed programs: Agg rendering; plt.show() saves open figures as PNG files."""

from __future__ import annotations

import os

from matplotlib.backend_bases import FigureManagerBase
from matplotlib.backends.backend_agg import FigureCanvasAgg

FigureCanvas = FigureCanvasAgg
FigureManager = FigureManagerBase

# Figures go to the working folder, where the agent collects images, wherever the program chdir'ed.
OUTPUT_DIR = "/workspace"
_saved = 0


def _free_name() -> str:
    """figure_N.png for the next N whose file does not exist yet (never overwrite the program's files)."""
    global _saved
    while True:
        _saved += 1
        name = f"figure_{_saved}.png"
        if not os.path.lexists(os.path.join(OUTPUT_DIR, name)):
            return name


def save_open_figures() -> list[str]:
    """Write every open figure to the working folder as PNG, close them, return the file names."""
    import matplotlib.pyplot as plt
    from matplotlib._pylab_helpers import Gcf

    names = []
    for manager in Gcf.get_all_fig_managers():
        name = _free_name()
        # As plt.savefig() does by default; a tight bounding box would cost a second full draw.
        manager.canvas.figure.savefig(os.path.join(OUTPUT_DIR, name), format="png")
        names.append(name)
    plt.close("all")
    return names


def show(*args: object, **kwargs: object) -> None:
    """Like a notebook's inline backend: shown figures become images and are closed."""
    save_open_figures()
