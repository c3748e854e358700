"""The service's errors: one root, a few subclasses that carry their HTTP status.

Low-level failures (Docker, requests, SQLAlchemy) are translated into these once, where they
happen (`raise SandboxFailed(...) from e`); center.py turns any of them into a JSON answer.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Root of every error the center reports to a client; `message` is one sentence for the user."""

    status = 500
    headers: dict[str, str] = {}

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ServiceError):
    """The request is malformed: not JSON, a missing or mistyped field, a bad value."""

    status = 400


class Unauthorized(ServiceError):
    """No bearer token, or one that is not accepted."""

    status = 401
    headers = {"WWW-Authenticate": 'Bearer realm="code-interpreter"'}


class Forbidden(ServiceError):
    """The program's own permissions forbid it (a file it made unreadable)."""

    status = 403


class NotFound(ServiceError):
    """No such route or image."""

    status = 404


class Conflict(ServiceError):
    """The resource is busy with another request (a session running a cell)."""

    status = 409

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after)}


class Gone(ServiceError):
    """The resource existed and has ended (a session deleted, expired or dead); the message says why."""

    status = 410


class InsufficientStorage(ServiceError):
    """The sandbox's disk is full."""

    status = 507


class PayloadTooLarge(ServiceError):
    """The request, or what it would become, is over a size limit."""

    status = 413


class ServiceUnavailable(ServiceError):
    """The center cannot serve this now but will again: the client should retry after a moment."""

    status = 503

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after)}


class SessionsExhausted(ServiceUnavailable):
    """Every session this center may hold (max_sessions) is in use."""


class PoolExhausted(ServiceUnavailable):
    """No sandbox became free within the configured wait (or the center is shutting down)."""


class EngineUnavailable(ServiceUnavailable):
    """The Docker engine cannot be reached (down, restarting, its socket gone)."""

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message, retry_after)


class NotBuilt(ServiceError):
    """A part of a compatible API (E2B's) that this server does not build: said, naming it."""

    status = 501


class EngineError(ServiceError):
    """The Docker engine answered, but refused what was asked of it."""

    status = 502


class SandboxFailed(ServiceError):
    """The sandbox container or its agent failed (died, answered garbage, could not be reached)."""

    status = 502


class StorageFailed(ServiceError):
    """The image database could not store or load an image."""

    status = 500
