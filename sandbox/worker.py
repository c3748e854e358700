"""The worker: runs untrusted code as the program's own unprivileged user, one process per container.

Protocol: the agent forks, drops the child to the program's user (see worker_process.become_worker)
and calls main(STATUS_FD) with the command pipe as stdin and output pipes as stdout and stderr. The
worker keeps the command pipe to itself (the program's stdin is /dev/null), makes itself a fresh
interpreter, writes b"r" to STATUS_FD and reads a line of commands:
"warm GROUPS REST" makes it import the heavy modules ahead of time (see preload: it writes b"w" once
the groups named are in, b"a" once all are) and reads again;
"session" makes it a session's interpreter (see serve_session: it writes b"s", then runs cells);
any other line is the one job, one line of JSON (json is already loaded: the agent imported it):
{"language": "python"|"bash", "code": str, "variables": {name: JSON value (a string for bash)}}.
Python runs in this very process (so pre-imports pay off; see python_runner.py); what it displays goes
to STATUS_FD as it is made, a line {"display": bundle} each (see rich_display.py); then the worker
writes the result record {"exit": status, "result": repr of the last expression or null, "error"?:
one line} as a line to STATUS_FD; bash replaces it with exec (see bash_runner.py).

Programs written for notebooks run too: IPython's magics (%matplotlib, %time, !ls, %%bash, ...) are
made Python line by line, pandas gets display options for whole tables, and a missing IPython is
stood in for by its display module (see import_hooks.py, and notebook_habits.py for the rest).

The worker's modules, each importing only modules on the lines below its own:
  worker.py                                the protocol: warm-up, the one job, a session's cells
  python_runner.py                         Python as a notebook runs it
  import_hooks.py                          what follows a few imports
  notebook_habits.py                       IPython's magics, short errors (imported when needed)
  rich_display.py                          what the program displays, as MIME bundles
  bash_runner.py, program_io.py, compat.py bash; output; removed library names
  capture_backend.py                       figures as images (matplotlib's, loaded when it is)
  capture_fonts.py                         the fonts programs ask for
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

import rich_display
from bash_runner import CellState, on_interrupt, run_bash, run_bash_cell
from contract import EGRESS_VARIABLES, FIRST_FIGURE, WARM_UP_GROUPS, WarmUpGroup
from import_hooks import ImportHooks, add_user_site
from program_io import flush_output
from python_runner import run_python

SANDBOX_DIR = os.path.dirname(os.path.abspath(__file__))
FONT_CACHE = "/opt/matplotlib-cache"


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
    builtins.display = rich_display.display  # type: ignore[attr-defined]
    sys.meta_path.insert(0, ImportHooks)  # after site.main(): sitecustomize's finders come after this one
    add_user_site()
    # The working folder, as `python3 -c` puts it on the path: a program imports the modules it wrote
    # (%%writefile helper.py) or was given. After the sandbox's own folder: a program's fonts.py does
    # not stand in for the sandbox's.
    sys.path.insert(sys.path.index(SANDBOX_DIR) + 1 if SANDBOX_DIR in sys.path else 0, "")


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


def write_record(status_fd: int, record: dict[str, Any]) -> None:
    """One JSON line to the agent on the status pipe (ASCII: no byte of it can be a newline)."""
    data = memoryview(json.dumps(record).encode() + b"\n")
    try:
        while data:
            data = data[os.write(status_fd, data):]
    except OSError:
        pass  # the program closed it: the agent gets no record, and says so


def set_egress_environment(variables: Any) -> None:
    """The proxy variables while the run or cell may reach the network (contract.EGRESS_VARIABLES), none else:
    what the program and the processes it starts read at the time they connect."""
    before = {name: os.environ.pop(name) for name in EGRESS_VARIABLES if name in os.environ}
    if isinstance(variables, dict):
        os.environ.update({name: value for name, value in variables.items()
                           if name in EGRESS_VARIABLES and isinstance(value, str)})
    after = {name: os.environ[name] for name in EGRESS_VARIABLES if name in os.environ}
    request = sys.modules.get("urllib.request")
    if after != before and request is not None:
        # urlopen() keeps the opener it built on first use, with the proxies of that moment: a session
        # whose network was opened (or closed) since would go on without (or with) them.
        request._opener = None  # type: ignore[attr-defined]


def fresh_module() -> types.ModuleType:
    """An empty __main__ module: a program's (or a code context's) globals."""
    main = types.ModuleType("__main__")
    main.__dict__["__builtins__"] = builtins
    return main


def main_module() -> types.ModuleType:
    """A fresh __main__ for the program, as `python3 program.py` has."""
    main = fresh_module()
    sys.modules["__main__"] = main
    return main


def set_cell_environment(variables: Any) -> Callable[[], None] | None:
    """A cell's own environment variables (E2B's envs, checked by the agent), set for the cell; what puts
    back the values they replaced (None when there were none)."""
    if not isinstance(variables, dict) or not variables:
        return None
    before = {name: os.environ.get(name) for name in variables}
    os.environ.update({name: str(value) for name, value in variables.items()})

    def restore() -> None:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return restore


def serve_session(commands: BinaryIO, status_fd: int) -> NoReturn:
    """Run cells until the agent goes: each command line is a cell, each cell ends with a record on STATUS_FD.

    A cell: {"language", "code", "variables", "count"}. The worker says {"started": count} once the
    cell runs (its time limit counts from there, and an interrupt before it would be lost), then its
    record: {"count", "exit": status, "result": repr or null}, written after its output is flushed, so
    the agent knows that what came before it is the cell's (and, by its count, which cell's).
    """
    main = main_module()
    contexts: dict[str, types.ModuleType] = {}  # E2B's code contexts: each an interpreter state of its own
    sys.argv = [""]
    os.write(status_fd, b"s")
    while True:
        line = commands.readline()
        if not line:
            os._exit(0)  # the agent is gone
        record: dict[str, Any] = {"exit": 1, "result": None}
        job: dict[str, Any] = {}
        restore_env = None
        try:
            job = json.loads(line)
            # Each cell is interruptible again, even if an earlier one ignored SIGINT.
            signal.signal(signal.SIGINT, on_interrupt)
            CellState.running = True
            set_egress_environment(job.get("environment"))
            restore_env = set_cell_environment(job.get("env"))
            module = main
            if job.get("context") is not None:
                if job.get("restart") or job["context"] not in contexts:
                    contexts[job["context"]] = fresh_module()
                module = contexts[job["context"]]
            sys.modules["__main__"] = module  # pickle and friends find the cell's own globals
            write_record(status_fd, {"started": job["count"]})
            if job["language"] == "bash":
                record = {"exit": run_bash_cell(job["code"], job["variables"]), "result": None}
            else:
                record = run_python(job["code"], job["variables"], module.__dict__, job["count"])
        except KeyboardInterrupt:  # between the cell's end and the flag's reset
            pass
        except BaseException as e:  # noqa: BLE001 - the worker's own failure: said, and the session goes on
            print(f"the sandbox could not run the cell: {type(e).__name__}: {e}", file=sys.stderr)
        finally:
            CellState.running = False
            sys.modules["__main__"] = main
            if restore_env is not None:
                restore_env()
        flush_output()
        write_record(status_fd, {**record, "count": job.get("count")})


def main(status_fd: int) -> NoReturn:
    """Prepare, say "r", warm up if told to (then say "w"), then run the job (or the session's cells); never returns."""
    commands = take_command_pipe()
    become_fresh_interpreter()
    prepare_matplotlib()
    rich_display.start(status_fd)
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
    set_egress_environment(job.get("environment"))
    if job["language"] == "bash":
        run_bash(job["code"], job["variables"])
    sys.argv = ["<code>"]
    record = run_python(job["code"], job["variables"], main_module().__dict__)
    write_record(status_fd, record)
    finish(record["exit"])
