"""A run request from its HTTP form to the agent's job: validation (Markdown fences: fences.py), the result body.

Every step takes time linear in the request's size, whatever its content: a regular expression
that backtracked over client text would hold the GIL (and so the whole center) for as long as it ran.
"""

from __future__ import annotations

import base64
import binascii
import json
import keyword
import math
import re
import reprlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from sandbox.contract import MAX_ARG_STRLEN, STATUSES, check_path, egress_environment, file_and_folder
from server.config import Config, EgressSettings
from server.egress.policy import Pattern, PatternError, outside, parse_patterns
from server.errors import BadRequest, Forbidden
from server.fences import FENCE_LANGUAGES, unwrap_fence

LANGUAGES = ("python", "bash")
VARIABLE_NAME = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*\Z")  # valid in Python and as a bash variable
INTEGER_TEXT = re.compile(r"[+-]?[0-9]+")
MIN_TIMEOUT_SECONDS = 0.001
MAX_VARIABLE_DEPTH = 64  # nesting of a variable's JSON value
# bash variables reach the program through execve's environment (sandbox/bash_runner.py). Linux refuses
# one string over MAX_ARG_STRLEN (32 pages, its NUL included) and all of argv and envp together over
# a quarter of the stack limit (2 MiB of Docker's default 8 MiB); the variables get half of that, so
# that the sandbox's own environment always fits and the agent's later check never has to refuse.
MAX_ENVIRONMENT_STRING_BYTES = MAX_ARG_STRLEN - 1  # its NUL aside
MAX_ENVIRONMENT_BYTES = 1024 * 1024
POINTER_BYTES = 8  # envp's entry for each string counts against the same limit
MAX_INPUT_FILES = 100  # files a one-shot request may bring (their bytes count against max_request_bytes)
EXCERPT = reprlib.Repr()  # the start and end of a long string, the first items of a long list
EXCERPT.maxstring = EXCERPT.maxother = 60


@dataclass(frozen=True)
class RunRequest:
    """What the client asked for, validated."""

    code: str
    language: str
    variables: dict[str, Any]
    timeout: float
    files: tuple[dict[str, str], ...] = ()
    inline: bool = False  # rich results' images as base64 rather than links
    network: tuple[Pattern, ...] = ()  # what the run may reach (SPEC "Egress"); () : nothing

    def job(self, config: Config) -> dict[str, Any]:
        """The agent's job: the program, its input files, the configured output, image and file limits, and the
        proxy variables when it may reach the network."""
        job = self.limits_job(config)
        if self.network:
            job["environment"] = egress_environment(config.egress.package_index)
        return job

    def limits_job(self, config: Config) -> dict[str, Any]:
        """The job without egress: the program, its input files and the configured output, image and file limits."""
        return {
            "language": self.language, "code": self.code, "variables": self.variables,
            "timeout": self.timeout, "files": list(self.files), "max_output_bytes": config.max_output_bytes,
            "max_images": config.max_images, "max_image_bytes": config.max_image_bytes,
            "max_files": config.max_files, "max_file_bytes": config.max_file_bytes,
        }


def excerpt(value: Any) -> str:
    """A value's repr for an error message, cut short: a 10 MB field is not echoed back (nor repr'd whole)."""
    return EXCERPT.repr(value)


def _children(container: dict | list) -> Iterator[Any]:
    return iter(container.values() if isinstance(container, dict) else container)


def nesting_depth(value: Any, limit: int | None = None) -> int:
    """How deep lists and objects nest in a JSON value; past `limit` it stops and answers limit + 1.

    Depth first with one iterator per open level: memory grows with the depth, not the element count.
    """
    if not isinstance(value, (dict, list)):
        return 0
    levels = [_children(value)]
    deepest = 1
    while levels:
        for child in levels[-1]:
            if isinstance(child, (dict, list)):
                levels.append(_children(child))
                if len(levels) > deepest:
                    deepest = len(levels)
                    if limit is not None and deepest > limit:
                        return deepest
                break  # go down; this level's iterator resumes after the child when it is done
        else:
            levels.pop()
    return deepest


def _parse_language(raw: Any) -> str | None:
    """python or bash from languageType (any case; python3, py, sh and shell too), None when absent."""
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str) or raw.strip().lower() not in FENCE_LANGUAGES:
        raise BadRequest(f"languageType must be one of {', '.join(FENCE_LANGUAGES)}, not {excerpt(raw)}")
    return FENCE_LANGUAGES[raw.strip().lower()]


