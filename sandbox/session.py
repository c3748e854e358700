"""Session mode: the agent keeps its worker as one long-lived interpreter and runs cell after cell.

POST /session/start (on a fresh agent only) hands the worker over: from then on the agent does not
exit after a cell (the center removes its container; with no center left, see agent.LifeWatch).
POST /session/cell takes /run's job and answers /run's report, minus "files", plus
"execution_count", "result", "alive" and, once the session cannot go on, "dead_reason"; a dead
session answers 410, a busy one 409. Files of the workspace: PUT /files/<path> (raw body),
GET /files?limit=N&cursor=C (a page of the listing, see workspace.task_list), GET /files/<path>
(raw bytes).

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

import codecs
import json
import os
import re
import select
import signal
import threading
import time
from typing import Any

import workspace
from agent import (
    COLD_START_SECONDS,
    Agent,
    EventStream,
    Job,
    OutputBudget,
    collect_outputs,
    kill_sandbox_processes,
    oom_kill_count,
    record_result,
    signal_description,
    streamed,
    wants_stream,
    workspace_snapshot,
)
from contract import (
    DEFAULT_LIST_LIMIT,
    DEFAULT_MAX_UPLOAD_BYTES,
    INTERRUPT_GRACE_SECONDS,
    MAX_LISTED_FILES,
    OUTPUT_CUT_NOTICE,
    SESSION_START_SECONDS,
    UPLOAD_LIMIT_HEADER,
)
from http_server import HTTPError, RawResponse, Request

DRAIN_SECONDS = 0.5  # after a cell's record, for output still in the pipes (bounded: a thread may write on)
START_SECONDS = 30.0  # for the worker to take a cell (a 64 MiB one is parsed in well under a second)
SWEEP_SECONDS = 2.0  # for the processes a cell left behind to be gone
MAX_POLL_MS = 60_000
CHUNK = 1024 * 1024  # of an upload or a download, in memory at once
MAX_RECORD_BYTES = 2 * 1024 * 1024
IGNORED_INTERRUPT = "the cell ignored the interrupt and was killed"
NOT_STARTED = "the session's interpreter did not take the cell and was killed"
OUT_OF_MEMORY = "the cell ran out of memory and the session's processes were killed"
LEFTOVERS = "the cell left processes behind that could not be stopped; the session's processes were killed"


class Session:
    """The session's interpreter (the agent's worker) and its state: alive or why not, cells run, busy."""

    def __init__(self, agent: Agent) -> None:
        self.agent, self.worker = agent, agent.worker
        self.busy = threading.Lock()  # one cell at a time
        self.alive = True
        self.dead_reason = ""
        self.execution_count = 0
        self.status_fd = -1
        self.status_buffer = b""
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
        self.status_fd, self.status_buffer = worker.session_status
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
                    workspace.write_files(self.agent.options.uid, job.files)
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
                           "count": count}).encode() + b"\n"
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
        try:
            outputs = collect_outputs(job, before, with_files=False)
            report.update(images=outputs.images, skipped=outputs.skipped.report())
        except Exception as e:  # noqa: BLE001 - the cell's output is reported whatever its folder holds
            report["skipped"] = [{"name": ".", "reason": f"images could not be collected: {type(e).__name__}: {e}"}]
        if status == "output_limit":
            report["output_notice"] = OUTPUT_CUT_NOTICE.format(max_output_bytes=job.max_output_bytes)
        if status != "ok":
            report["error"] = self.describe_error(status, job, report["stderr"], exit_code,
                                                  (cell.record or {}).get("error"))
        return report

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
            return Agent.describe_error(status, exit_code, stderr, job, summary)
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
        self.status_buffer = b""

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
        self.on_text = [events.output(index) for index in (0, 1)] if events else None
        # The center's connection: readable only once it closes (it sends nothing after the cell).
        self.hangup_fd = events.sock.fileno() if events else -1
        worker = session.worker
        self.stdin_fd = worker.stdin.fileno()
        self.outputs = (worker.stdout.fileno(), worker.stderr.fileno())
        self.overflow = threading.Event()
        self.budget = OutputBudget(int(job.max_output_bytes), self.overflow)
        self.decoders = [codecs.getincrementaldecoder("utf-8")("replace") for _ in self.outputs]
        self.chunks: list[list[str]] = [[], []]
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
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return True
        except OSError:
            chunk = b""
        self.take_output(self.outputs.index(fd), chunk)
        return bool(chunk)

    def take_output(self, index: int, chunk: bytes) -> None:
        """Keep what the budget allows of a chunk of stdout (0) or stderr (1); stream it when streamed."""
        text = self.decoders[index].decode(chunk, final=not chunk)
        if text and (kept := self.budget.take(text)):
            self.chunks[index].append(kept)
            if self.on_text is not None:
                self.on_text[index](kept)

    def read_status(self) -> bool:
        """Take what the status pipe holds now; False once it has ended (the program may close it)."""
        try:
            chunk = os.read(self.session.status_fd, 65536)
        except BlockingIOError:
            return True
        except OSError:
            chunk = b""
        self.session.status_buffer += chunk
        self.take_status()
        return bool(chunk)

    def take_status(self) -> None:
        """This cell's start and record, when among the complete lines received (any other line is dropped)."""
        session = self.session
        while self.record is None and b"\n" in session.status_buffer:
            line, _, session.status_buffer = session.status_buffer.partition(b"\n")
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not isinstance(record, dict):
                continue
            if record.get("started") == self.count and self.started_at is None:
                self.started_at = time.monotonic()
            elif record.get("count") == self.count and isinstance(record.get("exit"), int):
                self.record = record
        if len(session.status_buffer) > MAX_RECORD_BYTES:
            session.status_buffer = b""

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
                self.take_output(self.outputs.index(fd), chunk)
                if not chunk:
                    break

    def text(self, index: int) -> str:
        """What was kept of stdout (0) or stderr (1)."""
        return "".join(self.chunks[index])

    def exit_code(self) -> int:
        """The cell's exit status: the record's, or how the worker ended."""
        if self.record is not None:
            return int(self.record["exit"]) & 0xFF
        if self.killed:
            return 128 + signal.SIGKILL
        returncode = self.session.worker.wait()
        return returncode if returncode >= 0 else 128 - returncode

    def result(self) -> str | None:
        """The repr of the cell's last expression, when it had one."""
        return record_result(self.record)


