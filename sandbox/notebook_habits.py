"""Notebook habits of programs written for IPython, for the worker: imported only when a program needs one.

- translate(): IPython's magics made Python, line by line (line numbers kept): `%matplotlib inline`
  and other setup magics do nothing, `%time`/`%timeit` run their statement once and print its time,
  `%pip install` / `!pip install` run pip when the run may reach the network (into the workspace, see
  contract.USER_SITE), and else answer on stderr at once that nothing can be installed, `!cmd` runs
  in bash as IPython runs it, `%cd`, `%env`, `%run` ...; a cell magic opens a cell: `%%time` runs it
  timed, `%%bash` in bash, `%%writefile` writes it; the others are refused in one line.
- error_summary(): the report's short `error`, the exception and the program's line.
- The stand-in for IPython.display when IPython is not installed (display(), HTML, Markdown ... as text).

A program that needs none of it (no magic, no exception) never imports this module: the worker's
start-up pays nothing for it.
"""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Callable
from typing import Any

from bash_runner import run_bash_cell
from program_io import MagicFailed, flush_output, is_program_file
from rich_display import display

# Line magics that set up a notebook's display or extensions: nothing to do here (figures are captured anyway).
QUIET_MAGICS = frozenset({"matplotlib", "config", "load_ext", "reload_ext", "unload_ext", "autoreload", "aimport",
                          "xmode", "colors", "autosave"})
TIMING_MAGICS = frozenset({"time", "timeit"})  # their statement runs once, timed
# IPython's shell aliases (%ls is `ls`...), %pip's other subcommands, and %sx / %system: a command line.
SHELL_ALIASES = {"ls": "ls", "ll": "ls -l", "cat": "cat", "cp": "cp", "mv": "mv", "rm": "rm", "mkdir": "mkdir",
                 "rmdir": "rmdir", "pip": "python3 -m pip", "sx": "", "system": ""}
PYTHON_CELL_MAGICS = frozenset({"time", "timeit", "capture", "python", "python3"})  # the cell is Python: it runs
SHELL_CELL_MAGICS = frozenset({"bash", "sh"})
# A package installation, in a `%pip ...` or `!...` line (also `!{sys.executable} -m pip install x`).
INSTALL_COMMAND = r"(?:\bpip3?|-m\s+pip|\bconda|\bmamba|\bapt-get|\bapt)\s+install\b"
# Installed packages named in the answer to an install, when there (the image's dependencies and the usual others).
SHOWN_PACKAGES = ("numpy", "pandas", "scipy", "matplotlib", "seaborn", "scikit-learn", "statsmodels", "sympy",
                  "pillow", "openpyxl", "xlrd", "tabulate", "pyarrow", "plotly", "networkx", "requests",
                  "beautifulsoup4", "lxml", "tqdm", "polars", "xgboost", "lightgbm", "opencv-python-headless",
                  "nltk", "jieba")
IMPORT_NAMES = {"sklearn": "scikit-learn", "pil": "pillow", "bs4": "beautifulsoup4", "cv2": "opencv-python-headless"}
MAX_SUMMARY_MESSAGE = 300  # characters of the exception's message in the short `error`
MAX_SUMMARY_LINE = 200  # characters of the program's line in it


class Notebook:
    """A cell written for IPython, made Python: its code (same line numbers), %time lines, and its cell magic."""

    def __init__(self) -> None:
        self.code = ""
        self.timed: dict[int, str] = {}  # line number -> "time" or "timeit"
        self.cell_timer: str | None = None  # %%time, %%timeit: the whole cell
        self.action: Callable[[], None] | None = None  # a cell magic whose body is not Python (%%bash, %%writefile)


def translate(code: str) -> Notebook | None:
    """The code with its IPython magics made Python, or None when it has none.

    Only a line that starts a statement (not inside brackets or a string, nor after a backslash) is looked
    at: a `%` or `!` there is never Python, so no valid program changes. Each magic line becomes one line
    of Python: line numbers stay the program's. A cell magic (`%%time`) must open the cell.
    """
    lines = code.split("\n")  # what the tokenizer counts as lines (str.splitlines breaks at \f and others too)
    notebook = Notebook()
    first = next((index for index, line in enumerate(lines) if line.strip()), len(lines))
    cell_magic = first < len(lines) and lines[first].lstrip().startswith("%%")
    if cell_magic:
        name, _, arguments = lines[first].strip()[2:].partition(" ")
        if name not in PYTHON_CELL_MAGICS:
            notebook.action = cell_action(name, arguments.strip(), "\n".join(lines[first + 1:]))
            return notebook
        # %%timeit's own line may hold a setup statement (after its options); it runs once, untimed.
        lines[first] = strip_timing_options(arguments) if name == "timeit" else ""
        notebook.cell_timer = name if name in TIMING_MAGICS else None
    if not translate_lines(lines, notebook.timed) and not cell_magic:
        return None
    notebook.code = "\n".join(lines)
    return notebook


