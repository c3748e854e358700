"""The working folder from outside the program: file operations done by helpers that act as the program's user.

The agent is root without CAP_DAC_OVERRIDE: it cannot write into /workspace (the program's uid owns
it), nor read what the program made private. So each file operation forks a short-lived helper
that drops to the program's uid and works from there: it writes input files, lists the folder,
and opens files, handing the open descriptor back to the agent over a socket pair (SCM_RIGHTS),
so the agent streams the bytes itself. Paths are walked one component at a time, never through a
symbolic link (O_NOFOLLOW at each step: nothing the program plants can lead a helper elsewhere).

Imported by the agent only when a job carries files or a session starts: one-shot runs without
files pay nothing for it.
"""

from __future__ import annotations

import base64
import binascii
import errno
import json
import os
import re
import signal
import socket
import stat
import threading
from collections.abc import Callable
from typing import Any, NoReturn

from contract import LIST_PAGE_BYTES, UNSAFE_PATH_CHARACTERS, WORKSPACE, check_path
from workspace_folders import file_kind, open_folder, open_workspace, pass_folder

HELPER_SECONDS = 30.0  # for a helper to answer; it is killed after
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # any helper's answer (a listing's page is LIST_PAGE_BYTES at most)
MAX_LIST_DEPTH = 128  # folders open at once while listing (each holds a descriptor; the limit is 256)
MAX_LIST_VISITS = 200_000  # entries looked at by one page of a listing, folders included
# Of a page's LIST_PAGE_BYTES, what the keys around its files may take: "next_cursor" holds a path of
# up to MAX_PATH_BYTES in base64, "left_out" a count, "truncated" a flag.
PAGE_ENVELOPE_BYTES = 8 * 1024
CURSOR = re.compile(r"[A-Za-z0-9_-]{1,8192}")  # base64url, unpadded

# The helpers alive now, by pid: a session's sweep of leftover processes must spare them. Forks
# happen under the lock, so a sweep (which holds it too) never meets a helper it does not know.
HELPERS: set[int] = set()
HELPERS_LOCK = threading.Lock()


class WorkspaceError(Exception):
    """A file operation that failed: the HTTP status to answer and why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


# --- the helper, parent side --------------------------------------------------------------------

class Helper:
    """A forked child running task(sock, *args) as the program's uid; answers JSON lines (with descriptors)."""

    def __init__(self, uid: int, task: Callable[..., None], *args: Any) -> None:
        parent, child = socket.socketpair()
        try:
            with HELPERS_LOCK:
                pid = os.fork()
                if pid == 0:
                    run_helper(uid, child, task, args)
                HELPERS.add(pid)
        except OSError as e:  # the program holds every process it may have
            parent.close()
            child.close()
            message = f"the sandbox could not start a process for the file operation: {e.strerror}"
            raise WorkspaceError(503, message) from e
        child.close()
        self.pid, self.sock = pid, parent
        self.sock.settimeout(HELPER_SECONDS)
        self.buffer = b""

    def receive(self) -> tuple[dict[str, Any], list[int]]:
        """The helper's next answer and the descriptors sent with it; WorkspaceError when it reports one."""
        fds: list[int] = []
        try:
            while b"\n" not in self.buffer:
                data, received, _, _ = socket.recv_fds(self.sock, 1024 * 1024, 4)
                fds += received
                if not data:
                    raise WorkspaceError(500, "the file operation ended without an answer (was its process killed?)")
                self.buffer += data
                if len(self.buffer) > MAX_MESSAGE_BYTES:
                    raise WorkspaceError(500, "the file operation's answer is too large")
        except OSError as e:  # a timeout too: a helper the program stopped (SIGSTOP) answers nothing
            for fd in fds:
                os.close(fd)
            raise WorkspaceError(500, f"the file operation did not answer: {e}") from e
        except WorkspaceError:
            for fd in fds:
                os.close(fd)
            raise
        line, _, self.buffer = self.buffer.partition(b"\n")
        answer = json.loads(line)
        if "error" in answer:
            for fd in fds:
                os.close(fd)
            raise WorkspaceError(int(answer.get("status", 500)), str(answer["error"]))
        return answer, fds

    def send(self, line: bytes) -> None:
        """A command line to the helper."""
        try:
            self.sock.sendall(line)
        except OSError as e:
            raise WorkspaceError(500, f"the file operation ended early: {e}") from e

    def close(self) -> None:
        """Kill the helper if it still runs, reap it, forget it."""
        try:
            os.kill(self.pid, signal.SIGKILL)  # harmless on an exited (unreaped) helper
        except ProcessLookupError:
            pass
        os.waitpid(self.pid, 0)
        with HELPERS_LOCK:
            HELPERS.discard(self.pid)
        self.sock.close()


