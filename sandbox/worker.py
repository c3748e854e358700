"""Runs untrusted code as the unprivileged sandbox user; forked by agent.py, one per container.

Protocol: the agent forks, drops the child to the sandbox user (see agent.become_worker) and calls
main(STATUS_FD) with the command pipe as stdin and output pipes as stdout and stderr. The worker
keeps the command pipe to itself (the program's stdin is /dev/null), makes itself a fresh
interpreter, writes b"r" to STATUS_FD and reads a line of commands:
"warm GROUPS REST" makes it import the heavy modules ahead of time (see preload: it writes b"w" once
the groups named are in, b"a" once all are) and reads again;
"session" makes it a session's interpreter (see serve_session: it writes b"s", then runs cells);
any other line is the one job, one line of JSON (json is already loaded: the agent imported it):
{"language": "python"|"bash", "code": str, "variables": {name: JSON value (a string for bash)}}.
Python runs in this very process (so pre-imports pay off), then the worker writes the result
record {"result": repr of the last expression or null, "error"?: one line} as a line to STATUS_FD;
bash replaces it with exec.

Programs written for notebooks run too: IPython's magics (%matplotlib, %time, !ls, %%bash, ...) are
made Python line by line, pandas gets display options for whole tables, and a missing IPython is
stood in for by its display module (see ImportHooks, and notebook_habits.py for the rest).
"""

from __future__ import annotations

import atexit
import builtins
import gc
import io
import json
import os
import signal
import site
import sys
import threading
import types
from collections.abc import Callable
from typing import Any, BinaryIO, NoReturn

import compat
from contract import FIRST_FIGURE, WARM_UP_GROUPS, WarmUpGroup, cut_result

SANDBOX_DIR = os.path.dirname(os.path.abspath(__file__))
FONT_CACHE = "/opt/matplotlib-cache"
# bash's command line: it reads the program whole from the inherited file descriptor, then runs it
# with that descriptor closed. Errors read as with `bash -c` ("bash: line 2: foo: command not found").
BASH_RUNNER = 'eval "$(< /dev/fd/{fd})" {fd}<&-'
# Python ignores SIGPIPE, and bash would inherit that: `yes | head -1` would end with "yes: standard
# output: Broken pipe". SIGXFSZ stays ignored in the whole sandbox: over the file size limit, a write
# fails with EFBIG (which a program can report) rather than killing it.
KEPT_IGNORED = frozenset({signal.SIGXFSZ})
BASH_INTERRUPT_SECONDS = 1.0  # a bash cell's process group gets this long after SIGINT, then SIGKILL
EXIT_NOTE = "(exit() ends this cell, not the session: the interpreter and its state are kept)"
# pandas' display options once it is imported: a 12-column describe() shows every column (not `...`); a
# wider frame wraps onto more blocks of this width. Rows keep pandas' own limits (60, then head and tail).
PANDAS_DISPLAY = {"display.max_columns": 50, "display.width": 250, "display.max_colwidth": 100}


def take_command_pipe() -> BinaryIO:
    """The command pipe, moved off stdin to a private descriptor; stdin becomes /dev/null for the program."""
    commands = os.fdopen(os.dup(0), "rb")  # os.dup: close-on-exec, so no program inherits it
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    return commands


def become_fresh_interpreter() -> None:
    """What `python3` with worker_environment() would have set up, which the agent's interpreter has not.

    The agent runs with -E -S: the program gets the site packages (and exit(), help()) back,
    unbuffered UTF-8 standard streams on its pipes, and no bytecode written.
    """
    site.main()
    sys.dont_write_bytecode = True
    sys.stdin = sys.__stdin__ = open(0, encoding="utf-8", closefd=False)
    sys.stdout = sys.__stdout__ = io.TextIOWrapper(open(1, "wb", buffering=0, closefd=False),
                                                   encoding="utf-8", errors="strict", write_through=True)
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(open(2, "wb", buffering=0, closefd=False),
                                                   encoding="utf-8", errors="backslashreplace", write_through=True)
    builtins.display = display  # type: ignore[attr-defined]
    sys.meta_path.insert(0, ImportHooks)  # after site.main(): sitecustomize's finders come after this one
    # The working folder, as `python3 -c` puts it on the path: a program imports the modules it wrote
    # (%%writefile helper.py) or was given. After the sandbox's own folder: a program's fonts.py does
    # not stand in for the sandbox's.
    sys.path.insert(sys.path.index(SANDBOX_DIR) + 1 if SANDBOX_DIR in sys.path else 0, "")


