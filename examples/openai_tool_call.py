"""Recipe: the code interpreter as an OpenAI-style function tool, in a chat loop that runs the model's tool calls.

    python3 examples/openai_tool_call.py --url http://127.0.0.1:5000 --token s3cret
    python3 examples/openai_tool_call.py --url ... --token ... --openai gpt-4o-mini  # a real model (pip install openai)

Without --openai the model is a scripted stand-in (`FakeModel`) that answers as a real one would: first
a tool call with code, then an answer built from the tool's output. The loop, the tool definition and
the tool messages are exactly what a real chat-completions model gets; tests/test_recipes.py runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # client.py lives at the repository's root

from client import Client, ClientError  # noqa: E402 - after the path line above

Message = dict[str, Any]
Model = Callable[[list[Message], list[dict[str, Any]]], Message]

RUN_CODE_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "run_code",
        "description": (
            "Run a Python or bash program in a fresh, network-less sandbox and return its stdout ('output'), "
            "stderr, status, the value of its last expression ('result') and links to images it made "
            "(matplotlib figures are captured automatically). numpy, pandas, scipy, matplotlib, seaborn, "
            "scikit-learn, sympy, pillow, statsmodels and openpyxl are installed."),
        "parameters": {
            "type": "object",
            "properties": {
                "code": {"type": "string", "description": "The complete program. Print what you want to see."},
                "language": {"type": "string", "enum": ["python", "bash"], "default": "python"},
                "variables": {"type": "object", "description": "Optional inputs: Python globals or bash "
                                                               "environment variables, keyed by identifiers."},
            },
            "required": ["code"],
        },
    },
}


def run_tool_call(center: Client, call: dict[str, Any]) -> Message:
    """Run one of the model's tool calls; the tool message holds the center's whole result body as JSON."""
    try:
        arguments = json.loads(call["function"]["arguments"])
        result = center.run(arguments["code"], language=arguments.get("language", "python"),
                            variables=arguments.get("variables"))
        content = json.dumps(result.raw, ensure_ascii=False)
    except (ValueError, KeyError, TypeError) as e:  # the model wrote arguments that are not the schema's
        content = json.dumps({"error": f"bad arguments for run_code: {e}"})
    except ClientError as e:  # the center refused or is down: the model is told, the loop goes on
        content = json.dumps({"error": e.error, "http_status": e.status})
    return {"role": "tool", "tool_call_id": call["id"], "content": content}


def chat(model: Model, center: Client, question: str, max_turns: int = 5) -> list[Message]:
    """The function-calling loop: ask, run every tool call the model makes, hand back the results, repeat."""
    messages: list[Message] = [
        {"role": "system", "content": "You answer with the help of run_code. Compute, do not guess."},
        {"role": "user", "content": question},
    ]
    for _ in range(max_turns):
        reply = model(messages, [RUN_CODE_TOOL])
        messages.append(reply)
        if not reply.get("tool_calls"):
            return messages
        for call in reply["tool_calls"]:
            messages.append(run_tool_call(center, call))
    raise RuntimeError(f"the model was still calling tools after {max_turns} turns")


class FakeModel:
    """A scripted chat model: it calls run_code once, then answers from the tool's output (no network)."""

    CODE = ("Let me compute that.\n```python\nimport statistics\nprices = [12.5, 9.0, 14.25, 11.0]\n"
            "print(f\"mean={statistics.mean(prices):.3f}\")\n```")

    def __call__(self, messages: list[Message], tools: list[dict[str, Any]]) -> Message:
        """One completion: a tool call when no tool has answered yet, else the final answer."""
        assert any(tool["function"]["name"] == "run_code" for tool in tools), "run_code is offered"
        answers = [message for message in messages if message["role"] == "tool"]
        if not answers:
            # LLMs often wrap code in prose and a fence: the center unwraps it.
            return {"role": "assistant", "content": None, "tool_calls": [{
                "id": "call_1", "type": "function",
                "function": {"name": "run_code", "arguments": json.dumps({"code": self.CODE})}}]}
        body = json.loads(answers[-1]["content"])
        if body.get("status") != "ok":
            return {"role": "assistant", "content": f"The code failed: {body.get('error')}"}
        return {"role": "assistant", "content": f"The mean price is {body['output'].strip().removeprefix('mean=')}."}


def openai_model(name: str) -> Model:
    """A real chat-completions model through the `openai` package (needs OPENAI_API_KEY and the network)."""
    from openai import OpenAI  # not a dependency of this project: only this path needs it

    api = OpenAI()

    def complete(messages: list[Message], tools: list[dict[str, Any]]) -> Message:
        reply = api.chat.completions.create(model=name, messages=messages, tools=tools)
        return reply.choices[0].message.model_dump(exclude_none=True)
    return complete


def main(argv: list[str] | None = None) -> int:
    """Ask one question through the loop and print the conversation."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("CIA_URL", "http://127.0.0.1:5000"))
    parser.add_argument("--token", default=os.environ.get("CIA_TOKEN"))
    parser.add_argument("--openai", metavar="MODEL", help="use this OpenAI model instead of the scripted one")
    parser.add_argument("--question", default="What is the mean of the prices 12.5, 9.0, 14.25 and 11.0?")
    args = parser.parse_args(argv)
    model = openai_model(args.openai) if args.openai else FakeModel()
    with Client(args.url, args.token) as center:
        messages = chat(model, center, args.question)
    for message in messages[1:]:
        print(json.dumps(message, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
