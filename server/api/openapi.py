"""The OpenAPI 3.1 document of the HTTP API, built from the rules the server applies (run_requests.py, fences.py)."""

from __future__ import annotations

import keyword
from typing import Any

from sandbox.contract import IMAGE_TYPES, UNSAFE_PATH_CHARACTERS
from server.fences import FENCE_LANGUAGES, FENCE_RULE
from server.run_requests import (
    MAX_ENVIRONMENT_BYTES,
    MAX_ENVIRONMENT_STRING_BYTES,
    MAX_INPUT_FILES,
    MAX_VARIABLE_DEPTH,
    STATUSES,
)

OPENAPI_VERSION = "3.1.0"
API_VERSION = "1.0.0"


# contract.check_path's rule: relative, no empty, '.' or '..' part, no control character (lengths aside).
WORKSPACE_PATH_PATTERN = (r"^(?!/)(?!(?:.*/)?\.\.?(?:/|$))(?!.*//)(?!.*/$)[^"
                          + UNSAFE_PATH_CHARACTERS.pattern.strip("[]") + "]+$")
BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _any_case(word: str) -> str:
    return "".join(f"[{c.upper()}{c.lower()}]" for c in word)


def language_pattern() -> str:
    """The languageType values the server accepts, in any case (ECMA-262 and Python `re` alike)."""
    return "^(?:" + "|".join(_any_case(language) for language in FENCE_LANGUAGES) + ")$"


def variable_name_pattern() -> str:
    """A variable name: an identifier, not starting with `__`, not a Python keyword (run_requests.py's rule)."""
    keywords = "|".join(sorted(keyword.kwlist))
    # (?![^\n]*\n): no newline anywhere, since `$` also matches before a final newline in Python.
    return rf"^(?!__)(?!(?:{keywords})$)(?![^\n]*\n)[A-Za-z_][A-Za-z0-9_]*$"


def _error_response(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": _ref("schemas", "Error")}},
    }
    if headers:
        response["headers"] = headers
    return response


