"""A Python client of the code interpreter center: one-shot runs, sessions, files, streaming, typed errors.

It needs only `requests`, so it can be copied into any project on its own:

    from client import Client
    center = Client("http://127.0.0.1:5000", token="s3cret")
    print(center.run("print(6 * 7)").stdout)
    with center.session() as s:
        s.upload("sales.csv")
        s.run("import pandas as pd\\ndf = pd.read_csv('sales.csv')")
        print(s.run("df.describe()").result)

A program's own failure (an exception, a non-zero exit, a timeout) is a result with its `status`, not
an exception: the center answers it like any other run. Exceptions are for requests the center refused
or could not serve; each HTTP status has its own subclass of `ClientError`.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import requests

__all__ = [
    "BadRequestError", "CenterUnreachableError", "Client", "ClientError", "ConflictError", "ForbiddenError",
    "GoneError", "InsufficientStorageError", "InvalidArgumentError", "NotFoundError", "PayloadTooLargeError",
    "RunResult", "ServerError", "ServiceUnavailableError", "Session", "UnauthorizedError",
]

CONNECT_TIMEOUT = 10.0  # seconds to open a connection: a center that is up accepts at once
RUN_MARGIN = 60.0  # added to a run's own time limit for the queue wait and the round trip
MAX_RUN_WAIT = 86400.0  # a run's time limit beyond a day still waits a day: the center's own limit is far less
NDJSON = "application/x-ndjson"
MAX_LISTING_PAGES = 1000  # a listing whose next_cursor never ends is the center's fault: stop rather than loop

# The center's session ids (server/containers/docker_sandboxes.py: secrets.token_hex(16)); it looks up
# nothing longer than 64. Anything else could only reach another route: "/sessions/.." resolves to "/"
# in any HTTP library.
SESSION_ID = re.compile("[0-9a-f]{1,64}")
# The center's rule for a workspace path (check_path in sandbox/contract.py), restated: this file stands alone.
MAX_PATH_BYTES = 4096
MAX_COMPONENT_BYTES = 255
UNSAFE_PATH_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
# What a multipart filename does not carry as it is: urllib3 writes '"', CR and LF as %22, %0D and %0A (the
# WHATWG form encoding), and the center's parser takes a backslash as an escape (a\b.txt arrives as ab.txt)
# and reads %22 back as '"'. A literal escape sequence is as ambiguous as the character it stands for.
UNFAITHFUL_IN_MULTIPART = re.compile(r'["\\]|%(?:22|0a|0d)', re.IGNORECASE)

Callback = Callable[[str], object]
Bundle = dict[str, Any]  # one display: {"data": {MIME type: value}, "is_main_result": bool, "chart"?: {...}}
BundleCallback = Callable[[Bundle], object]


# --- errors -------------------------------------------------------------------------------------

class ClientError(Exception):
    """Root of every error of this client: `status` is the HTTP status (None: no answer), `error` the center's text."""

    def __init__(self, error: str, status: int | None = None, retry_after: float | None = None,
                 body: Any = None) -> None:
        super().__init__(f"{status}: {error}" if status is not None else error)
        self.error, self.status, self.retry_after, self.body = error, status, retry_after, body


class BadRequestError(ClientError):
    """400: the request is malformed (a bad field, language, path or value)."""


class UnauthorizedError(ClientError):
    """401: no bearer token, or one the center does not accept."""


class ForbiddenError(ClientError):
    """403: the program's own permissions forbid it (a file it made unreadable)."""


class NotFoundError(ClientError):
    """404: no such session (or another token's), file or route."""


class ConflictError(ClientError):
    """409: the session is busy with another call (`retry_after` says when to try again)."""


class GoneError(ClientError):
    """410: the session has ended (deleted, idle, past its lifetime, dead); `error` says why."""


class PayloadTooLargeError(ClientError):
    """413: the request or an uploaded file is over a size limit."""


class ServiceUnavailableError(ClientError):
    """503: no sandbox free in time, too many sessions, the engine or database away; retry after `retry_after`."""


