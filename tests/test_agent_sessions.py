"""The agent's session mode and files, called directly in containers started exactly as the center starts them.

A session agent keeps one interpreter alive across cells; a cell that cannot be interrupted, or
that runs out of memory, ends the session. Files go in and out of the workspace as the program's
own user, never through a symbolic link. One-shot runs take input files and return the files
they write.
"""

from __future__ import annotations

import base64
import http.client
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import docker
import pytest
from conftest import RUNTIME, wait_until

import server.containers.docker_sandboxes as sandboxes_module
from sandbox.contract import INTERRUPT_GRACE_SECONDS, SESSION_START_SECONDS
from server.containers.agent_client import UnixHTTPConnection
from server.containers.docker_sandboxes import AgentUnreachable, DockerSandboxes, Sandbox

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
Run = Callable[..., dict[str, Any]]
# As long as the center gives a session's start (a worker caught warming up finishes first): only bounds a hang.
SESSION_START_TIMEOUT = SESSION_START_SECONDS + 15


@pytest.fixture
def session(sandboxes: DockerSandboxes) -> Iterator[Sandbox]:
    """A fresh sandbox switched to session mode; removed afterwards."""
    sandbox = sandboxes.launch(9170)
    try:
        assert sandbox.request("POST", "/session/start", {}, timeout=SESSION_START_TIMEOUT) == (200, {"ok": True})
        yield sandbox
    finally:
        sandboxes.destroy(sandbox)


def post_cell(sandbox: Sandbox, code: str, language: str = "python", timeout: float = 60,
              **fields: Any) -> tuple[int, dict[str, Any]]:
    """POST /session/cell: (HTTP status, answer). The default limit only bounds a hang (a first pandas or
    matplotlib import in a cold worker takes seconds on a slow runner); tests of the limit pass their own."""
    job = {"language": language, "code": code, "variables": {}, "timeout": timeout, **fields}
    return sandbox.request("POST", "/session/cell", job, timeout=timeout + INTERRUPT_GRACE_SECONDS + 15)


def cell(sandbox: Sandbox, code: str, language: str = "python", timeout: float = 60, **fields: Any) -> dict[str, Any]:
    """Run one cell and return its report (which must come with 200)."""
    status, report = post_cell(sandbox, code, language, timeout, **fields)
    assert status == 200, report
    return report


