"""In-container agent: a small HTTP service that runs exactly one program in this container, then is done.

GET /healthz answers {"ok": true, "warm": bool, "warming": bool, "used": bool, "mode": "fresh"|"oneshot"|"session"}
once the agent listens. POST /run takes {"language", "code", "variables", "timeout", "max_output_bytes",
"max_images", "max_image_bytes", "files"?: [{"path", "content_base64"}], "max_files", "max_file_bytes"}
and answers {"stdout", "stderr", "exit_code", "status", "error"?, "duration_ms", "warm", "result",
"images": [{"name", "mime", "data"}], "files": [{"name", "data"}], "skipped": [{"name", "reason"}],
"output_notice"? (when output was cut: the line the center ends `output` with)};
then the agent exits, and with it the container. A job it refuses gets a 400 {"error"} at once,
and the agent stays ready. The program runs as an unprivileged user (--uid; see worker.py); this
agent runs as root with only the capabilities to start that user's process and to kill it.

POST /session/start instead makes this a session's agent: one interpreter that runs cell after
cell (POST /session/cell) and files to upload, list and download (/files): see session.py.

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
import codecs  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import pwd  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import signal  # noqa: E402
import stat  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from typing import IO, Any, NamedTuple, NoReturn  # noqa: E402

from contract import (  # noqa: E402
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_FILES,
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_IMAGES,
    DEFAULT_MAX_OUTPUT_BYTES,
    DEFAULT_TIMEOUT_SECONDS,
    IMAGE_EXTENSIONS,
    MAX_ERROR_SUMMARY_BYTES,
    OUTPUT_CUT_NOTICE,
    PRELOADED_LIBRARIES,
    SESSION_END_GRACE_SECONDS,
    STREAM_TYPE,
    USERS_DIR,
    WARM_DELAY_SECONDS,
    WARM_REST_SECONDS,
    WARM_UP_GROUP_NAMES,
    check_path,
    cut_result,
    file_and_folder,
)
from http_server import HTTPError, RawResponse, Request, encode_json, serve_unix_socket  # noqa: E402

SANDBOX_USER = "sandbox"  # the image's unprivileged user: the program's uid and gid unless --uid says otherwise
WORKDIR = "/workspace"
WORKER_FAILED = 127  # the forked worker's exit status when it could not even start
MAX_SVG_PROLOGUE_ITEMS = 64  # declarations, comments, doctypes before an SVG's <svg>
MAX_RECORD_BYTES = 2 * 1024 * 1024  # a record line on the status pipe (a result repr, JSON-escaped)
# Images: only files with these extensions are looked at, and each must be what its first bytes
# say it is; the MIME type sent is the content's, never the name's. A row's (offset, bytes) all match.
IMAGE_MAGIC: tuple[tuple[str, tuple[tuple[int, bytes], ...]], ...] = (
    ("image/png", ((0, b"\x89PNG\r\n\x1a\n"),)),
    ("image/jpeg", ((0, b"\xff\xd8\xff"),)),
    ("image/gif", ((0, b"GIF87a"),)),
    ("image/gif", ((0, b"GIF89a"),)),
    ("image/webp", ((0, b"RIFF"), (8, b"WEBP"))),
)
# Files the program saved figures to below the top of the working folder in its run or cell, which
# collect_outputs looks at too: a JSON list of paths relative to it, written by capture_backend
# (SAVED_LIST) in the program's own process, so as untrusted as the folder itself.
SAVED_FIGURES = "/tmp/.saved-figures.json"
MAX_SAVED_FIGURES_BYTES = 256 * 1024
SVG_TYPE = "image/svg+xml"  # text, so recognised by its first element (see is_svg)
IMAGE_FORMATS = "PNG, JPEG, GIF, WEBP or SVG"
MAX_NAME_BYTES = 255
# Characters a name must not have: they would break a line, a log or a page showing it (C0 and C1
# controls, DEL, line and paragraph separators) or reorder the text around it (bidi embeddings,
# overrides and isolates).
UNSAFE_NAME_CHARACTERS = "[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
MAX_SHOWN_NAME = 200  # characters of a skipped file's name shown in the report
MAX_SKIPPED_LISTED = 50  # a program can make thousands of files: the report lists this many, then counts
MAX_WALKED_ENTRIES = 2000  # entries a run's subfolders are searched through for its files (a tree can be endless)
MAX_WALK_DEPTH = 8  # folders below the working folder searched
ERROR_TAIL_BYTES = 4096  # of stderr repeated as `error` (JSON-encoded): the whole of it is in `stderr`
MAX_ARG_STRLEN = 32 * 4096  # Linux: one environment string, its NUL included
MAX_EXEC_SIZE = 6 * 1024 * 1024  # Linux: argument and environment strings with their pointers, at most
COLD_START_SECONDS = 10.0
MAX_WATCH_WAIT = 3600.0  # the life watch looks again at least this often (any bound, however large, works)
STATUS_MESSAGES = {
    "timeout": "execution exceeded the time limit of {timeout:g} s and was killed",
    "output_limit": ("output (stdout and stderr together) exceeded {max_output_bytes} bytes and was cut; "
                     "the program was stopped"),
    "oom": "the program ran out of memory and was killed",
}


class AgentOptions(NamedTuple):
    """The agent's command line, checked (parse_arguments)."""

    socket: str
    max_processes: int  # RLIMIT_NPROC; 0: none
    uid: int  # the program's uid and gid
    warm_delay: float  # idle seconds before the warm-up
    warm_first: tuple[str, ...]  # the warm-up's groups taken first (contract.WARM_UP_GROUPS)
    warm_rest: float  # idle seconds after them before the other groups
    threads: int  # the numeric libraries' thread pools (worker_environment); 0: their own choice
    path_first: str = ""  # a folder put first on the program's PATH; "": none
    session_lifetime: float = 0.0  # a session's agent ends this long after the session started; 0: never
    max_silence: float = 0.0  # the agent ends after this long without any request; 0: never


