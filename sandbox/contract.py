"""What the center and the agent agree on, in one place.

The agent cannot import the center's modules, so this one small module is shared instead: the
image carries it beside the agent (/opt/sandbox/contract.py), and the center imports it as
`sandbox.contract`. The capture backend, which runs in the program's own Python, reads it too (the
working folder, the list of saved figures). Standard library only; nothing runs at import but
constants (and one pure check).
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

# The statuses of a run, in the order of precedence when several apply.
STATUSES = ("ok", "error", "timeout", "oom", "output_limit")


class WarmUpGroup(NamedTuple):
    """Part of a sandbox's warm-up: the steps worker.preload takes for it, and the programs that use it."""

    name: str
    steps: tuple[str, ...]  # modules to import, in order, or FIRST_FIGURE
    used_by: re.Pattern[str]


FIRST_FIGURE = "a first figure"  # a warm-up step: draw and encode one throw-away figure
# The warm-up in the order programs need it: a plot needs numpy, pyplot and a first figure (it loads
# the fonts, the CJK fallback too, the Agg renderer and the PNG encoder); a table needs pandas. Then
# seaborn, measured (bench/imports.py) at ~0.45 s of a seaborn chart's ~0.55 s in a warm sandbox:
# most of it scipy.stats, taken a part at a time so that no step is long. statsmodels (~1 s) and
# scikit-learn (~0.9 s) are not preloaded: rarer, and each would add as much again. A figure's rich result
# needs the chart reader (e2b_charts, ~80 ms to import), a table's IPython's formatters (~35 ms).
WARM_UP_GROUPS = (
    WarmUpGroup("numpy", ("numpy",), re.compile(r"\b(?:numpy|pandas|matplotlib|seaborn|scipy|sklearn|statsmodels)\b")),
    WarmUpGroup("matplotlib", ("matplotlib.pyplot", FIRST_FIGURE, "e2b_charts"),
                re.compile(r"\b(?:matplotlib|seaborn)\b")),
    WarmUpGroup("pandas", ("pandas", "IPython.core.formatters"), re.compile(r"\b(?:pandas|seaborn|statsmodels)\b")),
    WarmUpGroup("seaborn", ("scipy.linalg", "scipy.special", "scipy.fft", "scipy.spatial", "scipy.interpolate",
                            "scipy.optimize", "scipy.ndimage", "scipy.integrate", "scipy.stats", "seaborn"),
                re.compile(r"\b(?:seaborn|scipy|sklearn|statsmodels)\b")),
)
WARM_UP_GROUP_NAMES = tuple(group.name for group in WARM_UP_GROUPS)
# A program that mentions one of these is worth keeping a warming worker for, and makes the center
# warm sandboxes at once (every group above is built on numpy's).
PRELOADED_LIBRARIES = WARM_UP_GROUPS[0].used_by
# How long a fresh sandbox stays idle before it warms up, unless the center says otherwise (--warm-delay).
WARM_DELAY_SECONDS = 0.5
# When the center names the groups to warm first (--warm-first), how much longer the sandbox must stay
# idle before it warms the others too (--warm-rest): under load it is taken before, and spends no CPU
# on libraries recent programs did not use; between an LLM's tool calls it has all of them ready.
WARM_REST_SECONDS = 2.0

# The program's working folder: a tmpfs the center mounts, the program's home, where the agent writes
# input files and collects what the program made.
WORKSPACE = "/workspace"
# Where `pip install` puts what a program installs at run time (PIP_USER, HOME=WORKSPACE): the user site of
# the image's Python, in the workspace, so the root file system stays read-only and a session keeps it.
USER_SITE = f"{WORKSPACE}/.local/lib/python3.11/site-packages"
# Where the agent listens, inside the container: a folder the center bind-mounts from the host (/agent is
# root's only, see Dockerfile.sandbox), and the socket's name in it.
AGENT_SOCKET_DIR = "/agent/sock"
AGENT_SOCKET_NAME = "agent.sock"
# Egress (SPEC "Egress"): the agent listens on this loopback port and carries each connection to the
# center's gate, a Unix socket of this name in AGENT_SOCKET_DIR that the center binds while the run or
# session may reach the network. The program finds the port in its proxy variables, set only then.
EGRESS_PORT = 3128
EGRESS_SOCKET_NAME = "egress.sock"
EGRESS_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "NO_PROXY", "no_proxy",
                    "PIP_INDEX_URL", "PIP_TRUSTED_HOST")