class InsufficientStorageError(ClientError):
    """507: the session's workspace is full."""


class ServerError(ClientError):
    """500, 502 and other 5xx answers: the center or a sandbox failed."""


class CenterUnreachableError(ClientError):
    """No answer at all: the center is down, the address is wrong, or the connection broke or timed out."""


class InvalidArgumentError(BadRequestError, ValueError):
    """A session id or workspace path the center could never accept, refused before any request (`status` None)."""


ERRORS_BY_STATUS: dict[int, type[ClientError]] = {
    400: BadRequestError, 401: UnauthorizedError, 403: ForbiddenError, 404: NotFoundError, 409: ConflictError,
    410: GoneError, 413: PayloadTooLargeError, 503: ServiceUnavailableError, 507: InsufficientStorageError,
}


def error_for(status: int, error: str, retry_after: float | None = None, body: Any = None) -> ClientError:
    """The typed error of an HTTP status."""
    kind = ERRORS_BY_STATUS.get(status) or (ServerError if status >= 500 else ClientError)
    return kind(error, status, retry_after, body)


def _retry_after(response: requests.Response) -> float | None:
    """The Retry-After header in seconds, when it is a number."""
    try:
        return float(response.headers["Retry-After"])
    except (KeyError, ValueError):
        return None


def _error_from_response(response: requests.Response) -> ClientError:
    """The typed error of a refused request, with the center's own sentence when it sent one."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        message = body["error"]
    else:  # a proxy in front of the center, or not a center at all
        message = (response.text or response.reason or "no message").strip()[:500]
    return error_for(response.status_code, message, _retry_after(response), body)


# --- arguments checked before any request -------------------------------------------------------

def _shown(value: object) -> str:
    """A value for an error message: its repr, cut (a refused path may be kilobytes long)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def session_id_checked(session_id: object) -> str:
    """The session id when the center could have issued it; InvalidArgumentError otherwise."""
    if not isinstance(session_id, str) or not SESSION_ID.fullmatch(session_id):
        raise InvalidArgumentError(f"{_shown(session_id)} is not a session id: the center's are lowercase hex "
                                   "digits (at most 64), as POST /sessions gave them")
    return session_id


def workspace_path(path: object, upload: bool = False) -> str:
    """The path when the center would take it as a workspace path (and, for an `upload`, when a multipart
    filename carries it unchanged); InvalidArgumentError saying why otherwise."""
    reason = _workspace_path_problem(path, upload)
    if reason is not None or not isinstance(path, str):
        raise InvalidArgumentError(f"{_shown(path)} is not a path in the workspace: {reason}")
    return path


def _workspace_path_problem(path: object, upload: bool) -> str | None:
    """What makes `path` unusable as a workspace path, or None."""
    if not isinstance(path, str) or not path:
        return "it must be a non-empty string"
    try:
        size = len(path.encode("utf-8"))
    except UnicodeEncodeError:
        return "it is not valid Unicode text (a lone surrogate)"
    if size > MAX_PATH_BYTES:
        return f"it is over {MAX_PATH_BYTES} bytes"
    if path.startswith("/") or any(part in ("", ".", "..") for part in path.split("/")):
        # Also what HTTP libraries resolve away in a URL (a session's "../../metrics" would reach /metrics).
        return "it must be relative, with no empty, '.' or '..' part"
    if any(len(part.encode()) > MAX_COMPONENT_BYTES for part in path.split("/")):
        return f"a part of it is over {MAX_COMPONENT_BYTES} bytes"
    if UNSAFE_PATH_CHARACTERS.search(path):
        return "it holds a control character (a newline, NUL, tab...)"
    if upload and UNFAITHFUL_IN_MULTIPART.search(path):
        return "an uploaded file's name cannot hold a backslash, '\"', %22, %0A or %0D (the upload would change it)"
    return None


def workspace_url_path(path: object) -> str:
    """A workspace path for a URL (a downloaded name may hold a backslash or '"': quoted, they arrive as they are)."""
    return quote(workspace_path(path), safe="/")