def translate_lines(lines: list[str], timed: dict[int, str]) -> bool:
    """Replace each magic line that starts a statement by its Python (see magic_line); whether there was one.

    One pass over the text, tracking brackets, strings and backslash continuations as the tokenizer would.
    """
    changed = False
    depth, quote, continued = 0, "", False
    for index in range(len(lines)):
        if depth == 0 and not quote and not continued:
            python = magic_line(lines, index, timed)
            if python is not None:
                lines[index], changed = python, True
        line, position, continued = lines[index], 0, False
        end = len(line.rstrip("\r"))
        while position < end:
            character = line[position]
            if quote:
                if character == "\\":
                    position += 2
                    continue
                if line.startswith(quote, position):
                    position += len(quote)
                    quote = ""
                    continue
            elif character == "#":
                break
            elif character in "([{":
                depth += 1
            elif character in ")]}":
                depth = max(depth - 1, 0)
            elif character in "'\"":
                quote = character * 3 if line.startswith(character * 3, position) else character
                position += len(quote)
                continue
            elif character == "\\" and position == end - 1:
                continued = True
            position += 1
        if len(quote) == 1 and position <= end:  # a one-quote string ends with its line, unless escaped across it
            quote = ""
    return changed


def magic_line(lines: list[str], index: int, timed: dict[int, str]) -> str | None:
    """The Python for a line that starts a statement when it is a magic (%name, !command, pip install ...), else None.

    `%time stmt` becomes `stmt` (its line noted in `timed`); setup magics become `pass`; the others a call
    of line_magic. A backslash at the end of a command line takes the next line in (that one becomes blank).
    """
    line = lines[index]
    stripped = line.lstrip(" \t\f")
    indent, ending = line[:len(line) - len(stripped)], "\r" if line.endswith("\r") else ""
    text = stripped.removesuffix("\r")
    if text.startswith("%") and not text.startswith("%%"):
        import re

        name = re.match(r"[A-Za-z_]\w*(?=\s|$)", text[1:])
        if name is None:
            return None
        prefix, text = "%", text[1:]
        if name[0] in QUIET_MAGICS:
            return f"{indent}pass{ending}"
        if name[0] in TIMING_MAGICS:
            statement = strip_timing_options(text[name.end():])
            if not statement:
                return f"{indent}pass{ending}"
            timed[index + 1] = name[0]
            return f"{indent}{statement}{ending}"
    elif text.startswith("!") and not text.startswith("!="):
        prefix, text = "!", text[1:].removeprefix("!")  # IPython's `!!cmd` (output as a list): run it all the same
    else:
        import re

        if re.match(r"(?:pip3?|conda|mamba)\s+install\b", text) is None:  # `pip install x` without its `!`
            return None
        prefix = "!"
    while text.endswith("\\") and index + 1 < len(lines):
        index += 1
        text = text[:-1] + " " + lines[index].strip()
        lines[index] = ""
    return f"{indent}__import__('notebook_habits').line_magic({prefix!r}, {text.strip()!r}){ending}"


def strip_timing_options(text: str) -> str:
    """The statement of a %time / %timeit line, without %timeit's options (-n 100 -r 7 ...)."""
    import re

    return re.sub(r"\A\s*(?:-[nrp]\s*\d+\s+|-[tcqov]\s+)*", "", text).strip()


def cell_action(name: str, arguments: str, body: str) -> Callable[[], None]:
    """What a cell magic whose body is not Python does: %%bash runs it, %%writefile writes it; others are refused."""
    if name in SHELL_CELL_MAGICS or (name == "script" and arguments.split()[:1] in (["bash"], ["sh"])):
        def run_shell() -> None:
            status = shell(body)
            if status:
                raise MagicFailed(f"the %%{name} cell exited with code {status}", status)
        return run_shell
    if name == "writefile":
        return lambda: write_file(arguments, body)

    def refuse() -> None:
        raise MagicFailed(f"%%{name} is a notebook cell magic this sandbox does not run (its output is text "
                          "and files only); the cell did not run")
    return refuse


