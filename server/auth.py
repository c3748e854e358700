"""Bearer tokens: what a request presents, and whether the center accepts it (in constant time)."""

from __future__ import annotations

import hmac


def presented_token(authorization: str) -> str | None:
    """The token of an `Authorization: Bearer <token>` header value; None when there is none."""
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def token_accepted(tokens: list[str], token: str) -> bool:
    """Whether `token` is one of `tokens`; every candidate is compared, so the time taken tells nothing."""
    presented = token.encode("utf-8", "surrogateescape")
    accepted = False
    for candidate in tokens:  # no early exit: the time taken does not tell which matched
        accepted |= hmac.compare_digest(presented, candidate.encode())
    return accepted