def _schemas(egress_open: bool | None = None) -> dict[str, Any]:
    """The components' schemas; `egress_open` False: this server has no egress, so `network.allow` must be empty."""
    variables = {
        "type": "object",
        "description": (
            "Inputs of the program. Python: each key becomes a global holding the JSON value "
            "(`{\"s\": \"hi\"}` makes `s == \"hi\"`). Bash: environment variables; values that are not "
            "strings arrive JSON-encoded, and each must fit an environment: no NUL, `name=value` at most "
            f"{MAX_ENVIRONMENT_STRING_BYTES} bytes, all of them together at most {MAX_ENVIRONMENT_BYTES} bytes "
            "(else a 400). Keys must be identifiers (`[A-Za-z_][A-Za-z0-9_]*`) that are not "
            f"Python keywords and do not start with `__`; any other key is a 400. Values nest at most "
            f"{MAX_VARIABLE_DEPTH} levels; NaN and Infinity are not JSON and are a 400."
        ),
        "propertyNames": {"pattern": variable_name_pattern()},
        "additionalProperties": True,
        "examples": [{"m": 7, "n": 4}],
    }
    status_names = ", ".join(f"`{s}`" for s in STATUSES)
    return {
        "RunRequest": {
            "type": "object",
            "description": "What to run. Fields other than these are ignored.",
            "required": ["code"],
            "properties": {
                "code": {
                    "type": "string",
                    "description": (
                        f"The program. {FENCE_RULE}"
                    ),
                    "examples": ["print('Hello, World!')"],
                },
                "languageType": {
                    "type": "string",
                    "pattern": language_pattern(),
                    "default": "python",
                    "description": (
                        f"`python` or `bash` ({', '.join(FENCE_LANGUAGES)} are accepted), in any case. "
                        "`language` is a synonym. Omitted, null or empty: the fence's language, "
                        "else `python`. Surrounding white space is ignored. Any other value is a 400."
                    ),
                    "examples": ["python", "bash"],
                },
                "variables": {
                    **_ref("schemas", "Variables"),
                    "description": (
                        "A JSON object (default `{}`). The server also accepts the same object as JSON text, "
                        "and null or an empty string for none."
                    ),
                },
                "language": {"type": "string", "pattern": language_pattern(),
                             "description": "A synonym of `languageType`, which wins when both are given."},
                "files": {
                    "type": "array",
                    "maxItems": MAX_INPUT_FILES,
                    "description": (
                        "Files written into the working folder before the program starts. Paths are relative "
                        "(subfolders are made); absolute paths, `..` and NUL are a 400."
                    ),
                    "items": {
                        "type": "object", "required": ["path", "content_base64"],
                        "properties": {
                            "path": {"type": "string", "pattern": WORKSPACE_PATH_PATTERN},
                            "content_base64": {"type": "string", "contentEncoding": "base64",
                                               "pattern": BASE64_PATTERN},
                        },
                    },
                    "examples": [[{"path": "data.csv", "content_base64": "YSxiCjEsMgo="}]],
                },
                "network": _ref("schemas", "Network"),
                "inline": {
                    "type": "boolean", "default": False,
                    "description": (
                        "PNG and JPEG images of `results` as base64 in the bundle rather than links (also "
                        "`?inline=1` in the query string). `images` stays links either way."
                    ),
                },
                "timeout": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "description": (
                        "Wall-clock limit in seconds (default: the server's `timeout_seconds`). It can only "
                        "lower that limit: a larger value is capped to it. The server also accepts the number "
                        "as text. Zero, a negative, infinite or non-numeric value is a 400."
                    ),
                    "examples": [5],
                },
            },
            "additionalProperties": True,
        },
        "Variables": variables,
        "StreamEvent": {
            "type": "object", "required": ["type"],
            "description": (
                "One event of a streamed run (`Accept: application/x-ndjson`: one JSON object per line; "
                "`Accept: text/event-stream`: `event: <type>` and `data: <this JSON>`). `stdout`/`stderr` "
                "carry `text` as the program writes it; `display` a rich result (a `RichResult`: `data`, "
                "`is_main_result`, `chart`) as the program makes it; `image`/`file` a `name` and its `url`; "
                "`keepalive` "
                "comes when the program is silent (at least every 10 s); `error` (`status`, `error`) when "
                "the service failed after the run started; `result` comes last and holds the whole result "
                "body, the same as the plain JSON answer."
            ),
            "properties": {
                "type": {"enum": ["stdout", "stderr", "display", "image", "file", "keepalive", "error", "result"]},
                "text": {"type": "string"}, "name": {"type": "string"}, "url": {"type": "string"},
                "data": {"type": "object"}, "is_main_result": {"type": "boolean"}, "chart": {"type": "object"},
                "status": {}, "error": {"type": "string"},
            },
        },
        "RunResult": {
            "type": "object",
            "description": (
                "The outcome of one run. HTTP 200 whatever the program's own outcome, "
                "except a timeout, which is a 504 with this same body."
            ),
            "required": ["output", "stderr", "exit_code", "status", "duration_ms", "result", "images", "files",
                         "skipped", "results"],
            "properties": {
                "output": {"type": "string", "description": "stdout, decoded as UTF-8 (invalid bytes become U+FFFD)."},
                "stderr": {"type": "string", "description": "stderr, decoded the same way."},
                "exit_code": {
                    "type": ["integer", "null"],
                    "description": "The program's exit status; 128+N when signal N killed it (137: SIGKILL).",
                },
                "status": {
                    "type": "string",
                    "enum": list(STATUSES),
                    "description": (
                        f"One of {status_names}: `error` is a non-zero exit, an uncaught exception or a kill "
                        "by a signal; `oom` the memory limit; `output_limit` stdout and stderr together cut at the cap."
                    ),
                },
                "duration_ms": {
                    "type": ["number", "null"],
                    "description": "Wall-clock time of the program inside the sandbox, in milliseconds.",
                },
                "result": {
                    "type": ["string", "null"],
                    "description": (
                        "The text repr of the value of the program's last expression, as a notebook shows it "
                        "(`df.head()` shows the table); null when the last statement is not an expression or "
                        "its value is None."
                    ),
                },
                "images": {
                    "type": "object",
                    "description": "Each image the program made, by its name, to an absolute URL; `{}` when none.",
                    "additionalProperties": {"type": "string", "format": "uri"},
                },
                "files": {
                    "type": "object",
                    "description": (
                        "Each file other than an image that the program wrote in its working folder (one-shot "
                        "runs; in a subfolder, named by its path such as out/report.csv), to an absolute URL "
                        "under /file/ (a download); `{}` when none."
                    ),
                    "additionalProperties": {"type": "string", "format": "uri"},
                },
                "skipped": {
                    "type": "array",
                    "description": (
                        "Each image file that was left out, and why: over `max_images` or `max_image_bytes`, "
                        "not the image its name says (images are recognised by content), not a regular file, "
                        "unreadable, or a name that is not safe text. `[]` when none."
                    ),
                    "items": {
                        "type": "object", "required": ["name", "reason"],
                        "properties": {"name": {"type": "string"}, "reason": {"type": "string"}},
                    },
                },
                "error": {
                    "type": "string",
                    "description": (
                        "Present exactly when `status` is not `ok`: the end of the traceback (at most 4 KiB) "
                        "or a one-line reason."
                    ),
                },
                "image_error": {
                    "type": "string",
                    "description": "Present only when images were made but could not be stored (database down).",
                },
                "network": {
                    "type": "array", "maxItems": 101,
                    "description": (
                        "Present when the run could reach the network: each connection through the egress "
                        "proxy, in order (at most 100, then one entry saying how many more)."
                    ),
                    "items": {
                        "type": "object",
                        "required": ["host", "port", "allowed", "reason", "bytes_out", "bytes_in"],
                        "properties": {"host": {"type": "string"}, "port": {"type": "integer"},
                                       "allowed": {"type": "boolean"}, "reason": {"type": "string"},
                                       "bytes_out": {"type": "integer"}, "bytes_in": {"type": "integer"}},
                    },
                },
                "results": {
                    "type": "array",
                    "description": (
                        "What the program displayed, as Jupyter's MIME bundles, in the order made: each "
                        "`display(obj)`, each figure shown, and the last expression (`is_main_result`). `[]` when none."
                    ),
                    "items": _ref("schemas", "RichResult"),
                },
            },
            "if": {"properties": {"status": {"const": "ok"}}},
            "then": {"not": {"required": ["error"]}},
            "else": {"required": ["error"]},
            "examples": [{
                "output": "Hello, World!\n", "stderr": "", "exit_code": 0, "status": "ok", "duration_ms": 41.7,
                "result": None,
                "images": {"figure_1.png": "http://127.0.0.1:5000/image/vM95ff3xsUYywcRYdyG5Rh8nrFytsREE.png"},
                "files": {}, "skipped": [], "results": [],
            }],
        },
        "RichResult": {
            "type": "object", "required": ["data", "is_main_result"],
            "description": (
                "One display as a notebook shows it. `data` always has `text/plain`; the others are there "
                "where the object offers them (a DataFrame: `text/html`). PNG and JPEG are absolute URLs of "
                "stored images (the same URL as in `images` for the same figure), or base64 with `inline`. "
                "`application/json` is the JSON value itself. A matplotlib figure's bundle has `chart`: the "
                "data behind it, in the shape E2B's code interpreter gives."
            ),
            "properties": {
                "data": {
                    "type": "object", "required": ["text/plain"],
                    "properties": {
                        **{mime: {"type": "string"} for mime in ("text/plain", "text/html", "text/markdown",
                                                                "text/latex", "image/svg+xml", "image/png",
                                                                "image/jpeg")},
                        "application/json": {},
                    },
                    "additionalProperties": False,
                },
                "is_main_result": {"type": "boolean", "description": "The value of the last expression."},
                "chart": {
                    "type": "object",
                    "properties": {
                        "type": {"enum": ["line", "bar", "scatter", "pie", "box_and_whisker", "superchart",
                                          "unknown"]},
                        "title": {"type": ["string", "null"]}, "elements": {"type": "array"},
                    },
                },
                "display_id": {"type": "string", "description": "Given by `display(..., display_id=...)`."},
            },
        },
        "Error": {
            "type": "object",
            "description": "Every error: what is wrong, in one sentence. Never a traceback.",
            "required": ["error"],
            "properties": {"error": {"type": "string", "minLength": 1}},
            "additionalProperties": False,
            "examples": [{"error": "the 'code' field is required"}],
        },
        "Health": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"const": "ok"}},
        },
        "Readiness": {
            "type": "object",
            "required": ["ready", "database", "pool"],
            "properties": {
                "ready": {"type": "boolean", "description": "The database answers and at least one sandbox is ready."},
                "database": {
                    "type": "string",
                    "description": "`ok`, or `unavailable (<kind of error>)`.",
                    "examples": ["ok"],
                },
                "pool": {
                    "type": "object",
                    "description": "The sandbox pool: slots and their states, and counters since the start.",
                    "required": ["slots", "ready", "busy", "starting"],
                    "properties": {
                        "slots": {"type": "integer", "minimum": 0, "description": "One per port of the range."},
                        "ready": {"type": "integer", "minimum": 0, "description": "Sandboxes waiting for a program."},
                        "busy": {"type": "integer", "minimum": 0, "description": "Sandboxes running a program."},
                        "starting": {"type": "integer", "minimum": 0, "description": "Sandboxes being started."},
                        "started_total": {"type": "integer", "minimum": 0},
                        "failed_total": {"type": "integer", "minimum": 0},
                        "dead_total": {"type": "integer", "minimum": 0},
                    },
                    "additionalProperties": {"type": "integer"},
                },
            },
        },
    }