def display(*objects: Any) -> None:
    """A notebook's display(): a matplotlib figure as an image, a string as itself, anything else as its repr."""
    for obj in objects:
        if not shown_as_image(obj):
            print(obj if isinstance(obj, str) else repr(obj))


def shown_as_image(value: Any) -> bool:
    """Whether the value is a matplotlib figure, which then comes back as an image (once while unchanged),
    as a notebook shows `fig` or display(fig)."""
    figure = sys.modules.get("matplotlib.figure")
    if figure is None or not isinstance(value, figure.Figure):
        return False
    import capture_backend

    capture_backend.show_figure(value)
    return True


def prepare_matplotlib() -> None:
    """Point matplotlib at our capture backend and a writable copy of the prebuilt font cache."""
    config_dir = os.environ["MPLCONFIGDIR"]
    if os.path.isdir(FONT_CACHE) and not os.path.exists(config_dir):
        os.mkdir(config_dir)
        for name in os.listdir(FONT_CACHE):  # a file or two: no need for shutil's import
            with open(os.path.join(FONT_CACHE, name), "rb") as source:
                data = source.read()
            with open(os.path.join(config_dir, name), "wb") as copy:
                copy.write(data)
    sys.path.append(SANDBOX_DIR)  # so matplotlib can import module://capture_backend


def draw_first_figure() -> None:
    """Draw and encode one throw-away figure."""
    import matplotlib.pyplot as plt

    figure = plt.figure()
    plt.plot([1, 2, 3], [3, 1, 2])
    plt.title("warm-up 预热")
    figure.savefig(io.BytesIO(), format="png")
    plt.close("all")


def preload(first: tuple[str, ...], rest_delay: float, commands: BinaryIO, status_fd: int) -> None:
    """Import what data-science programs use and draw one throw-away figure, so their run pays none of it.

    The groups named in `first` come first; the others only after `rest_delay` more seconds with no job
    (a session's interpreter takes them at once: its cells may use any). Between two steps it stops once
    a job is waiting: a program taken mid-warm-up waits for one step (tens of milliseconds), not for the
    libraries it may not need; it imports what is left itself. Writes b"w" once the first groups are
    in, b"a" once all are.
    """
    groups = [group for group in WARM_UP_GROUPS if group.name in first]
    rest = [group for group in WARM_UP_GROUPS if group.name not in first]
    finished = take_steps(groups, commands)
    freeze_heap()
    if not finished:
        return
    os.write(status_fd, b"w")
    if rest:
        if job_arrives(commands, rest_delay):
            return
        finished = take_steps(rest, commands)
        freeze_heap()
        if not finished:
            return
    os.write(status_fd, b"a")


def freeze_heap() -> None:
    """Take everything imported so far out of the garbage collector's view: it lives as long as the
    process, and the program's first allocations would otherwise pay a full collection of it (~40 ms)."""
    gc.collect()
    gc.freeze()


def take_steps(groups: list[WarmUpGroup], commands: BinaryIO) -> bool:
    """Take the groups' steps in order; False when a job came first (the step under way is finished)."""
    import importlib

    for group in groups:
        for step in group.steps:
            if job_arrives(commands, 0):
                return False
            if step == FIRST_FIGURE:
                draw_first_figure()
            else:
                importlib.import_module(step)
    return True


def job_arrives(commands: BinaryIO, seconds: float) -> bool:
    """Whether a job (a line of JSON) comes on the command pipe within `seconds`. A "session" command
    is not one: a session's interpreter finishes its warm-up first, as its cells will use what it imports."""
    import select

    # Only new bytes wake select; peek leaves them in the buffer for the readline that follows.
    return bool(select.select([commands], [], [], seconds)[0]) and commands.peek(1)[:1] == b"{"


def finish(status: int) -> None:
    """Exit as the interpreter would (threads joined, atexit run, output flushed), minus module teardown.

    Tearing down numpy, pandas and matplotlib costs tens of milliseconds nobody needs: the
    container is thrown away right after.
    """
    threading._shutdown()  # waits for the program's non-daemon threads, as interpreter exit does
    atexit._run_exitfuncs()
    flush_output()
    os._exit(status & 0xFF)


def flush_output() -> None:
    """Flush whatever the program left buffered in the standard streams (its own replacements too)."""
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass


