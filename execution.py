"""A run request from its HTTP form to the agent's job: validation, fence unwrapping, the result body."""

from __future__ import annotations

import json
import keyword
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from config import Config
from errors import BadRequest

LANGUAGES = ("python", "bash")
FENCE_LANGUAGES = {"python": "python", "py": "python", "python3": "python",
                   "bash": "bash", "sh": "bash", "shell": "bash"}
# A whole program wrapped in one Markdown fence, as LLMs like to send it: ```python ... ```
FENCE = re.compile(r"\A\s*```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\r?\n(.*?)\r?\n?[ \t]*```\s*\Z", re.DOTALL)
EMBEDDED_FENCE = re.compile(r"```[ \t]*(python3|python|py|bash|shell|sh)[ \t]*\r?\n(.*?)\r?\n?[ \t]*```",
                            re.DOTALL | re.IGNORECASE)
MAX_COMPILE_CHECK_CHARS = 64 * 1024
VARIABLE_NAME = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*\Z")  # valid in Python and as a bash variable
STATUSES = ("ok", "error", "timeout", "oom", "output_limit")
MIN_TIMEOUT_SECONDS = 0.001
MAX_VARIABLE_DEPTH = 64  # nesting of a variable's JSON value


@dataclass(frozen=True)
class RunRequest:
    """What the client asked for, validated."""

    code: str
    language: str
    variables: dict[str, Any]
    timeout: float

    def job(self, config: Config) -> dict[str, Any]:
        """The agent's job: the program plus the configured output and image limits."""
        return {
            "language": self.language, "code": self.code, "variables": self.variables,
            "timeout": self.timeout, "max_output_bytes": config.max_output_bytes,
            "max_images": config.max_images, "max_image_bytes": config.max_image_bytes,
        }


def unwrap_fence(code: str) -> tuple[str, str | None]:
    """The program inside a Markdown fence, and the fence's language (None when it names none).

    A fence around the whole text is always unwrapped. Like the original project, a fenced block
    tagged python or bash inside other text (an LLM's prose around its code) is taken out of it,
    but only when the whole text is not valid Python itself (a program may print backticks).
    """
    match = FENCE.match(code)
    if match:
        return match.group(2), FENCE_LANGUAGES.get(match.group(1).lower())
    embedded = EMBEDDED_FENCE.search(code)
    if embedded and not is_valid_python(code):
        return embedded.group(2), FENCE_LANGUAGES[embedded.group(1).lower()]
    return code, None


def is_valid_python(code: str) -> bool:
    """Whether the text compiles as Python (large texts are taken as code: no parsing of megabytes here)."""
    if len(code) > MAX_COMPILE_CHECK_CHARS:
        return True
    try:
        compile(code, "<code>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return True


def nesting_depth(value: Any) -> int:
    """How deep lists and objects nest in a JSON value (iteratively: no recursion to exhaust)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _parse_variables(raw: Any) -> dict[str, Any]:
    if raw is None or raw == "":
        return {}
    if isinstance(raw, str):  # GET requests (and some POST clients) send the object as JSON text
        try:
            raw = json.loads(raw)
        except (ValueError, RecursionError):
            raise BadRequest("variables must be a JSON object, e.g. {\"n\": 3}") from None
    if not isinstance(raw, dict):
        raise BadRequest("variables must be a JSON object, e.g. {\"n\": 3}")
    if nesting_depth(raw) > MAX_VARIABLE_DEPTH:
        raise BadRequest(f"variables are nested deeper than {MAX_VARIABLE_DEPTH} levels")
    for name in raw:
        if not VARIABLE_NAME.match(name) or keyword.iskeyword(name) or name.startswith("__"):
            raise BadRequest(f"variable name {name!r} is not allowed: use letters, digits and _, "
                             "not starting with a digit or __, and not a Python keyword")
    return raw


def _parse_timeout(raw: Any, limit: float) -> float:
    if raw is None or raw == "":
        return limit
    if isinstance(raw, str):
        try:
            raw = float(raw)
        except ValueError:
            raise BadRequest("timeout must be a number of seconds") from None
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or raw <= 0:
        raise BadRequest("timeout must be a positive number of seconds")
    if isinstance(raw, float) and not math.isfinite(raw):
        raise BadRequest("timeout must be a finite number of seconds")
    # A request may lower the configured limit, never raise it; a vanishingly small one means 1 ms.
    return max(float(min(raw, limit)), MIN_TIMEOUT_SECONDS)


def parse_run_request(fields: Any, config: Config) -> RunRequest:
    """Validate /runcode's fields (a JSON object or the query parameters); BadRequest says what is wrong."""
    if not isinstance(fields, Mapping):
        raise BadRequest("the request body must be a JSON object with a 'code' field")
    code = fields.get("code")
    if code is None:
        raise BadRequest("the 'code' field is required")
    if not isinstance(code, str):
        raise BadRequest("the 'code' field must be a string")
    code, fence_language = unwrap_fence(code)
    language = fields.get("languageType")
    if language is None or language == "":
        language = fence_language or "python"
    if not isinstance(language, str) or language.strip().lower() not in LANGUAGES:
        raise BadRequest(f"languageType must be one of {', '.join(LANGUAGES)}, not {language!r}")
    return RunRequest(
        code=code,
        language=language.strip().lower(),
        variables=_parse_variables(fields.get("variables")),
        timeout=_parse_timeout(fields.get("timeout"), config.timeout_seconds),
    )


def result_body(report: Mapping[str, Any], image_urls: dict[str, str]) -> dict[str, Any]:
    """The client's view of an agent report (SPEC: output, stderr, exit_code, status, duration_ms, images, error)."""
    status = report.get("status")
    if status not in STATUSES:
        status = "error"
    body: dict[str, Any] = {
        "output": str(report.get("stdout", "")),
        "stderr": str(report.get("stderr", "")),
        "exit_code": report.get("exit_code"),
        "status": status,
        "duration_ms": report.get("duration_ms"),
        "images": image_urls,
    }
    if status != "ok":
        body["error"] = str(report.get("error") or f"the run ended with status {status}")
    return body