def _header(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """A response header that is always sent (a string unless the schema says more)."""
    return {"description": description, "required": True, "schema": schema or {"type": "string"}}


def _headers() -> dict[str, Any]:
    return {
        "WWW-Authenticate": _header("The scheme to use: `Bearer realm=\"code-interpreter\"`.",
                                    {"type": "string", "pattern": "^Bearer"}),
        "Retry-After": _header("Seconds to wait before trying again: `queue_wait_seconds`, rounded, at least 1 "
                               "(5 while the Docker engine cannot be reached).",
                               {"type": "string", "pattern": "^[0-9]+$"}),
        "Allow": _header("The methods the route allows."),
        "ETag": _header("The SHA-256 of the bytes, quoted."),
        "Cache-Control": _header("Stored images never change: `public, max-age=31536000, immutable`."),
        "X-Content-Type-Options": _header("Browsers must not guess another type.", {"const": "nosniff"}),
        "Content-Disposition": _header("`attachment`, with the program's own file name (RFC 6266)."),
        "Content-Security-Policy": _header("An SVG opened directly cannot run script: "
                                           "`default-src 'none'; style-src 'unsafe-inline'; sandbox`."),
    }


def _responses() -> dict[str, Any]:
    return {
        "BadRequest": _error_response(
            "The body is not JSON or not an object, `code` is missing or not a string, `variables` is not an "
            "object, has a bad key, nests too deep, holds NaN or Infinity or (bash) does not fit an environment, "
            "`languageType` is unknown, `timeout` is bad, or the text holds a lone UTF-16 surrogate."
        ),
        "Unauthorized": _error_response(
            "The bearer token is missing or not accepted (only when the server has `auth_tokens`).",
            {"WWW-Authenticate": _ref("headers", "WWW-Authenticate")},
        ),
        "NotFound": _error_response("No such route, or no image of that name (unknown or malformed)."),
        "MethodNotAllowed": _error_response(
            "The route does not allow this method.", {"Allow": _ref("headers", "Allow")}
        ),
        "PayloadTooLarge": _error_response("The request body is over the server's `max_request_bytes`."),
        "ServiceUnavailable": _error_response(
            "No sandbox became free within the server's `queue_wait_seconds`.",
            {"Retry-After": _ref("headers", "Retry-After")},
        ),
        "BadGateway": _error_response("The sandbox failed while running the program; the message names the failure."),
        "InternalError": _error_response(
            "The center failed (or the image database is unavailable when an image is read)."
        ),
        "Conflict": _error_response("A cell is already running in this session.",
                                    {"Retry-After": _ref("headers", "Retry-After")}),
        "Gone": _error_response("The session has ended (deleted, idle past its timeout, past its lifetime, or dead): "
                                "the message says why."),
        "InsufficientStorage": _error_response("The session's working folder is full."),
        "Timeout": {
            "description": (
                "The run passed its wall-clock limit and every process of the program was killed: the result, "
                "with `status: timeout` and whatever output came before the kill."
            ),
            "content": {"application/json": {"schema": {
                "allOf": [_ref("schemas", "RunResult"), {"properties": {"status": {"const": "timeout"}}}],
            }}},
        },
    }


STREAMED = {
    "application/x-ndjson": {"schema": {"type": "string", "description": "StreamEvent objects, one per line."}},
    "text/event-stream": {"schema": {"type": "string", "description": "StreamEvent objects as Server-Sent Events."}},
}


def network_schema(egress_open: bool | None) -> dict[str, Any]:
    """`network`: an allow-list, as a one-shot run, a new session and PUT /sessions/<id>/network take it."""
    return {
        "type": "object", "required": ["allow"], "additionalProperties": False,
        "description": (
            "What the program may reach through the center's egress proxy (see the docs' Egress page): hosts, "
            "`*.domain`, `host:port`, IP addresses or CIDR blocks, `*` (any public host); ports 80 and 443 "
            "unless one is named. Each entry must lie within the operator's `egress.allow`, else a 403 naming "
            "it; a malformed one is a 400. Absent on a run or a new session: the operator's `egress.default` "
            "(none unless configured). `{\"allow\": []}` closes it."
        ),
        "properties": {"allow": {"type": "array", "maxItems": 0} if egress_open is False else {
            "type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 300}}},
        "examples": [{"allow": ["pypi.org", "*.pythonhosted.org"]}],
    }


def _run_responses(*, with_body: bool, egress_open: bool | None = False) -> dict[str, Any]:
    finished = [s for s in STATUSES if s != "timeout"]
    responses: dict[str, Any] = {
        "200": {
            "description": ("The program ran (whatever its own outcome, timeout aside). Asked for with "
                            "`Accept: application/x-ndjson` or `text/event-stream` (POST only), the answer is "
                            "200 at once and streams StreamEvent objects as the program runs, the result last "
                            "(a timeout included)."),
            "content": {"application/json": {"schema": {
                "allOf": [_ref("schemas", "RunResult"), {"properties": {"status": {"enum": finished}}}],
            }}, **STREAMED},
        },
        "400": _ref("responses", "BadRequest"),
        "401": _ref("responses", "Unauthorized"),
    }
    if egress_open is not False:
        responses["403"] = _error_response("An entry of `network.allow` is not within the server's `egress.allow`; "
                                           "the error names it.")
    if with_body:
        responses["413"] = _ref("responses", "PayloadTooLarge")
    responses.update({
        "500": _ref("responses", "InternalError"),
        "502": _ref("responses", "BadGateway"),
        "503": _ref("responses", "ServiceUnavailable"),
        "504": _ref("responses", "Timeout"),
    })
    return responses


INLINE_PARAMETER = {"name": "inline", "in": "query", "required": False,
                    "schema": {"type": "string", "enum": ["1", "0", "true", "false"]},
                    "description": "`1`: the images of `results` as base64 rather than links (as `\"inline\": true`)."}


def _run_paths(security: list[dict[str, list[str]]], egress_open: bool | None) -> dict[str, Any]:
    schemas = _schemas(egress_open)["RunRequest"]["properties"]
    query = [
        {"name": "code", "in": "query", "required": True, "schema": {"type": "string"},
         "description": schemas["code"]["description"], "example": "print('Hello, World!')"},
        {"name": "languageType", "in": "query", "required": False,
         "schema": {k: v for k, v in schemas["languageType"].items() if k != "examples"},
         "description": schemas["languageType"]["description"], "example": "python"},
        {"name": "language", "in": "query", "required": False,
         "schema": {"type": "string", "pattern": schemas["language"]["pattern"]},
         "description": schemas["language"]["description"]},
        {"name": "variables", "in": "query", "required": False,
         "description": "The variables object as JSON text, e.g. `{\"m\": 7, \"n\": 4}` (URL-encoded).",
         "content": {"application/json": {"schema": _ref("schemas", "Variables")}}},
        {"name": "timeout", "in": "query", "required": False,
         "schema": {"type": "number", "exclusiveMinimum": 0},
         "description": schemas["timeout"]["description"], "example": 5},
        {"name": "network", "in": "query", "required": False,
         "description": "The network object as JSON text, e.g. `{\"allow\": [\"pypi.org\"]}` (URL-encoded).",
         "content": {"application/json": {"schema": {k: v for k, v in schemas["network"].items() if k != "examples"}}}},
        INLINE_PARAMETER,
    ]
    examples = {
        "hello": {"summary": "Hello, World!", "value": {"code": "print('Hello, World!')"}},
        "plot": {"summary": "A matplotlib figure (captured without savefig)", "value": {
            "code": "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.title('squares')"}},
        "bash": {"summary": "Bash with variables", "value": {
            "languageType": "bash", "code": "echo \"$GREETING, $NAME: $((COUNT * 2))\"",
            "variables": {"GREETING": "Hello", "NAME": "World", "COUNT": 21}}},
        "python variables": {"summary": "Python with variables", "value": {
            "code": "print(m * n)", "variables": {"m": 7, "n": 4}, "timeout": 5}},
    }
    return {
        "post": {
            "tags": ["run"],
            "operationId": "runCode",
            "summary": "Run a Python or bash program in a fresh sandbox",
            "description": (
                "Runs the program in its own new container (no network, unprivileged user, limits on memory, "
                "CPU, processes, time, output and disk) and answers with its output, status and images. "
                "The body is read as JSON whatever its `Content-Type`."
            ),
            "security": security,
            "parameters": [INLINE_PARAMETER],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("schemas", "RunRequest"), "examples": examples}},
            },
            "responses": _run_responses(with_body=True, egress_open=egress_open),
        },
        "get": {
            "tags": ["run"],
            "operationId": "runCodeGet",
            "summary": "Run a program given as query parameters (the FastGPT-style GET)",
            "description": "The same fields as `POST /runcode`, as URL-encoded query parameters.",
            "security": security,
            "parameters": query,
            "responses": _run_responses(with_body=False, egress_open=egress_open),
        },
        "head": {
            "tags": ["run"],
            "operationId": "runCodeHead",
            "summary": "Not allowed: a HEAD never runs a program",
            "responses": {"405": _ref("responses", "MethodNotAllowed")},
        },
    }