# --- results ------------------------------------------------------------------------------------

@dataclass
class RunResult:
    """What a run or a session's cell gave: its output, status, value, displays (MIME bundles), images and files."""

    stdout: str
    stderr: str
    exit_code: int | None
    status: str
    duration_ms: float | None = None
    result: str | None = None
    results: list[Bundle] = field(default_factory=list)
    images: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    execution_count: int | None = None
    network: list[dict[str, Any]] = field(default_factory=list)  # connections through the egress proxy
    http_status: int = 200
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_body(cls, body: Mapping[str, Any], http_status: int = 200) -> RunResult:
        """The result of the center's JSON result body (`output` is stdout)."""
        return cls(
            stdout=body.get("output", ""), stderr=body.get("stderr", ""), exit_code=body.get("exit_code"),
            status=body.get("status", ""), duration_ms=body.get("duration_ms"), result=body.get("result"),
            results=[dict(bundle) for bundle in body.get("results") or [] if isinstance(bundle, Mapping)],
            images=dict(body.get("images") or {}), files=dict(body.get("files") or {}),
            skipped=list(body.get("skipped") or []), error=body.get("error"),
            execution_count=body.get("execution_count"), network=list(body.get("network") or []),
            http_status=http_status, raw=dict(body),
        )

    @property
    def ok(self) -> bool:
        """The program ran to the end with exit code 0."""
        return self.status == "ok"

    @property
    def main_result(self) -> Bundle | None:
        """The bundle of the last expression's value (`is_main_result`), or None."""
        return next((bundle for bundle in self.results if bundle.get("is_main_result")), None)

    def formats(self, mime_type: str) -> list[Any]:
        """The values of one MIME type (e.g. "text/html") across the displays, in the order they were made."""
        return [bundle["data"][mime_type] for bundle in self.results
                if isinstance(bundle.get("data"), Mapping) and mime_type in bundle["data"]]

    def __getitem__(self, key: str) -> Any:
        """The result body's field by its wire name (`result["output"]`), as a dict would give it."""
        return self.raw[key]

    def get(self, key: str, default: Any = None) -> Any:
        """The result body's field by its wire name, or `default`."""
        return self.raw.get(key, default)


# --- the client ---------------------------------------------------------------------------------