def workspace_path(raw: Any, what: str = "a file path") -> str:
    """A path inside the sandbox's working folder (the agent's own rule, sandbox/contract.py); BadRequest otherwise."""
    try:
        return check_path(raw)
    except ValueError as e:
        raise BadRequest(f"{what} {excerpt(raw)} is refused: {e}") from None


def _parse_files(raw: Any) -> list[dict[str, str]]:
    """`files`: [{"path", "content_base64"}] to write into the working folder before the program starts."""
    if raw is None:
        return []
    if not isinstance(raw, list) or len(raw) > MAX_INPUT_FILES:
        raise BadRequest(f"files must be a list of at most {MAX_INPUT_FILES} {{\"path\", \"content_base64\"}} objects")
    files: dict[str, dict[str, str]] = {}  # by path: a later entry for the same path replaces an earlier one
    for item in raw:
        if not isinstance(item, Mapping) or not isinstance(item.get("content_base64"), str):
            raise BadRequest("each of files must be an object with \"path\" and \"content_base64\" strings")
        path = workspace_path(item.get("path"))
        try:
            base64.b64decode(item["content_base64"], validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(f"the content_base64 of {excerpt(path)} is not base64") from None
        files[path] = {"path": path, "content_base64": item["content_base64"]}
    if (both := file_and_folder(list(files))) is not None:
        raise BadRequest(f"files: {excerpt(both)} is given as a file and as a folder")
    return list(files.values())


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
    if nesting_depth(raw, MAX_VARIABLE_DEPTH) > MAX_VARIABLE_DEPTH:
        raise BadRequest(f"variables are nested deeper than {MAX_VARIABLE_DEPTH} levels")
    for name in raw:
        if not VARIABLE_NAME.match(name) or keyword.iskeyword(name) or name.startswith("__"):
            raise BadRequest(f"variable name {excerpt(name)} is not allowed: use letters, digits and _, "
                             "not starting with a digit or __, and not a Python keyword")
    return raw


def check_bash_environment(variables: Mapping[str, Any]) -> None:
    """Refuse bash variables that execve cannot pass as environment strings (NUL, over Linux's size limits)."""
    total = 0
    for name, value in variables.items():
        text = value if isinstance(value, str) else json.dumps(value)  # as the sandbox's agent encodes it
        if "\0" in text:
            raise BadRequest(f"bash variable {excerpt(name)} holds a NUL character, "
                             "which an environment variable cannot")
        try:
            size = len(name) + 1 + len(text.encode())
        except UnicodeEncodeError:  # a lone surrogate (JSON's "\ud800" escape) has no UTF-8 form
            raise BadRequest(f"bash variable {excerpt(name)} holds a lone UTF-16 surrogate, which an environment "
                             "variable cannot") from None
        if size > MAX_ENVIRONMENT_STRING_BYTES:
            raise BadRequest(f"bash variable {excerpt(name)} takes {size} bytes as name=value, over the limit "
                             f"of {MAX_ENVIRONMENT_STRING_BYTES} bytes for one environment variable")
        total += size + 1 + POINTER_BYTES
        if total > MAX_ENVIRONMENT_BYTES:
            raise BadRequest(f"bash variables take over {MAX_ENVIRONMENT_BYTES} bytes as environment variables "
                             f"(the limit of all of them together); the limit was passed at {excerpt(name)}")


def _parse_timeout(raw: Any, limit: float) -> float:
    if raw is None or raw == "":
        return limit
    if isinstance(raw, str):
        text = raw.strip()
        try:
            # Read as the JSON body's number would be: an integer exactly (10**400 is a large number,
            # capped below, and more than 4300 digits is refused as JSON refuses it), anything else as a
            # double (1e999 is infinite, as JSON's 1e999 is).
            raw = int(text) if INTEGER_TEXT.fullmatch(text) else float(text)
        except ValueError:
            raise BadRequest("timeout must be a number of seconds") from None
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise BadRequest("timeout must be a positive number of seconds")
    if isinstance(raw, float) and not math.isfinite(raw):  # NaN would pass every comparison below
        raise BadRequest("timeout must be a finite number of seconds")
    if raw <= 0:
        raise BadRequest("timeout must be a positive number of seconds")
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
    # `language` is a synonym (LLM tools send it); languageType wins when both are there.
    language = _parse_language(fields.get("languageType") or fields.get("language"))
    code, fence_language = unwrap_fence(code, language)
    language = language or fence_language or "python"
    variables = _parse_variables(fields.get("variables"))
    if language == "bash":
        check_bash_environment(variables)
    return RunRequest(code=code, language=language, variables=variables,
                      timeout=_parse_timeout(fields.get("timeout"), config.timeout_seconds),
                      files=tuple(_parse_files(fields.get("files"))), inline=parse_flag(fields.get("inline"), "inline"),
                      network=parse_network(fields.get("network"), config.egress))


def parse_network(raw: Any, egress: EgressSettings) -> tuple[Pattern, ...]:
    """The allow-list a request asks for ({"allow": [...]}; the config's `egress.default` when it names none),
    each entry within the operator's ceiling: BadRequest for a malformed one, Forbidden naming one beyond."""
    if raw is None:
        return egress.default_patterns
    if isinstance(raw, str):  # the GET form: JSON text
        try:
            raw = json.loads(raw)
        except ValueError:
            raise BadRequest("'network' must be a JSON object such as {\"allow\": [\"pypi.org\"]}") from None
    if not isinstance(raw, Mapping) or set(raw) != {"allow"} or not isinstance(raw["allow"], list):
        raise BadRequest("'network' must be an object with one field, 'allow': a list of hosts, *.domains, "
                         "addresses or CIDR blocks")
    try:
        patterns = parse_patterns(raw["allow"])
    except PatternError as e:
        raise BadRequest(f"network: {e}") from None
    beyond = outside(patterns, egress.ceiling)
    if beyond is not None:
        raise Forbidden(f"network entry {beyond.text!r} is not within what this center allows (egress.allow)")
    return patterns


FLAG_WORDS = {"1": True, "true": True, "0": False, "false": False}


def parse_flag(raw: Any, name: str) -> bool:
    """A yes/no field: JSON true/false, or in a query string 1/0/true/false; absent is no."""
    if raw is None or isinstance(raw, bool):
        return bool(raw)
    if isinstance(raw, str) and raw.lower() in FLAG_WORDS:
        return FLAG_WORDS[raw.lower()]
    raise BadRequest(f"'{name}' must be true or false")


MAX_SKIPPED = 100  # entries of `skipped` passed on; the agent lists at most 50 and counts the rest


def skipped_entries(report: Mapping[str, Any]) -> list[dict[str, str]]:
    """The report's `skipped` list as the client gets it: well-formed {"name", "reason"} entries only."""
    entries = report.get("skipped")
    if not isinstance(entries, list):
        return []
    return [{"name": entry["name"][:300], "reason": entry["reason"][:300]} for entry in entries[:MAX_SKIPPED]
            if isinstance(entry, dict) and isinstance(entry.get("name"), str) and isinstance(entry.get("reason"), str)]


# When the report does not say (an agent without `output_notice`): the same line, without the number.
GENERIC_CUT_NOTICE = "[output cut at the output limit: the program printed more]"
MAX_NOTICE_CHARS = 200


def with_cut_notice(output: str, notice: Any) -> str:
    """The output of a run cut at the cap, ending with the line that says so (for clients that read only `output`).

    The line takes the place of the output's last characters, so `output` is no longer than the agent
    made it (and its JSON at most one byte larger): the answer stays within the cap's bound.
    """
    line = notice[:MAX_NOTICE_CHARS] if isinstance(notice, str) and notice.strip() else GENERIC_CUT_NOTICE
    if len(output) <= len(line):
        return output + ("\n" if output and not output.endswith("\n") else "") + line
    kept = output[:len(output) - len(line)]
    return (kept if kept.endswith("\n") else kept[:-1] + "\n") + line


def result_body(report: Mapping[str, Any], image_urls: dict[str, str],
                file_urls: dict[str, str] | None = None) -> dict[str, Any]:
    """The client's view of an agent report (SPEC: output, stderr, exit_code, status, duration_ms, images,
    skipped, error)."""
    status = report.get("status")
    if status not in STATUSES:
        status = "error"
    output = str(report.get("stdout", ""))
    if status == "output_limit":
        output = with_cut_notice(output, report.get("output_notice"))
    body: dict[str, Any] = {
        "output": output,
        "stderr": str(report.get("stderr", "")),
        "exit_code": report.get("exit_code"),
        "status": status,
        "duration_ms": report.get("duration_ms"),
        "result": report["result"] if isinstance(report.get("result"), str) else None,
        "images": image_urls,
        "files": file_urls or {},
        "skipped": skipped_entries(report),
        "results": [],  # the rich results, filled in where their images are stored (api/answers.py)
    }
    if isinstance(report.get("network"), list):
        body["network"] = report["network"]  # made by this center's egress gate: present when it could connect
    if status != "ok":
        body["error"] = str(report.get("error") or f"the run ended with status {status}")
    return body