# --- routes -----------------------------------------------------------------------------------------

def route(agent: Agent, request: Request) -> tuple[int, dict[str, Any] | RawResponse, bool]:
    """/session/start, /session/cell and /files[/<path>]: (status, answer, False); a session's agent does not
    exit after answering (see agent.LifeWatch for when it ends itself)."""
    method, path = request.method, request.path
    if path == "/session/start":
        allow(method, path, "POST")
        return (*start(agent), False)
    session: Session | None = agent.session
    if session is None:
        return 409, {"error": "this sandbox is not in session mode: POST /session/start first"}, False
    if path == "/session/cell":
        allow(method, path, "POST")
        try:
            job = Job.from_json(request.json(), agent.options)
        except ValueError as e:
            return 400, {"error": str(e)}, False
        return (*session.cell(job, stream=wants_stream(request)), False)
    if path == "/files":
        allow(method, path, "GET")
        try:
            limit, after = listing_query(request.target.partition("?")[2])
        except ValueError as e:
            return 400, {"error": str(e)}, False
        return (*workspace_call(lambda: (200, workspace.list_files(agent.options.uid, limit, after))), False)
    allow(method, path, "GET", "PUT")
    try:
        file_path = workspace.check_path(decode_path(path[len("/files/"):]))
    except ValueError as e:
        return 400, {"error": str(e)}, False
    if method == "PUT":
        return (*workspace_call(lambda: put_file(agent, request, file_path)), False)
    return (*workspace_call(lambda: get_file(agent, file_path)), False)


def allow(method: str, path: str, *methods: str) -> None:
    """HTTPError 405 unless the method is one of these."""
    if method not in methods:
        raise HTTPError(405, f"{method} is not allowed on {path}")


