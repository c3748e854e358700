"""The E2B-compatible API (SPEC "The E2B-compatible API") through E2B's own SDKs, unchanged: the three
environment variables point `e2b-code-interpreter` at a real center served by waitress."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import e2b
import pytest
import requests
from conftest import unavailable
from e2b import AuthenticationException, NotFoundException, SandboxException
from e2b_code_interpreter import AsyncSandbox, Sandbox

KEY, OTHER_KEY = "e2b-key", "other-key"


@pytest.fixture
def center(waitress_server: Callable[..., str], monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A center with two keys, and the SDK pointed at it as its README says (three variables)."""
    url = waitress_server(auth_tokens=(KEY, OTHER_KEY), timeout_seconds=60)
    monkeypatch.setenv("E2B_API_URL", f"{url}/e2b")
    monkeypatch.setenv("E2B_SANDBOX_URL", f"{url}/e2b/sandbox")
    monkeypatch.setenv("E2B_API_KEY", KEY)
    yield url


@pytest.fixture
def sandbox(center: str) -> Iterator[Any]:
    """One sandbox of KEY's, killed afterwards."""
    sbx = Sandbox.create(timeout=120)
    yield sbx
    sbx.kill()


def test_run_code_keeps_state_streams_output_and_reports_errors(sandbox: Any) -> None:
    printed: list[str] = []
    execution = sandbox.run_code("x = 41\nprint('hi')\nx + 1", on_stdout=lambda message: printed.append(message.line))
    # Output comes in chunks as it is written (print writes its text and its newline apart): joined, it is whole.
    assert execution.text == "42" and "".join(execution.logs.stdout) == "hi\n" and execution.error is None
    assert "".join(printed) == "hi\n" and execution.execution_count == 1
    assert sandbox.run_code("x * 2").text == "82"  # the state carries over
    failed = sandbox.run_code("def f():\n    return 1 / 0\nf()")
    assert failed.error is not None and failed.error.name == "ZeroDivisionError", failed
    assert failed.error.value == "division by zero" and "ZeroDivisionError" in failed.error.traceback
    assert "".join(sandbox.run_code("echo from bash", language="bash").logs.stdout) == "from bash\n"


def test_rich_results_come_as_e2b_results(sandbox: Any) -> None:
    table = sandbox.run_code("import pandas as pd\npd.DataFrame({'a': [1, 2]})")
    assert "<table" in table.results[0].html and table.results[0].is_main_result
    figure = sandbox.run_code("import matplotlib.pyplot as plt\nplt.bar(['x', 'y'], [3, 5])\nplt.title('t')\n"
                              "plt.show()")
    shown, = figure.results
    assert base64.b64decode(shown.png).startswith(b"\x89PNG") and shown.chart is not None
    assert shown.chart.title == "t" and [e.value for e in shown.chart.elements] == [3, 5]
    markdown = sandbox.run_code("from IPython.display import Markdown, display\ndisplay(Markdown('**b**'))")
    assert markdown.results[0].markdown == "**b**"


def test_files_write_read_and_the_working_folder_is_home_user(sandbox: Any) -> None:
    info = sandbox.files.write("data.txt", "hello")
    assert info.path == "/home/user/data.txt"
    sandbox.files.write("/home/user/sub/b.bin", b"\x00\x01")
    assert sandbox.files.read("data.txt") == "hello"
    assert bytes(sandbox.files.read("/home/user/sub/b.bin", format="bytes")) == b"\x00\x01"
    assert sandbox.run_code("open('/home/user/data.txt').read()").text == "'hello'"
    sandbox.run_code("open('made.csv', 'w').write('a,b')")
    assert sandbox.files.read("/home/user/made.csv") == "a,b"
    with pytest.raises(e2b.FileNotFoundException):
        sandbox.files.read("nope.txt")
    with pytest.raises(e2b.InvalidArgumentException, match="outside /home/user"):
        sandbox.files.read("/etc/passwd")