def _stored_path(kind: str) -> dict[str, Any]:
    """GET and HEAD of a stored output: kind "image" (served with its type) or "file" (a download)."""
    binary = {"type": "string", "format": "binary"}
    names = ["ETag", "Cache-Control", "X-Content-Type-Options", "Content-Security-Policy"]
    if kind == "file":
        names.append("Content-Disposition")
    content = {mime: {"schema": binary} for mime in IMAGE_TYPES} if kind == "image" else {"*/*": {"schema": binary}}
    responses = {
        "200": {
            "description": ("The stored bytes, with their real type. No token is needed." if kind == "image" else
                            "The stored bytes, as a download under the program's own file name. No token is needed."),
            "headers": {name: _ref("headers", name) for name in names},
            "content": content,
        },
        "304": {
            "description": f"`If-None-Match` matches the {kind}'s ETag: not modified.",
            "headers": {"ETag": _ref("headers", "ETag")},
        },
        "404": _ref("responses", "NotFound"),
        "500": _ref("responses", "InternalError"),
    }
    example = "vM95ff3xsUYywcRYdyG5Rh8nrFytsREE." + ("png" if kind == "image" else "csv")
    parameters = [
        {"name": "filename", "in": "path", "required": True,
         "description": f"The stored name from a result's `{kind}s`: 32 URL-safe characters and the extension. "
                        "Any other name is a 404.",
         "schema": {"type": "string"}, "example": example},
        {"name": "If-None-Match", "in": "header", "required": False,
         "description": "An ETag from an earlier answer: 304 when it still matches.", "schema": {"type": "string"}},
    ]
    operation = {"tags": [f"{kind}s"], "parameters": parameters, "responses": responses}
    title, article = kind.capitalize(), "An" if kind == "image" else "A"
    return {
        "get": {**operation, "operationId": f"get{title}", "summary": f"{article} {kind} a run produced"},
        "head": {**operation, "operationId": f"head{title}", "summary": f"The headers of {article.lower()} {kind}, "
                                                                         "without its bytes"},
    }


