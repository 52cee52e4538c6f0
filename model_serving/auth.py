"""Optional bearer-token auth for the endpoints that act (/predict, /feedback).

Probes and scrapes (/health, /ready, /metrics) stay open so orchestrators and Prometheus need no
secret. The token is compared in constant time, so response timing says nothing about how much of a
guess was right.
"""

from __future__ import annotations

import hmac

from fastapi import HTTPException, status


class BearerAuth:
    """A FastAPI dependency: passes when auth is off or the Authorization header carries the token."""

    def __init__(self, enabled: bool, token: str) -> None:
        if enabled and not token:
            raise ValueError("serving auth is on but the API token is empty")
        self.enabled = enabled
        self._token = token.encode()

    def check(self, authorization: str | None) -> None:
        if not self.enabled:
            return
        if not authorization:
            raise _unauthorized("missing Authorization header; expected 'Authorization: Bearer <token>'")
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise _unauthorized(f"expected 'Authorization: Bearer <token>', got a {scheme or 'malformed'!r} header")
        if not hmac.compare_digest(credentials.strip().encode(), self._token):
            raise _unauthorized("invalid bearer token")


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"})