def test_envs_of_the_sandbox_and_of_a_run(center: str) -> None:
    sbx = Sandbox.create(timeout=60, envs={"STAGE": "test", "SHARED": "sandbox"})
    try:
        read = "import os\n(os.environ.get('STAGE'), os.environ.get('SHARED'), os.environ.get('ONLY_RUN'))"
        assert sbx.run_code(read).text == "('test', 'sandbox', None)"
        assert sbx.run_code(read, envs={"SHARED": "run", "ONLY_RUN": "1"}).text == "('test', 'run', '1')"
        assert sbx.run_code(read).text == "('test', 'sandbox', None)"  # a run's envs end with it
        assert "".join(sbx.run_code("echo $STAGE-$ONLY_RUN", language="bash", envs={"ONLY_RUN": "x"}).logs.stdout) \
            == "test-x\n"
        with pytest.raises(SandboxException):
            sbx.run_code("1", envs={"NOT A NAME": "x"})
    finally:
        sbx.kill()


def test_code_contexts_each_keep_their_own_state(sandbox: Any) -> None:
    sandbox.run_code("who = 'default'")
    first, second = sandbox.create_code_context(), sandbox.create_code_context(language="python")
    assert first.cwd == "/home/user" and first.language == "python"
    sandbox.run_code("who = 'first'", context=first)
    sandbox.run_code("who = 'second'", context=second)
    assert [sandbox.run_code("who", context=c).text for c in (first, second)] == ["'first'", "'second'"]
    assert sandbox.run_code("who").text == "'default'"
    assert {c.id for c in sandbox.list_code_contexts()} >= {first.id, second.id}
    sandbox.restart_code_context(first)
    assert sandbox.run_code("who", context=first).error.name == "NameError"
    assert sandbox.run_code("who", context=second).text == "'second'"
    sandbox.remove_code_context(second)
    with pytest.raises(NotFoundException):
        sandbox.run_code("who", context=second)
    assert second.id not in {c.id for c in sandbox.list_code_contexts()}


def test_commands_run_in_the_sandbox_with_their_output_exit_code_envs_and_folder(sandbox: Any) -> None:
    printed: list[str] = []
    result = sandbox.commands.run("echo out; echo err >&2; pwd", on_stdout=printed.append)
    assert result.exit_code == 0 and result.stdout == "out\n/home/user\n" and result.stderr == "err\n"
    assert printed and "".join(printed).startswith("out")
    sandbox.files.write("sub/here.txt", "x")
    result = sandbox.commands.run("pwd; ls; echo $GREETING", cwd="/home/user/sub", envs={"GREETING": "hi"})
    assert result.stdout == "/home/user/sub\nhere.txt\nhi\n", result
    with pytest.raises(e2b.CommandExitException) as failed:
        sandbox.commands.run("echo before; exit 3")
    assert failed.value.exit_code == 3 and failed.value.stdout == "before\n"
    handle = sandbox.commands.run("sleep 30", background=True)
    assert [process.pid for process in sandbox.commands.list()] == [handle.pid]
    assert handle.kill() is True
    with pytest.raises(e2b.CommandExitException):
        handle.wait()
    assert sandbox.commands.kill(handle.pid) is False  # ended: envd's not_found
    assert sandbox.run_code("1 + 1").text == "2"  # and the session goes on