def run_helper(uid: int, sock: socket.socket, task: Callable[..., None], args: tuple[Any, ...]) -> NoReturn:
    """In the forked child: become the program's user, keep only the socket, run the task, report its failure."""
    status = 1
    try:
        keep = sock.fileno()
        os.closerange(3, keep)  # nothing of the agent's: not its socket, not a client's connection
        os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over the file size limit: EFBIG, answered, not a death
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)  # also leaves it non-dumpable: the program cannot ptrace it or read its memory
        os.umask(0o022)
        task(sock, *args)
        status = 0
    except WorkspaceError as e:
        answer(sock, {"status": e.status, "error": e.message})
    except OSError as e:
        error = os_error(e, "the workspace")
        answer(sock, {"status": error.status, "error": error.message})
    except BaseException as e:  # noqa: BLE001 - said to the agent, never raised into a copy of its code
        answer(sock, {"status": 500, "error": f"the file operation failed: {type(e).__name__}: {e}"})
    finally:
        os._exit(status)


def answer(sock: socket.socket, message: dict[str, Any], fds: tuple[int, ...] = ()) -> None:
    """One JSON line to the agent, with descriptors when given."""
    data = json.dumps(message).encode() + b"\n"
    try:
        sent = socket.send_fds(sock, [data], list(fds)) if fds else 0
        sock.sendall(data[sent:])
    except OSError:
        pass  # the agent gave up on us


# --- the helper's work, as the program's user -------------------------------------------------------

def os_error(error: OSError, where: str) -> WorkspaceError:
    """What an OSError on `where` means for the client."""
    code, reason = error.errno, error.strerror or str(error)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return WorkspaceError(507, f"the workspace is full ({reason})")
    if code == errno.EFBIG:
        return WorkspaceError(507, f"the workspace is full: {where} is over the sandbox's file size limit ({reason})")
    if code == errno.ENOENT:
        return WorkspaceError(404, f"no such file: {where}")
    if code in (errno.EACCES, errno.EPERM):
        return WorkspaceError(403, f"{where}: permission denied")
    if code == errno.ELOOP:
        return WorkspaceError(400, f"{where} is a symbolic link: paths never go through one")
    if code == errno.ENOTDIR:
        return WorkspaceError(409, f"{where}: a component of the path is a file, not a folder")
    if code == errno.EISDIR:
        return WorkspaceError(409, f"{where} is a folder")
    if code == errno.ENAMETOOLONG:
        return WorkspaceError(400, f"{where}: the name is too long")
    return WorkspaceError(500, f"{where}: {reason}")


def explain(error: OSError, dir_fd: int, name: str, where: str) -> WorkspaceError:
    """Why opening `name` failed, told by what is there: a symbolic link, a file where a folder should be..."""
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return os_error(error, where)
    if stat.S_ISLNK(info.st_mode):
        return WorkspaceError(400, f"{where} is a symbolic link: paths never go through one")
    if error.errno in (errno.ENOTDIR, errno.ELOOP) and not stat.S_ISDIR(info.st_mode):
        return WorkspaceError(409, f"{where} is a file, not a folder")
    if error.errno == errno.ENXIO:  # a socket (or a FIFO opened to write with no reader), put there meanwhile
        return not_regular(where, info.st_mode)
    return os_error(error, where)


