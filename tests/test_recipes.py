"""The README's recipes for LLM clients, run as written against a real center: an OpenAI-style tool-call loop,
MCP client configurations (stdio and HTTP), and the HTTP request a FastGPT or Dify node sends."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import pytest
import requests
from mcp import ClientSession, StdioServerParameters, stdio_client
from test_mcp_server import TOKEN, center_url, http_server, over_http, text_of  # noqa: F401 - fixtures

from client import Client
from server.config import PROJECT_DIR

EXAMPLES = PROJECT_DIR / "examples"
README = (PROJECT_DIR / "README.md").read_text()
PLACEHOLDER_DIR = "/opt/code-interpreter"  # where the configs say the repository is
PLACEHOLDER_URL = "http://127.0.0.1:5000"  # the center of the configs and the node


def load_example(name: str) -> ModuleType:
    """An example script imported as a module (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def example_json(name: str) -> dict[str, Any]:
    """An example file, checked to be in the README word for word (docs and tested file cannot drift)."""
    text = (EXAMPLES / name).read_text()
    assert text.strip() in README, f"README shows examples/{name} as it is"
    return json.loads(text)


# --- the Python client, as the README shows it ------------------------------------------------------

def test_the_readme_client_example_runs(live_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    start = README.index("### Python client: `client.py`")
    opening = README.index("```python\n", start) + len("```python\n")
    example = README[opening:README.index("```", opening)]
    monkeypatch.chdir(tmp_path)  # the example reads sales.csv from the folder it runs in
    (tmp_path / "sales.csv").write_text("region,sales\nnorth,3\nsouth,4\n")
    url = live_server(auth_tokens=("s3cret",))
    exec(compile(example.replace("http://127.0.0.1:5000", url), "README example", "exec"), {})  # noqa: S102
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "ok  (1, 2) {} {}"
    assert ["mean", "3.500000"] in [line.split() for line in printed], "df.describe() came back as a table"
    assert "summary.xlsx" in "\n".join(printed) and printed[-3:] == ["0", "1", "2"]
    assert (tmp_path / "sales.csv").exists() and os.getcwd() == str(tmp_path)


# --- (a) OpenAI-style function calling --------------------------------------------------------------

def test_the_tool_call_loop_runs_the_models_code(center_url: str) -> None:  # noqa: F811 - the fixture
    answer = subprocess.run([sys.executable, str(EXAMPLES / "openai_tool_call.py"), "--url", center_url,
                             "--token", TOKEN], capture_output=True, text=True, timeout=300, cwd=PROJECT_DIR)
    assert answer.returncode == 0, answer.stderr
    call, tool, final = (json.loads(line) for line in answer.stdout.splitlines()[1:])
    assert call["tool_calls"][0]["function"]["name"] == "run_code"
    assert tool["role"] == "tool" and tool["tool_call_id"] == call["tool_calls"][0]["id"]
    body = json.loads(tool["content"])
    assert body["status"] == "ok" and body["output"] == "mean=11.688\n", "the fenced code in prose ran"
    assert final == {"role": "assistant", "content": "The mean price is 11.688."}
    assert "python3 examples/openai_tool_call.py" in README


def test_the_loop_tells_the_model_about_failures_and_refusals(center_url: str) -> None:  # noqa: F811
    recipe = load_example("openai_tool_call")

    def failing_model(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> dict[str, Any]:
        if messages[-1]["role"] == "tool":
            return {"role": "assistant", "content": messages[-1]["content"]}
        return {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "run_code", "arguments": json.dumps({"code": "echo $((6 * 7)); exit 3", "language": "bash"})}}]}

    with Client(center_url, TOKEN) as center:
        failed = json.loads(recipe.chat(failing_model, center, "?")[-1]["content"])
    assert failed["status"] == "error" and failed["output"] == "42\n" and failed["exit_code"] == 3
    with Client(center_url, "wrong") as refused:
        told = json.loads(recipe.chat(failing_model, refused, "?")[-1]["content"])
    assert told["http_status"] == 401 and "token" in told["error"]


# --- (b) MCP client configurations -----------------------------------------------------------------

def test_the_stdio_config_starts_a_working_server(center_url: str, tmp_path: Path) -> None:  # noqa: F811
    entry = example_json("mcp_stdio.json")["mcpServers"]["code-interpreter"]
    # Started exactly as a desktop client does from that entry, with this checkout and center put in.
    command = entry["command"].replace(f"{PLACEHOLDER_DIR}/.venv/bin/python", sys.executable)
    args = [arg.replace(PLACEHOLDER_DIR, str(PROJECT_DIR)) for arg in entry["args"]]
    env = {**entry["env"], "CIA_URL": center_url, "CIA_TOKEN": TOKEN}

    async def scenario() -> tuple[set[str], str]:
        with (tmp_path / "mcp.log").open("a") as errlog:
            async with stdio_client(StdioServerParameters(command=command, args=args, env=env), errlog=errlog) as (
                    read, write), ClientSession(read, write, read_timeout_seconds=120) as session:
                await session.initialize()
                tools = {tool.name for tool in (await session.list_tools()).tools}
                return tools, text_of(await session.call_tool("run_code", {"code": "print(2 ** 10)"}))
    tools, text = anyio.run(scenario)
    assert "run_code" in tools and "create_session" in tools
    assert "status: ok" in text and "1024" in text


def test_the_http_config_reaches_a_working_server(http_server: str) -> None:  # noqa: F811
    entry = example_json("mcp_http.json")["mcpServers"]["code-interpreter"]
    # The config's URL with the port this test's server got (the README's command uses 8765).
    url = entry["url"].replace("http://127.0.0.1:8765", http_server.removesuffix("/mcp"))
    assert url == http_server

    async def scenario() -> str:
        async with over_http(url) as session:
            return text_of(await session.call_tool("run_code", {"code": "print('over http')"}))
    assert "over http" in anyio.run(scenario)


# --- (c) a FastGPT / Dify HTTP request node --------------------------------------------------------

LLM_REPLY = """Sure, here is the code:
```python
import pandas as pd
df = pd.DataFrame({"region": ["north", "south", "north"], "sales": [3, 4, 5]})
total = df[df.region == region].sales.sum()
print(f"total for {region} & co: {total + 0} ✓")
```
It filters by region and adds the sales."""


def test_the_http_request_node_runs_an_llm_reply(center_url: str) -> None:  # noqa: F811
    node = example_json("http_request_node.json")
    params = {key: value.replace("{{code}}", LLM_REPLY) for key, value in node["params"].items()}
    headers = {key: value.replace("s3cret", TOKEN) for key, value in node["headers"].items()}
    url = node["url"].replace(PLACEHOLDER_URL, center_url)
    # The node URL-encodes each parameter, as requests does here.
    response = requests.request(node["method"], url, params=params, headers=headers, timeout=120)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok" and body["output"] == "total for north & co: 8 ✓\n"
    assert body["images"] == {} and "error" not in body
    assert "%26" in response.request.url and "%2B" in response.request.url, "& and + went through encoded"


def test_the_node_sees_a_failure_in_the_body(center_url: str) -> None:  # noqa: F811
    node = example_json("http_request_node.json")
    params = {**node["params"], "code": "print('partial')\nraise ValueError('bad input')"}
    response = requests.get(node["url"].replace(PLACEHOLDER_URL, center_url), params=params,
                            headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "error"
    assert body["output"] == "partial\n" and "ValueError: bad input" in body["error"]
