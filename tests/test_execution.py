"""Pure-logic tests of server/fences.py and server/run_requests.py: fences, /runcode fields, the result body."""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest

from server.config import Config
from server.errors import BadRequest
from server.fences import (
    BLOCK_BOUNDARY,
    FENCE_LANGUAGES,
    FENCE_OPENING,
    _consecutive_fences,
    _unclosed_fence,
    is_valid_python,
    unwrap_fence,
)
from server.run_requests import STATUSES, nesting_depth, parse_run_request, result_body

CONFIG = replace(Config(), timeout_seconds=30.0)


def bad_request(fields: Any, config: Config = CONFIG) -> BadRequest:
    """parse_run_request must refuse these fields with a 400 and a one-sentence message; return the error."""
    with pytest.raises(BadRequest) as excinfo:
        parse_run_request(fields, config)
    error = excinfo.value
    assert error.status == 400
    assert error.message.strip()
    assert "\n" not in error.message
    assert str(error) == error.message
    return error


# --- fences --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("code", "body", "language"), [
    ("```python\nprint(1)\n```", "print(1)", "python"),
    ("```bash\necho hi\n```", "echo hi", "bash"),
    ("```\nprint(1)\n```", "print(1)", None),
    ("```py\nprint(1)\n```", "print(1)", "python"),
    ("```python3\nprint(1)\n```", "print(1)", "python"),
    ("```sh\nls -l\n```", "ls -l", "bash"),
    ("```Python\r\nprint(1)\r\n```", "print(1)", "python"),
    ("\n  ```python\nprint(1)\n```\n\n", "print(1)", "python"),
    ("```python\nfor i in range(2):\n    print(i)\n```", "for i in range(2):\n    print(i)", "python"),
    ("```python\ns = '``'\nprint(s)\n```", "s = '``'\nprint(s)", "python"),
    ("```javascript\nconsole.log(1)\n```", "console.log(1)", None),
    ("```python\nx = 3\n```\n```python\nprint(x)\n```", "x = 3\nprint(x)", "python"),
    ("```python\nx = 3\n```\n\n```py\nprint(x)\n```\n", "x = 3\nprint(x)", "python"),
    ("```python\nimport math\nprint(math.pi)", "import math\nprint(math.pi)", "python"),
], ids=["python", "bash", "bare", "py", "python3", "sh", "crlf-any-case", "surrounding-blank", "indent", "backticks",
        "unknown-lang", "two-blocks", "two-blocks-blank-line", "never-closed"])
def test_fence_is_unwrapped(code: str, body: str, language: str | None) -> None:
    assert unwrap_fence(code) == (body, language)


@pytest.mark.parametrize("code", [
    "print(1)",
    "print('```')",
    "```python print(1)```",
    'md = """\n```python\nprint(2)\n```\n"""\nprint(md)',
    "",
])
def test_code_that_is_not_one_fenced_block_is_left_alone(code: str) -> None:
    assert unwrap_fence(code) == (code, None)


@pytest.mark.parametrize(("code", "body", "language"), [
    ("Here is the code:\n```python\nprint(2)\n```\nIt prints 2.", "print(2)", "python"),
    ("Sure! Run this:\n\n```bash\nls -la\n```", "ls -la", "bash"),
    ("print(1)\n```python\nprint(2)\n```", "print(2)", "python"),
    ("```python\nprint(1)\n```\nprint(2)", "print(1)", "python"),
], ids=["prose-python", "prose-bash", "code-then-fence", "fence-then-code"])
def test_tagged_block_inside_text_that_is_not_python_is_taken_out(code: str, body: str, language: str) -> None:
    assert unwrap_fence(code) == (body, language)


def test_consecutive_blocks_of_two_languages_are_not_joined() -> None:
    code = "```bash\npip install x\n```\n```python\nprint(2)\n```"
    assert unwrap_fence(code) == ("pip install x", "bash")  # the first block, as with prose between them
    assert unwrap_fence(code, "python") == ("print(2)", "python")


def test_fenced_bash_runs_as_bash_when_language_is_absent() -> None:
    run = parse_run_request({"code": "```bash\necho hi\n```"}, CONFIG)
    assert (run.code, run.language) == ("echo hi", "bash")