def exchange(sandbox: Sandbox, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, str, bytes]:
    """One raw HTTP exchange with the agent: (status, Content-Type, body bytes)."""
    connection = UnixHTTPConnection(sandbox.socket_path, timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        connection.close()


def upload(sandbox: Sandbox, path: str, data: bytes, **headers: str) -> tuple[int, dict[str, Any]]:
    """PUT /files/<path> with the bytes as the body: (status, JSON answer)."""
    status, _, body = exchange(sandbox, "PUT", "/files/" + quote(path), data, headers)
    return status, json.loads(body)


def download(sandbox: Sandbox, path: str) -> tuple[int, str, bytes]:
    """GET /files/<path>: (status, Content-Type, body)."""
    return exchange(sandbox, "GET", "/files/" + quote(path))


def listing(sandbox: Sandbox) -> dict[str, Any]:
    """GET /files, decoded."""
    status, body = sandbox.request("GET", "/files", None, timeout=30)
    assert status == 200, body
    return body


# --- the interpreter's state ---------------------------------------------------------------------

def test_state_imports_and_results_persist_across_cells(session: Sandbox) -> None:
    first = cell(session, "x = 1\nimport math")
    assert (first["status"], first["result"], first["execution_count"], first["alive"]) == ("ok", None, 1, True)
    second = cell(session, "x + 1")
    assert (second["status"], second["result"], second["execution_count"]) == ("ok", "2", 2), second
    third = cell(session, "print('pi', round(math.pi, 2))\nNone")
    assert (third["stdout"], third["result"]) == ("pi 3.14\n", None)
    assert cell(session, "'text'")["result"] == "'text'", "the repr, as a notebook shows it"
    assert cell(session, "y = x * 10", variables={"x": 4})["status"] == "ok", "variables are bound as globals"
    assert cell(session, "y")["result"] == "40"
    health = session.health()
    assert health is not None
    assert (health["mode"], health["busy"], health["alive"], health["execution_count"]) == ("session", False, True, 6)


def test_a_dataframe_result_shows_the_table_and_display_prints(session: Sandbox) -> None:
    report = cell(session, "import pandas as pd\ndf = pd.DataFrame({'a': [1, 2, 3], 'b': ['x', 'y', 'z']})\ndf.head(2)")
    assert report["status"] == "ok", report
    assert report["result"].split() == ["a", "b", "0", "1", "x", "1", "2", "y"]
    report = cell(session, "display('plain text')\ndisplay([1, 2], {'k': None})\ndisplay(df.shape)")
    assert report["stdout"] == "plain text\n[1, 2]\n{'k': None}\n(3, 2)\n", report


def test_errors_keep_the_state(session: Sandbox) -> None:
    cell(session, "kept = 'yes'")
    report = cell(session, "def f():\n    raise ValueError('boom')\nf()")
    assert (report["status"], report["exit_code"], report["alive"]) == ("error", 1, True)
    assert "ValueError: boom" in report["stderr"] and "ValueError: boom" in report["error"]
    assert "raise ValueError('boom')" in report["stderr"], "the traceback shows the cell's lines"
    assert "worker.py" not in report["stderr"] and "session" not in report["stderr"]
    report = cell(session, "def broken(:\n    pass")
    assert report["status"] == "error" and "SyntaxError" in report["stderr"], report
    report = cell(session, "import sys\nprint('before')\nsys.exit(3)")
    assert (report["status"], report["exit_code"], report["stdout"], report["alive"]) == ("error", 3, "before\n", True)
    assert "SystemExit: 3" in report["stderr"] and "not the session" in report["stderr"]
    for clean_exit in ("exit()", "import sys\nsys.exit(0)",
                       "def main():\n    return 0\nif __name__ == '__main__':\n    sys.exit(main())"):
        report = cell(session, clean_exit)  # as a script's exit status: a success, and the state stays
        assert (report["status"], report["exit_code"], report["alive"]) == ("ok", 0, True), report
        assert "not the session" in report["stderr"]
    report = cell(session, "sys.exit('bad input')")
    assert (report["status"], report["exit_code"]) == ("error", 1) and "bad input" in report["stderr"], report
    assert cell(session, "kept")["result"] == "'yes'"


def test_output_is_the_cells_own_and_capped(session: Sandbox) -> None:
    report = cell(session, "import sys\nprint('out')\nprint('err', file=sys.stderr)")
    assert (report["stdout"], report["stderr"]) == ("out\n", "err\n")
    report = cell(session, "n = 0\nwhile True:\n    print('x' * 1000)\n    n += 1", max_output_bytes=10_000)
    assert (report["status"], report["alive"]) == ("output_limit", True), report
    assert report["stdout"].startswith("x" * 1000) and len(report["stdout"]) <= 10_000
    assert "10000 bytes" in report["error"]
    after = cell(session, "print(n > 0)")
    assert (after["stdout"], after["stderr"]) == ("True\n", ""), "nothing of the cut cell leaks into the next"


# --- figures, images and bash ------------------------------------------------------------------

def test_figures_are_captured_per_cell_and_numbered_across_cells(session: Sandbox) -> None:
    first = cell(session, "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])")
    assert [image["name"] for image in first["images"]] == ["figure_1.png"], first
    assert base64.b64decode(first["images"][0]["data"]).startswith(PNG_MAGIC)
    second = cell(session, "plt.figure()\nplt.bar(['a'], [1])\nplt.show()\nplt.figure()\nplt.plot([3, 1])")
    assert [image["name"] for image in second["images"]] == ["figure_2.png", "figure_3.png"], second
    third = cell(session, "print(len(plt.get_fignums()))")
    assert (third["stdout"], third["images"]) == ("0\n", []), "figures are closed once captured"
    fourth = cell(session, "open('figure_1.png', 'wb').write(open('figure_2.png', 'rb').read())")
    assert [image["name"] for image in fourth["images"]] == ["figure_1.png"], "a changed image is the cell's"


def test_bash_cells_share_the_workspace_not_the_interpreter(session: Sandbox) -> None:
    cell(session, "open('from_python.txt', 'w').write('hello from python\\n')\nkeep = 42")
    report = cell(session, 'cat from_python.txt; echo "$greeting"; pwd; echo oops >&2; exit 3', language="bash",
                  variables={"greeting": "hi"})
    assert report["stdout"] == "hello from python\nhi\n/workspace\n", report
    assert (report["stderr"], report["status"], report["exit_code"], report["result"]) == ("oops\n", "error", 3, None)
    report = cell(session, "yes | head -2; echo made > from_bash.txt", language="bash")
    assert (report["stdout"], report["stderr"], report["status"]) == ("y\ny\n", "", "ok"), report
    report = cell(session, "print(keep, open('from_bash.txt').read().strip())")
    assert report["stdout"] == "42 made\n"


# --- interrupts, leftovers, death ------------------------------------------------------------------

def test_a_cell_past_its_time_limit_is_interrupted_and_the_state_kept(session: Sandbox) -> None:
    cell(session, "counter = 7")
    report = cell(session, "while True:\n    counter += 1", timeout=1)
    assert (report["status"], report["alive"]) == ("timeout", True), report
    # By the agent's clock of the cell itself (the exchange around it may take seconds on a slow runner):
    # interrupted at the 1 s limit, well before the grace after which it would have been killed.
    assert report["duration_ms"] < (1 + INTERRUPT_GRACE_SECONDS) * 1000, report["duration_ms"]
    assert "KeyboardInterrupt" in report["stderr"] and "time limit of 1 s" in report["error"]
    assert "<cell " in report["stderr"] and "worker.py" not in report["stderr"], "the cell's lines, no agent's"
    assert cell(session, "counter > 7")["result"] == "True"
    report = cell(session, "while True:\n    pass", timeout=0.001)  # the clock starts when the cell does
    assert (report["status"], report["alive"]) == ("timeout", True), report
    report = cell(session, "sleep 100; echo never", language="bash", timeout=1)
    assert (report["status"], report["alive"], report["stdout"]) == ("timeout", True, ""), report
    assert cell(session, "counter > 7")["result"] == "True"


def test_a_cell_that_ignores_the_interrupt_ends_the_session(session: Sandbox) -> None:
    code = ("import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
            "print('ignoring', flush=True)\ntime.sleep(60)")
    started = time.monotonic()
    report = cell(session, code, timeout=1)
    elapsed = time.monotonic() - started
    assert (report["status"], report["alive"], report["stdout"]) == ("timeout", False, "ignoring\n"), report
    assert report["dead_reason"] == "the cell ignored the interrupt and was killed"
    # Killed when the grace after the interrupt ended, by the agent's clock of the cell (from its start); the
    # answer came long before the cell's 60 s sleep would have ended, however slow the exchange around it.
    assert report["duration_ms"] < (1 + INTERRUPT_GRACE_SECONDS + 2) * 1000, report["duration_ms"]
    assert elapsed < 30, f"answered after {elapsed:.1f} s"
    status, answer = post_cell(session, "print(1)")
    assert (status, answer) == (410, {"error": "the cell ignored the interrupt and was killed"})
    health = session.health()
    assert health is not None and health["alive"] is False
    assert listing(session)["files"] == [], "the workspace can still be read"


def test_processes_a_cell_leaves_behind_are_killed_and_the_interpreter_stays(session: Sandbox) -> None:
    code = (
        "import os, subprocess, sys\n"
        "child = subprocess.Popen(['sleep', '300'])\n"
        "daemon = subprocess.Popen([sys.executable, '-c', 'import os, time\\nif os.fork() == 0:\\n    os.setsid()\\n"
        "    print(os.getpid(), flush=True)\\n    time.sleep(300)'], stdout=subprocess.PIPE, text=True)\n"
        "grandchild = int(daemon.stdout.readline())\n"
        "daemon.wait()\n"
        "pids = [child.pid, grandchild]\n"
        "state = 'kept'\n"
        "pids"
    )
    report = cell(session, code)
    assert report["status"] == "ok", report
    check = (
        "def alive(pid):\n"
        "    try:\n"
        "        return open(f'/proc/{pid}/stat').read().rpartition(')')[2].split()[0] not in 'ZX'\n"
        "    except OSError:\n"
        "        return False\n"
        "[alive(pid) for pid in pids], child.wait(), state"
    )
    assert cell(session, check)["result"] == "([False, False], -9, 'kept')"


def test_a_memory_bomb_ends_the_session_as_oom(session: Sandbox, docker_client: docker.DockerClient) -> None:
    try:
        report = cell(session, "blocks = []\nwhile True:\n    blocks.append(b'x' * (50 * 1024 * 1024))", timeout=30)
    except AgentUnreachable:
        # Under gVisor the host's OOM killer takes the whole sandbox, agent included (as for one-shot
        # runs): the center finds the container gone.
        assert RUNTIME == "runsc"
        assert wait_until(lambda: not docker_client.api.inspect_container(session.container_id)["State"]["Running"],
                          60)
        return
    assert (report["status"], report["alive"]) == ("oom", False), {k: v for k, v in report.items() if k != "stderr"}
    assert "memory" in report["dead_reason"] and "memory" in report["error"]
    status, answer = post_cell(session, "print(1)")
    assert status == 410 and "memory" in answer["error"]


def busy(sandbox: Sandbox) -> bool:
    """The agent says a cell is running."""
    health = sandbox.health()
    return health is not None and health["busy"] is True


# A cell that runs until the test lets it go (uploads the file), not for a guessed number of seconds.
UNTIL_RELEASED = "import os, time\nwhile not os.path.exists('release'):\n    time.sleep(0.01)\n"


def test_a_second_cell_while_one_runs_is_refused(session: Sandbox) -> None:
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(cell, session, UNTIL_RELEASED + "'done'")
        try:
            assert wait_until(lambda: busy(session), 60), "the first cell never ran"
            status, answer = post_cell(session, "print(2)")
            assert status == 409 and "running" in answer["error"]
        finally:
            released = upload(session, "release", b"")  # the first cell ends, whatever happened above
        assert released[0] == 201, released
        assert first.result()["result"] == "'done'"
    assert cell(session, "print(3)")["stdout"] == "3\n"


def test_session_and_run_modes_exclude_each_other(session: Sandbox, sandbox: Sandbox) -> None:
    status, answer = session.request("POST", "/run", {"code": "print(1)", "timeout": 5}, timeout=10)
    assert status == 409 and "session" in answer["error"]
    status, answer = session.request("POST", "/session/start", {}, timeout=10)
    assert status == 409
    status, answer = post_cell(session, "print(1)", language="cobol")
    assert status == 400 and "language" in answer["error"]
    # A fresh agent is not a session: cells and files are refused until it is one.
    health = sandbox.health()
    assert health is not None and health["mode"] == "fresh"
    status, answer = post_cell(sandbox, "print(1)")
    assert status == 409 and "/session/start" in answer["error"]
    assert exchange(sandbox, "GET", "/files")[0] == 409


# --- files of a session ------------------------------------------------------------------------------

def test_uploaded_files_are_the_programs_and_written_files_can_be_downloaded(session: Sandbox) -> None:
    assert upload(session, "data/in.csv", b"a,b\n1,2\n") == (201, {"path": "data/in.csv", "size": 8})
    assert upload(session, "データ.txt", "中文".encode()) == (201, {"path": "データ.txt", "size": 6})
    assert upload(session, "empty", b"") == (201, {"path": "empty", "size": 0})
    report = cell(session, "import os\nprint(open('data/in.csv').read().split())\n"
                           "print(os.stat('data/in.csv').st_uid == os.getuid(), open('データ.txt').read())")
    assert report["stdout"] == "['a,b', '1,2']\nTrue 中文\n", report
    assert upload(session, "data/in.csv", b"replaced") == (201, {"path": "data/in.csv", "size": 8})
    assert cell(session, "open('data/in.csv').read()")["result"] == "'replaced'"

    payload = bytes(range(256)) * 40_000  # 10 MB, every byte value
    cell(session, "import os\nos.makedirs('out/deep')\n"
                  "open('out/deep/result.bin', 'wb').write(bytes(range(256)) * 40_000)")
    status, content_type, body = download(session, "out/deep/result.bin")
    assert (status, content_type, body == payload) == (200, "application/octet-stream", True)

    files = listing(session)["files"]
    assert [(entry["path"], entry["size"]) for entry in files] == [
        ("data/in.csv", 8), ("empty", 0), ("out/deep/result.bin", len(payload)), ("データ.txt", 6)]
    assert all(abs(entry["modified"] - time.time()) < 600 for entry in files)

    status, _, body = download(session, "missing.txt")
    assert status == 404 and "no such file" in json.loads(body)["error"]
    status, _, body = download(session, "out")
    assert status == 400 and "not a regular file: out is a folder" in json.loads(body)["error"]


@pytest.mark.parametrize("path", ["../escape", "/etc/passwd", "a/../../b", "a//b", "a/./b", "dir/", "nul\x00byte",
                                  "line\nbreak", "x" * 300])
def test_paths_that_leave_or_disguise_the_workspace_are_refused(session: Sandbox, path: str) -> None:
    target = "/files/" + quote(path, safe="/")
    status, _, body = exchange(session, "PUT", target, b"data")
    assert status == 400, body
    assert "error" in json.loads(body)
    assert exchange(session, "GET", target)[0] in (400, 404)


def test_paths_through_a_symlink_the_program_planted_are_refused(session: Sandbox) -> None:
    cell(session, "import os\nos.symlink('/etc', 'etc')\nos.symlink('/opt/sandbox/agent.py', 'agent.py')\n"
                  "os.mkdir('folder')\nopen('file', 'w').write('x')")
    status, answer = upload(session, "etc/evil", b"data")
    assert status == 400 and "symbolic link" in answer["error"], answer
    status, answer = upload(session, "agent.py", b"data")
    assert status == 400 and "symbolic link" in answer["error"], answer
    status, answer = upload(session, "folder", b"data")
    assert status == 409 and "folder" in answer["error"], answer
    status, answer = upload(session, "file/below", b"data")
    assert status == 409 and "not a folder" in answer["error"], answer
    for path in ("etc/passwd", "agent.py"):
        status, _, body = download(session, path)
        assert status == 400 and "symbolic link" in json.loads(body)["error"], body
    assert cell(session, "import os\nsorted(os.listdir('.'))")["result"] == "['agent.py', 'etc', 'file', 'folder']"
    assert [entry["path"] for entry in listing(session)["files"]] == ["file"], "symlinks are not listed"


def test_a_full_workspace_answers_507_and_the_session_goes_on(session: Sandbox) -> None:
    huge = bytes(120 * 1024 * 1024)
    status, answer = upload(session, "huge.bin", huge)  # over the default limit of 100 MiB
    assert status == 413 and "over the limit of 104857600 bytes" in answer["error"], answer
    status, answer = upload(session, "huge.bin", huge, **{"X-Max-Bytes": str(len(huge))})  # over the 50 MB file limit
    assert status == 507 and answer["error"].startswith("the workspace is full"), answer
    for index in range(2):
        assert upload(session, f"part{index}.bin", bytes(45 * 1024 * 1024))[0] == 201
    status, answer = upload(session, "part2.bin", bytes(45 * 1024 * 1024))  # the 100 MB tmpfs is full
    assert status == 507 and answer["error"] == "the workspace is full (No space left on device)", answer
    assert [entry["path"] for entry in listing(session)["files"]] == ["part0.bin", "part1.bin"], "no partial file"
    status, answer = upload(session, "small.bin", b"12345", **{"X-Max-Bytes": "4"})
    assert status == 413 and "4 bytes" in answer["error"]
    report = cell(session, "import os\nos.remove('part0.bin')\nsorted(os.listdir('.'))")
    assert (report["status"], report["result"]) == ("ok", "['part1.bin']"), report


# --- one-shot runs: files in and out ----------------------------------------------------------------

def encoded(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_one_shot_input_files_are_read_and_written_files_returned(run_in_sandbox: Run) -> None:
    code = (
        "import csv, os\n"
        "rows = list(csv.reader(open('input/data.csv')))\n"
        "print(rows, open('notes.txt').read(), os.stat('notes.txt').st_uid == os.getuid())\n"
        "open('report.csv', 'w').write('total\\n' + str(sum(int(r[1]) for r in rows)) + '\\n')\n"
        "open('edited.txt', 'a').write(' more')\n"
        "os.mkdir('folder')\n"
        "open('plot.png', 'wb').write(b'\\x89PNG\\r\\n\\x1a\\n')\n"
        "len(rows)"
    )
    files = [{"path": "input/data.csv", "content_base64": encoded(b"a,1\nb,2\n")},
             {"path": "notes.txt", "content_base64": encoded(b"untouched")},
             {"path": "edited.txt", "content_base64": encoded(b"start")}]
    report = run_in_sandbox(code, files=files)
    assert report["status"] == "ok", report
    assert report["stdout"] == "[['a', '1'], ['b', '2']] untouched True\n"
    assert report["result"] == "2"
    returned = {entry["name"]: base64.b64decode(entry["data"]) for entry in report["files"]}
    assert returned == {"report.csv": b"total\n3\n", "edited.txt": b"start more"}, "untouched inputs do not come back"
    assert [image["name"] for image in report["images"]] == ["plot.png"], "an image is never also a file"
    assert report["skipped"] == []


def test_one_shot_files_written_in_subfolders_come_back_under_their_paths(run_in_sandbox: Run) -> None:
    """The container goes with the run: a report written into a folder of its own would be lost."""
    code = (
        "import os, sys\n"
        "os.makedirs('out/deep', exist_ok=True)\n"
        "open('out/report.csv', 'w').write('a,b\\n')\n"
        "open('out/deep/notes.txt', 'w').write('deep')\n"
        "open('out/chart.png', 'wb').write(b'\\x89PNG\\r\\n\\x1a\\n')\n"
        "open('input/more.csv', 'a').write('c,3\\n')\n"
        "os.makedirs('lib', exist_ok=True)\n"
        "open('lib/helper.py', 'w').write('X = 1\\n')\n"
        "sys.path.insert(0, 'lib')\n"
        "import helper\n"  # leaves lib/__pycache__/helper.cpython-*.pyc, a cache, not an output
        "os.makedirs('.cache/tool', exist_ok=True)\n"
        "open('.cache/tool/state', 'w').write('cache')\n"
        "os.symlink('/etc/passwd', 'out/link')\n"
        "os.symlink('/etc', 'out/etc')\n"
        "os.mkfifo('out/pipe')\n"
    )
    files = [{"path": "input/data.csv", "content_base64": encoded(b"a,1\n")},
             {"path": "input/more.csv", "content_base64": encoded(b"b,2\n")}]
    report = run_in_sandbox(code, files=files)
    assert report["status"] == "ok", report
    returned = {entry["name"]: base64.b64decode(entry["data"]) for entry in report["files"]}
    assert returned == {"out/report.csv": b"a,b\n", "out/deep/notes.txt": b"deep", "input/more.csv": b"b,2\nc,3\n",
                        "lib/helper.py": b"X = 1\n"}, "the untouched input, caches and links do not come back"
    assert [image["name"] for image in report["images"]] == ["out/chart.png"]
    assert {entry["name"]: entry["reason"] for entry in report["skipped"]} == {
        "out/link": "not a regular file: a symbolic link (not followed)",
        "out/etc": "not a regular file: a symbolic link (not followed)",
        "out/pipe": "not a regular file: a FIFO"}, report["skipped"]


def test_files_in_subfolders_take_only_what_the_caps_leave(run_in_sandbox: Run) -> None:
    """A dataset unpacked into data/ (with its old times, as tar and unzip keep them) must not crowd out the
    report the program wrote at the top; what comes back is still in the order it was made."""
    code = (
        "import os, time\n"
        "os.mkdir('data')\n"
        "for i in range(5):\n"
        "    open(f'data/{i}.csv', 'w').write('x')\n"
        "    old = time.time_ns() - 10**9 * (3600 - i)\n"
        "    os.utime(f'data/{i}.csv', ns=(old, old))\n"
        "open('report.csv', 'w').write('r')\n"
    )
    report = run_in_sandbox(code, max_files=2)
    assert [entry["name"] for entry in report["files"]] == ["data/0.csv", "report.csv"], report
    assert [entry["name"] for entry in report["skipped"]] == ["data/1.csv", "data/2.csv", "data/3.csv", "data/4.csv"]


@pytest.mark.parametrize(("make", "where", "reason"), [
    ("os.makedirs('/'.join(['d'] * 60))\nopen('d/d/top.txt', 'w').write('found')\n"
     "open('/'.join(['d'] * 60) + '/bottom.txt', 'w').write('too deep')",
     "/".join(["d"] * 9), "not searched: over 8 folders deep"),
    ("os.mkdir('many')\nfor i in range(3000):\n    open(f'many/{i}', 'w').close()",
     "many", "not searched further: the subfolders hold over 2000 entries"),
])
def test_an_endless_tree_of_folders_is_searched_only_so_far(run_in_sandbox: Run, make: str, where: str,
                                                             reason: str) -> None:
    """Folders nested without end, or more files than anyone reads: the report comes back at once, with
    what it holds, and says where the search stopped."""
    report = run_in_sandbox(f"import os\n{make}\nprint('made')\n", timeout=30)
    assert report["status"] == "ok" and report["stdout"] == "made\n", report
    assert {"name": where, "reason": reason} in report["skipped"], report["skipped"]
    if where == "many":
        assert len(report["files"]) == 20 and len(report["skipped"]) == 51, "capped like any other files"
    else:
        assert [entry["name"] for entry in report["files"]] == ["d/d/top.txt"]


def test_one_shot_output_files_follow_their_caps(run_in_sandbox: Run) -> None:
    code = (
        "import os, time\n"
        "os.mkfifo('pipe')\n"
        "os.symlink('/etc/passwd', 'link')\n"
        "open('big.bin', 'wb').write(b'y' * 5000)\n"
        "for i in range(5):\n"
        "    open(f'out{i}.txt', 'wb').write(b'x' * 100)\n"
        "    later = time.time_ns() + 10**9 * (i + 1)  # made after the others, in this order\n"
        "    os.utime(f'out{i}.txt', ns=(later, later))\n"
    )
    report = run_in_sandbox(code, max_files=3, max_file_bytes=1000)
    assert [entry["name"] for entry in report["files"]] == ["out0.txt", "out1.txt", "out2.txt"], report
    assert {entry["name"]: entry["reason"] for entry in report["skipped"]} == {
        "out3.txt": "more than 3 files", "out4.txt": "more than 3 files",
        "big.bin": "5000 bytes is over the file size limit of 1000",
        "pipe": "not a regular file: a FIFO", "link": "not a regular file: a symbolic link (not followed)",
    }
    report = run_in_sandbox("for i in range(3):\n    open(f'f{i}', 'wb').write(b'z' * 800)", max_file_bytes=1000)
    assert [entry["name"] for entry in report["files"]] == ["f0", "f1"]
    assert report["skipped"] == [{"name": "f2", "reason": "over the files' total size limit of 2000 bytes"}]


@pytest.mark.parametrize(("files", "message"), [
    ([{"path": "../x", "content_base64": ""}], "files[0].path"),
    ([{"path": "/abs", "content_base64": ""}], "absolute"),
    ([{"path": "a\x00b", "content_base64": ""}], "NUL"),
    ([{"path": "ok", "content_base64": "not base64!"}], "base64"),
    ([{"path": "a", "content_base64": ""}, {"path": "a/b", "content_base64": ""}], "as a file and as a folder"),
    ([{"path": "a", "content_base64": ""}, {"path": "a", "content_base64": ""}], "twice"),
    ({"path": "a"}, "list"),
])
def test_bad_input_files_are_refused_before_anything_runs(sandbox: Sandbox, files: Any, message: str) -> None:
    job = {"language": "python", "code": "print(1)", "variables": {}, "timeout": 5, "files": files}
    status, body = sandbox.request("POST", "/run", job, timeout=10)
    assert status == 400 and message in body["error"], body
    assert sandbox.run({"language": "python", "code": "print('ready')", "timeout": 5})["stdout"] == "ready\n"


def test_one_shot_result_display_and_language_details(run_in_sandbox: Run) -> None:
    report = run_in_sandbox("def f(x: int) -> int:\n    return x\ndisplay('hi')\nprint(f.__annotations__)\nf(41) + 1")
    assert report["stdout"] == "hi\n{'x': <class 'int'>, 'return': <class 'int'>}\n", "no __future__ of the worker's"
    assert report["result"] == "42"
    report = run_in_sandbox("yes | head -1", language="bash")
    assert (report["stdout"], report["stderr"], report["result"]) == ("y\n", "", None), "SIGPIPE is bash's default"


def test_http_edge_cases_of_the_file_routes(session: Sandbox) -> None:
    raw = b"PUT /files/chunked HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    connection = UnixHTTPConnection(session.socket_path, 10)
    connection.connect()
    connection.sock.sendall(raw)
    response = http.client.HTTPResponse(connection.sock)
    response.begin()
    assert response.status == 411 and "error" in json.loads(response.read())
    connection.close()
    assert exchange(session, "DELETE", "/files/x")[0] == 405
    status, _, body = exchange(session, "PUT", "/files/x", b"abc", {"X-Max-Bytes": "lots"})
    assert status == 400 and "X-Max-Bytes" in json.loads(body)["error"]
    status, _, body = exchange(session, "GET", "/files/%ff")
    assert status == 400 and "UTF-8" in json.loads(body)["error"]
    assert upload(session, "sp ace/é.txt", b"ok")[0] == 201
    assert download(session, "sp ace/é.txt")[2] == b"ok"


def test_file_routes_work_while_a_cell_runs_and_survive_its_sweep(session: Sandbox) -> None:
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(cell, session, UNTIL_RELEASED + "open('during.txt').read()")
        try:
            assert wait_until(lambda: busy(session), 60), "the cell never ran"
            assert upload(session, "during.txt", b"uploaded meanwhile") == (201, {"path": "during.txt", "size": 18})
            assert [entry["path"] for entry in listing(session)["files"]] == ["during.txt"]
            assert download(session, "during.txt")[2] == b"uploaded meanwhile"
        finally:
            upload(session, "release", b"")  # the cell ends, whatever happened above
        report = running.result()
    assert (report["status"], report["result"]) == ("ok", "'uploaded meanwhile'"), report


def test_a_cell_takes_input_files_and_long_results_are_cut(session: Sandbox) -> None:
    files = [{"path": "in/cell.txt", "content_base64": base64.b64encode(b"for this cell").decode()}]
    assert cell(session, "open('in/cell.txt').read()", files=files)["result"] == "'for this cell'"
    status, answer = post_cell(session, "print(1)", files=[{"path": "../x", "content_base64": ""}])
    assert status == 400 and "files[0].path" in answer["error"]
    result = cell(session, "'x' * 100_000")["result"]
    assert len(result) == 64 * 1024 + 1 and result.startswith("'xxx") and result.endswith("…")


def test_names_that_are_not_utf8_are_left_out_of_the_listing(session: Sandbox) -> None:
    report = cell(session, "mkdir -p ok && printf 1 > ok/$'bad\\xff' && printf 22 > ok/good && printf 3 > top",
                  language="bash")
    assert report["status"] == "ok", report
    assert [(entry["path"], entry["size"]) for entry in listing(session)["files"]] == [("ok/good", 2), ("top", 1)]


def test_a_worker_caught_warming_up_becomes_the_session_warm(sandbox: Sandbox) -> None:
    deadline = time.monotonic() + 120  # only bounds a hang: the warm-up starts after half a second idle
    while not ((health := sandbox.health() or {}).get("warming") and not health.get("warm")):
        assert time.monotonic() < deadline, "the sandbox never started warming up"
        time.sleep(0.01)
    assert sandbox.request("POST", "/session/start", {}, timeout=SESSION_START_TIMEOUT) == (200, {"ok": True})
    health = sandbox.health()
    assert health is not None and (health["mode"], health["warm"], health["alive"]) == ("session", True, True)
    report = cell(sandbox, "import sys\n'pandas' in sys.modules")
    assert (report["status"], report["result"]) == ("ok", "True"), report


def test_a_write_over_the_file_size_limit_is_an_error_not_a_death(session: Sandbox) -> None:
    code = ("import errno\ntry:\n    open('big', 'wb').write(b'1' * (60 * 1024 * 1024))\n"
            "except OSError as e:\n    print(errno.errorcode[e.errno])")
    assert cell(session, code)["stdout"] == "EFBIG\n"
    report = cell(session, "head -c 60000000 /dev/zero > big2; echo $?", language="bash")
    assert report["stdout"] == "1\n" and "File too large" in report["stderr"], report
    assert cell(session, "print('alive')")["alive"] is True


# --- paged listings -----------------------------------------------------------------------------------

def listing_pages(sandbox: Sandbox, limit: int | None = None, between: Callable[[str], None] | None = None
                  ) -> list[dict[str, Any]]:
    """Every page of GET /files, following next_cursor (calling `between` with each cursor before it is used);
    each page's answer checked to be within the byte cap, as the agent sends it and as ASCII-escaped JSON."""
    from sandbox.contract import LIST_PAGE_BYTES

    pages: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = [f"limit={limit}"] if limit is not None else []
        if cursor is not None:
            query.append(f"cursor={quote(cursor, safe='')}")
            if between is not None:
                between(cursor)
        status, content_type, body = exchange(sandbox, "GET", "/files" + ("?" + "&".join(query) if query else ""))
        assert (status, content_type) == (200, "application/json"), body[:300]
        page = json.loads(body)
        assert len(body) <= LIST_PAGE_BYTES and len(json.dumps(page)) <= LIST_PAGE_BYTES, len(json.dumps(page))
        pages.append(page)
        cursor = page["next_cursor"]
        if cursor is None:
            return pages
        assert isinstance(cursor, str) and page["files"], page.keys()
        assert len(pages) < 100, "the pages never end"


def test_the_listing_comes_in_pages_that_join_up_to_the_whole_tree(session: Sandbox) -> None:
    """A tree of a few thousand files, many with long multi-byte paths (a page is cut by its bytes before its
    count), names whose order depends on '/' sorting before or after them, and names no request can name."""
    paths = [f"short/{index:04d}" for index in range(1500)]
    paths += ["a.b", "a-b", "a/b", "a/c/d", "a0", "x y", "x/x", "x.txt"]  # '-' and '.' sort before '/', '0' after
    for folder in range(20):  # 254-byte names, 3 bytes a character: 1 KB an entry once JSON escapes them
        paths += [f"{'名' * 84}{folder:02d}/{'文' * 84}{folder:02d}/{index:03d}.txt" for index in range(150)]
    code = ("import os\nfor path in paths:\n    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)\n"
            "    open(path, 'w').write(path[-3:])\n"
            "for bad in (b'bad\\xff', b'short/bad\\xfe', ('名' * 84 + '05/').encode() + b'\\xff'):\n"
            "    open(bad, 'w').close()\n"
            "len(paths)")
    report = cell(session, code, timeout=60, variables={"paths": paths})
    assert (report["status"], report["result"]) == ("ok", str(len(paths))), report
    expected = sorted(paths)

    pages = listing_pages(session, limit=10_000)
    assert [entry["path"] for page in pages for entry in page["files"]] == expected, "none missing, none twice"
    assert len(pages) >= 3, "3 MB of paths in pages of at most 1 MiB"
    assert sum(page.get("left_out", 0) for page in pages) == 3, "each name left out is counted once"
    assert not any(page.get("truncated") for page in pages)

    first = listing_pages(session)[0]  # the default: 1000 files a page
    assert [entry["path"] for entry in first["files"]] == expected[:1000]
    assert all(set(entry) == {"path", "size", "modified"} for entry in first["files"])

    removed: list[str] = []

    def remove_the_cursors_file(cursor: str) -> None:
        """The file a page ended with goes before the next page is asked for: the listing goes on after it."""
        if not removed:
            path = expected[699]
            assert cell(session, f"import os\nos.remove({path!r})")["status"] == "ok"
            removed.append(path)

    pages = listing_pages(session, limit=700, between=remove_the_cursors_file)
    assert all(len(page["files"]) <= 700 for page in pages) and len(pages) >= 7
    assert [entry["path"] for page in pages for entry in page["files"]] == expected


@pytest.mark.parametrize("query", ["limit=0", "limit=10001", "limit=-1", "limit=abc", "limit=1e3", "limit=",
                                   "limit=" + "9" * 5000, "cursor=!!", "cursor=" + base64.urlsafe_b64encode(
                                       b"../x").decode().rstrip("="), "cursor=" + base64.urlsafe_b64encode(
                                       b"\xff").decode().rstrip("=")], ids=lambda query: query[:20])
def test_bad_listing_queries_are_400(session: Sandbox, query: str) -> None:
    status, _, body = exchange(session, "GET", "/files?" + query)
    assert status == 400 and ("limit" in json.loads(body)["error"] or "cursor" in json.loads(body)["error"]), body


# --- an agent no center talks to ends itself ---------------------------------------------------------

def bounded_launcher(sandboxes: DockerSandboxes, monkeypatch: pytest.MonkeyPatch, lifetime: float,
                     silence: float) -> DockerSandboxes:
    """A launcher as the center's, whose agents end themselves after `lifetime` as a session's, or after
    `silence` seconds with no request (the margin added to the idle timeout taken away)."""
    monkeypatch.setattr(sandboxes_module, "SILENCE_MARGIN_SECONDS", 0.0)
    config = replace(sandboxes.config, session_max_lifetime_seconds=lifetime, session_idle_timeout_seconds=silence)
    return DockerSandboxes(config, sandboxes.engine)


def stopped_by_itself(docker_client: docker.DockerClient, sandbox: Sandbox, timeout: float) -> str:
    """Wait for the container to stop (the engine is asked: the agent is not talked to); its log."""
    assert docker_client.api.wait(sandbox.container_id, timeout=timeout)["StatusCode"] == 0
    return docker_client.api.logs(sandbox.container_id).decode(errors="replace")


def test_a_session_agent_ends_itself_at_its_lifetime_even_in_use(sandboxes: DockerSandboxes,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 docker_client: docker.DockerClient) -> None:
    """Its center gone (crashed, or back under another deployment label), nobody would remove it."""
    launcher = bounded_launcher(sandboxes, monkeypatch, lifetime=3, silence=3)
    sandbox = launcher.launch(9171)
    try:
        assert sandbox.request("POST", "/session/start", {}, timeout=30) == (200, {"ok": True})
        started = time.monotonic()
        while (health := sandbox.health()) is not None:  # talked to all along: never silent
            assert health["mode"] == "session"
            assert time.monotonic() - started < 30, "the session's agent outlived its lifetime"
            time.sleep(0.3)
        assert time.monotonic() - started >= 3, "it ended before its lifetime"
        assert "lifetime" in stopped_by_itself(docker_client, sandbox, 10)
    finally:
        launcher.destroy(sandbox)


def test_an_agent_no_request_reaches_ends_itself_and_one_in_use_lives_on(sandboxes: DockerSandboxes,
                                                                         monkeypatch: pytest.MonkeyPatch,
                                                                         docker_client: docker.DockerClient) -> None:
    launcher = bounded_launcher(sandboxes, monkeypatch, lifetime=3600, silence=3)
    launched: list[Sandbox] = []
    try:
        for slot in (9172, 9173, 9174):
            launched.append(launcher.launch(slot))
            if slot != 9173:  # each started at once: it has only 3 s of silence
                assert launched[-1].request("POST", "/session/start", {}, timeout=30) == (200, {"ok": True})
        forgotten, fresh, used = launched
        started = time.monotonic()
        while time.monotonic() - started < 5:
            assert used.health() is not None, "a session asked after every second must live on"
            time.sleep(1)
        # A cell of 6 s: no other request meanwhile, and it is no silence.
        report = cell(used, "import time\ntime.sleep(6)\n'still here'", timeout=20)
        assert (report["status"], report["result"]) == ("ok", "'still here'"), report
        assert cell(used, "1 + 1")["result"] == "2"
        for sandbox in (forgotten, fresh):  # a session's agent, and a fresh one of the pool
            assert "no request" in stopped_by_itself(docker_client, sandbox, 5)
        started = time.monotonic()
        assert "no request" in stopped_by_itself(docker_client, used, 15), "left alone, it ends too"
        assert time.monotonic() - started >= 2
    finally:
        for sandbox in launched:
            launcher.destroy(sandbox)


def test_the_center_gives_every_agent_its_bounds(sandboxes: DockerSandboxes) -> None:
    """A session's lifetime as configured; a silence well past the longest idle time a session may have."""
    arguments = sandboxes.agent_arguments(2_000_001)
    options = dict(zip(arguments[::2], arguments[1::2], strict=True))
    config = sandboxes.config
    assert float(options["--session-lifetime"]) == config.session_max_lifetime_seconds
    assert float(options["--max-silence"]) >= config.session_idle_timeout_seconds + 60
