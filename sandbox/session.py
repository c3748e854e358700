"""A session: the agent's worker kept as one long-lived interpreter that runs cell after cell.

A cell's report is /run's, minus "files", plus "execution_count", "result", "alive" and, once the
session cannot go on, "dead_reason" (the routes are session_routes.py's).

How a cell runs: the cell goes to the worker as a JSON line on its command pipe; the worker runs
it, flushes the output pipes, then writes a record line on its status pipe (see
worker.serve_session). One thread here polls all of them: what came before the record is the
cell's output. Past the time limit (or the output cap) the worker gets SIGINT, a KeyboardInterrupt
in the cell; a cell that has not ended INTERRUPT_GRACE_SECONDS later is killed with everything
else, and the session is dead. After each cell the processes it left behind are killed; the
interpreter stays, stopped (SIGSTOP) with any thread the cell left running until the next cell.

Imported only when a session (or a file route) is asked for.
"""

from __future__ import annotations

import json
import os
import select
import signal
import threading
import time
from typing import Any

import workspace
from contract import INTERRUPT_GRACE_SECONDS, MAX_STATUS_LINE_BYTES, SESSION_START_SECONDS
from displays import Displays
from http_server import RawResponse
from job_request import Job
from output_files import workspace_snapshot
from output_pipes import EventStream, KeptOutput, OutputBudget, streamed
from run_report import (
    complete_report,
    describe_error,
    exit_code_of,
    oom_kill_count,
    record_result,
    signal_description,
)
from worker_process import COLD_START_SECONDS, Worker, kill_sandbox_processes

DRAIN_SECONDS = 0.5  # after a cell's record, for output still in the pipes (bounded: a thread may write on)
START_SECONDS = 30.0  # for the worker to take a cell (a 64 MiB one is parsed in well under a second)
SWEEP_SECONDS = 2.0  # for the processes a cell left behind to be gone
MAX_POLL_MS = 60_000
CHUNK = 1024 * 1024  # read at once: output between cells, an upload or a download
IGNORED_INTERRUPT = "the cell ignored the interrupt and was killed"
NOT_STARTED = "the session's interpreter did not take the cell and was killed"
OUT_OF_MEMORY = "the cell ran out of memory and the session's processes were killed"
LEFTOVERS = "the cell left processes behind that could not be stopped; the session's processes were killed"