class Client:
    """A client of one center: `run()` for one-shot programs, `session()` for a notebook that keeps its state."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 600.0) -> None:
        """`timeout` bounds the wait for any one answer, in seconds; a run waits at least its own limit too."""
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.http = requests.Session()
        self.http.headers["User-Agent"] = "code-interpreter-client/1"
        if token:
            self.http.headers["Authorization"] = f"Bearer {token}"

    def __enter__(self) -> Client:
        """The client itself; its connections are closed on exit."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the connections."""
        self.close()

    def close(self) -> None:
        """Close the pooled connections."""
        self.http.close()

    # --- HTTP ---

    def request(self, method: str, path: str, *, expect: tuple[int, ...] = (200,), timeout: float | None = None,
                **kwargs: Any) -> requests.Response:
        """One call to the center; a status outside `expect` raises its typed error."""
        try:
            response = self.http.request(method, f"{self.url}{path}",
                                         timeout=(CONNECT_TIMEOUT, timeout or self.timeout), **kwargs)
        except requests.RequestException as e:
            raise CenterUnreachableError(f"cannot reach the center at {self.url}: {e}") from e
        if response.status_code not in expect:
            try:
                raise _error_from_response(response)
            finally:
                response.close()
        return response

    def _run_timeout(self, timeout: float | None) -> float:
        """How long to wait for a run's answer: the client's timeout, or the run's own limit plus a margin.
        ValueError for a limit that is not a positive, finite number of seconds."""
        if timeout is not None and not 0 < timeout < math.inf:
            raise ValueError(f"timeout must be a positive, finite number of seconds; got {timeout}")
        return max(self.timeout, min(timeout or 0, MAX_RUN_WAIT) + RUN_MARGIN)

    def _run(self, path: str, body: dict[str, Any], timeout: float | None, on_stdout: Callback | None,
             on_stderr: Callback | None, on_event: Callable[[dict[str, Any]], object] | None,
             on_display: BundleCallback | None = None) -> RunResult:
        """POST a run body; streamed when a callback wants the output (or the displays) as they come."""
        if on_stdout or on_stderr or on_event or on_display:
            return self._stream(path, body, timeout, on_stdout, on_stderr, on_event, on_display)
        # 504 is a run past its time limit: the same result body, status "timeout".
        response = self.request("POST", path, json=body, expect=(200, 504), timeout=self._run_timeout(timeout))
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or "status" not in answer:
            # A 504 from a proxy in front of the center carries no result.
            raise error_for(response.status_code, (response.text or "the answer is not a result").strip()[:500])
        return RunResult.from_body(answer, response.status_code)

    def _stream(self, path: str, body: dict[str, Any], timeout: float | None, on_stdout: Callback | None,
                on_stderr: Callback | None, on_event: Callable[[dict[str, Any]], object] | None,
                on_display: BundleCallback | None = None) -> RunResult:
        """POST with `Accept: application/x-ndjson` and hand each event to its callback as it arrives."""
        response = self.request("POST", path, json=body, expect=(200, 504), stream=True,
                                headers={"Accept": NDJSON}, timeout=self._run_timeout(timeout))
        with response:
            if not response.headers.get("Content-Type", "").startswith(NDJSON):
                # A center without streaming answers the plain body: the output arrives all at once.
                result = RunResult.from_body(response.json(), response.status_code)
                for callback, text in ((on_stdout, result.stdout), (on_stderr, result.stderr)):
                    if callback and text:
                        callback(text)
                for bundle in result.results if on_display else ():
                    on_display(bundle)
                if on_event:
                    on_event({"type": "result", **result.raw})
                return result
            failure: dict[str, Any] | None = None
            try:
                for event in _events(response):
                    if on_event:
                        on_event(event)
                    kind = event.get("type")
                    if kind == "stdout" and on_stdout:
                        on_stdout(event.get("text", ""))
                    elif kind == "stderr" and on_stderr:
                        on_stderr(event.get("text", ""))
                    elif kind == "display" and on_display:
                        on_display({k: v for k, v in event.items() if k != "type"})
                    elif kind == "error":
                        failure = event  # the center failed midway; its result (the output so far) follows
                    elif kind == "result":
                        body = {k: v for k, v in event.items() if k != "type"}
                        if failure is not None:
                            raise _stream_failure(failure, body)
                        return RunResult.from_body(body, 504 if body.get("status") == "timeout" else 200)
            except requests.RequestException as e:
                raise CenterUnreachableError(f"the stream from {self.url} broke: {e}") from e
        if failure is not None:
            raise _stream_failure(failure, None)
        raise ServerError("the stream ended before its result", 502)

    # --- runs ---

    def run(self, code: str, language: str = "python", files: Mapping[str, bytes | str] | None = None,
            variables: Mapping[str, Any] | None = None, timeout: float | None = None,
            on_stdout: Callback | None = None, on_stderr: Callback | None = None,
            on_event: Callable[[dict[str, Any]], object] | None = None, on_display: BundleCallback | None = None,
            inline: bool = False, network: Sequence[str] | None = None) -> RunResult:
        """Run a program in a fresh sandbox. `files` ({path: bytes or text}) are written in its folder first.

        With `on_stdout`/`on_stderr`/`on_display` (or `on_event`, every streamed event) the output and the
        displays are streamed as they are made; the returned result is the same either way. With `inline`
        the PNG and JPEG images of `results` come as base64 instead of URLs. `network`: the hosts the program
        may reach (within the center's `egress.allow`; None: the center's default); its connections are
        the result's `network`.
        """
        body = _run_body(code, language, variables, timeout, inline)
        if network is not None:
            body["network"] = _allow_list(network)
        if files:
            body["files"] = [{"path": path, "content_base64": base64.b64encode(
                content.encode() if isinstance(content, str) else content).decode()} for path, content in files.items()]
        return self._run("/runcode", body, timeout, on_stdout, on_stderr, on_event, on_display)

    def fetch(self, url: str) -> bytes:
        """The bytes behind an image or file URL of a result (these need no token)."""
        if url.startswith("/"):
            url = self.url + url
        # The token goes only to this center, never to another host a link might name.
        headers: dict[str, str | None] = {} if url.startswith(self.url + "/") else {"Authorization": None}
        try:
            response = self.http.get(url, headers=headers, timeout=(CONNECT_TIMEOUT, self.timeout))
        except requests.RequestException as e:
            raise CenterUnreachableError(f"cannot fetch {url}: {e}") from e
        if response.status_code != 200:
            raise _error_from_response(response)
        return response.content

    # --- sessions ---

    def session(self, idle_timeout: float | None = None, network: Sequence[str] | None = None) -> Session:
        """A new session (one sandbox kept alive); use it in a `with` block to end it on exit. `network`: the
        hosts its cells may reach (None: the center's default); Session.set_network changes it."""
        body: dict[str, Any] = {}
        if idle_timeout is not None:
            body["idle_timeout"] = idle_timeout
        if network is not None:
            body["network"] = _allow_list(network)
        response = self.request("POST", "/sessions", json=body or None, expect=(201,))
        info = response.json()
        return Session(self, info["session_id"], info)

    def attach(self, session_id: str) -> Session:
        """A handle on an existing session of this token (no request is made); InvalidArgumentError for an id
        the center could not have issued."""
        return Session(self, session_id)

    def healthy(self) -> bool:
        """The center answers /readyz with 200 (it can serve runs now)."""
        try:
            return self.request("GET", "/readyz", timeout=10).status_code == 200
        except ClientError:
            return False