def write_record(status_fd: int, record: dict[str, Any]) -> None:
    """One JSON line to the agent on the status pipe (ASCII: no byte of it can be a newline)."""
    data = memoryview(json.dumps(record).encode() + b"\n")
    try:
        while data:
            data = data[os.write(status_fd, data):]
    except OSError:
        pass  # the program closed it: the agent gets no record, and says so


def main_module() -> types.ModuleType:
    """A fresh __main__ for the program, as `python3 program.py` has."""
    main = types.ModuleType("__main__")
    main.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = main
    return main


def shown_result(value: Any) -> str | None:
    """The text a notebook shows for a value: its repr, cut at MAX_RESULT_CHARS; None for None and for a
    figure (shown as an image instead)."""
    if value is None or shown_as_image(value):
        return None
    return cut_result(repr(value))


def execute(code: str, namespace: dict[str, Any], filename: str) -> str | None:
    """Run code in namespace; return the repr of its last statement's value when that is an expression.

    The last expression is evaluated on its own, as a notebook does; line numbers are the code's.
    Code that is not Python only for its IPython magics runs as translate() makes it. Exceptions are
    the caller's. dont_inherit: this file's `from __future__` imports are not the program's.
    """
    import _ast  # ~0.5 ms: paid by Python runs only, not at every worker's start

    notebook = None
    try:
        tree = compile(code, filename, "exec", _ast.PyCF_ONLY_AST, dont_inherit=True)
    except SyntaxError:
        from notebook_habits import translate

        # Magics are never Python: only code that does not compile is looked at (plain programs pay nothing).
        notebook = translate(code)
        if notebook is None:
            raise
    if notebook is None:
        return run_tree(tree, namespace, filename, {}, code)
    # Out of the `except` block: an error of the program is not shown "during handling of" the SyntaxError.
    if notebook.action is not None:
        notebook.action()
        return None
    tree = compile(notebook.code, filename, "exec", _ast.PyCF_ONLY_AST, dont_inherit=True)
    if notebook.cell_timer is None:
        return run_tree(tree, namespace, filename, notebook.timed, notebook.code)
    from notebook_habits import Timer

    with Timer(notebook.cell_timer):
        return run_tree(tree, namespace, filename, notebook.timed, notebook.code)


def run_tree(tree: Any, namespace: dict[str, Any], filename: str, timed: dict[int, str], source: str) -> str | None:
    """Execute a module's syntax tree (of `source`), its last expression evaluated apart (see execute);
    `timed`: %time lines. A last expression followed by ';' shows nothing, as in a notebook."""
    import _ast

    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], _ast.Expr) else None
    quiet = last is not None and followed_by_semicolon(source, last)
    last_timer = timed.pop(last.lineno, None) if last is not None and timed else None
    if timed:
        from notebook_habits import time_statements

        time_statements(tree, timed)
    exec(compile(tree, filename, "exec", dont_inherit=True), namespace)
    if last is None:
        return None
    expression = compile(_ast.Expression(last.value), filename, "eval", dont_inherit=True)
    if last_timer is None:
        value = eval(expression, namespace)
    else:
        from notebook_habits import Timer

        with Timer(last_timer):
            value = eval(expression, namespace)
    return None if quiet else shown_result(value)


def followed_by_semicolon(source: str, node: Any) -> bool:
    """Whether a ';' follows the statement in the source (plt.plot(x); shows no Line2D list)."""
    lines = source.splitlines()
    if not node.end_lineno or node.end_lineno > len(lines):
        return False
    rest = lines[node.end_lineno - 1].encode()[node.end_col_offset:]  # the offsets count UTF-8 bytes
    return rest.lstrip(b" \t").startswith(b";")


def print_traceback(error: BaseException) -> None:
    """The error as Python prints it, from the program's code to where it was raised: this file's frames
    before it and after it (the interrupt handler a timeout raises KeyboardInterrupt in) are left out."""
    import traceback  # imported only when needed: most programs never raise

    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_globals is globals():
        tb = tb.tb_next
    shown = traceback.TracebackException(type(error), error, tb)
    while shown.stack and shown.stack[-1].filename == __file__:
        shown.stack.pop()
    print("".join(shown.format()), end="", file=sys.stderr)


def save_figures() -> None:
    """Open matplotlib figures become image files in the working folder (see capture_backend)."""
    if "matplotlib.pyplot" in sys.modules:
        try:
            import capture_backend
            capture_backend.save_open_figures()
        except Exception:  # noqa: BLE001 - a figure that cannot be drawn is reported, not fatal
            import traceback

            traceback.print_exc()