def test_explicit_language_wins_over_the_fence() -> None:
    run = parse_run_request({"code": "```bash\nprint(1)\n```", "languageType": "python"}, CONFIG)
    assert (run.code, run.language) == ("print(1)", "python")


def test_fenced_python_is_unwrapped_in_a_request() -> None:
    run = parse_run_request({"code": "```python\nprint('Hello, World!')\n```"}, CONFIG)
    assert (run.code, run.language) == ("print('Hello, World!')", "python")


HEREDOC = "cat <<'EOF'\nExample:\n```python\nprint('python ran')\n```\nEOF\necho \"bash ran: $((6 * 7))\"\n"


@pytest.mark.parametrize("language", ["bash", "Bash", " BASH "])
def test_bash_request_keeps_a_heredoc_that_holds_a_fenced_block(language: str) -> None:
    run = parse_run_request({"code": HEREDOC, "languageType": language}, CONFIG)
    assert (run.code, run.language) == (HEREDOC, "bash")


@pytest.mark.parametrize("code", [
    "Run this:\n```bash\necho hi\n```",
    "Run this:\n```python\nprint(1)\n```",
    "echo start\n```sh\necho inner\n```\necho end",
], ids=["prose-bash", "prose-python", "bash-around-sh-block"])
def test_bash_request_never_has_a_block_taken_out_of_its_text(code: str) -> None:
    assert unwrap_fence(code, "bash") == (code, None)
    assert parse_run_request({"code": code, "languageType": "bash"}, CONFIG).code == code


def test_bash_request_still_has_a_whole_fence_unwrapped() -> None:
    assert unwrap_fence("```bash\necho hi\n```", "bash") == ("echo hi", "bash")
    assert unwrap_fence("```python\necho hi\n```", "bash") == ("echo hi", "python")
    assert parse_run_request({"code": "```\necho hi\n```", "languageType": "bash"}, CONFIG).code == "echo hi"


def test_python_request_takes_the_first_python_block_past_bash_ones() -> None:
    code = "Install it:\n```bash\npip install x\n```\nthen run:\n```python\nprint(2)\n```\nDone."
    assert unwrap_fence(code, "python") == ("print(2)", "python")
    assert unwrap_fence(code) == ("pip install x", "bash")  # no language: the first block, as before
    run = parse_run_request({"code": code, "languageType": "python"}, CONFIG)
    assert (run.code, run.language) == ("print(2)", "python")


def test_python_request_skips_a_bash_block_whole() -> None:
    # The ```python line inside the bash block closes that block; it does not open a python one.
    code = "Setup:\n```bash\ncat <<EOF\n```python\nprint(1)\n```\nEOF\n```\ntext"
    assert unwrap_fence(code, "python") == (code, None)


def test_python_request_with_only_a_bash_block_keeps_its_text() -> None:
    code = "Run this:\n```bash\necho hi\n```"
    assert unwrap_fence(code, "python") == (code, None)
    run = parse_run_request({"code": code, "languageType": "python"}, CONFIG)
    assert (run.code, run.language) == (code, "python")


@pytest.mark.parametrize("tag", ["\u017fh", "ba\u017fh", "\u017fhell"], ids=["sh", "bash", "shell"])
def test_only_ascii_tags_name_a_language(tag: str) -> None:
    # `ſ` matches `s` case-insensitively in a Unicode regex; the lookup of the tag then failed (a 500).
    code = f"Here:\n```{tag}\necho hi\n```\nbye"
    assert unwrap_fence(code) == (code, None)
    assert parse_run_request({"code": code}, CONFIG).language == "python"


# The expressions unwrap_fence used before it was made linear: on short texts they define its result.
REFERENCE_FENCE = re.compile(r"\A\s*```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\r?\n(.*?)\r?\n?[ \t]*```\s*\Z", re.DOTALL)
REFERENCE_EMBEDDED = re.compile(r"```[ \t]*(python3|python|py|bash|shell|sh)[ \t]*\r?\n(.*?)\r?\n?[ \t]*```",
                                re.DOTALL | re.IGNORECASE)