class Session:
    """The session's interpreter (the agent's worker) and its state: alive or why not, cells run, busy."""

    def __init__(self, worker: Worker, uid: int) -> None:
        self.worker, self.uid = worker, uid  # uid: the program's, which writes the cells' input files
        self.busy = threading.Lock()  # one cell at a time
        self.alive = True
        self.dead_reason = ""
        self.execution_count = 0
        self.status_fd = -1
        self.status_buffer = bytearray()
        self.exit_read, self.exit_write = os.pipe()  # readable once the worker has exited

    def start(self) -> None:
        """Make the worker the session's interpreter; RuntimeError (the session dead) when it cannot."""
        worker = self.worker
        try:
            if not worker.started.wait(COLD_START_SECONDS):
                raise RuntimeError("the sandbox worker did not start")
            worker.send(b"session\n")
            if not worker.in_session.wait(SESSION_START_SECONDS - COLD_START_SECONDS) or worker.session_status is None:
                raise RuntimeError("the sandbox worker did not take the session")
        except (OSError, RuntimeError) as e:
            self.die(f"the session could not start: {e}")
            raise RuntimeError(self.dead_reason) from e
        self.status_fd, rest = worker.session_status
        self.status_buffer = bytearray(rest)
        # From now on this thread's poll loop does all the reading and writing: none of it may block.
        for fd in (worker.stdin.fileno(), worker.stdout.fileno(), worker.stderr.fileno(), self.status_fd):
            os.set_blocking(fd, False)
        threading.Thread(target=self._watch_worker, daemon=True).start()

    def _watch_worker(self) -> None:
        """Wake the poll loop up when the worker exits, whatever it is waiting for."""
        self.worker.wait()
        os.write(self.exit_write, b"x")

    def die(self, reason: str) -> None:
        """The session cannot go on: kill every process of it (file helpers too); later cells get 410."""
        if self.alive:
            self.alive, self.dead_reason = False, reason
        kill_sandbox_processes()

    def health(self) -> dict[str, Any]:
        """What /healthz adds in session mode."""
        return {"busy": self.busy.locked(), "alive": self.alive, "execution_count": self.execution_count}

    # --- a cell ---------------------------------------------------------------------------------

    def cell(self, job: Job, stream: bool = False) -> tuple[int, dict[str, Any] | RawResponse]:
        """Run one cell: (HTTP status, report); 409 while another runs, 410 once the session is dead.

        With `stream`, the 200 answer runs the cell while it is sent (its output as events, the report
        last), and the cell stays this session's one until that answer is done.
        """
        if not self.busy.acquire(blocking=False):
            return 409, {"error": "a cell is running in this session: wait for its answer"}
        handed_over = False
        try:
            if not self.alive:
                return 410, {"error": self.dead_reason}
            if job.files:
                try:
                    workspace.write_files(self.uid, job.files)
                except workspace.WorkspaceError as e:
                    return e.status, {"error": f"{e.message}; the cell did not run"}
                job.files = []
            self.execution_count += 1
            if stream:
                handed_over = True
                return 200, streamed(lambda events: self.run(job, events), close=self.busy.release)
            return 200, self.run(job)
        finally:
            if not handed_over:
                self.busy.release()

    def run(self, job: Job, events: EventStream | None = None) -> dict[str, Any]:
        """Send the cell, follow it to its record (or the worker's death), clean up, report.

        Streamed (`events`), its output goes out as it comes, and a center that hangs up (its client
        went away) interrupts the cell as a timeout would: the session keeps its state.
        """
        worker = self.worker
        count = self.execution_count
        self.signal_worker(signal.SIGCONT)  # paused since the last cell
        self.discard_stale_output()
        before = workspace_snapshot()
        oom_before = oom_kill_count()
        line = json.dumps({"language": job.language, "code": job.code, "variables": job.program_variables(),
                           "count": count, "environment": job.environment, "env": job.env,
                           "context": job.context, "restart": job.restart}).encode() + b"\n"
        cell = CellRun(self, job, count, events)
        cell.follow(line)

        # The memory limit may have killed the worker, or only a process of the cell: either way the
        # session is not trusted to go on (what it held may be half gone).
        oom = oom_kill_count() > oom_before
        if cell.record is not None:
            if oom:
                self.die(OUT_OF_MEMORY)
            elif not self.sweep():
                self.die(LEFTOVERS)
            cell.drain(DRAIN_SECONDS)
            # Nothing of a cell runs past it: the processes it left are killed (sweep), and the
            # threads it left wait, stopped with the interpreter, for the next cell (SIGSTOP cannot be
            # caught or ignored). Otherwise one spinning thread per session takes a CPU while it idles.
            self.signal_worker(signal.SIGSTOP)
        else:
            if oom:
                self.die(OUT_OF_MEMORY)
            elif cell.exited:
                self.die(self.describe_exit())
            else:  # killed: it ignored the interrupt, or never started
                self.die(IGNORED_INTERRUPT if cell.started_at is not None else NOT_STARTED)
            worker.wait()
            cell.drain(DRAIN_SECONDS * 4)  # every writer is dead now: the pipes end

        exit_code = cell.exit_code()
        if oom:
            status = "oom"
        elif cell.interrupted is not None:
            status = cell.interrupted
        elif cell.record is None or exit_code != 0:
            status = "error"
        else:
            status = "ok"
        report: dict[str, Any] = {
            "stdout": cell.text(0), "stderr": cell.text(1), "exit_code": exit_code, "status": status,
            "duration_ms": round(cell.duration * 1000, 1), "images": [], "skipped": [],
            "execution_count": count, "result": cell.result(), "alive": self.alive,
        }
        if not self.alive:
            report["dead_reason"] = self.dead_reason
        return complete_report(report, job, before, with_files=False, displays=cell.displays,
                               describe=lambda: self.describe_error(status, job, report["stderr"], exit_code,
                                                                    (cell.record or {}).get("error")))

    def signal_worker(self, signum: int) -> None:
        """Send the interpreter a signal (SIGSTOP, SIGCONT, SIGINT); nothing if it is gone."""
        try:
            os.kill(self.worker.pid, signum)
        except ProcessLookupError:
            pass

    def describe_exit(self) -> str:
        """Why the session ended when its interpreter exited during a cell."""
        returncode = self.worker.wait()
        if returncode < 0:
            return f"the session's interpreter was killed by {signal_description(-returncode)}"
        return f"the session's interpreter exited with code {returncode}"

    def describe_error(self, status: str, job: Job, stderr: str, exit_code: int, summary: Any = None) -> str:
        """The report's `error`: what happened to the cell (`summary`: the worker's line for its exception),
        and to the session when it ended."""
        if status == "oom":
            return OUT_OF_MEMORY
        if status == "timeout":
            what = f"the cell exceeded the time limit of {job.timeout:g} s"
        elif status == "output_limit":
            what = f"output (stdout and stderr together) exceeded {job.max_output_bytes} bytes and was cut"
        elif not self.alive:
            return self.dead_reason
        else:
            return describe_error(status, exit_code, stderr, job, summary)
        if self.alive:
            return f"{what}; the cell was interrupted (KeyboardInterrupt) and the session keeps its state"
        return f"{what}; {self.dead_reason}, and the session has ended"

    def discard_stale_output(self) -> None:
        """Output and records that came between cells (a thread the program left running) belong to no cell."""
        deadline = time.monotonic() + 0.1  # such a thread may write on and on
        for fd in (self.worker.stdout.fileno(), self.worker.stderr.fileno(), self.status_fd):
            try:
                while os.read(fd, CHUNK) and time.monotonic() < deadline:
                    pass
            except OSError:  # BlockingIOError: nothing more for now
                pass
        self.status_buffer = bytearray()

    def sweep(self) -> bool:
        """SIGKILL every process but PID 1, this agent, the worker and file helpers: what the cell left behind.

        Repeated until none is left (one may fork while the sweep runs); zombies are dead already
        (the worker reaps its own children when the program waits for them). False when some
        would not go within SWEEP_SECONDS.
        """
        deadline = time.monotonic() + SWEEP_SECONDS
        with workspace.HELPERS_LOCK:  # no helper is forked meanwhile, and none is killed
            spared = {1, os.getpid(), self.worker.pid, *workspace.HELPERS}
            while True:
                found = False
                for name in os.listdir("/proc"):
                    if not name.isdigit() or int(name) in spared or is_dead(name):
                        continue
                    try:
                        os.kill(int(name), signal.SIGKILL)
                        found = True
                    except ProcessLookupError:
                        pass
                if not found:
                    return True
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.005)  # killed processes take a moment to become zombies