def test_files_list_exists_get_info_make_dir_rename_remove(sandbox: Any) -> None:
    sandbox.files.write("docs/a.txt", "aaa")
    assert sandbox.files.make_dir("docs/deep/er") is True
    assert sandbox.files.make_dir("docs/deep") is False  # there already: E2B's False, not an error
    listed = {entry.name: entry for entry in sandbox.files.list("/home/user/docs")}
    assert set(listed) == {"a.txt", "deep"} and listed["a.txt"].size == 3
    assert listed["a.txt"].type == e2b.FileType.FILE and listed["deep"].type == e2b.FileType.DIR
    assert listed["a.txt"].path == "/home/user/docs/a.txt"
    assert {entry.path for entry in sandbox.files.list("docs", depth=3)} >= {"/home/user/docs/deep/er"}
    assert sandbox.files.exists("docs/a.txt") and not sandbox.files.exists("docs/b.txt")
    info = sandbox.files.get_info("/home/user/docs/a.txt")
    assert info.name == "a.txt" and info.size == 3 and info.permissions == "-rw-r--r--"
    moved = sandbox.files.rename("docs/a.txt", "docs/deep/b.txt")
    assert moved.path == "/home/user/docs/deep/b.txt" and sandbox.files.read("docs/deep/b.txt") == "aaa"
    with pytest.raises(e2b.FileNotFoundException):
        sandbox.files.get_info("docs/a.txt")
    sandbox.run_code("import os\nos.symlink('/etc/passwd', 'docs/link')")
    link = sandbox.files.get_info("docs/link")
    assert link.type == e2b.FileType.SYMLINK and link.symlink_target == "/etc/passwd"
    with pytest.raises(e2b.InvalidArgumentException):
        sandbox.files.list("docs/link")  # never through a link
    sandbox.files.remove("docs")
    assert not sandbox.files.exists("docs") and sandbox.run_code("import os\nos.path.exists('docs')").text == "False"
    assert sandbox.run_code("open('/etc/passwd').read(4)").text == "'root'"  # what the link named is untouched
    with pytest.raises(e2b.InvalidArgumentException, match="outside /home/user"):
        sandbox.files.remove("/etc")


def test_the_lifecycle_get_info_list_set_timeout_connect_kill(center: str) -> None:
    sbx = Sandbox.create(timeout=60, metadata={"purpose": "lifecycle"})
    try:
        assert sbx.is_running()
        info = sbx.get_info()
        assert info.sandbox_id == sbx.sandbox_id and info.metadata == {"purpose": "lifecycle"}
        assert 50 <= (info.end_at - info.started_at).total_seconds() <= 61
        sbx.set_timeout(300)
        assert (sbx.get_info().end_at - info.started_at).total_seconds() > 250
        listed = Sandbox.list(query=e2b.SandboxQuery(metadata={"purpose": "lifecycle"})).next_items()
        assert [item.sandbox_id for item in listed] == [sbx.sandbox_id]
        again = Sandbox.connect(sbx.sandbox_id)
        assert again.run_code("1 + 1").text == "2"
    finally:
        assert sbx.kill() is True
    assert not sbx.is_running()
    assert Sandbox.kill(sbx.sandbox_id) is False  # gone: E2B's kill says so, it does not raise
    with pytest.raises(NotFoundException):
        sbx.run_code("1")


def test_keys_are_checked_and_one_key_never_reaches_another_keys_sandbox(sandbox: Any, center: str) -> None:
    with pytest.raises(AuthenticationException):
        Sandbox.create(api_key="not-a-key")
    with pytest.raises(NotFoundException):
        Sandbox.connect(sandbox.sandbox_id, api_key=OTHER_KEY)
    assert Sandbox.kill(sandbox.sandbox_id, api_key=OTHER_KEY) is False
    assert sandbox.sandbox_id not in [item.sandbox_id for item in Sandbox.list(api_key=OTHER_KEY).next_items()]
    # A sandbox request without its access token, or with a wrong one, is refused.
    answer = requests.post(f"{center}/e2b/sandbox/execute", json={"code": "1"},
                           headers={"E2b-Sandbox-Id": sandbox.sandbox_id}, timeout=30)
    assert answer.status_code == 401
    answer = requests.post(f"{center}/e2b/sandbox/execute", json={"code": "1"},
                           headers={"E2b-Sandbox-Id": sandbox.sandbox_id, "X-Access-Token": "guess"}, timeout=30)
    assert answer.status_code == 401


def test_what_is_not_built_says_so(sandbox: Any, center: str) -> None:
    with pytest.raises(SandboxException, match="404"):
        Sandbox.create(template="no-such-template")
    with pytest.raises(SandboxException, match="not built"):
        sandbox.pause()
    with pytest.raises(SandboxException, match="not built"):
        sandbox.create_code_context(cwd="/tmp")
    with pytest.raises(SandboxException, match="not built"):
        sandbox.files.watch_dir("/home/user")
    assert sandbox.run_code("1 + 1").text == "2"  # and the sandbox goes on