# Untagged blocks (added since): the first bare ``` line opens one, in a text where no opening has a tag.
REFERENCE_ANY_TAG = re.compile(r"```[ \t]*[A-Za-z0-9_+-]+[ \t]*\r?\n")
REFERENCE_UNTAGGED = re.compile(r"^[ \t]*```[ \t]*\r?\n(.*?)\r?\n?[ \t]*```", re.DOTALL | re.MULTILINE)
PIECES = ["```", "```", "`", "``", "```python\n", "```bash \r\n", "``` py\n", "```sh\n", "```js\n", " ", "\t", "\n",
          "\r", "\r\n", "python", "sh", "x", "print(1)", "\xa0", "\x1c", "\u2028", "\x85", "\f", "\v", "'",
          "\n```\n", "``` \n"]


def reference_unwrap(code: str) -> tuple[str, str | None]:
    """unwrap_fence as it was, for a request without languageType."""
    match = REFERENCE_FENCE.match(code)
    if match:
        return match.group(2), FENCE_LANGUAGES.get(match.group(1).lower())
    embedded = REFERENCE_EMBEDDED.search(code)
    if embedded and not is_valid_python(code):
        return embedded.group(2), FENCE_LANGUAGES[embedded.group(1).lower()]
    untagged = None if embedded or REFERENCE_ANY_TAG.search(code) else REFERENCE_UNTAGGED.search(code)
    if untagged and not is_valid_python(code):
        return untagged.group(1), None
    return code, None


def decided_by_a_rule_added_since(code: str) -> bool:
    """Texts that rules added after the reference decide (tested on their own above): fenced blocks one after
    the other, a fence never closed."""
    text = code.strip()
    opening = FENCE_OPENING.match(text)
    whole = opening is not None and text.endswith("```") and len(text) - 3 >= opening.end()
    inside = text[opening.end():len(text) - 3] if whole else ""
    return (_consecutive_fences(code) is not None or _unclosed_fence(code) is not None
            or BLOCK_BOUNDARY.search(inside) is not None)


def test_unwrapping_agrees_with_the_original_expressions() -> None:
    rng = random.Random(20240611)
    texts = ["".join(rng.choice(PIECES) for _ in range(rng.randint(0, 12))) for _ in range(30000)]
    unwrapped = untagged = 0
    for code in texts:
        if decided_by_a_rule_added_since(code):
            continue
        expected = reference_unwrap(code)
        assert unwrap_fence(code) == expected, repr(code)
        assert unwrap_fence(code, "python") == expected or expected[1] == "bash", repr(code)
        unwrapped += expected != (code, None)
        untagged += expected[0] != code and expected[1] is None and not REFERENCE_FENCE.match(code)
    assert unwrapped > 5000  # the texts do exercise both kinds of fence, not only the untouched case
    assert untagged > 300  # and blocks without a tag inside other text


@pytest.mark.parametrize(("code", "body"), [
    ("Here is the code:\n```\nprint(1)\n```\nIt prints 1.", "print(1)"),
    ("Sure.\r\n\r\n```\r\nimport math\r\nprint(math.pi)\r\n```\r\n", "import math\r\nprint(math.pi)"),
    ("Try this:\n  ```  \nx = 2\nprint(x * 21)\n  ```\nDone.", "x = 2\nprint(x * 21)"),
    ("Two blocks:\n```\nprint('first')\n```\nand\n```\nprint('second')\n```", "print('first')"),
], ids=["prose", "crlf", "indented", "first-of-two"])
def test_untagged_block_inside_prose_is_taken_out(code: str, body: str) -> None:
    assert unwrap_fence(code) == (body, None)
    assert unwrap_fence(code, "python") == (body, None)
    run = parse_run_request({"code": code}, CONFIG)
    assert (run.code, run.language) == (body, "python")


@pytest.mark.parametrize("code", [
    'print("""Here:\n```\nprint(2)\n```\n""")',  # valid Python as a whole: it runs as it is
    "Here:\n```json\n{}\n```\nthen\n```\nprint(1)\n```",  # a tagged block: a bare ``` may be its closing
    "Inline ```\nprint(1)\n``` is not a fence line",  # the bare ``` does not start its line
    "Unclosed:\n```\nprint(1)\n",
])
def test_untagged_block_is_left_alone_where_it_is_not_clearly_the_program(code: str) -> None:
    assert unwrap_fence(code) == (code, None)