def _session_schemas(egress_open: bool | None) -> dict[str, Any]:
    timestamp = {"type": "string", "format": "date-time"}
    return {
        "Network": network_schema(egress_open),
        "CellRequest": {
            "description": "A cell: a run request without `network` (a cell reaches what its session may).",
            "allOf": [_ref("schemas", "RunRequest"), {"not": {"required": ["network"]}}],
        },
        "Session": {
            "type": "object",
            "description": "A session: one sandbox kept alive for its owner's cells.",
            "required": ["session_id", "status", "created_at", "last_active_at", "expires_at", "idle_timeout"],
            "properties": {
                "session_id": {"type": "string", "description": "Unguessable; only the creating token sees it."},
                "status": {"type": "string", "enum": ["idle", "busy", "dead"],
                           "description": "`busy` while a cell runs."},
                "created_at": timestamp, "last_active_at": timestamp,
                "expires_at": {**timestamp, "description": "When it ends unless used: the idle timeout after its "
                                                           "last use, or the end of its maximum lifetime."},
                "idle_timeout": {"type": "number", "description": "Seconds of idleness that end it."},
                "execution_count": {"type": "integer", "description": "Cells run so far."},
                "network": {**_ref("schemas", "Network"),
                            "description": "What its cells may reach (within today's `egress.allow`)."},
                "kind": {"type": "string", "enum": ["session", "e2b"],
                         "description": "`e2b`: a sandbox made through E2B's API (`/e2b`)."},
            },
        },
        "SessionList": {
            "type": "object", "required": ["sessions"],
            "properties": {"sessions": {"type": "array", "items": _ref("schemas", "Session")}},
        },
        "SessionCreate": {
            "type": ["object", "null"],
            "properties": {
                "idle_timeout": {
                    "type": "number", "exclusiveMinimum": 0,
                    "description": "Seconds of idleness that end the session; can only lower the server's "
                                   "`session_idle_timeout_seconds`."},
                "network": _ref("schemas", "Network"),
            },
        },
        "CellResult": {
            "allOf": [_ref("schemas", "RunResult"), {
                "type": "object", "required": ["execution_count"],
                "properties": {
                    "execution_count": {"type": "integer", "description": "This cell's number in the session."},
                },
            }],
        },
        "FileList": {
            "type": "object", "required": ["files"],
            "properties": {"files": {"type": "array", "items": {
                "type": "object", "required": ["path", "size", "modified"],
                "properties": {"path": {"type": "string"}, "size": {"type": "integer"},
                               "modified": {"type": "number", "description": "Unix time."}}}},
                           "next_cursor": {"type": ["string", "null"], "description": "Where the next page "
                                           "starts: pass it as `cursor`; null on the last page."},
                           "truncated": {"type": "boolean", "description": "More files than a listing holds."},
                           "left_out": {"type": "integer", "description": "Files and folders whose names no "
                                        "request could name (not UTF-8, or with a control character): not "
                                        "listed."}},
        },
        "Uploaded": {
            "type": "object", "required": ["files"],
            "properties": {"files": {"type": "array", "items": {
                "type": "object", "required": ["path", "size"],
                "properties": {"path": {"type": "string"}, "size": {"type": "integer"}}}}},
        },
    }