def worker_environment(options: AgentOptions) -> dict[str, str]:
    """The program's whole environment: nothing of the agent's (or the center's) leaks into it.

    `threads` (the container's CPU limit, rounded up; 0: none) sizes the numeric libraries' thread
    pools: OpenBLAS otherwise starts one thread per host core, which on a 1-CPU quota only spin and
    wait (measured: numpy's import and a first figure cost twice the CPU). `path_first` goes before
    the usual PATH (under gVisor: busybox's ls and stat, see sandboxes.py).
    """
    threads = options.threads
    pools = {name: str(threads) for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    path = "/opt/venv/bin:/usr/local/bin:/usr/bin:/bin"
    return {
        **(pools if threads else {}),
        "PATH": f"{options.path_first}:{path}" if options.path_first else path,
        "HOME": WORKDIR,
        "USER": SANDBOX_USER,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TMPDIR": "/tmp",
        "MPLCONFIGDIR": "/tmp/.matplotlib",
        "MPLBACKEND": "module://capture_backend",
        # For Python the program starts itself (python3 plot.py): the worker has it on sys.path already.
        "PYTHONPATH": "/opt/matplotlib-backend",
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
        os.chdir(WORKDIR)
        os.environ.clear()
        os.environ.update(worker_environment(options))
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        gc.enable()  # the program's garbage is collected as usual
        import worker

        worker.main(status_fd)
    except BaseException as e:  # noqa: BLE001 - said on the program's stderr, not lost in a bare exit 127
        try:
            os.write(2, f"the sandbox could not start the program: {type(e).__name__}: {e}\n".encode(errors="replace"))
        except OSError:
            pass
    finally:
        os._exit(WORKER_FAILED)  # never back into the agent's code, whatever happened


def record_result(record: dict[str, Any] | None) -> str | None:
    """A record's "result" (the repr of the last expression), cut as the worker cuts it: the program
    can write a record of its own on the status pipe it inherits, so nothing in one is trusted."""
    value = (record or {}).get("result")
    return cut_result(value) if isinstance(value, str) else None


class Worker:
    """The unprivileged process that will run the program, forked before the request.

    Forked, not started as a new interpreter: that and its imports would cost every container
    another ~15 ms of CPU. It starts cold; the agent may tell it to warm up (import numpy, pandas,
    matplotlib) while no request has come: see Agent.warm_up().
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
        self.in_session = threading.Event()  # the worker became a session's interpreter
        self.session_status: tuple[int, bytes] | None = None  # then its status pipe is the session's
        self.status_thread = threading.Thread(target=self._follow_status, args=(status_read,), daemon=True)
        self.status_thread.start()

    def _follow_status(self, fd: int) -> None:
        """The worker writes b"r" once it waits for input, b"w" and b"a" as it warms up; a one-shot
        run's record is a JSON line; b"s" hands the pipe over to the session (see session.py)."""
        events = {b"r": self.started, b"w": self.warm, b"a": self.warm_all}
        buffer = b""
        while chunk := os.read(fd, 65536):
            buffer += chunk
            position = 0
            while position < len(buffer):
                byte = buffer[position:position + 1]
                if byte == b"{":
                    end = buffer.find(b"\n", position)
                    if end == -1:
                        break
                    self._take_record(buffer[position:end])
                    position = end + 1
                    continue
                position += 1
                if byte == b"s":
                    self.session_status = (fd, buffer[position:])
                    self.in_session.set()
                    return
                if byte in events:
                    events[byte].set()
            buffer = buffer[position:]
            if len(buffer) > MAX_RECORD_BYTES:  # not a record the worker wrote: the program's noise
                buffer = b""
        os.close(fd)

    def _take_record(self, line: bytes) -> None:
        """Keep the run's record (the worker writes one; the program could write anything)."""
        try:
            record = json.loads(line)
        except ValueError:
            return
        if isinstance(record, dict):
            self.record = record

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


def json_size(text: str) -> int:
    """Bytes that text takes inside a JSON string as the agent sends it (UTF-8; \\u0000 is 6 bytes for 1)."""
    return len(json.dumps(text, ensure_ascii=False).encode("utf-8", "surrogatepass")) - 2


def json_prefix(text: str, budget: int) -> str:
    """The longest start of text whose json_size is within budget."""
    low, high = 0, min(len(text), budget)  # every character takes a byte at least
    while low < high:
        middle = (low + high + 1) // 2
        if json_size(text[:middle]) <= budget:
            low = middle
        else:
            high = middle - 1
    return text[:low]


def json_suffix(text: str, budget: int) -> str:
    """The longest end of text whose json_size is within budget."""
    low, high = 0, min(len(text), budget)
    while low < high:
        middle = (low + high + 1) // 2
        if json_size(text[len(text) - middle:]) <= budget:
            low = middle
        else:
            high = middle - 1
    return text[len(text) - low:]


class OutputBudget:
    """The room stdout and stderr share in the report, counted as they will be sent: JSON-encoded UTF-8.

    So max_output_bytes bounds the answer, whatever the program writes (control characters and
    bytes that are not UTF-8 take several bytes each once encoded).
    """

    def __init__(self, limit: int, overflow: threading.Event) -> None:
        self.left = limit
        self.overflow = overflow  # set once output was cut: the run is stopped
        self.cut = False
        self.lock = threading.Lock()

    def take(self, text: str) -> str:
        """What of text the report keeps: all of it while there is room, then its start, then nothing."""
        size = json_size(text)
        with self.lock:
            if self.cut:
                return ""
            if size <= self.left:
                self.left -= size
                return text
            kept = json_prefix(text, self.left)
            self.left -= json_size(kept)
            self.cut = True
        self.overflow.set()
        return kept


class OutputReader(threading.Thread):
    """Drains one output pipe, decoding it (bytes that are not UTF-8 become U+FFFD); keeps what the budget
    allows, and hands each piece kept to `on_text` too (a streamed run's events) as it comes."""

    def __init__(self, pipe: IO[bytes], budget: OutputBudget, on_text: Callable[[str], None] | None = None) -> None:
        super().__init__(daemon=True)
        self.pipe, self.budget, self.on_text = pipe, budget, on_text
        self.chunks: list[str] = []

    def run(self) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")("replace")  # a character may span two reads
        fd = self.pipe.fileno()
        while True:
            chunk = os.read(fd, 65536)  # keeps draining once cut: writers never block, the run is stopped
            text = decoder.decode(chunk, final=not chunk)
            if text and (kept := self.budget.take(text)):
                self.chunks.append(kept)
                if self.on_text is not None:
                    self.on_text(kept)
            if not chunk:
                return

    def text(self) -> str:
        """What was kept."""
        return "".join(self.chunks)


OUTPUT_STREAMS = ("stdout", "stderr")


class EventStream:
    """A streamed run's events to the center, one JSON object per line on the agent's connection.

    Output pipes are read in threads of their own: each line goes out whole, under a lock. A center
    that went away (its client hung up) is noticed here and ends nothing by itself: the center
    removes a one-shot sandbox, and a session's cell watches its connection (see session.py).
    """

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.lock = threading.Lock()
        self.gone = False

    def output(self, index: int) -> Callable[[str], None]:
        """The callback that sends text of stdout (0) or stderr (1) as an event."""
        return lambda text: self.send({"type": OUTPUT_STREAMS[index], "text": text})

    def send(self, event: dict[str, Any]) -> None:
        """One event as one line; dropped once the center is gone."""
        line = encode_json(event) + b"\n"
        with self.lock:
            if self.gone:
                return
            try:
                self.sock.sendall(line)
            except OSError:
                self.gone = True


def wants_stream(request: Request) -> bool:
    """Whether the center asked for the run's events as they come (Accept: application/x-ndjson)."""
    return STREAM_TYPE in request.headers.get("accept", "")


def streamed(run: Callable[[EventStream], dict[str, Any]], close: Callable[[], None] | None = None) -> RawResponse:
    """An answer that runs `run` while it is sent: the output events it makes, then the report as the last line."""

    def write(sock: Any) -> None:
        events = EventStream(sock)
        try:
            report = run(events)
        except Exception as e:  # noqa: BLE001 - the head is sent: the failure can only be an event now
            events.send({"type": "error", "error": f"agent error: {type(e).__name__}: {e}"})
            return
        events.send({"type": "report", "report": report})

    return RawResponse(None, write, STREAM_TYPE, close)


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


def signal_description(number: int) -> str:
    """'signal 9 (SIGKILL)', 'signal 40 (SIGRTMIN+6)': any number a process can die of."""
    try:
        name = signal.Signals(number).name
    except ValueError:
        if signal.SIGRTMIN < number < signal.SIGRTMAX:
            name = f"SIGRTMIN+{number - signal.SIGRTMIN}"
        else:
            return f"signal {number}"
    return f"signal {number} ({name})"


def image_type(data: bytes) -> str | None:
    """The MIME type of an image by its content (see IMAGE_MAGIC, is_svg), or None."""
    for mime, signature in IMAGE_MAGIC:
        if all(data.startswith(magic, offset) for offset, magic in signature):
            return mime
    return SVG_TYPE if is_svg(data) else None


def is_svg(data: bytes) -> bool:
    """Whether the text starts with an <svg> element, after what XML allows first: a BOM, white space,
    an XML declaration, processing instructions, comments, a doctype (with its internal subset)."""
    position = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    # (opening, closing) of what may come first; each is passed whole, so this is linear in the text,
    # and a real prologue has a few of them: a million empty doctypes is not a drawing (and would
    # cost a second of the agent's CPU per file).
    prologue = ((b"<?", b"?>"), (b"<!--", b"-->"), (b"<!DOCTYPE", b">"))
    for _ in range(MAX_SVG_PROLOGUE_ITEMS + 1):
        while data[position:position + 1] in (b" ", b"\t", b"\r", b"\n"):
            position += 1
        if data.startswith(b"<svg", position):
            return data[position + 4:position + 5] in (b" ", b"\t", b"\r", b"\n", b">", b"/")
        for opening, closing in prologue:
            if data.startswith(opening, position):
                end = position + len(opening)
                if opening == b"<!DOCTYPE":
                    # '[' is looked for only up to the next '>': searching the whole rest of the text
                    # for every doctype made "<!DOCTYPE>" repeated a million times quadratic.
                    subset = data.find(b"[", end, max(data.find(b">", end), end))
                    if subset != -1:
                        end = data.find(b"]", subset)  # its declarations hold '>' of their own
                        if end == -1:
                            return False
                end = data.find(closing, end)
                if end == -1:
                    return False
                position = end + len(closing)
                break
        else:
            return False
    return False


def shown_name(raw: bytes) -> str:
    """A file name as the report can show it whatever its bytes: undecodable bytes and unsafe characters escaped."""
    text = raw.decode("utf-8", "backslashreplace")
    text = re.sub(UNSAFE_NAME_CHARACTERS,
                  lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", text)
    return text if len(text) <= MAX_SHOWN_NAME else text[:MAX_SHOWN_NAME] + "…"


def name_problem(raw: bytes, seen: dict[str, str]) -> str | None:
    """Why a file name cannot be an image's name in the report, or None when it can.

    `seen` maps the NFC form of each good name so far to that name: two names that only differ in
    how an accented letter is encoded look the same to people, and to some file systems.
    """
    if len(raw) > MAX_NAME_BYTES:
        return f"the name is over {MAX_NAME_BYTES} bytes"
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "the name is not valid UTF-8"
    unsafe = re.search(UNSAFE_NAME_CHARACTERS, name)
    if unsafe is not None:
        if "\u202a" <= unsafe[0] <= "\u202e" or "\u2066" <= unsafe[0] <= "\u2069":
            return "the name has a bidirectional text control character"
        return "the name has a control character"
    normal = name
    if not name.isascii():  # NFC changes nothing in ASCII: unicodedata is imported only when needed
        import unicodedata

        normal = unicodedata.normalize("NFC", name)
    if normal in seen:
        return f"the same name as {seen[normal]} once Unicode-normalised (NFC)"
    seen[normal] = name
    return None


def natural_key(name: str) -> list[str | int]:
    """Sort key: digit runs compare as numbers, so figure_2 comes before figure_10."""
    # re.split with a group alternates text and digits, so like is always compared with like.
    return [int(part) if index % 2 else part for index, part in enumerate(re.split("([0-9]+)", name))]


class Skipped:
    """Files left out of the report and why; the list is capped, the rest counted."""

    def __init__(self) -> None:
        self.entries: list[dict[str, str]] = []
        self.unlisted = 0

    def add(self, name: str, reason: str) -> None:
        """One more file left out (name: as shown_name gives it)."""
        if len(self.entries) < MAX_SKIPPED_LISTED:
            self.entries.append({"name": name, "reason": reason})
        else:
            self.unlisted += 1

    def report(self) -> list[dict[str, str]]:
        """The report's `skipped`: {"name", "reason"} each."""
        if not self.unlisted:
            return self.entries
        return [*self.entries, {"name": "…", "reason": f"{self.unlisted} more skipped files are not listed"}]


Snapshot = dict[bytes, tuple[int, int, int]]


def fingerprint(info: os.stat_result) -> tuple[int, int, int]:
    """What tells a file changed (or replaced) since a snapshot: (mtime_ns, size, inode)."""
    return info.st_mtime_ns, info.st_size, info.st_ino


def is_cache_folder(raw: bytes) -> bool:
    """A folder tools keep their caches in (hidden ones, __pycache__), not searched for a run's files."""
    return raw.startswith(b".") or raw == b"__pycache__"


def files_below(dir_fd: int, skipped: Skipped | None = None) -> Iterator[tuple[bytes, os.stat_result]]:
    """(path, stat) of each entry other than a folder in the working folder's subfolders, depth first.

    At most MAX_WALKED_ENTRIES entries and MAX_WALK_DEPTH folders deep: a program can make an endless
    tree. What is left out is said in `skipped`, when given. Folders are opened one by one without
    following a symbolic link, and tools' cache folders (see is_cache_folder) are passed over.
    """
    walked = 0

    def folder(fd: int, prefix: bytes, depth: int) -> Iterator[tuple[bytes, os.stat_result]]:
        nonlocal walked
        with os.scandir(fd) as entries:
            for entry in entries:
                try:  # the top's files are list_candidates' (no stat: the type comes with the entry)
                    if not depth and not entry.is_dir(follow_symlinks=False):
                        continue
                except OSError:
                    continue
                walked += 1
                if walked > MAX_WALKED_ENTRIES:
                    if skipped is not None and walked == MAX_WALKED_ENTRIES + 1:
                        skipped.add(shown_name(prefix.rstrip(b"/")) or ".", "not searched further: the subfolders "
                                    f"hold over {MAX_WALKED_ENTRIES} entries")
                    return
                name = os.fsencode(entry.name)
                raw = prefix + name
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError as e:
                    if skipped is not None:
                        skipped.add(shown_name(raw), f"could not be read: {e.strerror}")
                    continue
                if not stat.S_ISDIR(info.st_mode):
                    yield raw, info
                    continue
                if is_cache_folder(name):
                    continue
                if depth >= MAX_WALK_DEPTH:
                    if skipped is not None:
                        skipped.add(shown_name(raw), f"not searched: over {MAX_WALK_DEPTH} folders deep")
                    continue
                try:
                    below = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                except OSError as e:
                    if skipped is not None:
                        skipped.add(shown_name(raw), f"could not be read: {e.strerror}")
                    continue
                try:
                    yield from folder(below, raw + b"/", depth + 1)
                finally:
                    os.close(below)

    yield from folder(dir_fd, b"", 0)


def workspace_snapshot(deep: bool = False) -> Snapshot | None:
    """path -> (mtime_ns, size, inode) of each entry at the top of the working folder (and, `deep`, of the
    files in its subfolders, as files_below finds them); None when unreadable.

    Taken before a program (or cell) starts, so that what it did not make or change is not collected.
    """
    try:
        dir_fd = os.open(WORKDIR, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        snapshot = {}
        with os.scandir(dir_fd) as entries:
            for entry in entries:
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                snapshot[os.fsencode(entry.name)] = fingerprint(info)
        if deep:
            snapshot.update((raw, fingerprint(info)) for raw, info in files_below(dir_fd))
        return snapshot
    except OSError:
        return None
    finally:
        os.close(dir_fd)


def unchanged(raw: bytes, info: os.stat_result, before: Snapshot | None) -> bool:
    """The file is as it was in `before`: an input file, or one an earlier cell made."""
    return before is not None and before.get(raw) == fingerprint(info)


class Candidate:
    """A file of the working folder that may be reported: an image (by its extension) or another file.
    `raw` is its path from the working folder (a name, or folders and a name)."""

    def __init__(self, raw: bytes, info: os.stat_result, is_image: bool) -> None:
        self.raw, self.info, self.is_image = raw, info, is_image
        self.shown = shown_name(raw)
        # In the order the files were made; files of the same clock tick in their names' natural order.
        self.sort_key = (info.st_mtime_ns, natural_key(self.shown), raw)


def has_image_extension(raw: bytes) -> bool:
    """The name ends in an image's extension (what makes a file a candidate image)."""
    return os.path.splitext(raw)[1].lower().decode("latin-1") in IMAGE_EXTENSIONS


def list_candidates(dir_fd: int, skipped: Skipped, before: Snapshot | None, with_files: bool) -> list[Candidate]:
    """The folder's files to look at: those with an image extension, and the others when `with_files`
    (folders aside); none left as they were in `before`. Never followed through a symlink."""
    candidates = []
    with os.scandir(dir_fd) as entries:
        for entry in entries:
            # Names are the program's bytes: scandir decodes them with surrogateescape, which
            # fsencode undoes exactly, so nothing here depends on them being UTF-8.
            raw = os.fsencode(entry.name)
            is_image = has_image_extension(raw)
            if not is_image and not with_files:
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError as e:
                skipped.add(shown_name(raw), f"could not be read: {e.strerror}")
                continue
            if unchanged(raw, info, before):
                continue
            if not is_image and stat.S_ISDIR(info.st_mode):
                continue  # a folder the program made is not an output file, nor an error
            candidates.append(Candidate(raw, info, is_image))
    return candidates


def open_below(dir_fd: int, raw: bytes, flags: int) -> int:
    """Open a path of the working folder with `flags`, each folder on the way without following a
    symbolic link (nor the file itself: O_NOFOLLOW is added)."""
    *folders, leaf = raw.split(b"/")
    folder = dir_fd
    try:
        for part in folders:
            next_folder = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder)
            if folder != dir_fd:
                os.close(folder)
            folder = next_folder
        return os.open(leaf, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder)
    finally:
        if folder != dir_fd:
            os.close(folder)


def saved_below(dir_fd: int, skipped: Skipped, with_files: bool, limit: int) -> list[Candidate]:
    """The files SAVED_FIGURES lists in subfolders (at most `limit`), as candidates: images, and others when
    `with_files`. A file gone since is left out."""
    try:
        fd = os.open(SAVED_FIGURES, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return []
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_SAVED_FIGURES_BYTES + 1) if stat.S_ISREG(os.fstat(fd).st_mode) else b""
    try:
        paths = json.loads(data) if len(data) <= MAX_SAVED_FIGURES_BYTES else []
    except ValueError:
        paths = []
    candidates: list[Candidate] = []
    for path in dict.fromkeys(path for path in (paths if isinstance(paths, list) else []) if isinstance(path, str)):
        if len(candidates) >= limit:
            break
        try:
            raw = check_path(path).encode()
        except ValueError:
            continue
        is_image = has_image_extension(raw)
        if b"/" not in raw or not (is_image or with_files):
            continue  # the top of the folder is list_candidates'
        try:
            fd = open_below(dir_fd, raw, os.O_PATH)
        except OSError as e:
            if not isinstance(e, FileNotFoundError):  # removed since: the program's choice, not a failure
                skipped.add(shown_name(raw), f"could not be read: {e.strerror}")
            continue
        try:
            candidates.append(Candidate(raw, os.fstat(fd), is_image))
        finally:
            os.close(fd)
    return candidates


def file_kind(mode: int) -> str:
    """'a directory', 'a FIFO', ... for a file that is not a regular one."""
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link (not followed)"),
             (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))
    return next((kind for test, kind in kinds if test(mode)), "a device or special file")


def read_candidate(dir_fd: int, candidate: Candidate, max_bytes: int, budget: int) -> bytes | str:
    """The bytes of a regular file within the size limits (one file's, all files' of its kind); or why not."""
    what = "image" if candidate.is_image else "file"
    size = candidate.info.st_size
    if not stat.S_ISREG(candidate.info.st_mode):
        return f"not a regular file: {file_kind(candidate.info.st_mode)}"
    if size > max_bytes:
        return f"{size} bytes is over the {what} size limit of {max_bytes}"
    if size > budget:
        return f"over the {what}s' total size limit of {2 * max_bytes} bytes"
    try:
        # O_NOFOLLOW (open_below's): a symlink is refused; O_NONBLOCK: a planted FIFO cannot hang us.
        fd = open_below(dir_fd, candidate.raw, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        return f"could not be read: {e.strerror}"
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):  # not what was listed: never read anything but a file
            return f"not a regular file: {file_kind(info.st_mode)}"
        data = f.read(min(max_bytes, budget) + 1)
    if len(data) > min(max_bytes, budget):
        return f"over the {what} size limits"
    return data


class Outputs:
    """What a run left at the top of its working folder for the report: images, other files, and what was skipped."""

    def __init__(self) -> None:
        self.images: list[dict[str, str]] = []
        self.files: list[dict[str, str]] = []
        self.skipped = Skipped()


def collect_outputs(job: Job, before: Snapshot | None = None, with_files: bool = True) -> Outputs:
    """Images (and, `with_files`, other files) made or changed since `before`, in the order they were
    made: at the top of the working folder, the files the program saved figures to in subfolders
    (SAVED_FIGURES), and, `with_files`, every file in its subfolders (named by their path); and what
    was skipped, and why.

    Whatever the program left there (an unreadable folder, FIFOs, unreadable files, names that
    are not text), the result is a report: what cannot be collected is skipped with its reason.
    Images follow max_images and max_image_bytes; other files max_files and max_file_bytes; each
    kind may take twice its per-file limit in all.
    """
    outputs = Outputs()
    skipped = outputs.skipped
    # (count, bytes per file) allowed and bytes left in all, for images (True) and other files (False).
    limits = {True: (int(job.max_images), int(job.max_image_bytes)),
              False: (int(job.max_files), int(job.max_file_bytes))}
    budgets = {is_image: max_bytes * 2 for is_image, (_, max_bytes) in limits.items()}
    try:
        dir_fd = os.open(WORKDIR, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        # The agent has no CAP_DAC_OVERRIDE: a program can chmod its own folder out of its reach.
        skipped.add(".", f"the working folder could not be read: {e.strerror}")
        return outputs
    try:
        candidates = list_candidates(dir_fd, skipped, before, with_files)
        candidates += saved_below(dir_fd, skipped, with_files, limits[True][0] + limits[False][0])
        candidates.sort(key=lambda candidate: candidate.sort_key)
        if with_files:  # a run's container goes with it: what it left in subfolders comes back too...
            listed = {candidate.raw for candidate in candidates}
            # ...after the files at the top and the saved figures, which the caps serve first (a
            # dataset unpacked into data/ must not crowd out the report or the figures).
            candidates += sorted((Candidate(raw, info, has_image_extension(raw))
                                  for raw, info in files_below(dir_fd, skipped)
                                  if raw not in listed and not unchanged(raw, info, before)),
                                 key=lambda candidate: candidate.sort_key)
        seen: dict[str, str] = {}  # one namespace: an image and a file never share a name
        made: dict[bool, list[tuple[Any, dict[str, str]]]] = {True: [], False: []}  # (sort key, entry) by kind
        for candidate in candidates:
            is_image = candidate.is_image
            found = made[is_image]
            max_count, max_bytes = limits[is_image]
            reason = name_problem(candidate.raw, seen)
            if reason is None and len(found) >= max_count:
                reason = f"more than {max_count} {'images' if is_image else 'files'}"
            if reason is None:
                data = read_candidate(dir_fd, candidate, max_bytes, budgets[is_image])
                mime = image_type(data) if is_image and isinstance(data, bytes) else None
                if isinstance(data, str):
                    reason = data
                elif is_image and mime is None:
                    reason = f"not a {IMAGE_FORMATS} image"
                else:
                    budgets[is_image] -= len(data)
                    entry = {"name": candidate.raw.decode(), "data": base64.b64encode(data).decode()}
                    found.append((candidate.sort_key,
                                  {"name": entry["name"], "mime": mime, "data": entry["data"]} if is_image else entry))
            if reason is not None:
                skipped.add(candidate.shown, reason)
        # Reported in the order they were made, wherever they were found.
        outputs.images = [entry for _, entry in sorted(made[True], key=lambda pair: pair[0])]
        outputs.files = [entry for _, entry in sorted(made[False], key=lambda pair: pair[0])]
    except OSError as e:
        skipped.add(".", f"the working folder could not be read: {e.strerror}")
    finally:
        os.close(dir_fd)
    return outputs


class Job:
    """A validated run request."""

    DEFAULTS: dict[str, Any] = {
        "language": "python", "variables": None, "timeout": DEFAULT_TIMEOUT_SECONDS,
        "max_output_bytes": DEFAULT_MAX_OUTPUT_BYTES, "max_images": DEFAULT_MAX_IMAGES,
        "max_image_bytes": DEFAULT_MAX_IMAGE_BYTES, "files": None, "max_files": DEFAULT_MAX_FILES,
        "max_file_bytes": DEFAULT_MAX_FILE_BYTES,
    }
    LIMITS = ("timeout", "max_output_bytes", "max_images", "max_image_bytes", "max_files", "max_file_bytes")

    def __init__(self, code: str, **settings: Any) -> None:
        settings = {**self.DEFAULTS, **settings}
        self.code = code
        self.language: str = settings["language"]
        self.variables: dict[str, Any] = settings["variables"] or {}
        self.timeout: float = settings["timeout"]
        self.max_output_bytes: int = settings["max_output_bytes"]
        self.max_images: int = settings["max_images"]
        self.max_image_bytes: int = settings["max_image_bytes"]
        self.max_files: int = settings["max_files"]
        self.max_file_bytes: int = settings["max_file_bytes"]
        # Input files as given; from_json checks them and turns them into (path, bytes).
        self.files: Any = settings["files"] or []

    def uses_preloaded_modules(self) -> bool:
        """Whether the program mentions a module the warm-up imports (or one built on them)."""
        return self.language == "python" and PRELOADED_LIBRARIES.search(self.code) is not None

    def program_variables(self) -> dict[str, Any]:
        """The variables as the program gets them: Python globals hold the JSON values; bash's
        environment holds strings, JSON for what is not one."""
        if self.language == "python":
            return self.variables
        return {name: value if isinstance(value, str) else json.dumps(value) for name, value in self.variables.items()}

    def check_bash_environment(self, options: AgentOptions) -> None:
        """ValueError naming the variable when bash's execve could not take the environment.

        Otherwise bash would not even start: exit status 127, not a word said.
        """
        environment = {**worker_environment(options), **self.program_variables()}
        sizes = {}
        for name, value in environment.items():
            if "\0" in value:
                raise ValueError(f"variable {name} holds a NUL character, which an environment variable cannot")
            try:
                size = len(name.encode()) + 1 + len(value.encode()) + 1  # NAME=value and its NUL
            except UnicodeEncodeError:
                raise ValueError(f"variable {name} is not valid Unicode text (a lone surrogate)") from None
            if size > MAX_ARG_STRLEN:
                raise ValueError(f"variable {name} is too large for bash's environment: {size} bytes, "
                                 f"at most {MAX_ARG_STRLEN}")
            sizes[name] = size
        limit = min(os.sysconf("SC_ARG_MAX"), MAX_EXEC_SIZE) - 4096  # the command line's room
        total = sum(sizes.values()) + 8 * (len(sizes) + 1)
        if total > limit:
            largest = max(self.variables or sizes, key=sizes.__getitem__)
            raise ValueError(f"the variables are too large for bash's environment together: {total} bytes, "
                             f"at most {limit} (the largest is {largest})")

    @classmethod
    def from_json(cls, body: Any, options: AgentOptions) -> Job:
        """Check the center's request (absent fields take the defaults above); ValueError names the bad field.
        `options`: the agent's, for the size of bash's environment (see worker_environment)."""
        if not isinstance(body, dict):
            raise ValueError("body must be a JSON object")
        job = cls(body.get("code"), **{name: body[name] for name in cls.DEFAULTS if name in body})
        if job.language not in ("python", "bash"):
            raise ValueError("language must be python or bash")
        if not isinstance(job.code, str):
            raise ValueError("code must be a string")
        if not isinstance(job.variables, dict) or not all(k.isidentifier() for k in job.variables):
            raise ValueError("variables must be an object keyed by identifiers")
        for name in cls.LIMITS:
            value = getattr(job, name)
            lowest_allowed = 0 if name in ("max_images", "max_files") else 1e-9  # 0: collect none
            # NaN compares false with everything (`NaN < lowest` let it through): finiteness is checked
            # first. A huge number would overflow a wait or a read later.
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or (isinstance(value, float) and not math.isfinite(value)) or value < lowest_allowed):
                raise ValueError(f"{name} must be a finite positive number")
            highest_allowed = threading.TIMEOUT_MAX if name == "timeout" else sys.maxsize
            if value > highest_allowed:
                raise ValueError(f"{name} must be at most {highest_allowed:.0f}")
        if job.language == "bash":
            job.check_bash_environment(options)
        job.files = input_files(job.files)
        return job


def input_files(files: Any) -> list[tuple[str, bytes]]:
    """The job's `files` as (path, bytes); ValueError naming the bad entry (see workspace.check_path)."""
    if not isinstance(files, list) or not all(isinstance(entry, dict) for entry in files):
        raise ValueError('files must be a list of {"path", "content_base64"} objects')
    if not files:
        return []
    import binascii

    from workspace import check_path

    checked: list[tuple[str, bytes]] = []
    for index, entry in enumerate(files):
        path, content = entry.get("path"), entry.get("content_base64")
        try:
            path = check_path(path)
        except ValueError as e:
            raise ValueError(f"files[{index}].path: {e}") from None
        if not isinstance(content, str):
            raise ValueError(f"files[{index}].content_base64 must be a string")
        try:
            data = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"files[{index}].content_base64 is not valid base64") from None
        checked.append((path, data))
    paths = [path for path, _ in checked]
    if len(set(paths)) < len(paths):
        raise ValueError(f"files: {next(p for p in paths if paths.count(p) > 1)} is given twice")
    if (both := file_and_folder(paths)) is not None:
        raise ValueError(f"files: {both} is given as a file and as a folder")
    return checked


class LifeWatch:
    """Ends the agent, and with it the container, once no center is left to end it.

    A center removes its containers: a one-shot one after its run, a session's at its end, a fresh
    one when it closes. A center that crashed, or came back under another deployment label, removes
    none of them, and a session's container would run (and hold its memory) for good. So the agent
    ends itself past the session's lifetime (`session_lifetime` after the session started, plus
    SESSION_END_GRACE_SECONDS: the center, which counts from a moment later, ends it first when it
    can), and after `max_silence` seconds with no request at all (the center passes a bound past
    any idle time it allows a session, and asks every agent for its health every few seconds). A
    request counts from its accept to its answer's end, so a cell that runs is never silence; nor
    does the agent end past its lifetime while a request is still being answered.
    """

    def __init__(self, session_lifetime: float, max_silence: float) -> None:
        self.session_lifetime, self.max_silence = session_lifetime, max_silence
        self.changed = threading.Condition()  # a request began or ended, a session started
        self.in_flight = 0
        self.last = time.monotonic()  # the last moment a request began or ended
        self.session_ends: float | None = None  # once a session's: when the agent ends itself

    def begin(self) -> None:
        """A connection was accepted."""
        with self.changed:
            self.in_flight += 1
            self.last = time.monotonic()

    def end(self) -> None:
        """A connection is done."""
        with self.changed:
            self.in_flight -= 1
            self.last = time.monotonic()
            self.changed.notify_all()

    def session_started(self) -> None:
        """The agent became a session's: its lifetime runs from now."""
        if self.session_lifetime:
            with self.changed:
                self.session_ends = time.monotonic() + self.session_lifetime + SESSION_END_GRACE_SECONDS
                self.changed.notify_all()

    def reason_to_end(self, now: float) -> tuple[str | None, float | None]:
        """(Why the agent ends now, or None; when to look again, None: when a request ends). Lock held."""
        wake = []
        if self.session_ends is not None:
            if now < self.session_ends:
                wake.append(self.session_ends)
            elif not self.in_flight:
                return f"the session reached its lifetime ({self.session_lifetime:g} s)", None
        if self.max_silence and not self.in_flight:
            if now - self.last >= self.max_silence:
                return f"no request came for {self.max_silence:g} s: no center is left to end this sandbox", None
            wake.append(self.last + self.max_silence)
        return None, min(wake) if wake else None

    def watch(self) -> NoReturn:
        """The watch's thread: wait until a bound is passed, then end the agent."""
        with self.changed:
            while True:
                now = time.monotonic()
                reason, wake = self.reason_to_end(now)
                if reason is not None:
                    break
                # No wake-up while nothing can be due: an idle sandbox takes no CPU.
                self.changed.wait(MAX_WATCH_WAIT if wake is None else min(wake - now, MAX_WATCH_WAIT))
            # Still holding the lock: no request is begun meanwhile (one accepted now meets a closed socket).
            print(f"agent: ending: {reason}", file=sys.stderr, flush=True)
            kill_sandbox_processes()
            os._exit(0)

    def start(self) -> None:
        """Watch in a thread of its own, when there is a bound to watch."""
        if self.session_lifetime or self.max_silence:
            threading.Thread(target=self.watch, name="life-watch", daemon=True).start()


class Agent:
    """Holds this container's one worker and runs the one job it is given (or, in session mode, its cells)."""

    def __init__(self, options: AgentOptions) -> None:
        self.options = options
        self.worker = Worker(options)
        self.lock = threading.Lock()  # guards `used`, `mode` and the decision to warm up
        self.used = False
        self.mode = "fresh"  # then "oneshot" (POST /run) or "session" (POST /session/start), for good
        self.session: Any = None  # session.Session once in session mode
        self.life = LifeWatch(options.session_lifetime, options.max_silence)
        timer = threading.Timer(options.warm_delay, self.warm_up)
        timer.daemon = True
        timer.start()

    def warm_up(self) -> None:
        """Import the heavy modules once the sandbox sat idle for `warm_delay`, the groups `warm_first`
        first (the center's choice; see warm_up.py there): under load a request takes the sandbox at
        once and a warm-up would only burn CPU that other requests need; when idle, the next plot
        finds pandas and matplotlib loaded."""
        self.worker.started.wait(COLD_START_SECONDS)  # with no delay the worker may still be starting
        with self.lock:
            if self.used or not self.worker.started.is_set():
                return
            self.worker.warming = True
            try:
                self.worker.send(f"warm {','.join(self.options.warm_first)} {self.options.warm_rest:g}\n".encode())
            except OSError:
                pass

    def take_worker(self, job: Job) -> Worker:
        """A worker waiting for the job: warm or never asked to warm, or still warming up for a job that
        needs those modules (it stops its warm-up at the next step and keeps what it imported);
        otherwise a cold one."""
        worker = self.worker
        if worker.warming and not worker.warm.is_set() and not job.uses_preloaded_modules():
            kill_sandbox_processes()  # a cold start beats waiting for imports the program does not need
            worker.wait()
            worker = self.worker = Worker(self.options)
        if not worker.started.wait(COLD_START_SECONDS):
            raise RuntimeError("the sandbox worker did not start")
        return worker

    def health(self) -> dict[str, Any]:
        """The /healthz answer: the worker's state and the agent's mode (and a session's state)."""
        worker = self.worker
        answer = {"ok": True, "warm": worker.warm.is_set(), "warm_all": worker.warm_all.is_set(),
                  "warming": worker.warming, "used": self.used,
                  "mode": self.mode}
        if self.session is not None:
            answer.update(self.session.health())
        return answer

    def take(self, mode: str) -> str | None:
        """Switch a fresh agent to `mode` for good; why not when it is not fresh."""
        with self.lock:
            if self.mode == "oneshot":
                return "this sandbox has already run a program"
            if self.mode == "session":
                return "this sandbox is a session's"
            self.mode, self.used = mode, True
        return None

    def run(self, job: Job, events: EventStream | None = None) -> dict[str, Any]:
        """Run the job to its end (exit, timeout or output cap) and report what happened.

        WorkspaceError (see workspace.py) when its input files cannot be written: then it does not run.
        """
        worker, before = self.prepare(job)
        return self.execute(job, worker, before, events)

    def prepare(self, job: Job) -> tuple[Worker, Snapshot | None]:
        """The worker for the job, its input files written (WorkspaceError when they cannot be), and the
        workspace as it was then (None without input files: every file found afterwards is new)."""
        worker = self.take_worker(job)
        before = None
        if job.files:
            import workspace

            workspace.write_files(self.options.uid, job.files)
            job.files = []  # the agent's memory is the container's: the bytes are in the workspace now
            before = workspace_snapshot(deep=True)  # input files may be in folders
        return worker, before

    def execute(self, job: Job, worker: Worker, before: Snapshot | None,
                events: EventStream | None = None) -> dict[str, Any]:
        """Run the prepared job and report; its output also goes to `events` as it comes, when given."""
        oom_before = oom_kill_count()
        finished = threading.Event()
        budget = OutputBudget(int(job.max_output_bytes), finished)
        readers = [OutputReader(pipe, budget, events.output(index) if events else None)
                   for index, pipe in enumerate((worker.stdout, worker.stderr))]
        for reader in readers:
            reader.start()
        threading.Thread(target=lambda: (worker.wait(), finished.set()), daemon=True).start()

        started = time.monotonic()
        payload = json.dumps({"language": job.language, "code": job.code, "variables": job.program_variables()})
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
        worker.status_thread.join(timeout=2)  # the result record, written just before the worker exited
        stdout, stderr = readers

        exit_code = returncode if returncode >= 0 else 128 - returncode
        if timed_out:
            status = "timeout"
        elif budget.cut:
            status = "output_limit"
        elif oom_kill_count() > oom_before:
            status = "oom"
        elif returncode != 0:
            status = "error"
        else:
            status = "ok"
        record = worker.record or {}
        result: dict[str, Any] = {
            "stdout": stdout.text(), "stderr": stderr.text(), "exit_code": exit_code,
            "status": status, "duration_ms": round(duration_ms, 1), "images": [], "files": [], "skipped": [],
            "warm": worker.warming,  # ran in a worker that warmed up (all of it, or until the program came)
            "result": record_result(record),
        }
        try:
            outputs = collect_outputs(job, before)
            result.update(images=outputs.images, files=outputs.files, skipped=outputs.skipped.report())
        except Exception as e:  # noqa: BLE001 - the program's output is reported whatever its folder holds
            result["skipped"] = [{"name": ".", "reason": f"outputs could not be collected: {type(e).__name__}: {e}"}]
        if status == "output_limit":
            result["output_notice"] = OUTPUT_CUT_NOTICE.format(max_output_bytes=job.max_output_bytes)
        if status != "ok":
            result["error"] = self.describe_error(status, returncode, result["stderr"], job, record.get("error"))
        return result

    @staticmethod
    def describe_error(status: str, returncode: int, stderr: str, job: Job, summary: Any = None) -> str:
        """A one-line reason: the status's or the signal's; the exception and the program's line (the worker's
        `summary`); bash's last line of stderr; else stderr's tail, a few KB at most (all of it is in `stderr`)."""
        if status in STATUS_MESSAGES:
            return STATUS_MESSAGES[status].format(timeout=job.timeout, max_output_bytes=job.max_output_bytes)
        if returncode < 0:
            return f"the program was killed by {signal_description(-returncode)}"
        if isinstance(summary, str) and summary.strip():
            return json_prefix(summary, MAX_ERROR_SUMMARY_BYTES)
        stderr = stderr.strip()
        if job.language == "bash" and stderr:
            last = stderr.rpartition("\n")[2].strip()
            return f"{json_prefix(last, MAX_ERROR_SUMMARY_BYTES)} (exit code {returncode})"
        # A Python program that failed without an exception of its own (sys.exit("message"), a crash at exit).
        tail = json_suffix(stderr, ERROR_TAIL_BYTES)
        if len(tail) < len(stderr):
            tail = "…" + tail
        return tail or f"the program exited with code {returncode}"


SESSION_PATHS = ("/session/start", "/session/cell", "/files")


def route(agent: Agent, request: Request) -> tuple[int, dict[str, Any] | RawResponse, bool]:
    """The agent's HTTP face: (status, answer, exit once answered) for one request.

    After its one program the agent has nothing left to do: it exits once the report is sent, so
    the container stops by itself. A job it refuses is answered at once and changes nothing.
    Session and file routes are session.py's (imported only when one is asked for).
    """
    method, path = request.method, request.path
    if path == "/healthz" and method == "GET":
        return 200, agent.health(), False
    if path == "/run" and method == "POST":
        try:
            job = Job.from_json(request.json(), agent.options)
        except ValueError as e:
            return 400, {"error": str(e)}, False
        refusal = agent.take("oneshot")
        if refusal is not None:
            return 409, {"error": refusal}, False
        try:
            if wants_stream(request):
                worker, before = agent.prepare(job)  # a refusal is still an ordinary error answer
                return 200, streamed(lambda events: agent.execute(job, worker, before, events)), True
            return 200, agent.run(job), True
        except Exception as e:  # noqa: BLE001 - a used sandbox can do nothing more: say why, then exit
            status = getattr(e, "status", None)  # workspace.WorkspaceError: the input files could not be written
            if isinstance(status, int):
                return status, {"error": f"{e}; the program did not run"}, True
            return 500, {"error": f"agent error: {type(e).__name__}: {e}"}, True
    if path in SESSION_PATHS or path.startswith("/files/"):
        import session

        return session.route(agent, request)
    if path in ("/healthz", "/run"):
        raise HTTPError(405, f"{method} is not allowed on {path}")
    raise HTTPError(404, f"no such endpoint: {path}")


USAGE = ("usage: agent.py [--socket PATH] [--max-processes N] [--uid N] [--warm-delay SECONDS] "
         "[--warm-first GROUP,...] [--warm-rest SECONDS] [--threads N] [--path-first DIR] "
         "[--session-lifetime SECONDS] [--max-silence SECONDS]")


def parse_arguments(argv: list[str]) -> AgentOptions:
    """The options from --socket PATH (default /agent/sock/agent.sock), --max-processes N (default 0),
    --uid N (default: the `sandbox` user's), --warm-delay SECONDS (default 0.5), --warm-first GROUPS
    (default: all), --warm-rest SECONDS (default 2), --threads N (default 0), --path-first DIR
    (default: none), --session-lifetime SECONDS and --max-silence SECONDS (default 0: no bound; see
    LifeWatch); SystemExit if wrong."""
    options = {"--socket": "/agent/sock/agent.sock", "--max-processes": "0", "--uid": "",
               "--warm-delay": str(WARM_DELAY_SECONDS), "--warm-first": ",".join(WARM_UP_GROUP_NAMES),
               "--warm-rest": str(WARM_REST_SECONDS), "--threads": "0", "--path-first": "",
               "--session-lifetime": "0", "--max-silence": "0"}
    if len(argv) % 2 or any(name not in options for name in argv[::2]):
        raise SystemExit(f"{USAGE}; got {argv}")
    options.update(zip(argv[::2], argv[1::2], strict=True))
    try:
        max_processes, threads = int(options["--max-processes"]), int(options["--threads"])
        uid = int(options["--uid"]) if options["--uid"] else pwd.getpwnam(SANDBOX_USER).pw_uid
        warm_delay, warm_rest = float(options["--warm-delay"]), float(options["--warm-rest"])
        lifetime, silence = float(options["--session-lifetime"]), float(options["--max-silence"])
    except ValueError:
        raise SystemExit(f"{USAGE}: N is a whole number, SECONDS a number; got {argv}") from None
    for name, seconds in (("--warm-delay", warm_delay), ("--warm-rest", warm_rest)):
        if not 0 <= seconds < 3600:
            raise SystemExit(f"{name} must be between 0 and 3600 seconds; got {seconds}")
    for name, seconds in (("--session-lifetime", lifetime), ("--max-silence", silence)):
        if not 0 <= seconds < math.inf:  # NaN fails too; any finite length works (LifeWatch waits in steps)
            raise SystemExit(f"{name} must be a finite number of seconds, 0 or more (0: none); got {seconds}")
    warm_first = tuple(options["--warm-first"].split(",")) if options["--warm-first"] else ()
    if unknown := [name for name in warm_first if name not in WARM_UP_GROUP_NAMES]:
        raise SystemExit(f"--warm-first takes groups among {','.join(WARM_UP_GROUP_NAMES)}; got {','.join(unknown)}")
    if max_processes < 0 or threads < 0:
        raise SystemExit(f"--max-processes and --threads must be 0 or more; got {max_processes} and {threads}")
    # Never root's, and not (uid_t)-1, which set*id() calls read as "leave unchanged".
    if not 0 < uid < 2**32 - 1:
        raise SystemExit(f"--uid must be between 1 and {2**32 - 2}; got {uid}")
    path_first = options["--path-first"]
    if path_first and (not path_first.startswith("/") or ":" in path_first):
        raise SystemExit(f"--path-first must be an absolute folder without ':'; got {path_first}")
    return AgentOptions(options["--socket"], max_processes, uid, warm_delay, warm_first, warm_rest, threads,
                        path_first, lifetime, silence)


def name_program_user(uid: int) -> None:
    """Name the program's uid `sandbox`, at home in /workspace, in the center's tmpfs at USERS_DIR.

    Root's files, read-only to the program; without that tmpfs (the agent started by hand on a
    read-only root) the uid stays nameless, which is no reason to refuse to serve.
    """
    entries = {"passwd": f"{SANDBOX_USER}:x:{uid}:{uid}:{SANDBOX_USER}:{WORKDIR}:/bin/bash\n",
               "group": f"{SANDBOX_USER}:x:{uid}:\n"}
    try:
        for name, entry in entries.items():
            fd = os.open(os.path.join(USERS_DIR, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
            with open(fd, "w") as f:
                os.fchmod(fd, 0o644)  # whatever the umask: every process reads it, only root writes it
                f.write(entry)
    except OSError as e:
        print(f"agent: the program's uid {uid} gets no user name ({e})", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    """Serve on the Unix socket the center reaches (the container has no network at all)."""
    options = parse_arguments(sys.argv[1:] if argv is None else argv)
    name_program_user(options.uid)  # before the worker starts: the program may ask at once
    agent = Agent(options)  # starts the worker: before the server's threads exist
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # Python ignores SIGXFSZ already; relied upon: a session's upload over the file size limit (the
    # container's RLIMIT_FSIZE, the agent's too) fails with EFBIG, answered 507, and does not kill the
    # agent. The worker inherits it: a program over the limit gets EFBIG too.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    agent.life.start()
    serve_unix_socket(options.socket, lambda request: route(agent, request), agent.life)


if __name__ == "__main__":
    # session.py and workspace.py import this module as `agent`: let them find this very one, not
    # load a second copy of it.
    sys.modules.setdefault("agent", sys.modules[__name__])
    main()
