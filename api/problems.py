"""Every error answer is an RFC 9457 problem (``application/problem+json``).

``install(app)`` registers the handlers: the API's own errors (``api.errors``),
errors of the layers below with a problem type of their own (``LOWER_PROBLEMS``),
HTTP errors from FastAPI and Starlette (unknown route 404, wrong method 405, a
missing token 401), request validation (422, naming each failing field and why),
and outages of PostgreSQL or Redis (503). Anything else is a 500 problem from
``api.middleware.UnexpectedErrors``, logged there with its stack, which never
reaches the client.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any, Final, NamedTuple

import psycopg
import psycopg_pool
import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.errors import ApiError, ServiceUnavailable
from bankflow.identity.errors import EmailTaken
from schemas.problems import PROBLEM_MEDIA_TYPE, Problem, problem_type

log = logging.getLogger(__name__)

#: Problem slugs of plain HTTP errors, by status.
HTTP_SLUGS = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    406: "not-acceptable",
    409: "conflict",
    413: "content-too-large",
    415: "unsupported-media-type",
    422: "validation",
    423: "account-locked",
    429: "too-many-requests",
    500: "internal",
    503: "service-unavailable",
}


class LowerProblem(NamedTuple):
    """How the API answers an error raised below it: status, slug, title and the
    detail shown (not the error's own text, which may name what the caller did not
    send, such as the stored email)."""

    status: int
    slug: str
    title: str
    detail: str


#: Errors of the domain and identity layers that the API answers as they are, so a
#: route need not translate them into a second error class of the same meaning.
LOWER_PROBLEMS: Final[dict[type[Exception], LowerProblem]] = {
    EmailTaken: LowerProblem(
        409,
        "email-taken",
        "Email already registered",
        "a login with this email exists already; sign in instead",
    ),
}
#: Where a validation error was found: the first element of pydantic's ``loc``.
LOCATIONS = ("body", "query", "path", "header", "cookie")
#: A client retrying after an outage should wait about this long.
RETRY_AFTER_OUTAGE_S = 5


def problem_response(
    status: int,
    slug: str,
    detail: str,
    *,
    title: str | None = None,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": problem_type(slug),
        "title": title or _phrase(status),
        "status": status,
        "detail": detail,
    }
    if instance is not None:
        body["instance"] = instance
    body.update(extra)
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def field_errors(errors: Sequence[Any]) -> list[dict[str, str]]:
    """Pydantic's errors as ``{field, location, reason, code}``; input values never echoed."""
    result = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ())]
        location = loc[0] if loc and loc[0] in LOCATIONS else "body"
        path = loc[1:] if loc and loc[0] in LOCATIONS else loc
        reason = str(error.get("msg", "is invalid"))
        if error.get("type") == "json_invalid":
            # The position is not a field: the whole body is not JSON.
            path = []
            reason = f"{reason}: {error.get('ctx', {}).get('error', 'invalid JSON')}"
        result.append(
            {
                "field": ".".join(path) or location,
                "location": location,
                "reason": reason,
                "code": str(error.get("type", "invalid")),
            }
        )
    return result


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)  # noqa: S101 - registered for ApiError only
    return problem_response(
        exc.status,
        exc.slug,
        exc.detail,
        title=exc.title,
        instance=request.url.path,
        headers=exc.headers or None,
        **exc.extra,
    )


async def _lower_error(request: Request, exc: Exception) -> JSONResponse:
    answer = LOWER_PROBLEMS[type(exc)]
    return problem_response(
        answer.status, answer.slug, answer.detail, title=answer.title, instance=request.url.path
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)  # noqa: S101
    detail = exc.detail if isinstance(exc.detail, str) else _phrase(exc.status_code)
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"nothing is served at {request.method} {request.url.path}"
    return problem_response(
        exc.status_code,
        HTTP_SLUGS.get(exc.status_code, f"http-{exc.status_code}"),
        detail,
        instance=request.url.path,
        headers=dict(exc.headers) if exc.headers else None,
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)  # noqa: S101
    errors = field_errors(exc.errors())
    fields = ", ".join(dict.fromkeys(e["field"] for e in errors))
    count = len(errors)
    return problem_response(
        422,
        "validation",
        f"{count} invalid field{'s' if count != 1 else ''}: {fields}",
        title="Request validation failed",
        instance=request.url.path,
        errors=errors,
    )


async def _outage(request: Request, exc: Exception) -> JSONResponse:
    log.warning("%s %s: a server is unavailable: %r", request.method, request.url.path, exc)
    error = ServiceUnavailable(
        "a server the API needs does not answer; try again shortly",
        headers={"Retry-After": str(RETRY_AFTER_OUTAGE_S)},
    )
    return await _api_error(request, error)


def validation_error(field: str, reason: str, code: str = "value_error") -> RequestValidationError:
    """A 422 naming a body field, for rules a route checks itself (as pydantic would)."""
    return RequestValidationError([{"loc": ("body", field), "msg": reason, "type": code}])


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    for lower in LOWER_PROBLEMS:
        app.add_exception_handler(lower, _lower_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    for outage in (
        psycopg.OperationalError,
        psycopg_pool.PoolTimeout,
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
    ):
        app.add_exception_handler(outage, _outage)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the problems a route answers with (besides 422)."""
    return {status: {"model": Problem, "description": _phrase(status)} for status in statuses}
