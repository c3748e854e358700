"""The in-container agent, called directly in a container started exactly as the center starts them."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker
import pytest

from server.containers.agent_client import Listener
from server.containers.docker_sandboxes import AgentUnreachable, DockerSandboxes, Sandbox
from server.containers.warm_up import WarmUpPlan

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def images_by_name(report: dict[str, Any]) -> dict[str, bytes]:
    """The report's images, decoded."""
    return {image["name"]: base64.b64decode(image["data"]) for image in report["images"]}


def test_hello_world(run_in_sandbox: Callable[..., dict[str, Any]]) -> None:
    report = run_in_sandbox("print('Hello, World!')")
    assert report["stdout"] == "Hello, World!\n"
    assert report["stderr"] == ""
    assert report["exit_code"] == 0
    assert report["status"] == "ok"
    assert "error" not in report
    assert report["duration_ms"] > 0


def test_exception_reports_traceback_and_exit_code(run_in_sandbox: Callable[..., dict[str, Any]]) -> None:
    report = run_in_sandbox("def f():\n    raise ValueError('boom')\nf()")
    assert report["status"] == "error"
    assert report["exit_code"] == 1
    assert "Traceback" in report["stderr"] and "ValueError: boom" in report["stderr"]
    assert 'File "<code>", line 3' in report["stderr"]
    assert "worker.py" not in report["stderr"], "the traceback starts at the user's code"
    assert "ValueError: boom" in report["error"]


def test_sys_exit_code_is_reported(run_in_sandbox: Callable[..., dict[str, Any]]) -> None:
    report = run_in_sandbox("import sys\nprint('bye')\nsys.exit(3)")
    assert (report["status"], report["exit_code"], report["stdout"]) == ("error", 3, "bye\n")


def test_timeout_kills_children_that_ignore_sigterm(sandbox: Sandbox) -> None:
    code = (
        "import os, signal, subprocess, sys, time\n"
        "child = 'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)'\n"
        "subprocess.Popen([sys.executable, '-c', child], start_new_session=True)\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('started', flush=True)\n"
        "time.sleep(600)\n"
    )
    started: list[float] = []  # when the program's first line came: its clock was running by then

    def on_event(event: dict[str, Any]) -> None:
        if event["type"] == "stdout" and not started:
            started.append(time.monotonic())

    report = sandbox.run({"language": "python", "code": code, "variables": {}, "timeout": 2},
                         listener=Listener(on_event))
    ended = time.monotonic()
    assert report["status"] == "timeout"
    assert report["stdout"] == "started\n", "output produced before the kill is kept"
    assert "time limit" in report["error"]
    assert started, "the line came as the program wrote it"
    elapsed = ended - started[0]
    # Timed from the program's own line, not from the container's start (seconds on a slow runner): at
    # most the 2 s limit, then the kill and the report (milliseconds). A child left alive holding the
    # output pipes would add the readers' 2 s waits, one per pipe.
    assert elapsed < 2 + 2, f"the report came {elapsed:.1f} s after the program's first line, for a 2 s limit"


def json_size(text: str) -> int:
    """Bytes of text inside a JSON string as the agent sends it (UTF-8, only what JSON must escape)."""
    return len(json.dumps(text, ensure_ascii=False).encode()) - 2


def test_output_cap(run_in_sandbox: Callable[..., dict[str, Any]]) -> None:
    report = run_in_sandbox("while True:\n    print('x' * 1000)", max_output_bytes=10_000)
    assert report["status"] == "output_limit"
    # The cap counts the output as it is sent: each newline is two bytes of JSON ("\n").
    assert 10_000 - 1 <= json_size(report["stdout"]) <= 10_000
    assert report["stdout"].startswith("x" * 1000 + "\n")
    assert "10000 bytes" in report["error"]


def test_output_cap_counts_stdout_and_stderr_together(run_in_sandbox: Callable[..., dict[str, Any]]) -> None:
    code = "import sys, time\nprint('e' * 3000, file=sys.stderr)\ntime.sleep(0.5)\nprint('o' * 20_000)"
    report = run_in_sandbox(code, max_output_bytes=10_000)
    assert report["status"] == "output_limit"
    assert report["stderr"] == "e" * 3000 + "\n"
    assert report["stdout"] == "o" * (10_000 - json_size(report["stderr"]))