def write_file(arguments: str, body: str) -> None:
    """%%writefile [-a] NAME: the cell's text into the file, as IPython writes it."""
    import shlex

    words = shlex.split(arguments)
    names = [word for word in words if not word.startswith("-")]
    if not names:
        raise MagicFailed("%%writefile needs a file name: %%writefile NAME")
    append, path = "-a" in words or "--append" in words, os.path.expanduser(names[0])
    said = "Appending to" if append else "Overwriting" if os.path.exists(path) else "Writing"
    with open(path, "a" if append else "w", encoding="utf-8") as f:
        f.write(body if body.endswith("\n") else body + "\n")
    print(f"{said} {names[0]}")


def line_magic(prefix: str, text: str) -> Any:
    """What IPython does for a `%name arguments` or `!command` line (translate() makes each a call of this)."""
    import re

    caller = sys._getframe(1)
    text = expand(text, {**caller.f_globals, **caller.f_locals})
    if re.search(INSTALL_COMMAND, text):
        if not may_install(text):
            say_no_install(text)
            return None
        shell(f"python3 -m {text}" if prefix == "%" else text)
        import importlib

        importlib.invalidate_caches()  # the next import looks at the user site's folders again
        return None
    if prefix == "!":
        shell(text)
        return None
    name, _, arguments = text.partition(" ")
    arguments = arguments.strip()
    if name in SHELL_ALIASES:
        shell(f"{SHELL_ALIASES[name]} {arguments}".strip())
    elif name == "cd":
        os.chdir(os.path.expanduser(arguments.strip("'\"") or "~"))
        print(os.getcwd())
    elif name == "pwd":
        return os.getcwd()
    elif name == "env":
        return environment_magic(arguments)
    elif name == "run":
        run_script(arguments)
    elif name == "who":
        print("  ".join(sorted(name for name, value in vars(sys.modules["__main__"]).items()
                               if not name.startswith("_") and not isinstance(value, types.ModuleType))))
    else:
        print(f"%{name} is an IPython magic this sandbox does not run: the line was skipped", file=sys.stderr)
    return None


def expand(text: str, namespace: dict[str, Any]) -> str:
    """IPython's expansion of a magic's line: `{expression}` and `$name` become their Python values.

    What does not evaluate stays as it is, as in IPython: `${HOME}`, awk's `{print $1}`, `$PATH` (not a
    Python name here) reach bash unchanged.
    """
    import re

    def value(match: re.Match[str]) -> str:
        if match[2] is not None:
            return str(namespace[match[2]]) if match[2] in namespace else match[0]
        try:
            return str(eval(match[1], namespace))  # the program's own expression, in its own namespace
        except Exception:  # noqa: BLE001 - not Python (a bash construct): left to bash
            return match[0]

    return re.sub(r"(?<!\$)\{([^{}\n]+)\}|\$([A-Za-z_]\w*)", value, text)


def environment_magic(arguments: str) -> Any:
    """%env: all variables, one variable, or `%env NAME=value` / `%env NAME value` sets one."""
    if not arguments:
        return dict(os.environ)
    name, separator, value = arguments.partition("=") if "=" in arguments else arguments.partition(" ")
    if not separator:
        return os.environ.get(name)
    os.environ[name.strip()] = value.strip()
    print(f"env: {name.strip()}={value.strip()}")
    return None


def run_script(arguments: str) -> None:
    """%run script.py [args]: the script as __main__ with those arguments; its globals join the program's."""
    import runpy
    import shlex

    words = shlex.split(arguments)
    while words and words[0].startswith("-"):  # -i, -t, -e...: the script runs once, here, whatever they ask
        words.pop(0)
    if not words:
        raise MagicFailed("%run needs a script: %run script.py [arguments]")
    argv, sys.argv = sys.argv, words
    try:
        names = runpy.run_path(words[0], run_name="__main__")
    finally:
        sys.argv = argv
    vars(sys.modules["__main__"]).update((name, value) for name, value in names.items() if not name.startswith("__"))


