"""Two small ASGI middlewares: a request body size limit, and the last-resort 500 problem."""

from __future__ import annotations

import logging

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import problem_response

log = logging.getLogger(__name__)


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` once a body passes the limit; rendered as a 413 problem.

    An ``HTTPException``, so FastAPI passes it on from its body parsing unchanged
    (any other exception there would become a 400) to the problem handlers.
    """

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"the request body is larger than the limit of {max_bytes} bytes")


class BodySizeLimit:
    """Refuse request bodies over ``max_bytes`` with 413.

    A declared ``Content-Length`` over the limit is refused before anything is read,
    but the header alone is not trusted: the bytes actually received are counted
    (chunked bodies have no length, and a client may lie), and reading stops with
    ``BodyTooLarge`` as soon as the count passes the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            error = BodyTooLarge(self.max_bytes)
            response = problem_response(
                413, "content-too-large", str(error.detail), instance=scope.get("path")
            )
            await response(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, counting_receive, send)


class UnexpectedErrors:
    """Turn any exception nothing else handled into a 500 problem, logged with its stack.

    The client gets a problem with no detail of the failure, not a stack trace; the
    log gets everything. If the response had started already, the connection is
    closed by the server instead (nothing else can be sent then).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unexpected error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            response = problem_response(
                500,
                "internal",
                "the request failed on our side; it has been logged",
                instance=scope.get("path"),
            )
            await response(scope, receive, send)