def test_the_async_sdk_works_the_same(center: str) -> None:
    async def flow() -> tuple[str | None, list[str], bool]:
        sbx = await AsyncSandbox.create(timeout=60)
        try:
            execution = await sbx.run_code("print('async')\n6 * 7")
            await sbx.files.write("a.txt", "async file")
            text = await sbx.files.read("a.txt")
            return execution.text, ["".join(execution.logs.stdout), text], await sbx.is_running()
        finally:
            await sbx.kill()

    text, lines, running = asyncio.run(flow())
    assert text == "42" and lines == ["async\n", "async file"] and running


def test_hostile_requests_get_a_clear_4xx_in_e2b_s_shape_never_a_500(sandbox: Any, center: str) -> None:
    key = {"X-API-KEY": KEY}
    own = {"E2b-Sandbox-Id": sandbox.sandbox_id, "X-Access-Token": sandbox._envd_access_token}
    for body in (b"not json", b"[]", b'{"timeout": "x"}', b'{"timeout": -1}', b'{"metadata": {"a": 1}}',
                 b'{"envVars": "A=b"}', b'{"templateID": "x" }'):
        answer = requests.post(f"{center}/e2b/v2/sandboxes", data=body, headers={**key, "Content-Type":
                               "application/json"}, timeout=30)
        assert 400 <= answer.status_code < 500 and set(answer.json()) == {"code", "message"}, (body, answer.text)
    for path in ("/e2b/sandboxes/" + "x" * 600, "/e2b/sandboxes/..%2E", "/e2b/v2/sandboxes/nope/connect"):
        answer = requests.request("POST" if path.endswith("connect") else "GET", f"{center}{path}", headers=key,
                                  timeout=30)
        assert answer.status_code == 404 and answer.json()["code"] == 404, (path, answer.text)
    assert requests.get(f"{center}/e2b/v2/sandboxes?limit=x", headers=key, timeout=30).status_code == 400
    assert requests.get(f"{center}/e2b/templates", headers=key, timeout=30).status_code == 501
    answer = requests.post(f"{center}/e2b/sandbox/execute", data=b"{", headers=own, timeout=30)
    assert answer.status_code == 400
    answer = requests.post(f"{center}/e2b/sandbox/execute", json={"code": "1"}, timeout=30)
    assert answer.status_code == 400 and "E2b-Sandbox-Id" in answer.text
    answer = requests.post(f"{center}/e2b/sandbox/execute", json={"code": "1"},
                           headers={"E2b-Sandbox-Id": "x" * 100, "X-Access-Token": "t"}, timeout=30)
    assert answer.status_code == 404
    for path in ("../../etc/passwd", "/home/user/../../etc/passwd", ""):
        answer = requests.get(f"{center}/e2b/sandbox/files", params={"path": path}, headers=own, timeout=30)
        assert answer.status_code == 400 and answer.json()["code"] == 400, (path, answer.text)
    answer = requests.post(f"{center}/e2b/sandbox/files", params={"path": "z.gz"}, data=b"not gzip",
                           headers={**own, "Content-Type": "application/octet-stream", "Content-Encoding": "gzip"},
                           timeout=30)
    assert answer.status_code == 400 and "gzip" in answer.json()["message"]
    answer = requests.post(f"{center}/e2b/sandbox/filesystem.Filesystem/ListDir", json={"path": "/home/user",
                           "depth": 99}, headers=own, timeout=30)
    assert answer.status_code == 400 and "depth must be a whole number from 1 to 16" in answer.json()["message"]
    assert sandbox.run_code("1 + 1").text == "2"


def test_large_files_go_through_and_need_the_sandboxs_own_token_at_the_edge(sandbox: Any, center: str) -> None:
    big = os.urandom(12 * 1024 * 1024)  # over max_request_bytes (10 MB): the upload's own limit holds
    sandbox.files.write("big.bin", io.BytesIO(big))  # a file object: a streamed octet-stream body
    assert bytes(sandbox.files.read("big.bin", format="bytes")) == big
    # A guessed token sends nothing large: the edge refuses the body on its head, before reading it.
    answer = requests.post(f"{center}/e2b/sandbox/files", params={"path": "x.bin"}, data=iter([b"x" * 65536] * 4),
                           headers={"E2b-Sandbox-Id": sandbox.sandbox_id, "X-Access-Token": "guess",
                                    "Content-Type": "application/octet-stream"}, timeout=30)
    assert answer.status_code == 401


