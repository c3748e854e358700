"""In-container agent: a small HTTP service that runs exactly one program in this container, then is done.

GET /healthz answers {"ok": true, "warm": bool, "warming": bool, "used": bool} once the agent listens. POST /run
takes {"language", "code", "variables", "timeout", "max_output_bytes", "max_images", "max_image_bytes"}
and answers {"stdout", "stderr", "exit_code", "status", "error"?, "duration_ms", "images": [...]};
then the agent exits, and with it the container.
The program runs as the unprivileged `sandbox` user (see worker.py); this agent runs as root with
only the capabilities to start that user's process and to kill it.

Every container starts its own agent, so its start-up is paid by every request: the agent uses
the standard library only (see http_server.py). Flask alone took ~140 ms of CPU to import here,
a third of a request's whole cost under load.
"""

from __future__ import annotations

import gc

# The agent lives for one run and makes no garbage cycles worth collecting; without the collector,
# its imports alone take ~4 ms less CPU, paid by every container.
gc.disable()

import base64  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import pwd  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import signal  # noqa: E402
import stat  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from typing import IO, Any, NoReturn  # noqa: E402

from http_server import HTTPError, serve_unix_socket  # noqa: E402

SANDBOX_USER = "sandbox"
WORKDIR = "/workspace"
# What a warm-up imports (worker.preload) and the libraries built on it.
PRELOADED_MODULES = re.compile(r"\b(?:numpy|pandas|matplotlib|seaborn|scipy|sklearn|statsmodels)\b")
WORKER_FAILED = 127  # the forked worker's exit status when it could not even start
IMAGE_TYPES = {
    ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
    ".svg": "image/svg+xml", ".webp": "image/webp",
}
COLD_START_SECONDS = 10.0
WARM_DELAY_SECONDS = 0.5  # idle time before a sandbox warms up (see Agent.warm_up)
STATUS_MESSAGES = {
    "timeout": "execution exceeded the time limit of {timeout:g} s and was killed",
    "output_limit": "output exceeded {max_output_bytes} bytes and was cut; the program was stopped",
    "oom": "the program ran out of memory and was killed",
}