class Session:
    """One session: a persistent interpreter and workspace; ended by `end()` or on leaving a `with` block."""

    def __init__(self, client: Client, session_id: str, info: dict[str, Any] | None = None) -> None:
        """A handle on the session `session_id` of `client`'s token; InvalidArgumentError for a malformed id."""
        self.client, self.id, self.info = client, session_id_checked(session_id), info or {}
        self.ended = False

    def __enter__(self) -> Session:
        """The session itself."""
        return self

    def __exit__(self, *exc: object) -> None:
        """End the session (its container is removed at once)."""
        self.end()

    def __repr__(self) -> str:
        """The session's id."""
        return f"Session({self.id!r})"

    @property
    def _path(self) -> str:
        """The session's route."""
        return f"/sessions/{quote(self.id, safe='')}"

    def run(self, code: str, language: str = "python", variables: Mapping[str, Any] | None = None,
            timeout: float | None = None, on_stdout: Callback | None = None, on_stderr: Callback | None = None,
            on_event: Callable[[dict[str, Any]], object] | None = None, on_display: BundleCallback | None = None,
            inline: bool = False) -> RunResult:
        """Run one cell in the session's interpreter (its globals, imports and files carry over)."""
        body = _run_body(code, language, variables, timeout, inline)
        return self.client._run(f"{self._path}/runcode", body, timeout, on_stdout, on_stderr, on_event, on_display)

    def describe(self) -> dict[str, Any]:
        """The session's state now: status (idle, busy), created_at, last_active_at, expires_at..."""
        self.info = self.client.request("GET", self._path).json()
        return self.info

    def set_network(self, allow: Sequence[str]) -> dict[str, Any]:
        """What the session may reach from now on (`[]` closes it: install first, then lock down); the
        session's state, with its `network`."""
        self.info = self.client.request("PUT", f"{self._path}/network", json=_allow_list(allow)).json()
        return self.info

    def upload(self, path_or_name: str | os.PathLike[str], data: bytes | str | IO[bytes] | None = None
               ) -> list[dict[str, Any]]:
        """Put a file into the workspace: a local file under its own name, or `data` under the name given
        (which may hold subfolders, e.g. "data/sales.csv"). Returns the center's [{"path", "size"}].
        InvalidArgumentError, before any request, for a name the center would refuse or the upload would change."""
        if data is None:
            local = Path(path_or_name)
            name = workspace_path(local.name, upload=True)
            with local.open("rb") as stream:
                return self._upload(name, stream)
        name = workspace_path(os.fspath(path_or_name), upload=True)
        return self._upload(name, data.encode() if isinstance(data, str) else data)

    def _upload(self, name: str, content: bytes | IO[bytes]) -> list[dict[str, Any]]:
        """POST one multipart `file` part."""
        response = self.client.request("POST", f"{self._path}/files", files=[("file", (name, content))],
                                       expect=(201,))
        return response.json()["files"]

    def files(self) -> list[dict[str, Any]]:
        """The workspace's files, recursively: [{"path", "size", "modified"}], every page of the listing."""
        files: list[dict[str, Any]] = []
        cursor: str | None = None
        seen: set[str] = set()
        for _ in range(MAX_LISTING_PAGES):
            page = self.client.request("GET", f"{self._path}/files",
                                       params={"cursor": cursor} if cursor else None).json()
            files.extend(page["files"])
            # A center that does not page sends no next_cursor: its one answer is the whole list.
            cursor = page.get("next_cursor")
            if not cursor:
                return files
            if not isinstance(cursor, str):
                raise ServerError(f"the center's listing gave a cursor that is not a string: {_shown(cursor)}",
                                  502, body=page)
            if cursor in seen:  # the same page again: following it would go round for ever
                raise ServerError(f"the center's listing gave the cursor {_shown(cursor)} twice", 502, body=page)
            seen.add(cursor)
        raise ServerError(f"the center's listing of the workspace did not end after {MAX_LISTING_PAGES} pages", 502)

    def download(self, name: str, to: str | os.PathLike[str] | None = None) -> bytes:
        """A workspace file's bytes (also written to the local path `to` when given)."""
        response = self.client.request("GET", f"{self._path}/files/{workspace_url_path(name)}")
        if to is not None:
            Path(to).write_bytes(response.content)
        return response.content

    def end(self) -> None:
        """End the session now; a session that has already ended (here or on the center) is left as it is."""
        if self.ended:
            return
        try:
            self.client.request("DELETE", self._path, expect=(204,))
        except GoneError:
            pass  # it ended by itself (idle, lifetime, dead): nothing left to do
        self.ended = True


