"""mcp_server.py as MCP clients use it: the SDK's own client starts it over stdio, or reaches it over
streamable HTTP, against a real center; tools are listed and called as a model would call them."""

from __future__ import annotations

import base64
import queue
import re
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import requests
from conftest import free_port
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, ImageContent, TextContent

from mcp_server import transport_security
from server.config import PROJECT_DIR

TOKEN = "mcp-token"
SERVER = str(PROJECT_DIR / "mcp_server.py")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CALL_SECONDS = 120  # generous: a tool call waits for a sandbox on a shared 2-core machine
TOOLS = {"run_code", "create_session", "upload_file", "list_files", "read_file", "end_session"}


@pytest.fixture
def center_url(live_server: Callable[..., str]) -> str:
    """A real center over HTTP that takes a token."""
    return live_server(auth_tokens=(TOKEN,))


def text_of(result: CallToolResult) -> str:
    """The text blocks of a tool result, joined."""
    return "\n".join(block.text for block in result.content if isinstance(block, TextContent))


def images_of(result: CallToolResult) -> list[ImageContent]:
    """The image blocks of a tool result."""
    return [block for block in result.content if isinstance(block, ImageContent)]


@asynccontextmanager
async def over_stdio(args: list[str], log: Path, env: dict[str, str] | None = None) -> AsyncIterator[ClientSession]:
    """An initialised MCP session with `python3 mcp_server.py ARGS` started over stdio."""
    params = StdioServerParameters(command=sys.executable, args=[SERVER, *args], cwd=str(PROJECT_DIR), env=env)
    with log.open("a") as errlog:  # the server's stderr goes to a real file, not pytest's capture
        async with stdio_client(params, errlog=errlog) as (read, write), \
                ClientSession(read, write, read_timeout_seconds=CALL_SECONDS) as session:
            await session.initialize()
            yield session