def shell(command: str) -> int:
    """A command line run by bash, as IPython's `!` runs it: its output is the program's; its status is _exit_code."""
    flush_output()  # what the program printed comes before the command's output
    status = run_bash_cell(command, {}, reraise=True)
    vars(sys.modules["__main__"])["_exit_code"] = status
    return status


def may_install(command: str) -> bool:
    """Whether a package installation can run: a pip one, with the network open (its proxy variables set)."""
    import re

    return "HTTPS_PROXY" in os.environ and re.search(r"(?:\bpip3?|-m\s+pip)\s+install\b", command) is not None


def say_no_install(command: str) -> None:
    """One line on stderr: nothing is installed at run time; which of the packages asked for (and others) are there."""
    import re

    installed = installed_packages()
    words = re.split(r"\s+", re.split(r"&&|\|\||[;|]", command)[0].strip())
    start = next((index + 1 for index, word in enumerate(words) if word == "install"), len(words))
    tool = words[start - 2] if start >= 2 and words[start - 2] in ("conda", "mamba", "apt", "apt-get") else "pip"
    there, missing = [], []
    for word in words[start:]:
        if word.startswith("-") or not word:
            continue
        asked = re.split(r"[<>=!~\[;@ ]", word.strip("'\""), maxsplit=1)[0]
        key = IMPORT_NAMES.get(asked.lower(), package_key(asked))
        (there if key in installed else missing).append(f"{asked} {installed[key]}" if key in installed else asked)
    parts = ["packages cannot be installed at run time: "
             + ("only pip installs, into the workspace" if tool != "pip" and "HTTPS_PROXY" in os.environ
                else "this run cannot reach the network (see the docs' Egress page)")]
    if there:
        parts.append(f"already installed: {', '.join(there)}")
    if missing:
        parts.append(f"not available: {', '.join(missing)}")
    shown = [name for name in SHOWN_PACKAGES if name in installed]
    print(f"{tool} install: " + "; ".join(parts) + (f". Installed: {', '.join(shown)}" if shown else ""),
          file=sys.stderr)


def package_key(name: str) -> str:
    """A distribution name as pip compares them (PEP 503): lower case, runs of -_. as one -."""
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def installed_packages() -> dict[str, str]:
    """name -> version of each distribution on the path, from its .dist-info folder's name (no metadata is read)."""
    found: dict[str, str] = {}
    for folder in sys.path:
        try:
            names = os.listdir(folder or ".")
        except OSError:
            continue
        for name in names:
            if name.endswith(".dist-info"):
                project, _, version = name.removesuffix(".dist-info").rpartition("-")
                found.setdefault(package_key(project), version)
    return found


class Timer:
    """%time / %timeit of a statement (or a cell, with %%): it runs once, and its times are printed as IPython does."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __enter__(self) -> Timer:
        import time

        self.started, self.times = time.perf_counter(), os.times()
        return self

    def __exit__(self, kind: type | None, value: object, traceback: object) -> None:
        import time

        if kind is not None:
            return  # as IPython: no times for a statement that failed
        wall = time.perf_counter() - self.started
        times = os.times()
        user, system = times.user - self.times.user, times.system - self.times.system
        if self.kind == "timeit":
            print(f"{seconds_text(wall)} per loop (1 run, 1 loop: the sandbox runs the statement once)")
        else:
            print(f"CPU times: user {seconds_text(user)}, sys: {seconds_text(system)}, total: "
                  f"{seconds_text(user + system)}\nWall time: {seconds_text(wall)}")


def seconds_text(seconds: float) -> str:
    """A duration with three significant digits in the unit that suits it (s, ms, µs, ns), as IPython shows it."""
    for unit, scale in (("s", 1.0), ("ms", 1e3), ("µs", 1e6)):
        if seconds * scale >= 1:
            return f"{seconds * scale:.3g} {unit}"
    return f"{seconds * 1e9:.3g} ns"


def time_statements(tree: Any, timed: dict[int, str]) -> None:
    """Wrap each statement that a %time / %timeit line became in `with Timer(kind):` (at any depth of the tree)."""
    import ast

    for node in ast.walk(tree):
        for field in ("body", "orelse", "finalbody"):
            statements = getattr(node, field, None)
            if not isinstance(statements, list):
                continue
            for index, statement in enumerate(statements):
                kind = timed.pop(statement.lineno, None) if isinstance(statement, ast.stmt) else None
                if kind is not None:
                    wrapper = ast.parse(f"with __import__('notebook_habits').Timer({kind!r}): pass").body[0]
                    for part in ast.walk(wrapper):
                        ast.copy_location(part, statement)  # its errors point at the user's line
                    wrapper.body = [statement]
                    statements[index] = wrapper


def stand_in_spec(name: str) -> Any:
    """A spec for the stand-in of IPython (a package holding only display) when IPython is not installed."""
    from importlib.machinery import ModuleSpec

    return ModuleSpec(name, StandInLoader, is_package=name == "IPython")


class StandInLoader:
    """Makes the stand-in modules of IPython and IPython.display."""

    @staticmethod
    def create_module(spec: Any) -> None:
        """The default module."""
        return None

    @staticmethod
    def exec_module(module: types.ModuleType) -> None:
        """Fill the stand-in: get_ipython() in IPython (None: not a notebook), display's names in IPython.display."""
        if module.__name__ == "IPython":
            module.__dict__["get_ipython"] = lambda: None
            return
        names = {"display": display, "clear_output": lambda wait=False: None}
        for kind in ("HTML", "Markdown", "Latex", "Math", "JSON", "Code", "Pretty", "SVG", "Javascript", "Image"):
            names[kind] = type(kind, (RichText,), {"__module__": module.__name__})
        module.__dict__.update(names)