def egress_environment(package_index: str = "") -> dict[str, str]:
    """The program's proxy variables (and pip's index) while it may reach the network."""
    proxy = f"http://127.0.0.1:{EGRESS_PORT}"
    local = "localhost,127.0.0.1,::1"
    variables = {"HTTP_PROXY": proxy, "HTTPS_PROXY": proxy, "http_proxy": proxy, "https_proxy": proxy,
                 "NO_PROXY": local, "no_proxy": local}
    if package_index:
        variables["PIP_INDEX_URL"] = package_index
        scheme, _, rest = package_index.partition("://")
        if scheme.lower() == "http":  # the operator's own index without TLS: pip would ignore it otherwise
            variables["PIP_TRUSTED_HOST"] = rest.split("/", 1)[0]
    return variables
# Files the program saved figures to below the top of the working folder in its last run or cell: a JSON
# list of paths relative to it, written by capture_backend in the program's own process (so as untrusted
# as the folder itself) and read by the agent, which looks at the top of the folder only otherwise.
SAVED_FIGURES = "/tmp/.saved-figures.json"

# Linux's limit on one argument or environment string of execve, its NUL included (32 pages): bash
# variables reach the program as environment strings, checked by the center and again by the agent.
MAX_ARG_STRLEN = 32 * 4096

# The program's uid (its sandbox's own) is named here: the center mounts a root-owned tmpfs at this
# folder, the agent writes passwd and group files into it, and the image's NSS reads them after
# /etc/passwd (libnss-extrausers), so whoami, ls -l and pwd.getpwuid() know the program's user.
USERS_DIR = "/var/lib/extrausers"

# Image files: the extensions the agent looks at, and the types it may report (by content).
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp"})
# Each image type and the extension a stored image of that type is served under.
IMAGE_TYPES = {"image/png": "png", "image/jpeg": "jpg", "image/gif": "gif", "image/svg+xml": "svg",
               "image/webp": "webp"}

# A job's limits when the job does not say (the center always does: config.py takes these as its defaults).
DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_MAX_OUTPUT_BYTES = 1024 * 1024
DEFAULT_MAX_IMAGES = 20
DEFAULT_MAX_IMAGE_BYTES = 10 * 1024 * 1024
# Files other than images that a run writes at the top of its working folder (one-shot runs).
DEFAULT_MAX_FILES = 20
DEFAULT_MAX_FILE_BYTES = 10 * 1024 * 1024

# The largest job (request body) the agent reads.
MAX_JOB_BYTES = 64 * 1024 * 1024