def run_python(code: str, variables: dict) -> tuple[int, dict[str, Any]]:
    """Execute code as __main__ with variables bound as globals; return the exit status and the result record."""
    main = main_module()
    main.__dict__.update(variables)
    sys.argv = ["<code>"]
    remember_source("<code>", code)
    status, record = 0, {"result": None}
    try:
        record["result"] = execute(code, main.__dict__, "<code>")
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            status = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            status = 1
    except MagicFailed as e:
        print(e, file=sys.stderr)
        status, record["error"] = e.status, str(e)
    except BaseException as e:  # noqa: BLE001 - whatever the program raised is its own error
        print_traceback(e)
        status = 1
        record["error"] = summarize(e, "<code>")
    save_figures()
    return status, record


def write_code_file(code: str) -> int:
    """A memory file holding the code, inheritable by bash (see BASH_RUNNER).

    The code does not go on the command line, where one argument holds at most 128 KiB
    (MAX_ARG_STRLEN); a memory file works under gVisor too.
    """
    fd = os.memfd_create("code", 0)  # no MFD_CLOEXEC: bash must inherit it
    data = memoryview(code.encode("utf-8", "replace"))  # a lone surrogate (from JSON) becomes "?"
    while data:
        data = data[os.write(fd, data):]
    return fd


def run_bash(code: str, variables: dict[str, str]) -> NoReturn:
    """Replace this process with bash running code, the variables in its environment (checked by the agent)."""
    fd = write_code_file(code)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    os.execve("/bin/bash", ["bash", "-c", BASH_RUNNER.format(fd=fd)], {**os.environ, **variables})


# --- notebook habits (the rest of them, imported when needed, in notebook_habits.py) ----------

class MagicFailed(Exception):
    """A cell magic that could not run, or a %%bash cell that failed: its one-line reason and exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


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
            from notebook_habits import stand_in_spec

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


ImportHooks.after.update({"pandas": after_pandas, "numpy": compat.patch_numpy,
                          "matplotlib.style.core": compat.patch_matplotlib_style, "linecache": add_sources,
                          "matplotlib.pyplot": load_capture_backend})


def summarize(error: BaseException, filename: str) -> str | None:
    """The report's short `error` (see notebook_habits.error_summary); None when it cannot be said."""
    try:
        from notebook_habits import error_summary

        return error_summary(error, filename)
    except Exception:  # noqa: BLE001 - an exception whose str() fails, say: the agent repeats stderr's end instead
        return None


def imported_by_program() -> bool:
    """Whether the import under way is the program's own: a library that tries IPython gets its ImportError."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith("<frozen "):  # importlib's own frames
        frame = frame.f_back
    return frame is not None and is_program_file(frame.f_code.co_filename)


def is_program_file(filename: str | None) -> bool:
    """Whether a code object's file name is the program's own (<code>, a session's <cell N>)."""
    return filename == "<code>" or (filename or "").startswith("<cell ") and (filename or "").endswith(">")


# --- session mode -------------------------------------------------------------------------------

class CellState:
    """Whether a cell runs now: the agent's SIGINT interrupts a cell, never the worker's own bookkeeping."""

    running = False


def on_interrupt(signum: int, frame: object) -> None:
    """SIGINT handler of a session: a KeyboardInterrupt in the running cell; nothing between cells."""
    if CellState.running:
        raise KeyboardInterrupt


def run_bash_cell(code: str, variables: dict[str, str], reraise: bool = False) -> int:
    """Run bash as a child in its own process group and wait; on an interrupt, stop that group. The exit status.

    `reraise`: the interrupt goes on as a KeyboardInterrupt once the group is stopped (a `!cmd` line of a
    Python cell: the cell stops there too).
    """
    fd = write_code_file(code)
    try:
        # Every signal back to its default in bash (the program may have ignored some in Python), but SIGXFSZ.
        defaults = signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP} - KEPT_IGNORED
        pid = os.posix_spawn("/bin/bash", ["bash", "-c", BASH_RUNNER.format(fd=fd)], {**os.environ, **variables},
                             setpgroup=0, setsigdef=defaults, setsigmask=())
    except OSError as e:
        print(f"bash could not be started: {e}", file=sys.stderr)
        return 126
    finally:
        os.close(fd)
    try:
        _, status = os.waitpid(pid, 0)
    except KeyboardInterrupt:
        running, CellState.running = CellState.running, False
        status = stop_process_group(pid)
        if reraise:
            CellState.running = running
            raise
    return os.waitstatus_to_exitcode(status)


