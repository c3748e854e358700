"""Markdown fences around a program, as LLMs write them: which text runs, and in which language.

Every rule takes time linear in the text's size, whatever its content: a regular expression that
backtracked over client text would hold the GIL (and so the whole center) for as long as it ran.
"""

from __future__ import annotations

import re

FENCE_LANGUAGES = {"python": "python", "py": "python", "python3": "python",
                   "bash": "bash", "sh": "bash", "shell": "bash"}
FENCE_RULE = (
    "When the whole program is wrapped in one Markdown fence (```python, ```bash, ```), the fence is removed "
    "first (also when the closing fence is missing); a program that is nothing but fenced blocks of one language "
    "runs them all, in order. A block fenced as python or bash inside other text (an LLM's prose) is taken out of "
    "it unless the whole text is valid Python: the first such block with no `languageType`, the first python "
    "block for `python`, and never for `bash` (a bash program may hold a fenced block in a heredoc); failing "
    "that, a bare ``` block is taken out the same way when no block in the text has a tag. With no "
    f"`languageType`, the fence's language ({', '.join(FENCE_LANGUAGES)}) is used."
)
# The opening line of a Markdown fence (```python), matched at one position. The quantifiers are
# possessive: `[ \t]*` runs on both sides of an optional tag would otherwise backtrack quadratically.
FENCE_OPENING = re.compile(r"```[ \t]*+([A-Za-z0-9_+-]*+)[ \t]*+\r?\n")
# An opening tagged python or bash anywhere in a text. The tag is never empty, so the two blank runs
# cannot trade characters: each start position costs at most its own blank run. ASCII: no `ſh`.
EMBEDDED_OPENING = re.compile(r"```[ \t]*+(python3|python|py|bash|shell|sh)[ \t]*+\r?\n", re.IGNORECASE | re.ASCII)
# An opening with any tag at all: where there is one, a bare ``` line may be a block's closing, not an opening.
TAGGED_OPENING = re.compile(r"```[ \t]*+[A-Za-z0-9_+-]++[ \t]*+\r?\n")
# An opening without a tag, at the start of a line (blanks before it aside): `^` tries each line once.
UNTAGGED_OPENING = re.compile(r"^[ \t]*+```[ \t]*+\r?\n", re.MULTILINE)
CLOSING = "```"
# A closing fence line, then (blank lines aside) a tagged opening: two blocks, not one holding backticks.
BLOCK_BOUNDARY = re.compile(r"^[ \t]*+```[ \t]*+\r?\n\s*+```[ \t]*+[A-Za-z0-9_+-]++[ \t]*+\r?$", re.MULTILINE)
CLOSING_LINE = re.compile(r"^[ \t]*+```[ \t]*+\r?$", re.MULTILINE)  # a line that is a closing fence and nothing else
MAX_COMPILE_CHECK_CHARS = 64 * 1024


def unwrap_fence(code: str, language: str | None = None) -> tuple[str, str | None]:
    """The program inside a Markdown fence, and the fence's language (None when it names none or none was taken).

    `language` is the request's languageType (None when absent); the rule is FENCE_RULE's. A bash
    request never has a block taken out of its text: a bash program is never valid Python, and a
    heredoc may well hold a fenced block that is data, not the program.
    """
    blocks = _consecutive_fences(code)
    if blocks is not None and (language is None or blocks[1] in (None, language)):
        return blocks
    whole = _whole_fence(code) or _unclosed_fence(code)
    if whole is not None:
        return whole
    if language == "bash":
        return code, None
    embedded = _embedded_fence(code, ("python",) if language == "python" else ("python", "bash"))
    if embedded is None:
        embedded = _untagged_fence(code)
    if embedded is not None and not is_valid_python(code):
        return embedded
    return code, None


def _whole_fence(code: str) -> tuple[str, str | None] | None:
    """The body and language of a fence that is the whole text (blank space around it aside), else None."""
    text = code.strip()  # str.strip's white space is the `\s` that a regex would use
    opening = FENCE_OPENING.match(text)
    # The closing fence is the text's last three characters, after the opening line.
    if opening is None or not text.endswith(CLOSING) or len(text) - len(CLOSING) < opening.end():
        return None
    inside = text[opening.end():len(text) - len(CLOSING)]
    if BLOCK_BOUNDARY.search(inside):
        return None  # blocks one after the other (of two languages: see _consecutive_fences)
    return _block_body(inside), FENCE_LANGUAGES.get(opening.group(1).lower())


def _consecutive_fences(code: str) -> tuple[str, str | None] | None:
    """Two or more fenced blocks of one language that are the whole text (blank space between them aside):
    their bodies joined in order, as a notebook runs its cells one after the other; else None."""
    text = code.strip()
    bodies: list[str] = []
    languages: set[str | None] = set()
    position = 0
    while position < len(text):
        opening = FENCE_OPENING.match(text, position)
        closing = CLOSING_LINE.search(text, opening.end()) if opening is not None else None
        if opening is None or closing is None:
            return None
        bodies.append(_block_body(text[opening.end():closing.start()]))
        languages.add(FENCE_LANGUAGES.get(opening.group(1).lower()))
        position = closing.end()
        while position < len(text) and text[position] in " \t\r\n":
            position += 1
    if len(bodies) < 2 or len(languages) != 1:
        return None
    return "\n".join(bodies), languages.pop()


def _unclosed_fence(code: str) -> tuple[str, str | None] | None:
    """The rest of a text that opens with a fence never closed (an answer cut short), else None: no program
    starts with ```."""
    text = code.strip()
    opening = FENCE_OPENING.match(text)
    if opening is None or CLOSING in text[opening.end():]:
        return None
    return text[opening.end():], FENCE_LANGUAGES.get(opening.group(1).lower())


def _embedded_fence(code: str, languages: tuple[str, ...]) -> tuple[str, str] | None:
    """The first block tagged with one of these languages and closed by a later ```, else None."""
    position = 0
    while (opening := EMBEDDED_OPENING.search(code, position)) is not None:
        closing = code.find(CLOSING, opening.end())
        if closing < 0:  # no ``` after this opening: none after any later one either
            return None
        language = FENCE_LANGUAGES[opening.group(1).lower()]
        if language in languages:
            return _block_body(code[opening.end():closing]), language
        position = closing + len(CLOSING)  # a block in another language is skipped whole
    return None


def _untagged_fence(code: str) -> tuple[str, None] | None:
    """The first block opened by a bare ``` line and closed by a later ```, when no block in the text has a tag."""
    if TAGGED_OPENING.search(code) is not None:
        return None  # its closing ``` line would look like a bare opening: which block is which is a guess
    opening = UNTAGGED_OPENING.search(code)
    if opening is None:
        return None
    closing = code.find(CLOSING, opening.end())
    if closing < 0:
        return None
    return _block_body(code[opening.end():closing]), None


def _block_body(inside: str) -> str:
    """A block's text without the blanks and the one line break that open the closing fence's line."""
    return inside.rstrip(" \t").removesuffix("\n").removesuffix("\r")


def is_valid_python(code: str) -> bool:
    """Whether the text compiles as Python (large texts are taken as code: no parsing of megabytes here)."""
    if len(code) > MAX_COMPILE_CHECK_CHARS:
        return True
    try:
        compile(code, "<code>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return True