def test_plot_captured_without_savefig(run_in_sandbox: Callable[..., dict[str, Any]]) -> None:
    code = (
        "import matplotlib.pyplot as plt\n"
        "plt.plot([1, 2, 3], [3, 1, 2])\n"
        "plt.title('销售额 by month')\n"
        "plt.show()\n"
        "plt.figure()\n"
        "plt.bar(['a', 'b'], [1, 2])\n"
    )
    report = run_in_sandbox(code)
    assert report["status"] == "ok", report
    images = images_by_name(report)
    assert sorted(images) == ["figure_1.png", "figure_2.png"], "the shown figure and the one left open"
    assert all(data.startswith(PNG_MAGIC) for data in images.values())
    assert "Glyph" not in report["stderr"], "Chinese labels render with the CJK fallback font"
    assert "non-interactive" not in report["stderr"]


@pytest.mark.parametrize("extension, mime", [
    ("png", "image/png"), ("jpg", "image/jpeg"), ("jpeg", "image/jpeg"), ("gif", "image/gif"),
    ("svg", "image/svg+xml"), ("webp", "image/webp"),
])
def test_written_image_files_are_collected(run_in_sandbox: Callable[..., dict[str, Any]], extension: str,
                                           mime: str) -> None:
    code = (
        "from PIL import Image\n"
        f"name = 'out.{extension}'\n"
        "if name.endswith('svg'):\n"
        "    open(name, 'w').write('<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"4\" height=\"4\"/>')\n"
        "else:\n"
        "    Image.new('RGB', (8, 8), 'red').save(name)\n"
        "open('notes.txt', 'w').write('not an image')\n"
    )
    report = run_in_sandbox(code)
    assert report["status"] == "ok", report
    assert [(image["name"], image["mime"]) for image in report["images"]] == [(f"out.{extension}", mime)]


def test_symlink_planted_as_image_is_not_followed(run_in_sandbox: Callable[..., dict[str, Any]]) -> None:
    code = (
        "import os\n"
        "os.symlink('/etc/shadow', 'shadow.png')\n"
        "os.symlink('/opt/sandbox/agent.py', 'agent.png')\n"
        "os.mkfifo('fifo.png')\n"
        "open('real.png', 'wb').write(b'\\x89PNG\\r\\n\\x1a\\nreal')\n"
    )
    report = run_in_sandbox(code)
    assert report["status"] == "ok", report
    assert images_by_name(report) == {"real.png": b"\x89PNG\r\n\x1a\nreal"}


def test_image_count_and_size_caps(run_in_sandbox: Callable[..., dict[str, Any]]) -> None:
    code = (
        "import os\n"
        "open('big.png', 'wb').write(b'\\x89PNG\\r\\n\\x1a\\n' + bytes(5000))\n"
        "os.utime('big.png', ns=(10**18, 10**18))  # the oldest\n"
        "for i in range(6):\n"
        "    open(f'small{i}.png', 'wb').write(b'\\x89PNG\\r\\n\\x1a\\n' + bytes(100))\n"
        "    os.utime(f'small{i}.png', ns=(10**18 + 1 + i, 10**18 + 1 + i))  # made in this order\n"
    )
    report = run_in_sandbox(code, max_images=3, max_image_bytes=1000)
    assert [image["name"] for image in report["images"]] == ["small0.png", "small1.png", "small2.png"]
    assert report["skipped"] == [
        {"name": "big.png", "reason": "5008 bytes is over the image size limit of 1000"},
        *({"name": f"small{i}.png", "reason": "more than 3 images"} for i in (3, 4, 5)),
    ]


def test_python_variables_are_globals_holding_json_values(run_in_sandbox: Callable[..., dict[str, Any]]) -> None:
    variables = {"s": "hi; import os", "n": 7, "xs": [1, 2.5, None], "d": {"k": True}}
    code = "print(repr(s), n * 6, xs, d['k'] is True)"
    report = run_in_sandbox(code, variables=variables)
    assert report["stdout"] == "'hi; import os' 42 [1, 2.5, None] True\n"


def test_bash_runs_with_variables_in_environment(run_in_sandbox: Callable[..., dict[str, Any]]) -> None:
    report = run_in_sandbox('echo "$greeting $n $obj"; echo oops >&2; exit 4', language="bash",
                            variables={"greeting": "hello world", "n": 5, "obj": {"a": [1]}})
    assert report["stdout"] == 'hello world 5 {"a": [1]}\n'
    assert report["stderr"] == "oops\n"
    assert (report["status"], report["exit_code"]) == ("error", 4)


def test_user_code_is_unprivileged_and_not_the_agent(run_in_sandbox: Callable[..., dict[str, Any]]) -> None:
    code = (
        "import os\n"
        "print(os.getuid(), os.geteuid(), os.getgid(), os.getgroups())\n"
        "print([l for l in open('/proc/self/status') if l.startswith('CapEff')][0].split()[1])\n"
    )
    report = run_in_sandbox(code)
    ids, capabilities = report["stdout"].splitlines()
    uid, euid, gid, groups = ids.split(" ", 3)
    assert uid == euid and uid not in ("0",)
    assert gid != "0" and groups == "[]"
    assert int(capabilities, 16) == 0, "user code holds no capability"
    agent_uid = run_in_sandbox("import os\nprint(os.stat(f'/proc/{os.getppid()}').st_uid)")["stdout"].strip()
    assert agent_uid != uid, "the agent runs as a different user than the program"