def stop_process_group(pid: int) -> int:
    """SIGINT to bash's process group (as Ctrl-C would), SIGKILL if it is still there a moment later; its status."""
    import time

    try:
        os.killpg(pid, signal.SIGINT)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + BASH_INTERRUPT_SECONDS
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.01)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return os.waitpid(pid, 0)[1]


def run_python_cell(code: str, variables: dict[str, Any], namespace: dict[str, Any], count: int) -> dict[str, Any]:
    """One python cell in the session's namespace: its exit status and result; the namespace keeps its state."""
    filename = f"<cell {count}>"
    remember_source(filename, code)  # tracebacks then show the cell's lines, as a notebook does
    namespace.update(variables)
    record: dict[str, Any] = {"exit": 0, "result": None}
    try:
        record["result"] = execute(code, namespace, filename)
    except SystemExit as e:
        print(f"SystemExit: {'' if e.code is None else e.code}".rstrip() + f" {EXIT_NOTE}", file=sys.stderr)
        # As a script's exit status: exit(), sys.exit(0) and sys.exit(main()) returning 0 succeed.
        record["exit"] = (e.code or 0) if e.code is None or isinstance(e.code, int) else 1
    except MagicFailed as e:
        print(e, file=sys.stderr)
        record["exit"], record["error"] = e.status, str(e)
    except BaseException as e:  # noqa: BLE001 - the program's own error; a KeyboardInterrupt too
        print_traceback(e)
        record["exit"] = 1
        record["error"] = summarize(e, filename)
    save_figures()
    return record


def serve_session(commands: BinaryIO, status_fd: int) -> NoReturn:
    """Run cells until the agent goes: each command line is a cell, each cell ends with a record on STATUS_FD.

    A cell: {"language", "code", "variables", "count"}. The worker says {"started": count} once the
    cell runs (its time limit counts from there, and an interrupt before it would be lost), then its
    record: {"count", "exit": status, "result": repr or null}, written after its output is flushed, so
    the agent knows that what came before it is the cell's (and, by its count, which cell's).
    """
    namespace = main_module().__dict__
    sys.argv = [""]
    os.write(status_fd, b"s")
    while True:
        line = commands.readline()
        if not line:
            os._exit(0)  # the agent is gone
        record: dict[str, Any] = {"exit": 1, "result": None}
        job: dict[str, Any] = {}
        try:
            job = json.loads(line)
            # Each cell is interruptible again, even if an earlier one ignored SIGINT.
            signal.signal(signal.SIGINT, on_interrupt)
            CellState.running = True
            write_record(status_fd, {"started": job["count"]})
            if job["language"] == "bash":
                record = {"exit": run_bash_cell(job["code"], job["variables"]), "result": None}
            else:
                record = run_python_cell(job["code"], job["variables"], namespace, job["count"])
        except KeyboardInterrupt:  # between the cell's end and the flag's reset
            pass
        except BaseException as e:  # noqa: BLE001 - the worker's own failure: said, and the session goes on
            print(f"the sandbox could not run the cell: {type(e).__name__}: {e}", file=sys.stderr)
        finally:
            CellState.running = False
        flush_output()
        write_record(status_fd, {**record, "count": job.get("count")})


def main(status_fd: int) -> NoReturn:
    """Prepare, say "r", warm up if told to (then say "w"), then run the job (or the session's cells); never returns."""
    commands = take_command_pipe()
    become_fresh_interpreter()
    prepare_matplotlib()
    os.write(status_fd, b"r")
    line = commands.readline()
    if line.startswith(b"warm "):  # b"warm GROUP,GROUP REST_DELAY\n" (no group: b"warm  REST_DELAY\n")
        _, first, rest_delay = line.split(b" ")
        preload(tuple(first.decode().split(",")), float(rest_delay), commands, status_fd)
        line = commands.readline()
    if line == b"session\n":
        serve_session(commands, status_fd)
    commands.close()
    job = json.loads(line)
    if job["language"] == "bash":
        run_bash(job["code"], job["variables"])
    status, record = run_python(job["code"], job["variables"])
    write_record(status_fd, record)
    finish(status)
