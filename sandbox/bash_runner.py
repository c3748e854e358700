"""bash as the program: the one job by exec, or a cell (a `!command`) as a process group an interrupt stops."""

from __future__ import annotations

import os
import signal
import sys
from typing import NoReturn

# bash's command line: it reads the program whole from the inherited file descriptor, then runs it
# with that descriptor closed. Errors read as with `bash -c` ("bash: line 2: foo: command not found").
BASH_RUNNER = 'eval "$(< /dev/fd/{fd})" {fd}<&-'
# Python ignores SIGPIPE, and bash would inherit that: `yes | head -1` would end with "yes: standard
# output: Broken pipe". SIGXFSZ stays ignored in the whole sandbox: over the file size limit, a write
# fails with EFBIG (which a program can report) rather than killing it.
KEPT_IGNORED = frozenset({signal.SIGXFSZ})
BASH_INTERRUPT_SECONDS = 1.0  # a bash cell's process group gets this long after SIGINT, then SIGKILL


class CellState:
    """Whether a cell runs now: the agent's SIGINT interrupts a cell, never the worker's own bookkeeping."""

    running = False


def on_interrupt(signum: int, frame: object) -> None:
    """SIGINT handler of a session: a KeyboardInterrupt in the running cell; nothing between cells."""
    if CellState.running:
        raise KeyboardInterrupt


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
