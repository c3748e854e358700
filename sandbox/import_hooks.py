"""The worker's import hooks: what follows a few of the program's imports, and IPython stood in for when missing."""

from __future__ import annotations

import importlib.machinery
import os
import sys
import types
from collections.abc import Callable
from typing import Any

import compat
import rich_display
from contract import USER_SITE
from program_io import is_program_file

# pandas' display options once it is imported: a 12-column describe() shows every column (not `...`); a
# wider frame wraps onto more blocks of this width. Rows keep pandas' own limits (60, then head and tail).
PANDAS_DISPLAY = {"display.max_columns": 50, "display.width": 250, "display.max_colwidth": 100}


class ImportHooks:
    """A meta path finder acting on a few imports: pandas gets display options, linecache the program's source,
    and a missing IPython, imported by the program itself, is stood in for by its display module (display(),
    HTML, Markdown ... as text)."""

    after: dict[str, Callable[[types.ModuleType], None]] = {}  # filled below: name -> what follows its import
    pending_sources: dict[str, str] = {}  # file name -> source, for linecache once it is imported
    STAND_INS = ("IPython", "IPython.display")

    @classmethod
    def find_spec(cls, name: str, path: Any = None, target: Any = None) -> Any:
        """The module's spec from the finders after this one, with the hook to run after it; None when not ours."""
        hook = cls.after.pop(name, None)  # popped first: a finder asked below may ask this one again
        if hook is None and name not in cls.STAND_INS:
            return None
        spec = None
        # Only the finders after this one: those before it have declined (or are asking, and would ask again).
        for finder in sys.meta_path[sys.meta_path.index(cls) + 1:] if cls in sys.meta_path else ():
            find = getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find is not None else None
            if spec is not None:
                break
        if spec is None:
            if name not in cls.STAND_INS or not imported_by_program():
                return None
            from notebook_habits import stand_in_spec  # imported only when needed (see notebook_habits.py)

            return stand_in_spec(name)
        if hook is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            execute_module = spec.loader.exec_module

            def exec_module(module: types.ModuleType) -> None:
                execute_module(module)
                try:
                    hook(module)
                except Exception as e:  # noqa: BLE001 - a nicety that fails must not break the program's import
                    print(f"(sandbox: {name} not set up: {type(e).__name__}: {e})", file=sys.stderr)

            spec.loader.exec_module = exec_module
        return spec


class UserSiteFinder:
    """The last meta path finder: what `pip install` put in the user site (contract.USER_SITE) after the
    interpreter first looked there. Python remembers a folder that was missing then as having nothing
    (sys.path_importer_cache holds None for it), so a package installed later in the same run or session
    would not be found: this finder forgets that once the folder is there, and looks again."""

    @staticmethod
    def find_spec(name: str, path: Any = None, target: Any = None) -> Any:
        """The module's spec from the user site when Python took it for missing; None else."""
        if path is not None or sys.path_importer_cache.get(USER_SITE, False) is not None:
            return None  # a submodule, or the user site has a finder already (or was never looked at)
        if not os.path.isdir(USER_SITE):
            return None
        del sys.path_importer_cache[USER_SITE]
        return importlib.machinery.PathFinder.find_spec(name, [USER_SITE], target)


def add_user_site() -> None:
    """The user site on the path before the image's packages, as `python3` puts it once it exists (the
    worker starts before anything is installed), and its finder last."""
    if USER_SITE not in sys.path:
        packages = next((index for index, folder in enumerate(sys.path) if folder.endswith("site-packages")),
                        len(sys.path))
        sys.path.insert(packages, USER_SITE)
    sys.meta_path.append(UserSiteFinder)


def imported_by_program() -> bool:
    """Whether the import under way is the program's own: a library that tries IPython gets its ImportError."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith("<frozen "):  # importlib's own frames
        frame = frame.f_back
    return frame is not None and is_program_file(frame.f_code.co_filename)


def set_pandas_display(pandas: types.ModuleType) -> None:
    """Whole tables within a sensible width (see PANDAS_DISPLAY)."""
    for option, value in PANDAS_DISPLAY.items():
        pandas.set_option(option, value)


def add_sources(linecache: types.ModuleType) -> None:
    """The program's sources waiting for linecache, into its cache (mtime None: never checked against a file)."""
    for filename, code in ImportHooks.pending_sources.items():
        lines = [line + "\n" for line in code.split("\n")]  # the tokenizer's lines, as the traceback numbers them
        lines[-1] = lines[-1][:-1]
        linecache.cache[filename] = (len(code), None, lines, filename)
    ImportHooks.pending_sources.clear()


def remember_source(filename: str, code: str) -> None:
    """Let tracebacks (and warnings) show the program's own lines under its file name (<code>, <cell N>).

    linecache (and tokenize behind it, ~1 ms) is not imported for it: a program that never prints a
    traceback does not pay; one that does imports it, and the source is added then.
    """
    ImportHooks.pending_sources[filename] = code
    if "linecache" in sys.modules:
        add_sources(sys.modules["linecache"])


def load_capture_backend(_pyplot: object) -> None:
    """With pyplot imported, the capture backend is loaded too, even when the program chose Agg first
    (matplotlib.use('Agg') before pyplot): it records saved figures, so they are not captured twice."""
    import capture_backend  # noqa: F401


def after_pandas(pandas: types.ModuleType) -> None:
    """pandas: whole tables when printed, and the removed names LLMs still write (compat.py)."""
    set_pandas_display(pandas)
    compat.patch_pandas(pandas)


def listen_to_capture_backend(capture_backend: types.ModuleType) -> None:
    """Figures shown as images join the run's rich results (the backend tells rich_display)."""
    capture_backend.on_image = rich_display.figure_shown


ImportHooks.after.update({"pandas": after_pandas, "numpy": compat.patch_numpy,
                          "matplotlib.style.core": compat.patch_matplotlib_style, "linecache": add_sources,
                          "matplotlib.pyplot": load_capture_backend, "capture_backend": listen_to_capture_backend,
                          "IPython.core.display_functions": rich_display.patch_ipython})
