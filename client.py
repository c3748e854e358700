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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import requests

__all__ = [
    "BadRequestError", "CenterUnreachableError", "Client", "ClientError", "ConflictError", "ForbiddenError",
    "GoneError", "InsufficientStorageError", "NotFoundError", "PayloadTooLargeError", "RunResult", "ServerError",
    "ServiceUnavailableError", "Session", "UnauthorizedError",
]

CONNECT_TIMEOUT = 10.0  # seconds to open a connection: a center that is up accepts at once
RUN_MARGIN = 60.0  # added to a run's own time limit for the queue wait and the round trip
MAX_RUN_WAIT = 86400.0  # a run's time limit beyond a day still waits a day: the center's own limit is far less
NDJSON = "application/x-ndjson"

Callback = Callable[[str], object]


def workspace_url_path(path: str) -> str:
    """A workspace path for a URL; ValueError for one that is absolute or has an empty, '.' or '..' part,
    which HTTP libraries resolve away (a session's "../../metrics" would reach /metrics)."""
    if path.startswith("/") or any(part in ("", ".", "..") for part in path.split("/")):
        raise ValueError(f"{path!r} is not a path in the workspace: it must be relative, with no empty, "
                         "'.' or '..' part")
    return quote(path, safe="/")


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


# --- results ------------------------------------------------------------------------------------

@dataclass
class RunResult:
    """What a run or a session's cell gave: its output, status, value, images and files (URLs by name)."""

    stdout: str
    stderr: str
    exit_code: int | None
    status: str
    duration_ms: float | None = None
    result: str | None = None
    images: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    execution_count: int | None = None
    http_status: int = 200
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_body(cls, body: Mapping[str, Any], http_status: int = 200) -> RunResult:
        """The result of the center's JSON result body (`output` is stdout)."""
        return cls(
            stdout=body.get("output", ""), stderr=body.get("stderr", ""), exit_code=body.get("exit_code"),
            status=body.get("status", ""), duration_ms=body.get("duration_ms"), result=body.get("result"),
            images=dict(body.get("images") or {}), files=dict(body.get("files") or {}),
            skipped=list(body.get("skipped") or []), error=body.get("error"),
            execution_count=body.get("execution_count"), http_status=http_status, raw=dict(body),
        )

    @property
    def ok(self) -> bool:
        """The program ran to the end with exit code 0."""
        return self.status == "ok"

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
             on_stderr: Callback | None, on_event: Callable[[dict[str, Any]], object] | None) -> RunResult:
        """POST a run body; streamed when a callback wants the output as it comes."""
        if on_stdout or on_stderr or on_event:
            return self._stream(path, body, timeout, on_stdout, on_stderr, on_event)
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
                on_stderr: Callback | None, on_event: Callable[[dict[str, Any]], object] | None) -> RunResult:
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
            on_event: Callable[[dict[str, Any]], object] | None = None) -> RunResult:
        """Run a program in a fresh sandbox. `files` ({path: bytes or text}) are written in its folder first.

        With `on_stdout`/`on_stderr` (or `on_event`, every streamed event) the output is streamed as it is
        printed; the returned result is the same either way.
        """
        body: dict[str, Any] = {"code": code, "languageType": language}
        if variables:
            body["variables"] = dict(variables)
        if timeout is not None:
            body["timeout"] = timeout
        if files:
            body["files"] = [{"path": path, "content_base64": base64.b64encode(
                content.encode() if isinstance(content, str) else content).decode()} for path, content in files.items()]
        return self._run("/runcode", body, timeout, on_stdout, on_stderr, on_event)

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

    def session(self, idle_timeout: float | None = None) -> Session:
        """A new session (one sandbox kept alive); use it in a `with` block to end it on exit."""
        body = {"idle_timeout": idle_timeout} if idle_timeout is not None else None
        response = self.request("POST", "/sessions", json=body, expect=(201,))
        info = response.json()
        return Session(self, info["session_id"], info)

    def attach(self, session_id: str) -> Session:
        """A handle on an existing session of this token (no request is made)."""
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
        """A handle on the session `session_id` of `client`'s token."""
        self.client, self.id, self.info = client, session_id, info or {}
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
            on_event: Callable[[dict[str, Any]], object] | None = None) -> RunResult:
        """Run one cell in the session's interpreter (its globals, imports and files carry over)."""
        body: dict[str, Any] = {"code": code, "languageType": language}
        if variables:
            body["variables"] = dict(variables)
        if timeout is not None:
            body["timeout"] = timeout
        return self.client._run(f"{self._path}/runcode", body, timeout, on_stdout, on_stderr, on_event)

    def describe(self) -> dict[str, Any]:
        """The session's state now: status (idle, busy), created_at, last_active_at, expires_at..."""
        self.info = self.client.request("GET", self._path).json()
        return self.info

    def upload(self, path_or_name: str | os.PathLike[str], data: bytes | str | IO[bytes] | None = None
               ) -> list[dict[str, Any]]:
        """Put a file into the workspace: a local file under its own name, or `data` under the name given
        (which may hold subfolders, e.g. "data/sales.csv"). Returns the center's [{"path", "size"}]."""
        if data is None:
            local = Path(path_or_name)
            with local.open("rb") as stream:
                return self._upload(local.name, stream)
        return self._upload(os.fspath(path_or_name), data.encode() if isinstance(data, str) else data)

    def _upload(self, name: str, content: bytes | IO[bytes]) -> list[dict[str, Any]]:
        """POST one multipart `file` part."""
        response = self.client.request("POST", f"{self._path}/files", files=[("file", (name, content))],
                                       expect=(201,))
        return response.json()["files"]

    def files(self) -> list[dict[str, Any]]:
        """The workspace's files, recursively: [{"path", "size", "modified"}]."""
        return self.client.request("GET", f"{self._path}/files").json()["files"]

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
