"""Errors the API answers with, each a problem type (RFC 9457) with a stable slug.

Raise one from a route or a dependency; ``api.problems`` turns it into an
``application/problem+json`` answer with its status, title and headers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from bankflow.errors import BankflowError


class ApiError(BankflowError):
    """Root of the errors the API answers with on purpose."""

    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal"
    title: ClassVar[str] = "Internal error"

    def __init__(
        self, detail: str, *, headers: Mapping[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = dict(headers or {})
        #: More members of the problem body (RFC 9457 extension members).
        self.extra = extra


class Unauthorized(ApiError):
    """No valid access token: missing, malformed, expired or revoked."""

    status = 401
    slug = "unauthorized"
    title = "Unauthorized"

    def __init__(self, detail: str, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        # RFC 6750 section 3: a 401 says which scheme would be accepted.
        self.headers.setdefault("WWW-Authenticate", 'Bearer realm="bankflow"')


class InvalidToken(Unauthorized):
    """A token failed one of the checks of RFC 8725 (signature, algorithm, claims, type)."""

    slug = "invalid-token"
    title = "Invalid token"


class InvalidCredentials(Unauthorized):
    """Wrong email or password; the answer never says which, nor whether the email exists."""

    slug = "invalid-credentials"
    title = "Invalid credentials"


class Forbidden(ApiError):
    status = 403
    slug = "forbidden"
    title = "Forbidden"


class NotFound(ApiError):
    status = 404
    slug = "not-found"
    title = "Not found"


class Conflict(ApiError):
    status = 409
    slug = "conflict"
    title = "Conflict"


class AccountLocked(ApiError):
    """Too many failed sign-ins (PCI DSS 8.3.4); known and unknown emails answer alike."""

    status = 423
    slug = "account-locked"
    title = "Sign-in locked"


class ServiceUnavailable(ApiError):
    """A server the API needs (PostgreSQL, Redis) does not answer; try again shortly."""

    status = 503
    slug = "service-unavailable"
    title = "Service unavailable"