def _allow_list(hosts: Sequence[str]) -> dict[str, list[str]]:
    """`network` as the center takes it; InvalidArgumentError for a lone string (a common slip: "pypi.org")."""
    if isinstance(hosts, str):
        raise InvalidArgumentError(f"network must be a list of hosts, such as [{hosts!r}], not one string")
    return {"allow": list(hosts)}


def _run_body(code: str, language: str, variables: Mapping[str, Any] | None, timeout: float | None,
              inline: bool) -> dict[str, Any]:
    """The JSON body of a run or a cell (fields left out when they are the center's defaults)."""
    body: dict[str, Any] = {"code": code, "languageType": language}
    if variables:
        body["variables"] = dict(variables)
    if timeout is not None:
        body["timeout"] = timeout
    if inline:
        body["inline"] = True
    return body


def _stream_failure(event: dict[str, Any], body: dict[str, Any] | None) -> ClientError:
    """A streamed run the center failed midway raises what the same failure raises unstreamed (a 502 is a
    ServerError); `body` is the result that followed, with the output made before the failure."""
    status = event.get("status") if isinstance(event.get("status"), int) else 502
    return error_for(status, str(event.get("error") or "the run failed"), body=body if body is not None else event)


def _events(response: requests.Response) -> Iterator[dict[str, Any]]:
    """The JSON objects of an NDJSON stream, one per line, as each line arrives."""
    buffer = b""
    # chunk_size=None yields each chunk as the server flushes it, instead of waiting for a full block.
    for chunk in response.iter_content(chunk_size=None):
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                yield json.loads(line)
    if buffer.strip():
        yield json.loads(buffer)