def test_untagged_block_loses_to_a_tagged_one_and_never_unwraps_for_bash() -> None:
    code = "Prose:\n```python\nprint('tagged')\n```\nmore prose"
    assert unwrap_fence(code) == ("print('tagged')", "python")
    prose = "Run this:\n```\necho hi\n```\nthanks"
    assert unwrap_fence(prose, "bash") == (prose, None)
    assert parse_run_request({"code": prose, "languageType": "bash"}, CONFIG).code == prose


# --- languageType --------------------------------------------------------------------------------

@pytest.mark.parametrize(("given", "expected"), [
    ("python", "python"), ("PYTHON", "python"), ("Python", "python"),
    ("bash", "bash"), ("Bash", "bash"), ("BASH", "bash"), (" python ", "python"),
])
def test_language_in_any_case(given: str, expected: str) -> None:
    assert parse_run_request({"code": "x", "languageType": given}, CONFIG).language == expected


@pytest.mark.parametrize("fields", [{"code": "print(1)"}, {"code": "print(1)", "languageType": ""},
                                    {"code": "print(1)", "languageType": None}])
def test_language_defaults_to_python(fields: dict[str, Any]) -> None:
    assert parse_run_request(fields, CONFIG).language == "python"


@pytest.mark.parametrize("language", ["ruby", "javascript", "pyth", "python2", 5, ["python"], {"name": "python"}])
def test_unknown_language_is_a_bad_request(language: Any) -> None:
    error = bad_request({"code": "print(1)", "languageType": language})
    assert "languageType" in error.message


# --- code ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("fields", [
    {}, {"languageType": "python"}, {"code": None}, {"code": 5}, {"code": ["print(1)"]},
    {"code": {"src": "print(1)"}}, {"code": b"print(1)"}, {"code": True},
], ids=["empty", "no-code", "null", "int", "list", "object", "bytes", "bool"])
def test_code_missing_or_not_a_string_is_a_bad_request(fields: dict[str, Any]) -> None:
    assert "code" in bad_request(fields).message


@pytest.mark.parametrize("fields", [None, [], ["print(1)"], "print(1)", 3])
def test_body_that_is_not_an_object_is_a_bad_request(fields: Any) -> None:
    bad_request(fields)


def test_code_is_kept_verbatim() -> None:
    code = "import sys\n\nprint('a\\tb', file=sys.stderr)  # ünïcode\n"
    assert parse_run_request({"code": code}, CONFIG).code == code


# --- variables -----------------------------------------------------------------------------------

def test_variables_as_an_object() -> None:
    variables = {"n": 3, "s": "hi", "xs": [1, 2], "d": {"k": None}, "_private": True, "Name2": 1.5}
    assert parse_run_request({"code": "x", "variables": variables}, CONFIG).variables == variables


def test_variables_as_json_text() -> None:
    run = parse_run_request({"code": "x", "variables": '{"n": 3, "s": "hi", "xs": [1, 2]}'}, CONFIG)
    assert run.variables == {"n": 3, "s": "hi", "xs": [1, 2]}


@pytest.mark.parametrize("fields", [{"code": "x"}, {"code": "x", "variables": ""}, {"code": "x", "variables": None},
                                    {"code": "x", "variables": {}}, {"code": "x", "variables": "{}"}],
                         ids=["absent", "empty-string", "null", "empty-object", "empty-json"])
def test_no_variables_give_an_empty_object(fields: dict[str, Any]) -> None:
    assert parse_run_request(fields, CONFIG).variables == {}


@pytest.mark.parametrize("variables", ["[1]", "3", '"text"', "null", "true", [1], 3, "x", True],
                         ids=["json-list", "json-number", "json-string", "json-null", "json-bool", "list", "int",
                              "bare-word", "bool"])
def test_variables_not_an_object_is_a_bad_request(variables: Any) -> None:
    assert "variables" in bad_request({"code": "x", "variables": variables}).message


@pytest.mark.parametrize("variables", ["{bad json", "{'n': 3}", '{"n": }', "{"])
def test_variables_invalid_json_is_a_bad_request(variables: str) -> None:
    assert "variables" in bad_request({"code": "x", "variables": variables}).message