def read_now(fd: int) -> bytes | None:
    """What a non-blocking pipe holds now: b"" once it has ended (or failed), None while nothing more has come."""
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return None
    except OSError:
        return b""


def is_dead(pid: str) -> bool:
    """Whether a listed process is a zombie (or gone): nothing to kill."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rpartition(b")")[2].split()[:1]
    except OSError:
        return True
    return state in ([b"Z"], [b"X"], [])


class CellRun:
    """One cell in flight: the poll loop over the worker's pipes, the output kept, the record, the outcome."""

    def __init__(self, session: Session, job: Job, count: int, events: EventStream | None = None) -> None:
        self.session, self.job, self.count = session, job, count
        # The center's connection: readable only once it closes (it sends nothing after the cell).
        self.hangup_fd = events.sock.fileno() if events else -1
        worker = session.worker
        self.stdin_fd = worker.stdin.fileno()
        self.outputs = (worker.stdout.fileno(), worker.stderr.fileno())
        self.overflow = threading.Event()
        self.budget = OutputBudget(int(job.max_output_bytes), self.overflow)
        self.kept = [KeptOutput(self.budget, events.output(index) if events else None) for index in (0, 1)]
        self.displays = Displays(job, events)
        self.record: dict[str, Any] | None = None
        self.started_at: float | None = None  # when the worker said the cell runs: its clock starts
        self.exited = False  # the worker exited before its record
        self.killed = False  # it ignored the interrupt
        self.hung_up = False  # the center closed a streamed cell's connection: its client went away
        self.interrupted: str | None = None  # "timeout" or "output_limit" once SIGINT was sent
        self.duration = 0.0

    def follow(self, line: bytes) -> None:
        """Send the cell and follow it until its record comes, the worker exits, or it is killed."""
        poller = select.poll()
        open_fds = {*self.outputs, self.session.status_fd, self.session.exit_read}
        for fd in open_fds:
            poller.register(fd, select.POLLIN)
        if self.hangup_fd >= 0:
            poller.register(self.hangup_fd, select.POLLIN | select.POLLRDHUP)
        pending = memoryview(line)
        poller.register(self.stdin_fd, select.POLLOUT)
        sent_at = time.monotonic()
        grace_end: float | None = None
        while self.record is None and not self.exited:
            now = time.monotonic()
            if self.started_at is None:  # not running yet: nothing to interrupt
                wake = sent_at + START_SECONDS
                if now >= wake:
                    self.killed = True
                    kill_sandbox_processes()
                    break
            else:
                deadline = self.started_at + self.job.timeout
                if self.interrupted is None and (self.budget.cut or now >= deadline):
                    self.interrupted = "output_limit" if self.budget.cut else "timeout"
                    self.interrupt()
                    grace_end = now + INTERRUPT_GRACE_SECONDS
                elif self.hung_up and grace_end is None:
                    self.interrupt()  # KeyboardInterrupt, as at a timeout: the session keeps its state
                    grace_end = now + INTERRUPT_GRACE_SECONDS
                if grace_end is not None and now >= grace_end:
                    self.killed = True
                    kill_sandbox_processes()
                    break
                wake = grace_end if grace_end is not None else deadline
            for fd, _ in poller.poll(min(max(0.0, wake - now) * 1000 + 1, MAX_POLL_MS)):
                if fd == self.stdin_fd:
                    try:
                        pending = pending[os.write(fd, pending):]
                    except BlockingIOError:
                        pass
                    except OSError:  # the worker is gone: its exit is noticed next
                        pending = pending[:0]
                    if not pending:
                        poller.unregister(fd)
                elif fd in self.outputs:
                    if not self.read_output(fd):
                        poller.unregister(fd)
                elif fd == self.session.status_fd:
                    if not self.read_status():
                        poller.unregister(fd)
                elif fd == self.session.exit_read:
                    self.exited = True
                elif fd == self.hangup_fd:
                    poller.unregister(fd)
                    self.hung_up = True
        self.duration = time.monotonic() - (self.started_at or sent_at)

    def interrupt(self) -> None:
        """SIGINT to the worker: a KeyboardInterrupt in the cell (a bash cell's group gets it from the worker)."""
        self.session.signal_worker(signal.SIGINT)

    def read_output(self, fd: int) -> bool:
        """Take what one output pipe holds now; False once it has ended."""
        chunk = read_now(fd)
        if chunk is None:
            return True
        self.kept[self.outputs.index(fd)].take(chunk)
        return bool(chunk)

    def read_status(self) -> bool:
        """Take what the status pipe holds now; False once it has ended (the program may close it)."""
        chunk = read_now(self.session.status_fd)
        if chunk is None:
            return True
        self.session.status_buffer += chunk
        self.take_status()
        return bool(chunk)

    def take_status(self) -> None:
        """This cell's start, displays and record, when among the complete lines received (any other line is
        dropped, and so is a display before the cell started: a thread of an earlier cell made it)."""
        buffer = self.session.status_buffer
        position = 0
        while self.record is None:
            end = buffer.find(b"\n", position)
            if end == -1:
                break
            line, position = bytes(buffer[position:end]), end + 1
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not isinstance(record, dict):
                continue
            if record.get("started") == self.count and self.started_at is None:
                self.started_at = time.monotonic()
            elif "display" in record or "clear_output" in record:
                if self.started_at is not None:
                    self.displays.take(record)
            elif record.get("count") == self.count and isinstance(record.get("exit"), int):
                self.record = record
        del buffer[:position]
        if len(buffer) > MAX_STATUS_LINE_BYTES:
            buffer.clear()

    def drain(self, seconds: float) -> None:
        """Take what is left in the output pipes, without waiting for more than `seconds` in all."""
        deadline = time.monotonic() + seconds
        for fd in self.outputs:
            while time.monotonic() < deadline:
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    if self.record is not None:
                        break  # all the cell wrote came before its record: nothing is missing
                    time.sleep(0.01)  # the writers are being killed: their end comes soon
                    continue
                except OSError:
                    break
                self.kept[self.outputs.index(fd)].take(chunk)
                if not chunk:
                    break

    def text(self, index: int) -> str:
        """What was kept of stdout (0) or stderr (1)."""
        return self.kept[index].text()

    def exit_code(self) -> int:
        """The cell's exit status: the record's, or how the worker ended."""
        if self.record is not None:
            return int(self.record["exit"]) & 0xFF
        if self.killed:
            return 128 + signal.SIGKILL
        return exit_code_of(self.session.worker.wait())

    def result(self) -> str | None:
        """The repr of the cell's last expression, when it had one."""
        return record_result(self.record)