def start(agent: Agent) -> tuple[int, dict[str, Any]]:
    """POST /session/start: a fresh agent becomes a session's."""
    refusal = agent.take("session")
    if refusal is not None:
        return 409, {"error": refusal}
    session = Session(agent)
    agent.session = session
    try:
        session.start()
    except RuntimeError as e:
        return 500, {"error": str(e)}
    finally:
        # From when the center hears of it: it counts the session's lifetime from a moment later still.
        agent.life.session_started()
    return 200, {"ok": True}


def listing_query(query: str) -> tuple[int, str | None]:
    """GET /files's (limit, path the page starts after) from `limit` and `cursor`; ValueError saying which
    is bad. Other parameters are ignored."""
    from urllib.parse import parse_qsl

    fields = dict(parse_qsl(query, keep_blank_values=True, max_num_fields=16))
    limit_text = fields.get("limit", str(DEFAULT_LIST_LIMIT))
    # Digits only, and few of them: int() takes "+5", " 5", "5_0", and refuses 5000 digits only after a while.
    if not (limit_text.isascii() and limit_text.isdigit() and len(limit_text) <= 6
            and 1 <= int(limit_text) <= MAX_LISTED_FILES):
        raise ValueError(f"limit must be a whole number from 1 to {MAX_LISTED_FILES}")
    cursor = fields.get("cursor", "")
    return int(limit_text), workspace.cursor_path(cursor) if cursor else None


def workspace_call(call: Any) -> tuple[int, Any]:
    """Run a file operation; a WorkspaceError becomes its JSON error answer."""
    try:
        return call()
    except workspace.WorkspaceError as e:
        return e.status, {"error": e.message}


def decode_path(text: str) -> str:
    """A request path's percent-encoded UTF-8 as text; ValueError when it is not UTF-8."""
    raw = text.encode("latin-1")  # the request line was read as latin-1: these are its bytes
    raw = re.sub(rb"%([0-9A-Fa-f]{2})", lambda match: bytes([int(match[1], 16)]), raw)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("the path is not valid UTF-8") from None


def put_file(agent: Agent, request: Request, path: str) -> tuple[int, dict[str, Any]]:
    """PUT /files/<path>: the body, streamed into the file (through a temporary one), folders made as needed."""
    limit_text = request.headers.get(UPLOAD_LIMIT_HEADER.lower())
    try:
        limit = int(limit_text) if limit_text is not None else DEFAULT_MAX_UPLOAD_BYTES
    except ValueError:
        limit = -1
    if limit < 0:
        return 400, {"error": f"{UPLOAD_LIMIT_HEADER} must be a whole number of bytes"}
    if request.length is None:
        raise HTTPError(411, "send the file with a Content-Length")
    if request.length > limit:  # the body is dropped unread (see http_server.Request.discard_body)
        return 413, {"error": f"the file is {request.length} bytes, over the limit of {limit} bytes"}
    upload = workspace.Upload(agent.options.uid, path)
    try:
        left, failure = request.length, None
        while left:
            chunk = request.read(min(CHUNK, left))  # ClientGone when the client stalls or leaves
            if not chunk:
                raise HTTPError(400, "the body ended early")
            left -= len(chunk)
            if failure is None:
                try:
                    upload.write(chunk)
                except OSError as e:
                    failure = e  # the rest of the body is still read, so that the client gets the answer
        upload.finish(commit=failure is None)
        if failure is not None:
            raise workspace.os_error(failure, path)
    except BaseException:
        if upload.fd >= 0:  # not finished: the partial file goes
            try:
                upload.finish(commit=False)
            except workspace.WorkspaceError:
                pass
        raise
    finally:
        upload.close()
    return 201, {"path": path, "size": request.length}


def get_file(agent: Agent, path: str) -> tuple[int, RawResponse]:
    """GET /files/<path>: the file's bytes, streamed."""
    fd, size = workspace.open_file(agent.options.uid, path)

    def send(sock: Any) -> None:
        left = size
        while left:
            chunk = os.read(fd, min(CHUNK, left))
            if not chunk:  # the program shortened it meanwhile: the client sees a short body
                raise OSError("the file shrank while it was sent")
            sock.sendall(chunk)
            left -= len(chunk)

    return 200, RawResponse(size, send, close=lambda: os.close(fd))
