"""The program's output on its way out: read from its pipes, kept within its budget, streamed as events."""

from __future__ import annotations

import codecs
import json
import os
import threading
from collections.abc import Callable
from typing import IO, Any

from contract import STREAM_TYPE
from http_server import RawResponse, Request, encode_json

OUTPUT_STREAMS = ("stdout", "stderr")


def json_size(text: str) -> int:
    """Bytes that text takes inside a JSON string as the agent sends it (UTF-8; \\u0000 is 6 bytes for 1)."""
    return len(json.dumps(text, ensure_ascii=False).encode("utf-8", "surrogatepass")) - 2


def json_prefix(text: str, budget: int) -> str:
    """The longest start of text whose json_size is within budget."""
    low, high = 0, min(len(text), budget)  # every character takes a byte at least
    while low < high:
        middle = (low + high + 1) // 2
        if json_size(text[:middle]) <= budget:
            low = middle
        else:
            high = middle - 1
    return text[:low]


def json_suffix(text: str, budget: int) -> str:
    """The longest end of text whose json_size is within budget."""
    low, high = 0, min(len(text), budget)
    while low < high:
        middle = (low + high + 1) // 2
        if json_size(text[len(text) - middle:]) <= budget:
            low = middle
        else:
            high = middle - 1
    return text[len(text) - low:]


class OutputBudget:
    """The room stdout and stderr share in the report, counted as they will be sent: JSON-encoded UTF-8.

    So max_output_bytes bounds the answer, whatever the program writes (control characters and
    bytes that are not UTF-8 take several bytes each once encoded).
    """

    def __init__(self, limit: int, overflow: threading.Event) -> None:
        self.left = limit
        self.overflow = overflow  # set once output was cut: the run is stopped
        self.cut = False
        self.lock = threading.Lock()

    def take(self, text: str) -> str:
        """What of text the report keeps: all of it while there is room, then its start, then nothing."""
        size = json_size(text)
        with self.lock:
            if self.cut:
                return ""
            if size <= self.left:
                self.left -= size
                return text
            kept = json_prefix(text, self.left)
            self.left -= json_size(kept)
            self.cut = True
        self.overflow.set()
        return kept


class KeptOutput:
    """What the report keeps of one output stream: decoded as it comes (bytes that are not UTF-8 become U+FFFD),
    within the budget both streams share; each piece kept goes to `on_text` too (a streamed run's events)."""

    def __init__(self, budget: OutputBudget, on_text: Callable[[str], None] | None = None) -> None:
        self.budget, self.on_text = budget, on_text
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")  # a character may span two reads
        self.chunks: list[str] = []

    def take(self, chunk: bytes) -> None:
        """Keep what the budget allows of a chunk read from the pipe (b"": the pipe's end)."""
        text = self.decoder.decode(chunk, final=not chunk)
        if text and (kept := self.budget.take(text)):
            self.chunks.append(kept)
            if self.on_text is not None:
                self.on_text(kept)

    def text(self) -> str:
        """What was kept."""
        return "".join(self.chunks)


class OutputReader(threading.Thread):
    """Drains one output pipe of a one-shot run in a thread of its own, keeping what the budget allows."""

    def __init__(self, pipe: IO[bytes], budget: OutputBudget, on_text: Callable[[str], None] | None = None) -> None:
        super().__init__(daemon=True)
        self.pipe = pipe
        self.kept = KeptOutput(budget, on_text)

    def run(self) -> None:
        fd = self.pipe.fileno()
        while True:
            chunk = os.read(fd, 65536)  # keeps draining once cut: writers never block, the run is stopped
            self.kept.take(chunk)
            if not chunk:
                return

    def text(self) -> str:
        """What was kept."""
        return self.kept.text()


class EventStream:
    """A streamed run's events to the center, one JSON object per line on the agent's connection.

    Output pipes are read in threads of their own: each line goes out whole, under a lock. A center
    that went away (its client hung up) is noticed here and ends nothing by itself: the center
    removes a one-shot sandbox, and a session's cell watches its connection (see session.py).
    """

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.lock = threading.Lock()
        self.gone = False

    def output(self, index: int) -> Callable[[str], None]:
        """The callback that sends text of stdout (0) or stderr (1) as an event."""
        return lambda text: self.send({"type": OUTPUT_STREAMS[index], "text": text})

    def send(self, event: dict[str, Any]) -> None:
        """One event as one line; dropped once the center is gone."""
        line = encode_json(event) + b"\n"
        with self.lock:
            if self.gone:
                return
            try:
                self.sock.sendall(line)
            except OSError:
                self.gone = True


def wants_stream(request: Request) -> bool:
    """Whether the center asked for the run's events as they come (Accept: application/x-ndjson)."""
    return STREAM_TYPE in request.headers.get("accept", "")


def streamed(run: Callable[[EventStream], dict[str, Any]], close: Callable[[], None] | None = None) -> RawResponse:
    """An answer that runs `run` while it is sent: the output events it makes, then the report as the last line."""

    def write(sock: Any) -> None:
        events = EventStream(sock)
        try:
            report = run(events)
        except Exception as e:  # noqa: BLE001 - the head is sent: the failure can only be an event now
            events.send({"type": "error", "error": f"agent error: {type(e).__name__}: {e}"})
            return
        events.send({"type": "report", "report": report})

    return RawResponse(None, write, STREAM_TYPE, close)