@pytest.mark.parametrize("name", ["1a", "a-b", "class", "__x", "with space", "", "None", "a.b", "x\n", "é"])
def test_bad_variable_name_is_a_bad_request(name: str) -> None:
    error = bad_request({"code": "x", "variables": {name: 1}})
    assert repr(name) in error.message


def test_bad_variable_name_in_json_text_is_a_bad_request() -> None:
    bad_request({"code": "x", "variables": '{"ok": 1, "not-ok": 2}'})


# --- timeout -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("timeout", "expected"), [
    (5, 5.0), (2.5, 2.5), (30, 30.0), (31, 30.0), (1000, 30.0), (1e300, 30.0),
    ("2.5", 2.5), ("5", 5.0), (" 7 ", 7.0), ("100", 30.0), (0.001, 0.001),
])
def test_timeout_may_only_lower_the_limit(timeout: Any, expected: float) -> None:
    assert parse_run_request({"code": "x", "timeout": timeout}, CONFIG).timeout == expected


@pytest.mark.parametrize("fields", [{"code": "x"}, {"code": "x", "timeout": None}, {"code": "x", "timeout": ""}],
                         ids=["absent", "null", "empty-string"])
def test_timeout_absent_is_the_configured_limit(fields: dict[str, Any]) -> None:
    assert parse_run_request(fields, CONFIG).timeout == 30.0
    assert parse_run_request(fields, replace(CONFIG, timeout_seconds=4.0)).timeout == 4.0


def test_timeout_is_clamped_to_a_lower_configured_limit() -> None:
    assert parse_run_request({"code": "x", "timeout": 10}, replace(CONFIG, timeout_seconds=4.0)).timeout == 4.0


@pytest.mark.parametrize("timeout", [0, -1, -0.5, "0", "-1", "abc", True, False, math.nan, math.inf, -math.inf,
                                     "nan", "inf", "1e999", [5], {"s": 5}, "5s"],
                         ids=lambda value: repr(value))
def test_bad_timeout_is_a_bad_request(timeout: Any) -> None:
    assert "timeout" in bad_request({"code": "x", "timeout": timeout}).message


def test_huge_integer_timeout_is_clamped() -> None:
    assert parse_run_request({"code": "x", "timeout": 10**400}, CONFIG).timeout == 30.0


@pytest.mark.parametrize("timeout", [
    math.nan, -math.nan, math.inf, -math.inf, float("1e999"),
    "nan", "NaN", "-nan", " nan ", "inf", "+inf", "-inf", "Infinity", "-Infinity", "INFINITY", "1e400", "-1e999",
    Decimal("NaN"), Decimal("Infinity"), Decimal("5"), "1" * 5000, "-" + "9" * 400,
], ids=lambda value: repr(value)[:24])
def test_nan_infinite_and_odd_timeouts_are_a_bad_request(timeout: Any) -> None:
    assert "timeout" in bad_request({"code": "x", "timeout": timeout}).message


@pytest.mark.parametrize("text", ["1" + "0" * 400, " +1" + "0" * 4000 + " ", "999999999999999999999999"],
                         ids=["400-digits", "4000-digits", "24-digits"])
def test_huge_integer_timeout_as_text_is_clamped_like_the_json_integer(text: str) -> None:
    # A JSON integer is exact whatever its size; the same digits in a query string are the same number.
    assert parse_run_request({"code": "x", "timeout": text}, CONFIG).timeout == 30.0


def test_finite_timeout_message_for_nan() -> None:
    assert "finite" in bad_request({"code": "x", "timeout": "nan"}).message


# --- the GET form and the agent's job ------------------------------------------------------------

def test_get_form_fields_are_all_strings() -> None:
    fields = {"languageType": "Bash", "variables": '{"name": "world"}', "code": "echo hello $name", "timeout": "5"}
    run = parse_run_request(fields, CONFIG)
    assert (run.language, run.code, run.variables, run.timeout) == ("bash", "echo hello $name", {"name": "world"}, 5.0)


def test_job_carries_the_request_and_the_configured_limits() -> None:
    config = replace(CONFIG, max_output_bytes=4096, max_images=3, max_image_bytes=2048, max_files=4,
                     max_file_bytes=1024)
    job = parse_run_request({"code": "print(n)", "variables": {"n": 1}, "timeout": 3}, config).job(config)
    assert job == {"language": "python", "code": "print(n)", "variables": {"n": 1}, "timeout": 3.0, "files": [],
                   "max_output_bytes": 4096, "max_images": 3, "max_image_bytes": 2048, "max_files": 4,
                   "max_file_bytes": 1024}