def test_the_recipe_of_an_agent_tool_written_for_e2b_runs_unchanged(center: str) -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "examples" / "e2b_sdk_tool.py"
    spec = importlib.util.spec_from_file_location("e2b_sdk_tool", path)
    assert spec is not None and spec.loader is not None
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    first, second = (json.loads(answer) for answer in recipe.main())
    assert first["stdout"] == "8\n" and "error" not in first
    assert second["results"] == [{"text": "<Figure size 640x480 with 1 Axes>", "image": "png", "chart": "bar"}]


def test_templates_are_the_operators_names_for_images(waitress_server: Callable[..., str], base_config: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    url = waitress_server(auth_tokens=(KEY,), e2b_templates=(("data-science", base_config.interpreter_image),
                                                            ("gpu", "someone/else:latest")))
    monkeypatch.setenv("E2B_API_URL", f"{url}/e2b")
    monkeypatch.setenv("E2B_SANDBOX_URL", f"{url}/e2b/sandbox")
    monkeypatch.setenv("E2B_API_KEY", KEY)
    with Sandbox.create(template="data-science") as sbx:
        assert sbx.get_info().template_id == "data-science" and sbx.run_code("2 ** 5").text == "32"
    with pytest.raises(SandboxException, match="404"):
        Sandbox.create()  # code-interpreter-v1 is not among this center's templates
    with pytest.raises(SandboxException, match="not built"):
        Sandbox.create(template="gpu")


def test_more_of_the_files_and_commands_api(sandbox: Any) -> None:
    written = sandbox.files.write_files([{"path": "many/one.txt", "data": "1"},
                                         {"path": "/home/user/many/two.bin", "data": b"\x02"}])
    assert sorted(info.path for info in written) == ["/home/user/many/one.txt", "/home/user/many/two.bin"]
    assert b"".join(sandbox.files.read("many/one.txt", format="stream")) == b"1"
    with pytest.raises(e2b.TimeoutException):
        sandbox.commands.run("sleep 20", timeout=2)
    assert sandbox.commands.run("echo after the timeout").stdout == "after the timeout\n"


def test_a_center_at_its_session_limit_is_e2bs_rate_limit(waitress_server: Callable[..., str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    url = waitress_server(auth_tokens=(KEY,), max_sessions=1)
    monkeypatch.setenv("E2B_API_URL", f"{url}/e2b")
    monkeypatch.setenv("E2B_SANDBOX_URL", f"{url}/e2b/sandbox")
    monkeypatch.setenv("E2B_API_KEY", KEY)
    with Sandbox.create():
        with pytest.raises(e2b.RateLimitException, match="sessions of this center are in use"):
            Sandbox.create()
    with Sandbox.create() as again:  # one ended: there is room again
        assert again.run_code("1").text == "1"


def test_an_e2b_sandbox_is_a_session_listed_with_the_others(sandbox: Any, center: str) -> None:
    listed = requests.get(f"{center}/sessions", headers={"Authorization": f"Bearer {KEY}"}, timeout=30).json()
    mine = [entry for entry in listed["sessions"] if entry["session_id"] == sandbox.sandbox_id]
    assert len(mine) == 1 and mine[0]["kind"] == "e2b" and mine[0]["status"] in ("idle", "busy")
    other = requests.get(f"{center}/sessions", headers={"Authorization": f"Bearer {OTHER_KEY}"}, timeout=30)
    assert sandbox.sandbox_id not in [entry["session_id"] for entry in other.json()["sessions"]]


def test_past_its_timeout_a_sandbox_is_gone(center: str) -> None:
    sbx = Sandbox.create(timeout=2)
    assert sbx.run_code("1").text == "1"
    deadline = time.monotonic() + 60  # the sweeper ends it within its round (5 s) after the timeout
    while sbx.is_running() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not sbx.is_running()
    with pytest.raises(NotFoundException):
        sbx.run_code("1")
    assert Sandbox.kill(sbx.sandbox_id) is False


def test_a_sandbox_and_its_contexts_survive_a_restart_of_the_center(center_process: Callable[..., Any]) -> None:
    process = center_process(auth_tokens=[KEY]).start()
    urls = {"api_key": KEY, "api_url": f"{process.url}/e2b", "sandbox_url": f"{process.url}/e2b/sandbox"}
    sbx = Sandbox.create(timeout=300, **urls)
    context = sbx.create_code_context()
    sbx.run_code("kept = 'in the default context'")
    sbx.run_code("kept = 'in its own context'", context=context)
    process.signal(signal.SIGTERM)
    process.process.wait(60)
    process.start()
    again = Sandbox.connect(sbx.sandbox_id, **urls)
    assert again.run_code("kept").text == "'in the default context'"
    assert again.run_code("kept", context=context).text == "'in its own context'"
    assert again.files.write("after.txt", "restart").path == "/home/user/after.txt"  # its token is known again
    assert again.kill() is True


def test_e2bs_own_readme_example_runs_unchanged(center: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The example of the installed SDK's own README (its package metadata), as E2B's users copy it."""
    from importlib.metadata import metadata

    readme = metadata("e2b-code-interpreter").get_payload()  # type: ignore[attr-defined]
    start = readme.index("```py\n", readme.index("Execute code with code interpreter")) + len("```py\n")
    example = readme[start:readme.index("```", start)]
    assert "Sandbox.create()" in example and "run_code" in example
    exec(compile(example, "e2b-readme", "exec"), {})  # noqa: S102 - E2B's published example, unchanged
    assert capsys.readouterr().out == "2\n"


JS_FOLDER = Path(__file__).resolve().parent / "e2b_js"


def test_e2bs_javascript_sdk_runs_unchanged_under_debians_node(center: str) -> None:
    """tests/e2b_js/flow.mjs: E2B's JavaScript SDK (npm, pinned by its lock file) against the center."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        unavailable("E2B's JavaScript SDK needs Node.js and npm (apt-get install nodejs npm)")
    if not (JS_FOLDER / "node_modules" / "@e2b" / "code-interpreter").is_dir():
        installed = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS_FOLDER, capture_output=True,
                                   text=True, timeout=600)
        assert installed.returncode == 0, installed.stderr[-2000:]
    ran = subprocess.run([node, "flow.mjs"], cwd=JS_FOLDER, capture_output=True, text=True, timeout=300,
                         env={**os.environ})
    assert ran.returncode == 0, ran.stderr[-3000:]
    out = json.loads(ran.stdout.strip().splitlines()[-1])
    assert out["text"] == "42" and out["stdout"] == "hi js\n"
    assert out["error"] == ["ZeroDivisionError", "division by zero"] and out["html"] is True
    assert out["context"] == "'context'" and out["read"] == "from js" and out["listed"] == ["js.txt"]
    assert out["command"] == [0, "from js/home/user\n"] and out["running"] is True
    assert out["info"] == {"from": "js"} and out["listedSandboxes"] is True
    assert out["killed"] is True and out["afterKill"] is False


def test_every_callback_is_called_as_output_happens(sandbox: Any) -> None:
    seen: list[tuple[str, str]] = []
    execution = sandbox.run_code(
        "import sys\nprint('out')\nprint('err', file=sys.stderr)\n"
        "from IPython.display import display, HTML\ndisplay(HTML('<b>x</b>'))\n1 / 0",
        on_stdout=lambda m: seen.append(("stdout", m.line)), on_stderr=lambda m: seen.append(("stderr", m.line)),
        on_result=lambda r: seen.append(("result", r.html or "")), on_error=lambda e: seen.append(("error", e.name)))
    kinds = [kind for kind, _ in seen]
    assert ("result", "<b>x</b>") in seen and ("error", "ZeroDivisionError") in seen, seen
    # display() also prints its object's text into the output here (this center's runs keep that).
    assert "".join(text for kind, text in seen if kind == "stdout").startswith("out\n")
    assert "err\n" in "".join(text for kind, text in seen if kind == "stderr")
    assert kinds[-1] == "error"  # the error last (output and displays travel apart: their order may vary)
    assert execution.error is not None and execution.results[0].html == "<b>x</b>"
