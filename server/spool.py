"""Bytes on their way through the center go through temporary files, within a budget of disk.

A download handed to waitress as a file leaves the app's thread at once: waitress's event loop sends
it at the client's pace, so a client that never reads holds a descriptor and some disk until its
connection times out, never a thread. A multipart upload's parts are written to files as they are
parsed (Werkzeug keeps parts under 500 KB in memory, which a few hundred small parts per request turn
into gigabytes). What is spooled at once is bounded by a budget: past it a request waits, then 503.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import IO, Any

from flask import Request

from server.errors import ServiceUnavailable

SPOOL_BYTES = 2 * 1024 ** 3  # downloads and uploads spooled at once, on the disk of the temporary folder


class ByteBudget:
    """Bytes in use at once, across all threads; a request waits for room, then ServiceUnavailable."""

    def __init__(self, total_bytes: int, busy: str = "the center is busy passing other large files; try again "
                 "shortly", retry_after: int = 5) -> None:
        self.total = total_bytes
        self.available = total_bytes
        self.busy, self.retry_after = busy, retry_after
        self._condition = threading.Condition()

    def take(self, size: int, timeout: float) -> int:
        """Reserve `size` bytes (at most the whole budget); ServiceUnavailable if they do not free up in time."""
        size = min(max(size, 0), self.total)
        with self._condition:
            if not self._condition.wait_for(lambda: self.available >= size, timeout):
                raise ServiceUnavailable(self.busy, retry_after=self.retry_after)
            self.available -= size
        return size

    def give_back(self, size: int) -> None:
        """Return what take() reserved."""
        if size:
            with self._condition:
                self.available += size
                self._condition.notify_all()

    @contextmanager
    def reserve(self, size: int, timeout: float) -> Iterator[None]:
        """`with budget.reserve(n, wait):` use up to n bytes inside."""
        reserved = self.take(size, timeout)
        try:
            yield
        finally:
            self.give_back(reserved)


class SpooledFile:
    """A temporary file holding an answer, read by the server; closing it gives its bytes back to the budget."""

    def __init__(self, file: IO[bytes], budget: ByteBudget, reserved: int) -> None:
        self._file, self._budget, self._reserved = file, budget, reserved

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes from the current position."""
        return self._file.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        """Move the position (waitress measures the file with it)."""
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        """The current position."""
        return self._file.tell()

    def seekable(self) -> bool:
        """Always: it is a regular file."""
        return True

    def close(self) -> None:
        """Delete the file (it has no name) and give its bytes back; twice is harmless."""
        if not self._file.closed:
            self._file.close()
            self._budget.give_back(self._reserved)
            self._reserved = 0


def spool(chunks: Iterable[bytes], size: int, budget: ByteBudget, timeout: float) -> SpooledFile:
    """Write `chunks` (announced as `size` bytes) into a temporary file within the budget, ready to be read."""
    reserved = budget.take(size, timeout)
    file: IO[bytes] = tempfile.TemporaryFile()
    try:
        for chunk in chunks:
            file.write(chunk)
        file.seek(0)
    except BaseException:
        file.close()
        budget.give_back(reserved)
        raise
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    return SpooledFile(file, budget, reserved)


class DiskFormRequest(Request):
    """Flask's request, writing every multipart file part to a temporary file, whatever its size."""

    def _get_file_stream(self, total_content_length: int | None, content_type: str | None,
                         filename: str | None = None, content_length: int | None = None) -> Any:
        """A new temporary file for one part (Werkzeug's default keeps parts under 500 KB in memory)."""
        return tempfile.TemporaryFile("wb+")