def test_program_runs_as_the_uid_its_sandbox_was_given(sandbox: Sandbox) -> None:
    # The center gives each sandbox a uid of its own (agent.py --uid) and its /workspace to that uid.
    code = (
        "import os\n"
        "print(os.getuid(), os.geteuid(), os.getgid(), os.getegid(), os.getgroups())\n"
        "open('mine.txt', 'w').write('x')\n"
        "print(os.stat('mine.txt').st_uid, os.stat('.').st_uid)\n"
    )
    report = sandbox.run({"language": "python", "code": code, "variables": {}, "timeout": 10})
    uid = sandbox.program_uid
    assert report["stdout"] == f"{uid} {uid} {uid} {uid} []\n{uid} {uid}\n", report


@pytest.mark.parametrize("arguments", [
    ["--uid", "0"], ["--uid", "-5"], ["--uid", "4294967295"], ["--uid", "sandbox"], ["--max-processes", "x"],
    ["--bogus", "1"], ["--uid"], ["--warm-first", "numpy,tensorflow"], ["--warm-rest", "-1"], ["--threads", "-2"],
    ["--warm-delay", "nan"], ["--path-first", "relative/bin"], ["--path-first", "/a:/b"],
    ["--session-lifetime", "-1"], ["--session-lifetime", "nan"], ["--max-silence", "inf"], ["--max-silence", "x"],
])
def test_agent_refuses_bad_arguments_before_starting_anything(arguments: list[str]) -> None:
    agent = Path(__file__).parent.parent / "sandbox" / "agent.py"
    result = subprocess.run([sys.executable, "-E", "-S", str(agent), *arguments], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode != 0
    assert "usage" in result.stderr or "--" in result.stderr, result.stderr


def test_non_utf8_output_is_replaced_not_fatal(run_in_sandbox: Callable[..., dict[str, Any]]) -> None:
    report = run_in_sandbox("import sys\nsys.stdout.buffer.write(b'ok \\xff\\xfe end\\n')\nprint('中文')")
    assert report["status"] == "ok"
    assert report["stdout"] == "ok \ufffd\ufffd end\n中文\n"


def test_agent_runs_only_one_program_then_exits(sandbox: Sandbox, docker_client: docker.DockerClient) -> None:
    # The first program runs for seconds: the second request comes as soon as the agent says it took one.
    job = {"language": "python", "code": "import time\ntime.sleep(3)\nprint(1)", "variables": {}, "timeout": 30}
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(sandbox.run, job)
        wait_for_health(sandbox, lambda health: health["used"])
        status, body = sandbox.request("POST", "/run", job, timeout=30)  # while the first one runs
        assert status == 409 and "already" in body["error"]
        assert first.result()["stdout"] == "1\n"
    # Its one program done, the agent exits and the container stops by itself (the wait only bounds a hang).
    assert docker_client.api.wait(sandbox.container_id, timeout=60)["StatusCode"] == 0
    with pytest.raises(AgentUnreachable):
        sandbox.request("POST", "/run", job, timeout=5)


def wait_for_health(sandbox: Sandbox, condition: Callable[[dict[str, Any]], bool], timeout: float = 120) -> None:
    """Poll the agent's /healthz until the condition holds (the deadline only bounds a hang: a warm-up of
    every library takes seconds on a slow runner)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = sandbox.health()
        if health is not None and condition(health):
            return
        time.sleep(0.02)
    raise AssertionError(f"the agent never reached the state; last /healthz: {sandbox.health()}")


def test_an_idle_sandbox_warms_up_so_a_plot_pays_no_imports(sandbox: Sandbox) -> None:
    wait_for_health(sandbox, lambda health: health["warm"])
    code = "import matplotlib.pyplot as plt\nplt.plot([1, 2], [2, 1])\nplt.show()"
    report = sandbox.run({"language": "python", "code": code, "variables": {}, "timeout": 20})
    assert (report["status"], report["warm"]) == ("ok", True), report
    assert [image["name"] for image in report["images"]] == ["figure_1.png"]


@pytest.mark.parametrize(("code", "kept"), [
    ("print('no imports needed')", False),  # a cold worker starts at once: it beats the rest of the imports
    ("import pandas as pd\nprint(pd.DataFrame({'a': [1, 2]})['a'].sum())", True),  # the imports it needs anyway
])
def test_a_worker_caught_warming_up_is_kept_only_for_a_program_that_needs_its_imports(
        sandbox: Sandbox, code: str, kept: bool) -> None:
    wait_for_health(sandbox, lambda health: health["warming"] and not health["warm"])
    report = sandbox.run({"language": "python", "code": code, "variables": {}, "timeout": 20})
    assert report["status"] == "ok", report
    assert report["warm"] is kept


def test_a_program_taken_mid_warm_up_waits_for_one_step_not_for_every_library(sandbox: Sandbox) -> None:
    wait_for_health(sandbox, lambda health: health["warming"] and not health["warm"])
    # seaborn is the warm-up's last step, a second or more away: the program stopped it before.
    code = "import sys, numpy\nprint([name for name in ('numpy', 'seaborn') if name in sys.modules])"
    report = sandbox.run({"language": "python", "code": code, "variables": {}, "timeout": 20})
    assert (report["status"], report["stdout"]) == ("ok", "['numpy']\n"), report


class FixedPlan:
    """Stands in for the center's warm-up policy: every sandbox gets this plan."""

    def __init__(self, plan: WarmUpPlan) -> None:
        self.fixed = plan

    def plan(self) -> WarmUpPlan:
        return self.fixed

    def note(self, language: str, code: str) -> None:
        pass


LOADED = "import sys\nprint([name for name in ('matplotlib.pyplot', 'pandas', 'seaborn') if name in sys.modules])"


@pytest.mark.parametrize(("first", "rest_delay", "loaded"), [
    (("numpy", "matplotlib"), 60.0, ["matplotlib.pyplot"]),  # the rest waits for a minute of idleness: never, here
    (("numpy", "matplotlib"), 0.0, ["matplotlib.pyplot", "pandas", "seaborn"]),
    ((), 0.0, ["matplotlib.pyplot", "pandas", "seaborn"]),  # no group first: all of them as the rest
])
def test_a_sandbox_warms_the_groups_named_first_and_the_others_only_when_idle(
        sandboxes: DockerSandboxes, monkeypatch: pytest.MonkeyPatch, first: tuple[str, ...], rest_delay: float,
        loaded: list[str]) -> None:
    monkeypatch.setattr(sandboxes, "warm_up", FixedPlan(WarmUpPlan(0.0, first, rest_delay)))
    sandbox = sandboxes.launch(9152)
    try:
        wait_for_health(sandbox, lambda health: health["warm"] and (health["warm_all"] or rest_delay > 0))
        report = sandbox.run({"language": "python", "code": LOADED, "variables": {}, "timeout": 20})
        assert (report["status"], report["warm"], report["stdout"]) == ("ok", True, f"{loaded}\n"), report
    finally:
        sandboxes.destroy(sandbox)


def test_numeric_thread_pools_are_sized_to_the_cpu_limit(run_in_sandbox: Callable[..., dict[str, Any]]) -> None:
    # The test pool's limit is 1 CPU: OpenBLAS would otherwise start a thread per host core, which
    # on a 1-CPU quota only spin (numpy's import and a first figure cost twice the CPU).
    code = ("import os, numpy\nnumpy.ones((200, 200)) @ numpy.ones((200, 200))\n"
            "print(os.environ['OPENBLAS_NUM_THREADS'], os.environ['OMP_NUM_THREADS'],"
            " len(os.listdir('/proc/self/task')))")
    report = run_in_sandbox(code)
    assert (report["status"], report["stdout"]) == ("ok", "1 1 1\n"), report


@pytest.mark.parametrize(("raw", "status"), [
    (b"nonsense\r\n\r\n", 400),
    (b"GET /healthz HTTP/1.1\r\n" + b"X-Long: " + b"a" * 10000 + b"\r\n\r\n", 400),
    (b"POST /run HTTP/1.1\r\nContent-Length: 9\r\n\r\nnot json!", 400),
    (b"POST /run HTTP/1.1\r\nContent-Length: 999999999999\r\n\r\n", 413),
    (b"POST /run HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411),
    (b"GET /nowhere HTTP/1.1\r\n\r\n", 404),
    (b"DELETE /run HTTP/1.1\r\n\r\n", 405),
])
def test_agent_answers_malformed_requests_with_json_errors_and_keeps_serving(
        sandbox: Sandbox, raw: bytes, status: int) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(5)
        connection.connect(sandbox.socket_path)
        connection.sendall(raw)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split()[1] == str(status).encode(), answer[:300]
    assert "error" in json.loads(body)
    job = {"language": "python", "code": "print('still here')", "variables": {}, "timeout": 5}
    assert sandbox.run(job)["stdout"] == "still here\n"