@contextmanager
def serving_http(args: list[str]) -> Iterator[str]:
    """`mcp_server.py ARGS` (with --http) as a process; yields the /mcp URL it prints once it listens."""
    process = subprocess.Popen([sys.executable, SERVER, *args], cwd=PROJECT_DIR, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    # A thread drains stderr, so the server never blocks on a full pipe and the test can wait with a timeout.
    threading.Thread(target=lambda: [lines.put(line) for line in process.stderr], daemon=True).start()
    seen: list[str] = []
    try:
        while True:
            line = lines.get(timeout=60)
            seen.append(line)
            found = re.search(r"at (http://\S+/mcp)", line)
            if found:
                break
        yield found.group(1)
    except queue.Empty:
        pytest.fail(f"mcp_server.py --http never said where it listens: {''.join(seen)}")
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def http_server(center_url: str) -> Iterator[str]:
    """`mcp_server.py --http 127.0.0.1:0` in front of the center; yields its /mcp URL."""
    with serving_http(["--url", center_url, "--token", TOKEN, "--http", "127.0.0.1:0"]) as url:
        yield url


@asynccontextmanager
async def over_http(url: str) -> AsyncIterator[ClientSession]:
    """An initialised MCP session with the server at `url` over streamable HTTP."""
    async with streamable_http_client(url) as (read, write), \
            ClientSession(read, write, read_timeout_seconds=CALL_SECONDS) as session:
        await session.initialize()
        yield session


def run(scenario: Callable[[], Awaitable[Any]]) -> Any:
    """Run an async scenario to its end (the tests themselves stay synchronous)."""
    return anyio.run(scenario)


async def exercise(session: ClientSession) -> None:
    """What a model does with the tools: list them, run code, get a chart, work in a session on a CSV, time out."""
    listed = await session.list_tools()
    tools = {tool.name: tool for tool in listed.tools}
    assert set(tools) == TOOLS
    schema = tools["run_code"].input_schema
    assert schema["required"] == ["code"] and schema["properties"]["language"]["enum"] == ["python", "bash"]
    assert {"session_id", "timeout"} <= set(schema["properties"])
    assert all(tool.description for tool in listed.tools), "every tool tells a model what it does"

    hello = await session.call_tool("run_code", {"code": "print('hello from mcp')\n6 * 7"})
    assert not hello.is_error, text_of(hello)
    assert "status: ok" in text_of(hello) and "hello from mcp" in text_of(hello) and "42" in text_of(hello)

    bash = await session.call_tool("run_code", {"code": "echo $((6 * 7))", "language": "bash"})
    assert not bash.is_error and "42" in text_of(bash)

    chart = await session.call_tool("run_code", {"code": "import matplotlib.pyplot as plt\nplt.plot([1, 2], [3, 4])"})
    assert not chart.is_error, text_of(chart)
    (image,) = images_of(chart)
    assert image.mime_type == "image/png" and base64.b64decode(image.data).startswith(PNG_SIGNATURE)
    assert re.search(r"figure_1\.png: http://\S+/image/\S+\.png", text_of(chart)), "the link is in the text too"

    huge = await session.call_tool("run_code", {"code": "print('capped')", "timeout": 1e308})
    assert not huge.is_error and "capped" in text_of(huge), "a limit beyond the center's is lowered to it"

    failed = await session.call_tool("run_code", {"code": "1 / 0"})
    assert failed.is_error and "ZeroDivisionError" in text_of(failed)

    slow = await session.call_tool("run_code", {"code": "import time\nprint('started')\ntime.sleep(60)", "timeout": 1})
    assert slow.is_error and "status: timeout" in text_of(slow) and "started" in text_of(slow)

    created = await session.call_tool("create_session", {})
    assert not created.is_error, text_of(created)
    session_id = re.search(r"session_id: (\S+)", text_of(created)).group(1)
    csv = b"city,people\nOslo,709\nLima,10092\n"
    uploaded = await session.call_tool("upload_file", {"session_id": session_id, "path": "data/cities.csv",
                                                       "content_base64": base64.b64encode(csv).decode()})
    assert not uploaded.is_error and f"data/cities.csv ({len(csv)} bytes)" in text_of(uploaded)
    loaded = await session.call_tool("run_code", {"session_id": session_id,
                                                  "code": "import pandas as pd\ndf = pd.read_csv('data/cities.csv')"})
    assert not loaded.is_error, text_of(loaded)
    total = await session.call_tool("run_code", {"session_id": session_id, "code": "int(df.people.sum())"})
    assert not total.is_error and "10801" in text_of(total), "df carried over from the previous call"
    await session.call_tool("run_code", {"session_id": session_id, "code": "df.to_csv('out.csv', index=False)"})
    listing = await session.call_tool("list_files", {"session_id": session_id})
    assert "data/cities.csv" in text_of(listing) and "out.csv" in text_of(listing)
    read = await session.call_tool("read_file", {"session_id": session_id, "path": "out.csv"})
    assert not read.is_error and text_of(read) == csv.decode()
    missing = await session.call_tool("read_file", {"session_id": session_id, "path": "nope.txt"})
    assert missing.is_error and "404" in text_of(missing)
    for outside in ("../../../metrics", "a/./b", "/etc/passwd"):  # no other route of the center through a path
        escaped = await session.call_tool("read_file", {"session_id": session_id, "path": outside})
        assert escaped.is_error and "not a path in the workspace" in text_of(escaped), text_of(escaped)
    bad = await session.call_tool("upload_file", {"session_id": session_id, "path": "x", "content_base64": "%%%"})
    assert bad.is_error and "base64" in text_of(bad)
    ended = await session.call_tool("end_session", {"session_id": session_id})
    assert not ended.is_error
    after = await session.call_tool("run_code", {"session_id": session_id, "code": "1"})
    assert after.is_error and "410" in text_of(after) and "deleted" in text_of(after)


def test_over_stdio_against_a_real_center(center_url: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with over_stdio(["--url", center_url, "--token", TOKEN], tmp_path / "mcp.log") as session:
            await exercise(session)
    run(scenario)


def test_over_streamable_http_against_a_real_center(http_server: str) -> None:
    async def scenario() -> None:
        async with over_http(http_server) as session:
            await exercise(session)
    run(scenario)


def test_url_and_token_from_the_environment(center_url: str, tmp_path: Path) -> None:
    async def scenario() -> CallToolResult:
        async with over_stdio([], tmp_path / "mcp.log", env={"CIA_URL": center_url, "CIA_TOKEN": TOKEN}) as session:
            return await session.call_tool("run_code", {"code": "print('from env')"})
    result = run(scenario)
    assert not result.is_error and "from env" in text_of(result)


def test_a_center_that_is_down_or_refuses_is_a_clear_tool_error(center_url: str, tmp_path: Path) -> None:
    down_url = f"http://127.0.0.1:{free_port()}"

    async def scenario() -> tuple[CallToolResult, CallToolResult, CallToolResult]:
        async with over_stdio(["--url", down_url], tmp_path / "down.log") as down, \
                over_stdio(["--url", center_url, "--token", "wrong"], tmp_path / "wrong.log") as refused:
            return (await down.call_tool("run_code", {"code": "print(1)"}),
                    await down.call_tool("create_session", {}),
                    await refused.call_tool("run_code", {"code": "print(1)"}))
    unreachable, no_session, wrong_token = run(scenario)
    for result in (unreachable, no_session):
        assert result.is_error and "cannot be reached" in text_of(result) and down_url in text_of(result)
    assert wrong_token.is_error and "401" in text_of(wrong_token) and "token" in text_of(wrong_token)


def test_run_code_gives_what_a_notebook_displays(center_url: str, tmp_path: Path) -> None:
    markdown = "from IPython.display import Markdown\nMarkdown('# Title\\n\\nSome *notes*.')"
    frame = "import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': [3, 4]})"
    figure = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.title('squares')"

    async def scenario() -> list[CallToolResult]:
        async with over_stdio(["--url", center_url, "--token", TOKEN], tmp_path / "mcp.log") as session:
            return [await session.call_tool("run_code", {"code": code}) for code in (markdown, frame, figure)]
    shown, table, chart = run(scenario)

    assert not shown.is_error, text_of(shown)
    texts = [block.text for block in shown.content[1:] if isinstance(block, TextContent)]
    assert any("# Title\n\nSome *notes*." in text and "Markdown" in text for text in texts), texts

    assert not table.is_error, text_of(table)
    html = [block.text for block in table.content[1:] if isinstance(block, TextContent) and "HTML" in block.text]
    assert len(html) == 1 and "<table" in html[0] and "<td>3</td>" in html[0] and "<td>4</td>" in html[0], html
    assert text_of(table).count("0  1  3") == 1, "the value's text is given once, in the description"

    assert not chart.is_error, text_of(chart)
    (image,) = images_of(chart)  # the figure once: the display of it is the image of `images`
    assert base64.b64decode(image.data).startswith(PNG_SIGNATURE)
    assert '"type":"line"' in text_of(chart) and "squares" in text_of(chart), text_of(chart)


def test_http_on_a_public_address_is_refused_without_allow_remote() -> None:
    answer = subprocess.run([sys.executable, SERVER, "--url", "http://127.0.0.1:1", "--http", "0.0.0.0:0"],
                            cwd=PROJECT_DIR, capture_output=True, text=True, timeout=60)
    assert answer.returncode == 2 and "--allow-remote" in answer.stderr


# --- arguments and hosts the server must refuse (issue 33) ----------------------------------------

def test_a_session_id_or_path_the_center_could_not_take_is_a_clean_tool_error(center_url: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with over_stdio(["--url", center_url, "--token", TOKEN], tmp_path / "mcp.log") as session:
            # "/sessions/.." resolves to "/": this ran a one-shot program instead of refusing.
            ran = await session.call_tool("run_code", {"code": "print('ran')", "session_id": ".."})
            assert ran.is_error and "not a session id" in text_of(ran) and "ran" not in text_of(ran), text_of(ran)
            for tool, arguments in (("list_files", {}), ("read_file", {"path": "a.txt"}), ("end_session", {}),
                                    ("upload_file", {"path": "a.txt", "content_base64": "eA=="})):
                for session_id in ("..", "../runcode", "a/b", ""):
                    answer = await session.call_tool(tool, {"session_id": session_id, **arguments})
                    assert answer.is_error and "not a session id" in text_of(answer), (tool, text_of(answer))
            created = await session.call_tool("create_session", {})
            session_id = re.search(r"session_id: (\S+)", text_of(created)).group(1)
            for path in ("a\\b.txt", "line\nbreak.txt", 'q"uote.txt', "nul\0.txt"):  # a\b.txt arrived as ab.txt
                uploaded = await session.call_tool("upload_file", {"session_id": session_id, "path": path,
                                                                   "content_base64": "eA=="})
                assert uploaded.is_error and "not a path in the workspace" in text_of(uploaded), text_of(uploaded)
            for path in ("line\nbreak.txt", "tab\t.txt", "\u202eevil.txt"):  # the center's 400, said before asking
                read = await session.call_tool("read_file", {"session_id": session_id, "path": path})
                assert read.is_error and "not a path in the workspace" in text_of(read), text_of(read)
            listing = await session.call_tool("list_files", {"session_id": session_id})
            assert not listing.is_error and "ab.txt" not in text_of(listing) and "%0A" not in text_of(listing)
            await session.call_tool("end_session", {"session_id": session_id})
    run(scenario)


INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@pytest.mark.parametrize("host", ["127.0.0.2", "localhost"])
def test_http_on_any_loopback_address_refuses_a_foreign_host_or_origin(host: str) -> None:
    # The SDK checks Host and Origin by itself only on 127.0.0.1, localhost and ::1: a page that rebinds its
    # DNS name to 127.0.0.2 reached the tools (initialize with Host: attacker.example answered 200).
    with serving_http(["--url", "http://127.0.0.1:1", "--http", f"{host}:0"]) as url:
        assert url.startswith(f"http://{host}:")
        rebound = requests.post(url, json=INITIALIZE, headers={**MCP_HEADERS, "Host": "attacker.example"}, timeout=30)
        assert rebound.status_code == 421, rebound.text
        foreign = requests.post(url, json=INITIALIZE, headers={**MCP_HEADERS, "Origin": "http://attacker.example"},
                                timeout=30)
        assert foreign.status_code == 403, foreign.text
        own = requests.post(url, json=INITIALIZE, headers={**MCP_HEADERS, "Origin": url.removesuffix("/mcp")},
                            timeout=30)
        assert own.status_code == 200 and "serverInfo" in own.text, own.text

        async def scenario() -> set[str]:
            async with over_http(url) as session:
                return {tool.name for tool in (await session.list_tools()).tools}
        assert run(scenario) == TOOLS


def test_host_checks_name_the_bound_host_and_are_off_only_on_every_address() -> None:
    other = transport_security("127.0.0.2")
    assert other.enable_dns_rebinding_protection and other.allowed_hosts == ["127.0.0.2", "127.0.0.2:*"]
    assert "http://127.0.0.2:*" in other.allowed_origins and not any("localhost" in o for o in other.allowed_origins)
    assert set(transport_security("::1").allowed_hosts) >= {"[::1]:*", "127.0.0.1:*", "localhost:*"}
    assert transport_security("10.1.2.3").allowed_hosts == ["10.1.2.3", "10.1.2.3:*"]
    # Every address (only with --allow-remote): no name can be listed; the proxy in front must check.
    for everywhere in ("0.0.0.0", "::"):
        assert not transport_security(everywhere).enable_dns_rebinding_protection