class RichText:
    """IPython.display's HTML, Markdown, Image ... where output is text: display() prints what they hold."""

    def __init__(self, data: Any = None, url: str | None = None, filename: str | None = None, **options: Any) -> None:
        self.data = data if data is not None else filename or url or ""

    def __repr__(self) -> str:
        if type(self).__name__ == "Image" or isinstance(self.data, bytes):
            return f"<{type(self).__name__}: {self.data if isinstance(self.data, str) else 'data'}>"
        return str(self.data)


def one_line(text: str, limit: int) -> str:
    """The first non-blank line of text, cut at limit characters; … says that something was left out."""
    lines = [line.strip() for line in text.strip().splitlines()]
    first = lines[0] if lines else ""
    if len(first) > limit:
        return first[:limit] + "…"
    return first + (" …" if len(lines) > 1 else "")


def error_summary(error: BaseException, filename: str) -> str:
    """The report's short `error`: the exception and the program's line it came from, e.g.
    "ZeroDivisionError: division by zero (line 3: total = a / b)"; that line is the deepest frame of the
    program's own code (its call into a library, say). All of the traceback is in stderr."""
    import linecache

    kind = type(error)
    name = kind.__qualname__
    if kind.__module__ not in ("builtins", "__main__"):  # as the traceback names it: pandas.errors.ParserError
        name = f"{kind.__module__}.{name}"
    where: str | None = None
    line_number: int | None = None
    if isinstance(error, SyntaxError) and is_program_file(error.filename):
        message, where, line_number, text = str(error.msg), error.filename, error.lineno, error.text or ""
    else:
        message = str(error)
        tb = error.__traceback__
        while tb is not None:
            if is_program_file(tb.tb_frame.f_code.co_filename):
                where, line_number = tb.tb_frame.f_code.co_filename, tb.tb_lineno
            tb = tb.tb_next
        text = linecache.getline(where, line_number) if where and line_number else ""
    summary = f"{name}: {one_line(message, MAX_SUMMARY_MESSAGE)}" if message.strip() else name
    if where and line_number:
        place = f"line {line_number}" if where == filename else f"{where.strip('<>')}, line {line_number}"
        source = one_line(text, MAX_SUMMARY_LINE)
        summary += f" ({place}: {source})" if source else f" ({place})"
    if reached_for_the_network(error):
        summary += f" - {NO_NETWORK}"
    return summary


NO_NETWORK = "the sandbox has no network: give the program its data as files (the request's files, a session upload)"


def reached_for_the_network(error: BaseException) -> bool:
    """Whether the error, or one it came from, is a failed connection or name lookup (sns.load_dataset,
    requests.get, urlopen): the sandbox has no network at all."""
    import errno
    import socket

    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (socket.gaierror, ConnectionError)) or (
                isinstance(current, OSError) and current.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH)) or (
                type(current).__name__ in ("URLError", "ConnectionError", "NewConnectionError", "MaxRetryError")):
            return True
        current = current.__cause__ or current.__context__ or getattr(current, "reason", None)
        if not isinstance(current, BaseException):
            current = None
    return False
