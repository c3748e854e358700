"""Recipe: an agent's code tool written for E2B's cloud (as OpenAI Agents SDK and LangChain examples build it),
run against this server unchanged: only the three E2B_* variables point elsewhere.

    export E2B_API_URL=http://127.0.0.1:5000/e2b E2B_SANDBOX_URL=http://127.0.0.1:5000/e2b/sandbox
    export E2B_API_KEY=s3cret   # one of the center's auth_tokens
    python3 examples/e2b_sdk_tool.py

One sandbox per conversation; each of the model's tool calls runs its code with `run_code`, and the tool
answers the model with the output, the error and what was displayed. The "model" here is two scripted
tool calls; with a real one, `CodeTool.definition` is the function schema to give it and `CodeTool.call`
what to run for each of its calls. tests/test_e2b.py runs this file.
"""

from __future__ import annotations

import json
from typing import Any

from e2b_code_interpreter import Sandbox


class CodeTool:
    """`execute_python` for a model: a persistent E2B sandbox (a session of the center) per conversation."""

    definition: dict[str, Any] = {
        "type": "function",
        "function": {
            "name": "execute_python",
            "description": "Run Python in a Jupyter-like sandbox that keeps its state between calls; "
                           "returns stdout, stderr, the error if any, and what the code displayed.",
            "parameters": {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]},
        },
    }

    def __init__(self) -> None:
        self.sandbox = Sandbox.create(timeout=600)

    def call(self, code: str) -> str:
        """One tool call: the code's outcome, as the text the model reads."""
        execution = self.sandbox.run_code(code)
        answer: dict[str, Any] = {"stdout": "".join(execution.logs.stdout), "stderr": "".join(execution.logs.stderr)}
        if execution.error is not None:
            answer["error"] = f"{execution.error.name}: {execution.error.value}"
        answer["results"] = [
            {"text": result.text, **({"image": "png"} if result.png else {}),
             **({"chart": result.chart.type.value} if result.chart else {})} for result in execution.results]
        return json.dumps(answer, ensure_ascii=False)

    def close(self) -> None:
        """The conversation is over: its sandbox goes."""
        self.sandbox.kill()


def main() -> list[str]:
    """Two tool calls of a scripted conversation; the tool's answers, printed and returned."""
    tool = CodeTool()
    try:
        answers = [
            tool.call("import pandas as pd\nsales = pd.DataFrame({'month': ['Jan', 'Feb'], 'units': [3, 5]})\n"
                      "print(sales.units.sum())"),
            tool.call("import matplotlib.pyplot as plt\nplt.bar(sales.month, sales.units)\nplt.show()"),
        ]
    finally:
        tool.close()
    for answer in answers:
        print(answer)
    return answers


if __name__ == "__main__":
    main()