# Paths in the workspace (job "files", the session's /files routes): relative, UTF-8, at most this long.
MAX_PATH_BYTES = 4096
# PUT /files/<path>: the largest upload unless the request's UPLOAD_LIMIT_HEADER says otherwise.
DEFAULT_MAX_UPLOAD_BYTES = 100 * 1024 * 1024
UPLOAD_LIMIT_HEADER = "X-Max-Bytes"
# A run or cell asked for with this Accept header answers as it runs: one JSON event per line,
# {"type": "stdout"|"stderr", "text"} as the program writes, then {"type": "report", "report"}
# (or {"type": "error", "error"} when the agent itself failed).
STREAM_TYPE = "application/x-ndjson"
# GET /files?limit=N&cursor=C answers a page of the workspace's files, sorted by path: at most `limit`
# files (DEFAULT_LIST_LIMIT unless given, at most MAX_LISTED_FILES) and at most LIST_PAGE_BYTES of JSON
# (counted with non-ASCII text escaped, the larger of the two ways to encode it), and the opaque cursor
# of the next page ("next_cursor", null after the last page).
DEFAULT_LIST_LIMIT = 1000
MAX_LISTED_FILES = 10000
LIST_PAGE_BYTES = 1024 * 1024
# A run's or cell's `result` (the repr of its last expression) is cut to this many characters.
MAX_RESULT_CHARS = 64 * 1024
# What a rich result's bundle may hold (SPEC "Rich results"): text, PNG/JPEG as base64 (or links, in the
# center's answer), and JSON as the value itself. The worker, the agent and the center keep only these.
RICH_TEXT_TYPES = ("text/plain", "text/html", "text/markdown", "text/latex", "image/svg+xml")
RICH_IMAGE_TYPES = ("image/png", "image/jpeg")
RICH_JSON_TYPE = "application/json"
# Rich results (rich_display.py, displays.py): the worker sends each display as a line {"display": bundle}
# on the status pipe (or {"clear_output": true}); a bundle's image is at most MAX_DISPLAY_IMAGE_BYTES before
# base64, and a line longer than MAX_STATUS_LINE_BYTES is never sent (the worker keeps its text/plain and
# names what it left out in "left_out") nor kept by the agent (the program may write lines of its own).
MAX_DISPLAY_IMAGE_BYTES = 16 * 1024 * 1024
MAX_STATUS_LINE_BYTES = 24 * 1024 * 1024
# A request's "inline": true (or ?inline=1) puts the images of its rich results in as base64, not links.
# The last line of the client's `output` when output was cut at the cap (for clients that read only `output`).
# The agent reports it as `output_notice`; the center puts it in place of the output's last characters.
OUTPUT_CUT_NOTICE = "[output cut at {max_output_bytes} bytes: the program printed more]"
# A report's `error` that the worker summarised (the exception and the program's line) is cut to this many bytes.
MAX_ERROR_SUMMARY_BYTES = 1024
# A session cell past its time limit (or output cap) gets a KeyboardInterrupt; if it has not ended
# this much later, the session is killed. The center waits timeout + this + its own margin.
INTERRUPT_GRACE_SECONDS = 2.0
# The most a session's start may take in the agent: its worker starting, then taking the session once
# a warm-up under way has finished (numpy, pandas, matplotlib and seaborn take seconds on a busy host).
# The center waits this long and a little more.
SESSION_START_SECONDS = 70.0
# A session's agent ends itself (and so its container) this long after the session's lifetime, which
# the center passes it (--session-lifetime): the center ends the session at that moment by its own
# clock, and this end is for when no center is left to do it (crashed, or back under another label).
SESSION_END_GRACE_SECONDS = 5.0

# Paths in the workspace: one rule for the center (which refuses with a 400 before anything starts)
# and the agent (which must not trust the center either).
MAX_COMPONENT_BYTES = 255  # NAME_MAX
# Characters a path must not have: they would break a line, a log or a page showing it (C0 and C1
# controls, DEL, line and paragraph separators) or reorder the text around it (bidi controls).
UNSAFE_PATH_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
# A name a cell's own environment variable may have (E2B's envs), checked by the center and by the agent.
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_path(path: Any) -> str:
    """The path when it names something inside the workspace; ValueError saying what is wrong otherwise.

    Relative, UTF-8, at most MAX_PATH_BYTES, no NUL or control character, and no empty, '.' or
    '..' component: one spelling per file, none leading out.
    """
    if not isinstance(path, str) or not path:
        raise ValueError("the path must be a non-empty string")
    if "\0" in path:
        raise ValueError("the path holds a NUL character")
    try:
        size = len(path.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError("the path is not valid Unicode text (a lone surrogate)") from None
    if size > MAX_PATH_BYTES:
        raise ValueError(f"the path is over {MAX_PATH_BYTES} bytes")
    if path.startswith("/"):
        raise ValueError("the path must be relative to the workspace, not absolute")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise ValueError("the path must not have empty, '.' or '..' components")
        if len(part.encode()) > MAX_COMPONENT_BYTES:
            raise ValueError(f"a component of the path is over {MAX_COMPONENT_BYTES} bytes")
    if UNSAFE_PATH_CHARACTERS.search(path):
        raise ValueError("the path holds a control character")
    return path


def file_and_folder(paths: list[str]) -> str | None:
    """The first of `paths` that another of them needs as a folder (a and a/b); None when there is none."""
    folders = {"/".join(parts[:end]) for parts in (path.split("/") for path in paths) for end in range(1, len(parts))}
    return next((path for path in paths if path in folders), None)


def cut_result(text: str) -> str:
    """A result's text cut at MAX_RESULT_CHARS, with an ellipsis; cutting a cut text again changes nothing."""
    return text if len(text) <= MAX_RESULT_CHARS else text[:MAX_RESULT_CHARS] + "…"