def open_parent(path: str, create: bool) -> tuple[int, str]:
    """(O_PATH descriptor of the folder holding the path's last component, that component); folders made
    (0755) when `create`. Never through a symbolic link."""
    parts = path.split("/")
    fd = pass_folder(WORKSPACE)
    try:
        for index, part in enumerate(parts[:-1]):
            where = "/".join(parts[:index + 1])
            try:
                try:
                    next_fd = pass_folder(part, fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    try:
                        os.mkdir(part, 0o755, dir_fd=fd)
                    except FileExistsError:
                        pass  # made meanwhile (by the program): opened below like any other
                    next_fd = pass_folder(part, fd)
            except OSError as e:
                raise explain(e, fd, part, where) from None
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd, parts[-1]


def check_replaceable(dir_fd: int, name: str, where: str) -> None:
    """WorkspaceError unless `name` is absent or a regular file (which an upload may replace)."""
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise WorkspaceError(400, f"{where} is a symbolic link: it is not replaced")
    if stat.S_ISDIR(info.st_mode):
        raise WorkspaceError(409, f"{where} is a folder")
    if not stat.S_ISREG(info.st_mode):
        raise WorkspaceError(409, f"{where} is not a regular file")


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write every byte (os.write may take fewer)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def task_write_files(sock: socket.socket, files: list[tuple[str, bytes]]) -> None:
    """Write each (path, bytes), folders made as needed, an existing regular file replaced."""
    for path, data in files:
        dir_fd, name = open_parent(path, create=True)
        try:
            check_replaceable(dir_fd, name, path)
            try:
                # O_NONBLOCK: a FIFO planted meanwhile cannot hang us (regular files ignore it).
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK
                             | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
            except OSError as e:
                raise explain(e, dir_fd, name, path) from None
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise WorkspaceError(409, f"{path} is not a regular file")
                write_all(fd, data)
            except OSError as e:
                os.close(fd)
                fd = -1
                try:
                    os.unlink(name, dir_fd=dir_fd)  # no partial file left behind
                except OSError:
                    pass
                raise os_error(e, path) from None
            finally:
                if fd >= 0:
                    os.close(fd)
        finally:
            os.close(dir_fd)
    answer(sock, {"ok": True})


def task_upload(sock: socket.socket, path: str) -> None:
    """Make a temporary file beside the path and hand it to the agent; then, told "commit", rename it
    over the path (an existing file is replaced at once, never seen half-written), else remove it."""
    dir_fd, name = open_parent(path, create=True)
    check_replaceable(dir_fd, name, path)
    while True:
        temporary = f".upload-{os.urandom(8).hex()}.part"
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                         dir_fd=dir_fd)
            break
        except FileExistsError:
            continue
        except OSError as e:
            raise os_error(e, path) from None
    answer(sock, {"ok": True}, (fd,))
    os.close(fd)
    sock.settimeout(None)  # the upload takes as long as the client's body does; the agent kills us after
    command = b""
    while not command.endswith(b"\n"):
        data = sock.recv(64)
        if not data:
            break
        command += data
    if command == b"commit\n":
        try:
            os.rename(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except OSError as e:
            try:
                os.unlink(temporary, dir_fd=dir_fd)
            except OSError:
                pass
            raise explain(e, dir_fd, name, path) from None
    else:
        try:
            os.unlink(temporary, dir_fd=dir_fd)
        except OSError:
            pass
    answer(sock, {"ok": True})


def not_regular(path: str, mode: int) -> WorkspaceError:
    """The 400 of a download of something that is not a regular file: a folder, a socket, a FIFO, a device."""
    kind = "a folder" if stat.S_ISDIR(mode) else file_kind(mode)
    return WorkspaceError(400, f"not a regular file: {path} is {kind}")


def task_open(sock: socket.socket, path: str) -> None:
    """Open a regular file for reading and hand it to the agent; anything else is refused with a 400.

    What is there is looked at first: opening a socket fails (ENXIO), and opening a FIFO or a device
    does things of its own. The open that follows is checked again (it may have been swapped meanwhile).
    """
    dir_fd, name = open_parent(path, create=False)
    try:
        try:
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if stat.S_ISREG(info.st_mode):
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError as e:
            raise explain(e, dir_fd, name, path) from None
        if stat.S_ISLNK(info.st_mode):
            raise WorkspaceError(400, f"{path} is a symbolic link: paths never go through one")
        if not stat.S_ISREG(info.st_mode):
            raise not_regular(path, info.st_mode)
    finally:
        os.close(dir_fd)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise not_regular(path, info.st_mode)
    answer(sock, {"ok": True, "size": info.st_size}, (fd,))


def nameable(name: str) -> bool:
    """Whether a request could name this entry (scandir's name: undecodable bytes come as surrogates)."""
    try:
        os.fsencode(name).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return not UNSAFE_PATH_CHARACTERS.search(name)


def cursor_of(path: str) -> str:
    """The opaque cursor of the page that starts after `path`: the path's UTF-8 in base64url, unpadded."""
    return base64.urlsafe_b64encode(path.encode()).decode().rstrip("=")


def cursor_path(cursor: str) -> str:
    """The path a cursor (cursor_of) names; ValueError when it is not one a listing gives."""
    if not CURSOR.fullmatch(cursor):
        raise ValueError("the cursor is not one a listing gave (base64url text)")
    try:
        return check_path(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode())
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError("the cursor is not one a listing gave (not a workspace path)") from None


class Listed:
    """One entry of a folder being listed: a file, a folder, or a name left out (no request could name it)."""

    FILE, FOLDER, LEFT_OUT = range(3)
    __slots__ = ("key", "name", "kind", "entry")

    def __init__(self, key: str, name: str, kind: int, entry: os.DirEntry[str]) -> None:
        self.key, self.name, self.kind, self.entry = key, name, kind, entry


def task_list(sock: socket.socket, limit: int, after: str | None) -> None:
    """One page of the workspace's regular files, sorted by path: those after the path `after` (all when
    None), at most `limit` of them and at most LIST_PAGE_BYTES of JSON.

    Folders are walked depth first, each one's entries sorted with a folder's name read as "name/":
    that visits the files in the order of their whole paths (code points, as Python sorts text), so
    a page ends anywhere and the next starts after its last path, going down only the folders that
    hold later paths; what changed meanwhile is seen or not, never listed twice nor out of order.
    Names no request could name (not UTF-8, or holding a control character, which check_path
    refuses) are left out, and counted in the page that passes them: a folder so named counts once,
    with all it holds. "truncated": something was not looked at (over MAX_LIST_DEPTH folders deep, or
    a page's MAX_LIST_VISITS entries gone before its first file).
    """
    files: list[dict[str, Any]] = []
    budget = LIST_PAGE_BYTES - PAGE_ENVELOPE_BYTES
    visits = 0
    left_out = passed_over = 0  # counted in this page / passed since its last file (the next page's if it ends)
    truncated = full = False

    def later(path: str) -> bool:
        """Whether a path (a folder's with its "/") comes after `after`, or holds paths that do."""
        return after is None or path > after or (path.endswith("/") and after.startswith(path))

    def entries(fd: int, prefix: str) -> list[Listed] | None:
        """A folder's entries that hold paths after `after`, last first (popped from the end); None when the
        page has looked at MAX_LIST_VISITS entries (a folder half read cannot be put in order)."""
        nonlocal visits
        found = []
        on_the_way = after is not None and after.startswith(prefix)  # else every entry is after it
        with os.scandir(fd) as listing:
            for entry in listing:
                visits += 1
                if visits > MAX_LIST_VISITS:
                    return None
                try:
                    folder = entry.is_dir(follow_symlinks=False)
                    if not (folder or entry.is_file(follow_symlinks=False)):
                        continue
                except OSError:
                    continue
                key = entry.name + "/" if folder else entry.name
                if on_the_way and not later(prefix + key):
                    continue
                kind = Listed.FOLDER if folder else Listed.FILE
                found.append(Listed(key, entry.name, kind if nameable(entry.name) else Listed.LEFT_OUT, entry))
        found.sort(key=lambda listed: listed.key, reverse=True)
        return found

    root = open_workspace()
    stack: list[tuple[int, str, list[Listed]]] = []
    try:
        listed = entries(root, "")
        if listed is None:
            os.close(root)
            truncated = True
        else:
            stack.append((root, "", listed))
        while stack:
            fd, prefix, pending = stack[-1]
            if not pending:
                os.close(fd)
                stack.pop()
                continue
            item = pending.pop()
            if item.kind == Listed.LEFT_OUT:
                passed_over += 1
                continue
            path = prefix + item.name
            if item.kind == Listed.FILE:
                if len(files) >= limit:
                    full = True
                    break
                try:
                    info = item.entry.stat(follow_symlinks=False)
                except OSError:
                    continue  # gone meanwhile
                file = {"path": path, "size": info.st_size, "modified": info.st_mtime}
                size = len(json.dumps(file)) + 2  # as ASCII-escaped JSON, with its ", "
                if size > budget:
                    full = True
                    break
                budget -= size
                files.append(file)
                left_out, passed_over = left_out + passed_over, 0
                continue
            if len(stack) >= MAX_LIST_DEPTH:
                truncated = True
                continue
            try:
                sub = open_folder(item.name, fd)
            except OSError:
                continue  # made unreadable, or replaced meanwhile
            try:
                listed = entries(sub, path + "/")
            except OSError:
                os.close(sub)
                continue
            if listed is None:  # this page has looked at enough: the next one goes on after its last file
                os.close(sub)
                full = bool(files)
                truncated = not files  # a page that cannot reach even one file: no page after it could
                break
            stack.append((sub, path + "/", listed))
    finally:
        for fd, _, _ in stack:
            os.close(fd)
    if not full:
        left_out += passed_over  # no page comes after this one
    result: dict[str, Any] = {"files": files, "next_cursor": cursor_of(files[-1]["path"]) if full else None}
    if truncated:
        result["truncated"] = True
    if left_out:
        result["left_out"] = left_out
    answer(sock, result)


MAX_FS_ENTRIES = 10_000  # entries one listing of a folder (E2B's files.list) gives


def entry_of(info: os.stat_result, path: str, dir_fd: int, name: str) -> dict[str, Any]:
    """One entry as the file operations answer it: name, path, kind, size, mode bits, modified, link target."""
    kind = "dir" if stat.S_ISDIR(info.st_mode) else "file" if stat.S_ISREG(info.st_mode) else \
        "symlink" if stat.S_ISLNK(info.st_mode) else file_kind(info.st_mode)
    entry = {"name": path.rsplit("/", 1)[-1] if path else "", "path": path, "type": kind, "size": info.st_size,
             "mode": stat.S_IMODE(info.st_mode), "modified": info.st_mtime}
    if kind == "symlink":
        try:
            entry["target"] = os.readlink(name, dir_fd=dir_fd)
        except OSError:
            pass
    return entry


def folder_entries(fd: int, prefix: str, depth: int, found: list[dict[str, Any]]) -> None:
    """The entries of the open folder `fd` (and, `depth` > 1, of its folders), never through a link."""
    with os.scandir(fd) as entries:
        for item in entries:
            if len(found) >= MAX_FS_ENTRIES:
                return
            if not nameable(item.name):
                continue
            path = f"{prefix}/{item.name}" if prefix else item.name
            try:
                info = os.stat(item.name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                continue
            found.append(entry_of(info, path, fd, item.name))
            if depth > 1 and stat.S_ISDIR(info.st_mode):
                try:
                    below = open_folder(item.name, fd)
                except OSError:
                    continue
                try:
                    folder_entries(below, path, depth - 1, found)
                finally:
                    os.close(below)


def task_fs(sock: socket.socket, op: str, path: str, to: str, depth: int) -> None:
    """One operation on the workspace's files and folders (E2B's files API): stat, list, mkdir, move, remove.
    `path` "" is the workspace itself (stat and list only)."""
    if not path:
        if op not in ("stat", "list"):
            raise WorkspaceError(400, "the working folder itself cannot be made, moved or removed")
        fd = open_workspace()
        try:
            if op == "stat":
                answer(sock, {"entry": {**entry_of(os.fstat(fd), "", fd, "."), "name": ""}})
            else:
                found: list[dict[str, Any]] = []
                folder_entries(fd, "", depth, found)
                answer(sock, {"entries": found})
        finally:
            os.close(fd)
        return
    dir_fd, name = open_parent(path, create=op == "mkdir")
    try:
        if op == "mkdir":
            try:
                os.mkdir(name, 0o755, dir_fd=dir_fd)
            except FileExistsError:
                raise WorkspaceError(409, f"{path} already exists") from None
            except OSError as e:
                raise explain(e, dir_fd, name, path) from None
        if op == "move":
            to_fd, to_name = open_parent(to, create=False)
            try:
                os.rename(name, to_name, src_dir_fd=dir_fd, dst_dir_fd=to_fd)
                info = os.stat(to_name, dir_fd=to_fd, follow_symlinks=False)
                answer(sock, {"entry": entry_of(info, to, to_fd, to_name)})
            except OSError as e:
                raise explain(e, dir_fd, name, path) from None
            finally:
                os.close(to_fd)
            return
        try:
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError as e:
            raise explain(e, dir_fd, name, path) from None
        if op == "remove":
            import shutil

            if stat.S_ISDIR(info.st_mode):
                shutil.rmtree(name, dir_fd=dir_fd)  # descriptor-based: never follows a link planted inside
            else:
                os.unlink(name, dir_fd=dir_fd)
            answer(sock, {})
        elif op == "list":
            if not stat.S_ISDIR(info.st_mode):
                raise WorkspaceError(400, f"{path} is not a folder")
            try:
                fd = open_folder(name, dir_fd)
            except OSError as e:
                raise explain(e, dir_fd, name, path) from None
            try:
                found = []
                folder_entries(fd, path, depth, found)
            finally:
                os.close(fd)
            answer(sock, {"entries": found})
        else:  # stat, and mkdir's answer
            answer(sock, {"entry": entry_of(info, path, dir_fd, name)})
    finally:
        os.close(dir_fd)


# --- what the agent calls ---------------------------------------------------------------------------

def write_files(uid: int, files: list[tuple[str, bytes]]) -> None:
    """Write the files into the workspace as the program's user; WorkspaceError when one cannot be."""
    helper = Helper(uid, task_write_files, files)
    try:
        helper.receive()
    finally:
        helper.close()


def list_files(uid: int, limit: int, after: str | None) -> dict[str, Any]:
    """A page of the workspace's regular files after the path `after` (see task_list): {"files": [{"path",
    "size", "modified"}], "next_cursor": str | None, "truncated"?: true, "left_out"?: n}."""
    helper = Helper(uid, task_list, limit, after)
    try:
        return helper.receive()[0]
    finally:
        helper.close()


def open_file(uid: int, path: str) -> tuple[int, int]:
    """(descriptor open for reading, size) of a regular file of the workspace; WorkspaceError otherwise."""
    helper = Helper(uid, task_open, path)
    try:
        message, fds = helper.receive()
    finally:
        helper.close()
    if len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise WorkspaceError(500, "the file operation sent no file")
    return fds[0], int(message["size"])


FS_OPERATIONS = ("stat", "list", "mkdir", "move", "remove")


def file_operation(uid: int, body: Any) -> dict[str, Any]:
    """POST /fs: {"op", "path", "to"?, "depth"?} done as the program's user; WorkspaceError (400 for a bad request)."""
    if not isinstance(body, dict) or body.get("op") not in FS_OPERATIONS:
        raise WorkspaceError(400, f"op must be one of {', '.join(FS_OPERATIONS)}")
    try:
        path = check_path(body["path"]) if body.get("path") else ""
        to = check_path(body.get("to")) if body["op"] == "move" else ""
    except ValueError as e:
        raise WorkspaceError(400, str(e)) from None
    depth = body.get("depth", 1)
    if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= 16:
        raise WorkspaceError(400, "depth must be a whole number from 1 to 16")
    helper = Helper(uid, task_fs, body["op"], path, to, depth)
    try:
        return helper.receive()[0]
    finally:
        helper.close()


class Upload:
    """A file being uploaded: written to a temporary file that `finish(commit=True)` renames over the path."""

    def __init__(self, uid: int, path: str) -> None:
        self.path = path
        self.helper = Helper(uid, task_upload, path)
        self.fd = -1
        try:
            _, fds = self.helper.receive()
            if len(fds) != 1:
                raise WorkspaceError(500, "the file operation sent no file")
            self.fd = fds[0]
        except BaseException:
            self.helper.close()
            raise

    def write(self, data: bytes) -> None:
        """Append data (OSError as the kernel says: ENOSPC, EFBIG...)."""
        write_all(self.fd, data)

    def finish(self, commit: bool) -> None:
        """Put the file in place, or remove it (a partial file never stays)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.helper.send(b"commit\n" if commit else b"abort\n")
        self.helper.receive()

    def close(self) -> None:
        """Release the descriptor and the helper."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.helper.close()
