"""Runs one untrusted program as the unprivileged sandbox user; started by agent.py, one per container.

Protocol: argv is [worker.py, STATUS_FD, MAX_PROCESSES (0: no RLIMIT_NPROC)]. The worker offers
itself first to the out-of-memory killer, writes b"r" to STATUS_FD and reads a line from stdin:
"warm" makes it import the heavy modules ahead of time (then it writes b"w" and reads again);
"job SIZE" is followed by SIZE bytes of the job, marshalled by the agent:
{"language": "python"|"bash", "code": str, "variables": {name: JSON value}}.
(marshal, not JSON: it is built in, and importing json and re would cost every start ~8 ms.)
Python runs in this very process (so pre-imports pay off); bash replaces it with exec.
"""

from __future__ import annotations

import atexit
import gc
import marshal
import os
import resource
import sys
import threading
import types

SANDBOX_DIR = os.path.dirname(os.path.abspath(__file__))
FONT_CACHE = "/opt/matplotlib-cache"


def volunteer_for_oom_killer() -> None:
    """Raise our OOM score so a memory bomb kills the program, not the agent (raising needs no privilege)."""
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass  # some runtimes (gVisor) do not offer it; the agent's small size still protects it


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


def main() -> None:
    """Prepare, say "r", warm up if told to (then say "w"), then run the job read from stdin."""
    status_fd, max_processes = int(sys.argv[1]), int(sys.argv[2])
    volunteer_for_oom_killer()
    if max_processes:  # a hard limit: the program cannot raise it
        resource.setrlimit(resource.RLIMIT_NPROC, (max_processes, max_processes))
    prepare_matplotlib()
    os.write(status_fd, b"r")
    line = sys.stdin.buffer.readline()
    if line == b"warm\n":
        preload()
        os.write(status_fd, b"w")
        line = sys.stdin.buffer.readline()
    os.close(status_fd)
    job = marshal.loads(sys.stdin.buffer.read(int(line.removeprefix(b"job "))))
    sys.stdin = open(os.devnull)  # the job pipe is drained; the program sees an empty stdin
    if job["language"] == "bash":
        import json

        env = dict(os.environ)
        env.update({name: value if isinstance(value, str) else json.dumps(value)
                    for name, value in job["variables"].items()})
        os.execve("/bin/bash", ["bash", "-c", job["code"]], env)
    finish(run_python(job["code"], job["variables"]))


if __name__ == "__main__":
    main()