@pytest.mark.parametrize("name", ["python3", "py", "PY", " Python3 "])
def test_python_synonyms_are_python(name: str) -> None:
    assert parse_run_request({"code": "print(1)", "languageType": name}, CONFIG).language == "python"


@pytest.mark.parametrize("name", ["sh", "shell", "Bash"])
def test_bash_synonyms_are_bash(name: str) -> None:
    assert parse_run_request({"code": "echo 1", "language": name}, CONFIG).language == "bash"


def test_language_is_a_synonym_and_language_type_wins() -> None:
    assert parse_run_request({"code": "x", "language": "bash", "languageType": "python"}, CONFIG).language == "python"


def test_input_files_are_checked_and_carried_in_the_job() -> None:
    fields = {"code": "x", "files": [{"path": "data/in.csv", "content_base64": "YSxiCg=="}]}
    job = parse_run_request(fields, CONFIG).job(CONFIG)
    assert job["files"] == [{"path": "data/in.csv", "content_base64": "YSxiCg=="}]


@pytest.mark.parametrize("files, word", [
    ("data.csv", "list"),
    ([{"path": "a"}], "content_base64"),
    ([{"path": "/etc/passwd", "content_base64": ""}], "absolute"),
    ([{"path": "../x", "content_base64": ""}], "'..'"),
    ([{"path": "a/../../x", "content_base64": ""}], "'..'"),
    ([{"path": "a\0b", "content_base64": ""}], "NUL"),
    ([{"path": "a//b", "content_base64": ""}], "empty"),
    ([{"path": "", "content_base64": ""}], "non-empty"),
    ([{"path": "x" * 300, "content_base64": ""}], "over 255 bytes"),
    ([{"path": "a\x1bb", "content_base64": ""}], "control character"),
    ([{"path": "a", "content_base64": "not base64!"}], "base64"),
    ([{"path": f"f{n}", "content_base64": ""} for n in range(101)], "at most"),
    ([{"path": "a", "content_base64": ""}, {"path": "a/b", "content_base64": ""}], "as a file and as a folder"),
    ([{"path": "d/e/f", "content_base64": ""}, {"path": "d/e", "content_base64": ""}], "as a file and as a folder"),
])
def test_bad_input_files_are_a_bad_request(files: object, word: str) -> None:
    with pytest.raises(BadRequest, match=word):
        parse_run_request({"code": "x", "files": files}, CONFIG)


# --- result body ---------------------------------------------------------------------------------

def report(**overrides: Any) -> dict[str, Any]:
    """An agent report as sandbox/agent.py sends it."""
    base: dict[str, Any] = {"stdout": "Hello, World!\n", "stderr": "", "exit_code": 0, "status": "ok",
                            "duration_ms": 41.7, "images": []}
    base.update(overrides)
    return base


def test_ok_result_has_the_spec_fields_and_no_error() -> None:
    body = result_body(report(), {})
    assert body == {"output": "Hello, World!\n", "stderr": "", "exit_code": 0, "status": "ok",
                    "duration_ms": 41.7, "result": None, "images": {}, "files": {}, "skipped": [], "results": []}


def test_skipped_entries_pass_through_and_malformed_ones_do_not() -> None:
    entries = [{"name": "bad\\xff.png", "reason": "the name is not UTF-8"}, {"name": 3, "reason": "x"}, "junk",
               {"name": "n" * 1000, "reason": "too long a name"}]
    skipped = result_body(report(skipped=entries), {})["skipped"]
    assert skipped[0] == entries[0] and len(skipped) == 2 and len(skipped[1]["name"]) == 300
    assert result_body(report(skipped="not a list"), {})["skipped"] == []


def test_ok_result_drops_a_stray_error() -> None:
    assert "error" not in result_body(report(error="ignored"), {})


@pytest.mark.parametrize("status", STATUSES)
def test_error_is_present_exactly_when_status_is_not_ok(status: str) -> None:
    body = result_body(report(status=status), {})
    assert body["status"] == status
    assert ("error" in body) == (status != "ok")
    if status != "ok":
        assert isinstance(body["error"], str) and body["error"].strip()


