"""Runs one untrusted program as the unprivileged sandbox user; forked by agent.py, one per container.

Protocol: the agent forks, drops the child to the sandbox user (see agent.become_worker) and calls
main(STATUS_FD) with the job pipe as stdin and output pipes as stdout and stderr. The worker makes
itself a fresh interpreter, writes b"r" to STATUS_FD and reads a line from stdin:
"warm" makes it import the heavy modules ahead of time (then it writes b"w" and reads again);
any other line is the job, one line of JSON (json is already loaded: the agent imported it):
{"language": "python"|"bash", "code": str, "variables": {name: JSON value (a string for bash)}}.
Python runs in this very process (so pre-imports pay off); bash replaces it with exec. Either way
the program's stdin is /dev/null.
"""

from __future__ import annotations

import atexit
import gc
import io
import json
import os
import site
import sys
import threading
import types
from typing import NoReturn

SANDBOX_DIR = os.path.dirname(os.path.abspath(__file__))
FONT_CACHE = "/opt/matplotlib-cache"
# bash's command line: it reads the program whole from the inherited file descriptor, then runs it
# with that descriptor closed. Errors read as with `bash -c` ("bash: line 2: foo: command not found").
BASH_RUNNER = 'eval "$(< /dev/fd/{fd})" {fd}<&-'


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


def preload() -> None:
    """Import what data-science programs use and draw one throw-away figure, so their run pays none of it.

    The figure loads the fonts (the CJK fallback too), the Agg renderer and the PNG encoder.
    """
    import io

    import matplotlib.pyplot as plt
    import numpy  # noqa: F401
    import pandas  # noqa: F401

    figure = plt.figure()
    plt.plot([1, 2, 3], [3, 1, 2])
    plt.title("warm-up 预热")
    figure.savefig(io.BytesIO(), format="png")
    plt.close("all")
    # Everything imported so far lives as long as the process: take it out of the garbage
    # collector's view, or the program's first allocations pay a full collection of it (~40 ms).
    gc.collect()
    gc.freeze()


def finish(status: int) -> None:
    """Exit as the interpreter would (threads joined, atexit run, output flushed), minus module teardown.

    Tearing down numpy, pandas and matplotlib costs tens of milliseconds nobody needs: the
    container is thrown away right after.
    """
    threading._shutdown()  # waits for the program's non-daemon threads, as interpreter exit does
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status & 0xFF)


def run_python(code: str, variables: dict) -> int:
    """Execute code as __main__ with variables bound as globals; return the exit status."""
    main = types.ModuleType("__main__")
    main.__dict__.update(variables)
    main.__dict__["__builtins__"] = __builtins__
    sys.modules["__main__"] = main
    sys.argv = ["<code>"]
    status = 0
    try:
        exec(compile(code, "<code>", "exec"), main.__dict__)
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            status = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            status = 1
    except BaseException as e:  # noqa: BLE001 - whatever the program raised is its own error
        import traceback  # imported only when needed: most programs never raise

        # Skip this file's frame: the traceback starts at the user's code.
        traceback.print_exception(type(e), e, e.__traceback__.tb_next)
        status = 1
    if "matplotlib.pyplot" in sys.modules:
        try:
            import capture_backend
            capture_backend.save_open_figures()
        except Exception:  # noqa: BLE001 - a figure that cannot be drawn is reported, not fatal
            import traceback

            traceback.print_exc()
    return status


def run_bash(code: str, variables: dict[str, str]) -> NoReturn:
    """Replace this process with bash running code, the variables in its environment (checked by the agent).

    The code does not go on the command line, where one argument holds at most 128 KiB
    (MAX_ARG_STRLEN): it is handed over in a memory file, which works under gVisor too.
    """
    fd = os.memfd_create("code", 0)  # no MFD_CLOEXEC: bash must inherit it
    data = memoryview(code.encode("utf-8", "replace"))  # a lone surrogate (from JSON) becomes "?"
    while data:
        data = data[os.write(fd, data):]
    os.execve("/bin/bash", ["bash", "-c", BASH_RUNNER.format(fd=fd)], {**os.environ, **variables})


def main(status_fd: int) -> NoReturn:
    """Prepare, say "r", warm up if told to (then say "w"), then run the job read from stdin; never returns."""
    become_fresh_interpreter()
    prepare_matplotlib()
    os.write(status_fd, b"r")
    line = sys.stdin.buffer.readline()
    if line == b"warm\n":
        preload()
        os.write(status_fd, b"w")
        line = sys.stdin.buffer.readline()
    os.close(status_fd)
    job = json.loads(line)
    # The job pipe is drained: the program (and whatever it starts) reads an empty stdin.
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.stdin = sys.__stdin__ = open(0, encoding="utf-8", closefd=False)
    if job["language"] == "bash":
        run_bash(job["code"], job["variables"])
    finish(run_python(job["code"], job["variables"]))