def _session_paths(security: list[dict[str, list[str]]], egress_open: bool | None) -> dict[str, Any]:
    session_id = {"name": "session_id", "in": "path", "required": True, "schema": {"type": "string"},
                  "description": "The id `POST /sessions` gave."}
    found = {"401": _ref("responses", "Unauthorized"), "404": _ref("responses", "NotFound"),
             "410": _ref("responses", "Gone"), "503": _ref("responses", "ServiceUnavailable")}

    def json_answer(description: str, schema: str) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": _ref("schemas", schema)}}}

    def operation(operation_id: str, summary: str, responses: dict[str, Any], **more: Any) -> dict[str, Any]:
        return {"tags": ["sessions"], "operationId": operation_id, "summary": summary, "security": security,
                "responses": {**responses, **found}, **more}

    beyond = ({"403": _error_response("An entry of `network.allow` is not within the server's `egress.allow`; "
                                      "the error names it.")} if egress_open is not False else {})
    cell_responses = _run_responses(with_body=True)
    cell_responses["200"] = json_answer("The cell ran (whatever its own outcome); streamed with `Accept: "
                                        "application/x-ndjson` or `text/event-stream` (see StreamEvent).", "CellResult")
    cell_responses["200"]["content"].update(STREAMED)
    cell_responses["504"] = json_answer("The cell passed its limit and was interrupted (the session keeps its "
                                        "state when the interrupt took).", "CellResult")
    cell_responses["409"] = _ref("responses", "Conflict")
    return {
        "/sessions": {"get": {
            "tags": ["sessions"], "operationId": "listSessions", "security": security,
            "summary": "The caller's live sessions (E2B sandboxes too), on every center, oldest first",
            "responses": {"200": json_answer("The sessions.", "SessionList"),
                          "401": _ref("responses", "Unauthorized"),
                          "503": _ref("responses", "ServiceUnavailable")},
        }, "post": {
            "tags": ["sessions"], "operationId": "createSession", "security": security,
            "summary": "Start a session: a sandbox that keeps its state between cells",
            "requestBody": {"required": False, "content": {"application/json": {
                "schema": _ref("schemas", "SessionCreate")}}},
            "responses": {
                "201": {**json_answer("The new session.", "Session"),
                        "headers": {"Location": {"description": "`/sessions/<id>`", "schema": {"type": "string"}}}},
                "400": _ref("responses", "BadRequest"), "401": _ref("responses", "Unauthorized"), **beyond,
                "502": _ref("responses", "BadGateway"), "503": _ref("responses", "ServiceUnavailable"),
            },
        }},
        "/sessions/{session_id}/network": {
            "parameters": [session_id],
            "put": operation("setSessionNetwork", "Change what the session may reach, between cells (install "
                             "first, then lock down); connections from then on follow it",
                             {"200": json_answer("The session, with its new `network`.", "Session"),
                              "400": _ref("responses", "BadRequest"), **beyond},
                             requestBody={"required": True, "content": {"application/json": {
                                 "schema": _ref("schemas", "Network")}}}),
        },
        "/sessions/{session_id}": {
            "parameters": [session_id],
            "get": operation("getSession", "The session's state", {"200": json_answer("The session.", "Session")}),
            "delete": operation("deleteSession", "End the session; its sandbox is removed at once",
                                {"204": {"description": "Ended."}}),
        },
        "/sessions/{session_id}/runcode": {
            "parameters": [session_id],
            "post": operation("runCell", "Run a cell (Python or bash) in the session", cell_responses,
                              parameters=[INLINE_PARAMETER],
                              requestBody={"required": True, "content": {"application/json": {
                                  "schema": _ref("schemas", "CellRequest")}}}),
        },
        "/sessions/{session_id}/files": {
            "parameters": [session_id],
            "get": operation("listFiles", "The session's working folder, recursively, a page at a time",
                             {"200": json_answer("One page of the files.", "FileList"),
                              "400": _ref("responses", "BadRequest")},
                             parameters=[
                                 {"name": "limit", "in": "query", "required": False, "description":
                                  "Files per page (default 1000, at most 10000); a page also stops at 1 MiB.",
                                  "schema": {"type": "integer", "minimum": 1, "maximum": 10000}},
                                 {"name": "cursor", "in": "query", "required": False, "description":
                                  "The `next_cursor` of the page before.", "schema": {"type": "string"}}]),
            "post": operation(
                "uploadFiles", "Upload files into the working folder (multipart `file` parts; a part's filename "
                "may hold subfolders)",
                {"201": json_answer("Written.", "Uploaded"), "400": _ref("responses", "BadRequest"),
                 "413": _ref("responses", "PayloadTooLarge"), "507": _ref("responses", "InsufficientStorage")},
                requestBody={"required": True, "content": {"multipart/form-data": {"schema": {
                    "type": "object", "properties": {"file": {"type": "array", "items": {
                        "type": "string", "format": "binary"}}}}}}}),
        },
        "/sessions/{session_id}/files/{path}": {
            "parameters": [session_id, {"name": "path", "in": "path", "required": True,
                                        "schema": {"type": "string", "pattern": WORKSPACE_PATH_PATTERN}}],
            "get": operation("downloadFile", "One file of the working folder, as a download",
                             {"200": {"description": "The bytes.",
                                      "headers": {"Content-Disposition": _ref("headers", "Content-Disposition")},
                                      "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}},
                              "400": _ref("responses", "BadRequest")}),
        },
    }


def _page(operation_id: str, summary: str, description: str) -> dict[str, Any]:
    return {"get": {
        "tags": ["pages"], "operationId": operation_id, "summary": summary, "description": description,
        "responses": {"200": {"description": "An HTML page.",
                              "content": {"text/html": {"schema": {"type": "string"}}}}},
    }}


def openapi_document(*, auth_required: bool | None = None, egress_open: bool | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document; auth_required=True when the server has auth_tokens, egress_open=True when it
    has an egress ceiling (None: may or may not)."""
    bearer: list[dict[str, list[str]]] = [{"bearerAuth": []}]
    security = bearer if auth_required else [{}, *bearer]
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Code Interpreter API",
            "version": API_VERSION,
            "description": (
                "Runs untrusted Python or bash code, each request in a fresh Docker sandbox, and returns its "
                "output and the images it made.\n\n"
                "**Authentication:** when the server has `auth_tokens`, `/runcode` and `/sessions` need "
                "`Authorization: Bearer <token>`; without them they are open. A session is visible only to the "
                "token that created it. Images, files, health and pages never need one.\n\n"
                "**Errors** are always a JSON body `{\"error\": \"<one sentence>\"}`: 400 bad request, 401 token, "
                "404 unknown route, image or session, 405 method not allowed (with `Allow`), 409 a cell is running, "
                "410 the session has ended, 413 body too large, 507 the session's disk is full, "
                "503 no free sandbox (with `Retry-After`), 502 sandbox failure, 500 center failure.\n\n"
                "**Request ids:** every answer carries `X-Request-ID`: the client's own (1 to 128 of "
                "`A-Za-z0-9._-`), else a new one; the server's access log names it.\n\n"
                "**CORS:** browser origins listed in the server's `cors_origins` get "
                "`Access-Control-Allow-Origin` (preflight included).\n\n"
                "**E2B's API** is served at `/e2b` for E2B's SDKs (`E2B_API_URL=<base>/e2b`, "
                "`E2B_SANDBOX_URL=<base>/e2b/sandbox`); it is E2B's to document, and not listed here."
            ),
        },
        "servers": [{"url": "/"}],
        "tags": [
            {"name": "run", "description": "Run code"},
            {"name": "sessions", "description": "Sessions: state that persists between cells, and their files"},
            {"name": "images", "description": "Images that runs produced"},
            {"name": "files", "description": "Files other than images that one-shot runs wrote"},
            {"name": "health", "description": "Liveness and readiness"},
            {"name": "pages", "description": "Pages for people and tools"},
        ],
        "paths": {
            "/runcode": _run_paths(security, egress_open),
            **_session_paths(security, egress_open),
            "/image/{filename}": _stored_path("image"),
            "/file/{filename}": _stored_path("file"),
            "/healthz": {"get": {
                "tags": ["health"], "operationId": "healthz", "summary": "Liveness: 200 while the process serves",
                "responses": {"200": {"description": "Serving.",
                                      "content": {"application/json": {"schema": _ref("schemas", "Health")}}}},
            }},
            "/readyz": {"get": {
                "tags": ["health"], "operationId": "readyz",
                "summary": "Readiness: the database answers and sandboxes can be handed out (ready, busy or starting)",
                "responses": {
                    "200": {"description": "Ready.",
                            "content": {"application/json": {"schema": _ref("schemas", "Readiness")}}},
                    "503": {"description": "Not ready: the database does not answer, sandboxes keep failing to start, "
                                           "or the center is draining.",
                            "content": {"application/json": {"schema": _ref("schemas", "Readiness")}}},
                },
            }},
            "/metrics": {"get": {
                "tags": ["health"], "operationId": "metrics",
                "summary": "Prometheus metrics: executions by status and language, durations, the pool, images",
                "responses": {"200": {"description": "The Prometheus text exposition format.",
                                      "content": {"text/plain": {"schema": {"type": "string"}}}}},
            }},
            "/": _page("playground", "The playground", "Write a program, run it, see its output and images."),
            "/docs": _page("docs", "This API's documentation", "Swagger UI on /openapi.json, served offline."),
            "/openapi.json": {"get": {
                "tags": ["pages"], "operationId": "openapi", "summary": "This document",
                "responses": {"200": {"description": "The OpenAPI document.",
                                      "content": {"application/json": {"schema": {"type": "object"}}}}},
            }},
        },
        "components": {
            "schemas": {**_schemas(egress_open), **_session_schemas(egress_open)},
            "responses": _responses(),
            "headers": _headers(),
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer",
                               "description": "One of the server's `auth_tokens`."},
            },
        },
    }