def test_spec_statuses_are_the_five_known_ones() -> None:
    assert set(STATUSES) == {"ok", "error", "timeout", "oom", "output_limit"}


def test_error_message_of_the_report_is_passed_through() -> None:
    traceback = "Traceback (most recent call last):\nZeroDivisionError: division by zero"
    body = result_body(report(status="error", exit_code=1, error=traceback, stderr=traceback), {})
    assert body["error"] == traceback
    assert body["exit_code"] == 1
    assert body["stderr"] == traceback


@pytest.mark.parametrize("status", ["crashed", "OK", "", None, 3])
def test_unknown_status_is_reported_as_error(status: Any) -> None:
    body = result_body(report(status=status), {})
    assert body["status"] == "error"
    assert body["error"].strip()


def test_missing_status_is_reported_as_error() -> None:
    incomplete = report()
    del incomplete["status"]
    body = result_body(incomplete, {})
    assert body["status"] == "error"
    assert body["error"].strip()


def test_images_are_passed_through() -> None:
    urls = {"figure_1.png": "http://127.0.0.1:5000/image/abc.png", "plot.svg": "http://127.0.0.1:5000/image/d.svg"}
    body = result_body(report(images=[{"name": "figure_1.png"}]), urls)
    assert body["images"] == urls


def test_output_cut_at_the_cap_ends_with_a_notice_in_place_of_its_last_characters() -> None:
    notice = "[output cut at 4096 bytes: the program printed more]"
    body = result_body(report(status="output_limit", stdout="y" * 4096, output_notice=notice, error="cut"), {})
    assert body["output"] == "y" * (4096 - len(notice) - 1) + "\n" + notice
    assert len(json.dumps(body["output"])) <= len(json.dumps("y" * 4096)) + 1
    lines = "line\n" * 1000
    body = result_body(report(status="output_limit", stdout=lines, output_notice=notice), {})
    assert body["output"].startswith("line\n" * 900) and body["output"].endswith("\n" + notice)
    assert len(body["output"]) == len(lines)
    short = result_body(report(status="output_limit", stdout="ab", output_notice=notice), {})["output"]
    assert short == "ab\n" + notice
    assert result_body(report(status="output_limit", stdout=""), {})["output"] == (
        "[output cut at the output limit: the program printed more]")
    assert result_body(report(status="error", stdout="y" * 100, output_notice=notice), {})["output"] == "y" * 100


def test_timeout_result_keeps_partial_output() -> None:
    body = result_body(report(status="timeout", stdout="partial\n", exit_code=None, error="time limit of 2 s"), {})
    assert (body["status"], body["output"], body["error"]) == ("timeout", "partial\n", "time limit of 2 s")


def test_vanishingly_small_timeout_is_one_millisecond() -> None:
    assert parse_run_request({"code": "x", "timeout": 1e-10}, Config()).timeout == 0.001


def test_reasonable_nesting_is_accepted() -> None:
    variables = {"a": [[[[{"b": [1, 2]}]]]], "c": {"d": {"e": None}}}
    assert parse_run_request({"code": "x", "variables": variables}, Config()).variables == variables


@pytest.mark.parametrize(("value", "depth"), [
    (1, 0), ("s", 0), ([], 1), ({}, 1), ([1, [2, [3]]], 3), ({"a": [1, {"b": []}], "c": 2}, 4), ([[], [[[]]], []], 4),
])
def test_nesting_depth(value: Any, depth: int) -> None:
    assert nesting_depth(value) == depth


def test_nesting_depth_stops_past_the_limit() -> None:
    deep: object = 1
    for _ in range(1000):
        deep = [deep]
    assert nesting_depth(deep) == 1000
    assert nesting_depth(deep, 64) == 65


def test_deeply_nested_variables_are_400() -> None:
    deep: object = 1
    for _ in range(100):
        deep = [deep]
    with pytest.raises(BadRequest, match="nested deeper"):
        parse_run_request({"code": "x", "variables": {"v": deep}}, Config())
    with pytest.raises(BadRequest):
        parse_run_request({"code": "x", "variables": "[" * 100000}, Config())
