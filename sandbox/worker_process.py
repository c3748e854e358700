"""The worker as the agent sees it: forked before any request, its pipes, and what its status pipe says."""

from __future__ import annotations

import gc
import json
import os
import resource
import signal
import threading
from typing import Any, NoReturn

from agent_options import AgentOptions, worker_environment
from contract import MAX_STATUS_LINE_BYTES, WORKSPACE
from displays import Displays

WORKER_FAILED = 127  # the forked worker's exit status when it could not even start
COLD_START_SECONDS = 10.0  # for a worker to start, once forked


def kill_sandbox_processes() -> None:
    """SIGKILL every process but PID 1 and this agent: all of them belong to the program.

    kill(-1) is one atomic sweep in the kernel, so a fork bomb cannot outrun it, and it needs
    no fork of its own (which a program holding every allowed PID would make fail).
    """
    try:
        os.kill(-1, signal.SIGKILL)
    except ProcessLookupError:
        pass


def become_worker(options: AgentOptions, stdio: tuple[int, int, int], status_fd: int) -> NoReturn:
    """In the forked child: become the program's user and group, keep only the worker's pipes, run worker.py;
    never returns."""
    uid, max_processes = options.uid, options.max_processes
    try:
        os.setsid()  # its own session: the program cannot signal the agent's process group
        for target, fd in enumerate(stdio):
            os.dup2(fd, target)
        # Nothing of the agent's stays open: not its socket, not another worker's pipe.
        os.closerange(3, status_fd)
        os.closerange(status_fd + 1, os.sysconf("SC_OPEN_MAX"))
        # As root still: the memory limit's OOM killer takes the program before the agent, and a
        # hard process limit (under gVisor) it cannot raise.
        try:
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write("1000")
        except OSError:
            pass  # some runtimes (gVisor) do not offer it; the agent's small size still protects it
        if max_processes:
            resource.setrlimit(resource.RLIMIT_NPROC, (max_processes, max_processes))
        os.setgroups([])
        os.setgid(uid)
        # Real, effective and saved: every capability is gone with root. The change of user also
        # leaves this process non-dumpable (as a setuid program is): its /proc/self files that
        # need that, such as environ and mem, stay root's; the processes it starts are ordinary.
        # (Making it dumpable again would need ctypes, ~9 ms of CPU per container.)
        os.setuid(uid)
        os.chdir(WORKSPACE)
        os.environ.clear()
        os.environ.update(worker_environment(options))
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        gc.enable()  # the program's garbage is collected as usual
        import worker  # the worker's side of the sandbox: loaded in the child only, the agent never runs it

        worker.main(status_fd)
    except BaseException as e:  # noqa: BLE001 - said on the program's stderr, not lost in a bare exit 127
        try:
            os.write(2, f"the sandbox could not start the program: {type(e).__name__}: {e}\n".encode(errors="replace"))
        except OSError:
            pass
    finally:
        os._exit(WORKER_FAILED)  # never back into the agent's code, whatever happened


class Worker:
    """The unprivileged process that will run the program, forked before the request.

    Forked, not started as a new interpreter: that and its imports would cost every container
    another ~15 ms of CPU. It starts cold; the agent may tell it to warm up (import numpy, pandas,
    matplotlib) while no request has come: see agent_state.Agent.warm_up().
    """

    def __init__(self, options: AgentOptions) -> None:
        stdin_read, stdin_write = os.pipe()
        stdout_read, stdout_write = os.pipe()
        stderr_read, stderr_write = os.pipe()
        status_read, status_write = os.pipe()
        pid = os.fork()
        if pid == 0:
            become_worker(options, (stdin_read, stdout_write, stderr_write), status_write)
        for fd in (stdin_read, stdout_write, stderr_write, status_write):
            os.close(fd)
        self.pid = pid
        self.stdin = os.fdopen(stdin_write, "wb")
        self.stdout = os.fdopen(stdout_read, "rb")
        self.stderr = os.fdopen(stderr_read, "rb")
        self.returncode: int | None = None
        self._wait_lock = threading.Lock()
        self.started = threading.Event()
        self.warm = threading.Event()  # the groups the center named are imported
        self.warm_all = threading.Event()  # and the others too
        self.warming = False
        self.record: dict[str, Any] | None = None  # the one-shot run's result record
        self.displays: Displays | None = None  # the one-shot run's rich results, once its job is sent
        self.in_session = threading.Event()  # the worker became a session's interpreter
        self.session_status: tuple[int, bytes] | None = None  # then its status pipe is the session's
        self.status_thread = threading.Thread(target=self._follow_status, args=(status_read,), daemon=True)
        self.status_thread.start()

    def _follow_status(self, fd: int) -> None:
        """The worker writes b"r" once it waits for input, b"w" and b"a" as it warms up; a one-shot
        run's displays and record are JSON lines; b"s" hands the pipe over to the session (see session.py)."""
        events = {b"r": self.started, b"w": self.warm, b"a": self.warm_all}
        buffer = bytearray()  # appended to, never copied whole: a display line may be megabytes long
        while chunk := os.read(fd, 65536):
            scanned = len(buffer)
            buffer += chunk
            position = 0
            while position < len(buffer):
                byte = bytes(buffer[position:position + 1])
                if byte == b"{":
                    end = buffer.find(b"\n", max(position, scanned))
                    if end == -1:
                        break
                    self._take_line(bytes(buffer[position:end]))
                    position = end + 1
                    continue
                position += 1
                if byte == b"s":
                    self.session_status = (fd, bytes(buffer[position:]))
                    self.in_session.set()
                    return
                if byte in events:
                    events[byte].set()
            del buffer[:position]
            if len(buffer) > MAX_STATUS_LINE_BYTES:  # not a line the worker wrote: the program's noise
                buffer.clear()
        os.close(fd)

    def _take_line(self, line: bytes) -> None:
        """A display goes to the run's displays; anything else that is a JSON object is the run's record (the
        worker writes one; the program could write anything)."""
        try:
            message = json.loads(line)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        displays = self.displays
        if displays is not None and displays.take(message):
            return
        if "display" not in message and "clear_output" not in message:
            self.record = message

    def send(self, data: bytes) -> None:
        """A command line or the job to the worker's stdin (see worker.py's protocol)."""
        self.stdin.write(data)
        self.stdin.flush()

    def wait(self) -> int:
        """The worker's exit status once it has exited (minus the signal's number if one killed it)."""
        with self._wait_lock:
            if self.returncode is None:
                _, status = os.waitpid(self.pid, 0)
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode
