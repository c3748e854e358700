"""Streamed answers (SPEC "Streaming"): a run's events as NDJSON lines or Server-Sent Events while it runs.

The run goes on in a thread of its own (RunInThread) that queues what the agent streams; the
response's generator hands the events on, adds a keepalive when the program is silent, and looks
every POLL_SECONDS whether the client is still there. A client that hangs up stops the run: the
exchange with the agent is cut (see agent_client.Hangup), which removes a one-shot sandbox and
interrupts a session's cell. Errors before the run starts are ordinary JSON errors (the view
waits for the agent to take the run before it answers 200); after that, an `error` event and
then the `result` event.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from flask import Response, request, stream_with_context

from sandbox.contract import STREAM_TYPE
from server.api.answers import bundle_images, report_body, stored_bundles
from server.containers.agent_client import Listener
from server.errors import ServiceError
from server.run_requests import result_body
from server.services import Services

NDJSON = STREAM_TYPE
SSE = "text/event-stream"
KEEPALIVE_SECONDS = 5.0  # the contract says at least every 10 s: proxies drop idle connections
POLL_SECONDS = 0.1  # how often a silent run looks whether its client is still there
MAX_EVENT_CHARS = 64 * 1024  # of output in one event, when queued output is joined

# A run's outcome, as the thread leaves it in the queue beside the events (and a silence, see RunItems).
EVENT, REPORT, FAILED, KEEPALIVE = "event", "report", "failed", "keepalive"


def requested_format() -> str | None:
    """NDJSON or SSE when the Accept header names one of them (the higher rated when both), else None."""
    named = {value.lower(): quality for value, quality in request.accept_mimetypes if quality > 0}
    choices = [kind for kind in (NDJSON, SSE) if kind in named]
    return max(choices, key=lambda kind: named[kind]) if choices else None


class RunInThread:
    """A run (a callable given a Listener, returning the agent's report) in a thread of its own."""

    def __init__(self, run: Callable[[Listener], dict[str, Any]]) -> None:
        self.queue: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.listener = Listener(lambda event: self.queue.put((EVENT, event)))
        self.thread = threading.Thread(target=self._run, args=(run,), name="streamed-run", daemon=True)
        self.thread.start()

    def _run(self, run: Callable[[Listener], dict[str, Any]]) -> None:
        try:
            self.queue.put((REPORT, run(self.listener)))
        except Exception as e:  # noqa: BLE001 - every outcome is handed to the answer, which says it
            self.queue.put((FAILED, e))

    def wait_started(self) -> list[tuple[str, Any]]:
        """Block until the agent took the run; raise its error when it never did (an ordinary JSON error
        then). What came meanwhile is returned, to be answered first."""
        kind, item = self.queue.get()
        if kind == FAILED:
            raise item
        return [] if kind == EVENT and item.get("type") == "started" else [(kind, item)]


class RunItems:
    """What a streamed run leaves in its queue, as it comes: (EVENT, event), then (REPORT, report) or
    (FAILED, error); (KEEPALIVE, None) after KEEPALIVE_SECONDS without anything. It ends early when the
    client has hung up (asked every POLL_SECONDS while the run is silent)."""

    def __init__(self, run: RunInThread, early: list[tuple[str, Any]]) -> None:
        self.run, self.pending = run, list(early)
        self.client_gone: Callable[[], bool] = request.environ.get("waitress.client_disconnected", lambda: False)

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        last = time.monotonic()
        while True:
            if self.pending:
                yield self.pending.pop(0)
                last = time.monotonic()
                continue
            try:
                kind, item = self.run.queue.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if self.client_gone():
                    return
                if time.monotonic() - last >= KEEPALIVE_SECONDS:
                    last = time.monotonic()
                    yield KEEPALIVE, None
                continue
            last = time.monotonic()
            yield kind, item

    def joined(self, event: dict[str, Any]) -> dict[str, Any]:
        """The output event with the same stream's text queued behind it (see coalesced)."""
        return coalesced(event, self.run.queue, self.pending)


def encode(event: dict[str, Any], fmt: str) -> bytes:
    """One event as an NDJSON line or an SSE message: always whole, never half a line."""
    data = json.dumps(event, ensure_ascii=False)
    if fmt == SSE:
        return f"event: {event['type']}\ndata: {data}\n\n".encode()
    return (data + "\n").encode()


def coalesced(event: dict[str, Any], waiting: queue.Queue[tuple[str, Any]],
              pending: list[tuple[str, Any]]) -> dict[str, Any]:
    """The output event with the text of the same stream's events already queued behind it (up to
    MAX_EVENT_CHARS): a program writing a character at a time is not sent a line per character.
    The first other item taken is left in `pending`."""
    texts, size = [event["text"]], len(event["text"])
    while size < MAX_EVENT_CHARS and not pending:
        try:
            kind, item = waiting.get_nowait()
        except queue.Empty:
            break
        if kind != EVENT or item.get("type") != event["type"]:
            pending.append((kind, item))
            break
        texts.append(item["text"])
        size += len(item["text"])
    return {"type": event["type"], "text": "".join(texts)}


def failed_body(error: Exception, stdout: list[str], stderr: list[str], started: float) -> dict[str, Any]:
    """The result body of a run the service failed midway: the output it made, and why it ended."""
    message = error.message if isinstance(error, ServiceError) else f"{type(error).__name__}: {error}"
    report = {"stdout": "".join(stdout), "stderr": "".join(stderr), "exit_code": None, "status": "error",
              "duration_ms": round((time.monotonic() - started) * 1000, 1), "error": message}
    return result_body(report, {})


def stream_answer(svc: Services, fmt: str, language: str, run: RunInThread,
                  extra_of: Callable[[dict[str, Any]], dict[str, Any]] = lambda report: {},
                  inline: bool = False) -> Response:
    """200 at once with the run's events in `fmt`, the result body last; raises what stopped it from starting."""
    early = run.wait_started()
    images = bundle_images(svc, inline)

    def events() -> Iterator[bytes]:
        stdout: list[str] = []
        stderr: list[str] = []
        shown: list[dict[str, Any]] = []  # the displays sent: the results of a run that fails midway
        started = time.monotonic()
        items = RunItems(run, early)
        done = False
        try:
            for kind, item in items:
                if kind == KEEPALIVE:
                    yield encode({"type": "keepalive"}, fmt)
                    continue
                if kind == EVENT:
                    if item["type"] in ("stdout", "stderr"):
                        item = items.joined(item)
                        (stdout if item["type"] == "stdout" else stderr).append(item["text"])
                        yield encode(item, fmt)
                    elif item["type"] == "display":
                        bundles, _ = stored_bundles(svc, [item], images)
                        shown.extend(bundles)
                        for bundle in bundles:
                            yield encode({"type": "display", **bundle}, fmt)
                    continue
                if kind == REPORT:
                    body = report_body(svc, item, language, extra_of(item), images)
                else:
                    status = item.status if isinstance(item, ServiceError) else 500
                    body = failed_body(item, stdout, stderr, started)
                    body["results"] = shown
                    yield encode({"type": "error", "status": status, "error": body["error"]}, fmt)
                for name, url in body["images"].items():
                    yield encode({"type": "image", "name": name, "url": url}, fmt)
                for name, url in body["files"].items():
                    yield encode({"type": "file", "name": name, "url": url}, fmt)
                done = True
                yield encode({"type": "result", **body}, fmt)
                return
        finally:
            if not done:
                run.listener.hangup()  # the client went away: stop the run (it ends its thread)

    response = Response(stream_with_context(events()), mimetype=fmt)
    # Each event as it comes: no caching, and no buffering by a proxy (nginx reads this header).
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    return response