def worker_environment() -> dict[str, str]:
    """The program's whole environment: nothing of the agent's (or the center's) leaks into it."""
    return {
        "PATH": "/opt/venv/bin:/usr/local/bin:/usr/bin:/bin",
        "HOME": WORKDIR,
        "USER": SANDBOX_USER,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TMPDIR": "/tmp",
        "MPLCONFIGDIR": "/tmp/.matplotlib",
        "MPLBACKEND": "module://capture_backend",
        "MATPLOTLIBRC": "/opt/sandbox/matplotlibrc",
        "PYTHONUNBUFFERED": "1",  # output printed before a timeout is not lost in a buffer
        "PYTHONIOENCODING": "utf-8",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def kill_sandbox_processes() -> None:
    """SIGKILL every process but PID 1 and this agent: all of them belong to the program.

    kill(-1) is one atomic sweep in the kernel, so a fork bomb cannot outrun it, and it needs
    no fork of its own (which a program holding every allowed PID would make fail).
    """
    try:
        os.kill(-1, signal.SIGKILL)
    except ProcessLookupError:
        pass


def become_worker(user: pwd.struct_passwd, stdio: tuple[int, int, int], status_fd: int, max_processes: int) -> NoReturn:
    """In the forked child: drop to the sandbox user with only the worker's pipes, then run worker.py; never returns."""
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
        os.setgid(user.pw_gid)
        # Real, effective and saved: every capability is gone with root. The change of user also
        # leaves this process non-dumpable (as a setuid program is): its /proc/self files that
        # need that, such as environ and mem, stay root's; the processes it starts are ordinary.
        # (Making it dumpable again would need ctypes, ~9 ms of CPU per container.)
        os.setuid(user.pw_uid)
        os.chdir(WORKDIR)
        os.environ.clear()
        os.environ.update(worker_environment())
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        gc.enable()  # the program's garbage is collected as usual
        import worker

        worker.main(status_fd)
    finally:
        os._exit(WORKER_FAILED)  # never back into the agent's code, whatever happened


class Worker:
    """The unprivileged process that will run the program, forked before the request.

    Forked, not started as a new interpreter: that and its imports would cost every container
    another ~15 ms of CPU. It starts cold; the agent may tell it to warm up (import numpy, pandas,
    matplotlib) while no request has come: see Agent.warm_up().
    """

    def __init__(self, max_processes: int = 0) -> None:
        user = pwd.getpwnam(SANDBOX_USER)
        stdin_read, stdin_write = os.pipe()
        stdout_read, stdout_write = os.pipe()
        stderr_read, stderr_write = os.pipe()
        status_read, status_write = os.pipe()
        pid = os.fork()
        if pid == 0:
            become_worker(user, (stdin_read, stdout_write, stderr_write), status_write, max_processes)
        for fd in (stdin_read, stdout_write, stderr_write, status_write):
            os.close(fd)
        self.pid = pid
        self.stdin = os.fdopen(stdin_write, "wb")
        self.stdout = os.fdopen(stdout_read, "rb")
        self.stderr = os.fdopen(stderr_read, "rb")
        self.returncode: int | None = None
        self._wait_lock = threading.Lock()
        self.started = threading.Event()
        self.warm = threading.Event()
        self.warming = False
        threading.Thread(target=self._follow_status, args=(status_read,), daemon=True).start()

    def _follow_status(self, fd: int) -> None:
        """The worker writes b"r" once it waits for input and b"w" once it has warmed up."""
        events = {b"r": self.started, b"w": self.warm}
        with os.fdopen(fd, "rb") as pipe:
            while byte := pipe.read(1):
                if byte in events:
                    events[byte].set()

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


class CappedReader(threading.Thread):
    """Drains one output pipe, keeping at most `limit` bytes; says when the limit was passed."""

    def __init__(self, pipe: IO[bytes], limit: int, overflow: threading.Event) -> None:
        super().__init__(daemon=True)
        self.pipe, self.limit, self.overflow = pipe, limit, overflow
        self.chunks: list[bytes] = []
        self.size = 0
        self.truncated = False

    def run(self) -> None:
        fd = self.pipe.fileno()
        while chunk := os.read(fd, 65536):
            room = self.limit - self.size
            if room > 0:
                self.chunks.append(chunk[:room])
                self.size += min(len(chunk), room)
            if len(chunk) > room and not self.truncated:
                self.truncated = True
                self.overflow.set()  # keep draining so writers never block; the run is stopped

    def text(self) -> str:
        """What was kept, decoded; bytes that are not UTF-8 become U+FFFD."""
        return b"".join(self.chunks).decode("utf-8", errors="replace")


def oom_kill_count() -> int:
    """How many times this container's memory cgroup has OOM-killed a process (v1 or v2)."""
    for path in ("/sys/fs/cgroup/memory/memory.oom_control", "/sys/fs/cgroup/memory.events"):
        try:
            with open(path) as f:
                for line in f:
                    name, _, value = line.partition(" ")
                    if name == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            continue
    return 0


def collect_images(max_images: int, max_bytes: int) -> tuple[list[dict[str, str]], list[str]]:
    """Image files at the top of the working folder, never through a symlink; also what was skipped."""
    images, skipped = [], []
    total_budget = max_bytes * 2
    dir_fd = os.open(WORKDIR, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in sorted(os.listdir(dir_fd)):
            mime = IMAGE_TYPES.get(os.path.splitext(name)[1].lower())
            if mime is None:
                continue
            if len(images) >= max_images:
                skipped.append(f"{name}: more than {max_images} images")
                continue
            try:
                # O_NOFOLLOW: a symlink is refused; O_NONBLOCK: a planted FIFO cannot hang us.
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
            except OSError as e:
                skipped.append(f"{name}: {e.strerror}")
                continue
            with os.fdopen(fd, "rb") as f:
                info = os.fstat(f.fileno())
                if not stat.S_ISREG(info.st_mode):
                    skipped.append(f"{name}: not a regular file")
                    continue
                if info.st_size > min(max_bytes, total_budget):
                    skipped.append(f"{name}: {info.st_size} bytes is over the image size limit")
                    continue
                data = f.read(max_bytes + 1)
            if len(data) > max_bytes:
                skipped.append(f"{name}: over the image size limit")
                continue
            total_budget -= len(data)
            images.append({"name": name, "mime": mime, "data": base64.b64encode(data).decode()})
    finally:
        os.close(dir_fd)
    return images, skipped


class Job:
    """A validated run request."""

    DEFAULTS: dict[str, Any] = {
        "language": "python", "variables": None, "timeout": 30, "max_output_bytes": 1024 * 1024,
        "max_images": 20, "max_image_bytes": 10 * 1024 * 1024,
    }

    def __init__(self, code: str, **settings: Any) -> None:
        settings = {**self.DEFAULTS, **settings}
        self.code = code
        self.language: str = settings["language"]
        self.variables: dict[str, Any] = settings["variables"] or {}
        self.timeout: float = settings["timeout"]
        self.max_output_bytes: int = settings["max_output_bytes"]
        self.max_images: int = settings["max_images"]
        self.max_image_bytes: int = settings["max_image_bytes"]

    def uses_preloaded_modules(self) -> bool:
        """Whether the program mentions a module the warm-up imports (or one built on them)."""
        return self.language == "python" and PRELOADED_MODULES.search(self.code) is not None

    @classmethod
    def from_json(cls, body: Any) -> Job:
        """Check the center's request (absent fields take the defaults above); ValueError names the bad field."""
        if not isinstance(body, dict):
            raise ValueError("body must be a JSON object")
        job = cls(body.get("code"), **{name: body[name] for name in cls.DEFAULTS if name in body})
        if job.language not in ("python", "bash"):
            raise ValueError("language must be python or bash")
        if not isinstance(job.code, str):
            raise ValueError("code must be a string")
        if not isinstance(job.variables, dict) or not all(k.isidentifier() for k in job.variables):
            raise ValueError("variables must be an object keyed by identifiers")
        for name in ("timeout", "max_output_bytes", "max_images", "max_image_bytes"):
            value = getattr(job, name)
            lowest_allowed = 0 if name == "max_images" else 1e-9  # max_images 0: collect none
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < lowest_allowed:
                raise ValueError(f"{name} must be a positive number")
        return job


class Agent:
    """Holds this container's one worker and runs the one job it is given."""

    def __init__(self, max_processes: int = 0, warm_delay: float = WARM_DELAY_SECONDS) -> None:
        self.max_processes = max_processes
        self.worker = Worker(max_processes)
        self.lock = threading.Lock()  # guards `used` and the decision to warm up
        self.used = False
        timer = threading.Timer(warm_delay, self.warm_up)
        timer.daemon = True
        timer.start()

    def warm_up(self) -> None:
        """Import the heavy modules, but only in a sandbox that sat idle for a moment.

        Under load a request takes the sandbox at once and a warm-up would only burn CPU that
        other requests need; when idle, the next plot finds pandas and matplotlib loaded.
        """
        with self.lock:
            if self.used or not self.worker.started.is_set():
                return
            self.worker.warming = True
            try:
                self.worker.send(b"warm\n")
            except OSError:
                pass

    def take_worker(self, job: Job) -> Worker:
        """A worker waiting for the job: warm or never asked to warm, or still warming up for a job that
        needs those modules (finishing the imports beats starting them over); otherwise a cold one."""
        worker = self.worker
        if worker.warming and not worker.warm.is_set() and not job.uses_preloaded_modules():
            kill_sandbox_processes()  # a cold start beats waiting for imports the program does not need
            worker.wait()
            worker = self.worker = Worker(self.max_processes)
        if not worker.started.wait(COLD_START_SECONDS):
            raise RuntimeError("the sandbox worker did not start")
        return worker

    def run(self, job: Job) -> dict[str, Any]:
        """Run the job to its end (exit, timeout or output cap) and report what happened."""
        worker = self.take_worker(job)
        oom_before = oom_kill_count()
        finished = threading.Event()
        readers = [CappedReader(pipe, job.max_output_bytes, finished)
                   for pipe in (worker.stdout, worker.stderr)]
        for reader in readers:
            reader.start()
        threading.Thread(target=lambda: (worker.wait(), finished.set()), daemon=True).start()

        started = time.monotonic()
        payload = json.dumps({"language": job.language, "code": job.code, "variables": job.variables})
        try:
            worker.send(payload.encode() + b"\n")
            worker.stdin.close()
        except BrokenPipeError:
            pass  # the worker is gone; its exit status tells why
        timed_out = not finished.wait(job.timeout)
        duration_ms = (time.monotonic() - started) * 1000
        # Whatever ended the run, nothing of the program may outlive it (background jobs included).
        kill_sandbox_processes()
        returncode = worker.wait()
        for reader in readers:
            reader.join(timeout=2)
        stdout, stderr = readers

        exit_code = returncode if returncode >= 0 else 128 - returncode
        if timed_out:
            status = "timeout"
        elif stdout.truncated or stderr.truncated:
            status = "output_limit"
        elif oom_kill_count() > oom_before:
            status = "oom"
        elif returncode != 0:
            status = "error"
        else:
            status = "ok"
        images, skipped = collect_images(int(job.max_images), int(job.max_image_bytes))
        result: dict[str, Any] = {
            "stdout": stdout.text(), "stderr": stderr.text(), "exit_code": exit_code,
            "status": status, "duration_ms": round(duration_ms, 1), "images": images,
            "skipped_images": skipped, "warm": worker.warm.is_set(),
        }
        if status != "ok":
            result["error"] = self.describe_error(status, returncode, result["stderr"], job)
        return result

    @staticmethod
    def describe_error(status: str, returncode: int, stderr: str, job: Job) -> str:
        """The traceback (stderr's tail) or a one-line reason."""
        if status in STATUS_MESSAGES:
            return STATUS_MESSAGES[status].format(timeout=job.timeout, max_output_bytes=job.max_output_bytes)
        if returncode < 0:
            return f"the program was killed by {signal.Signals(-returncode).name}"
        return stderr.strip()[-8000:] or f"the program exited with code {returncode}"


def route(agent: Agent, method: str, path: str, body: Any) -> tuple[int, dict[str, Any], bool]:
    """The agent's HTTP face: (status, JSON answer, exit once answered) for one request.

    After its one program the agent has nothing left to do: it exits once the report is sent, so
    the container stops by itself.
    """
    if path == "/healthz" and method == "GET":
        worker = agent.worker
        return 200, {"ok": True, "warm": worker.warm.is_set(), "warming": worker.warming, "used": agent.used}, False
    if path == "/run" and method == "POST":
        try:
            job = Job.from_json(body)
        except ValueError as e:
            return 400, {"error": str(e)}, False
        with agent.lock:
            if agent.used:
                return 409, {"error": "this sandbox has already run a program"}, False
            agent.used = True
        return 200, agent.run(job), True
    if path in ("/healthz", "/run"):
        raise HTTPError(405, f"{method} is not allowed on {path}")
    raise HTTPError(404, f"no such endpoint: {path}")


def parse_arguments(argv: list[str]) -> tuple[str, int]:
    """--socket PATH (default /agent/sock/agent.sock) and --max-processes N (RLIMIT_NPROC; 0: none)."""
    options = {"--socket": "/agent/sock/agent.sock", "--max-processes": "0"}
    if len(argv) % 2 or any(name not in options for name in argv[::2]):
        raise SystemExit(f"usage: agent.py [--socket PATH] [--max-processes N]; got {argv}")
    options.update(zip(argv[::2], argv[1::2], strict=True))
    return options["--socket"], int(options["--max-processes"])


def main(argv: list[str] | None = None) -> None:
    """Serve on the Unix socket the center reaches (the container has no network at all)."""
    socket_path, max_processes = parse_arguments(sys.argv[1:] if argv is None else argv)
    agent = Agent(max_processes)  # starts the worker: before the server's threads exist
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    serve_unix_socket(socket_path, lambda method, path, body: route(agent, method, path, body))


if __name__ == "__main__":
    main()
