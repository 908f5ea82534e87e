"""One log line per HTTP request, and the log context every line of the request carries.

``RequestLog`` replaces uvicorn's access log (``api.app.serve`` turns that off). For
each request it opens a log scope (``bankflow.logs.bound``) with the correlation id
and the W3C trace id, so every line logged while the request is served carries
them; authentication adds the user id (``api.deps``) and the intake the transfer
id (``api.intake``). When the answer has gone, one line says what happened::

    {"message":"POST /v1/transfers 202","method":"POST","route":"/v1/transfers",
     "status":202,"duration_ms":12.4,"correlation_id":"...","user_id":"...",
     "transfer_id":"...","trace_id":"...", ...}

The route is the template (``/v1/transfers/{transfer_id}``), never the path, so ids
and whatever a client puts in a URL stay out; only a path no route serves is logged
as such (redacted like every line), since that is what an operator needs to see.
Query strings, headers and bodies are never logged, nor the user's email.

The correlation id is the request's ``X-Correlation-ID`` when it is one (printable
ASCII, at most 128 characters); otherwise a new one, which is also put into the
request's headers so that the routes (and Kafka, through ``TransferRequest``) use the
same. Every answer carries it back in ``X-Correlation-ID``. A valid ``traceparent``
continues the caller's trace; without one a trace starts here.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.metrics import UNMATCHED, RouteTable
from bankflow import logs

log = logging.getLogger("bankflow.api.requests")

CORRELATION_HEADER = "x-correlation-id"
TRACEPARENT_HEADER = "traceparent"
#: What ``X-Correlation-ID`` may be (the transfer routes check the same pattern).
_CORRELATION_ID = re.compile(r"^[\x21-\x7e]{1,128}$")
#: Probes, the ops page's polling and its files: logged at DEBUG unless they fail, so
#: a load balancer or an open ops page does not fill the log.
QUIET_PREFIXES = ("/healthz", "/readyz", "/ops", "/v1/ops/")


class RequestLog:
    """Bind the request's log context, and log one line when it has been answered."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._routes: RouteTable | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        correlation_id = headers.get(CORRELATION_HEADER)
        if correlation_id is None:
            correlation_id = uuid.uuid4().hex
            scope["headers"] = [
                *scope["headers"],
                (CORRELATION_HEADER.encode(), correlation_id.encode()),
            ]
        elif not _CORRELATION_ID.match(correlation_id):
            correlation_id = uuid.uuid4().hex  # the route refuses the header; log ours
        started = time.perf_counter()
        status = 500  # what the server answers if the app fails before it starts one

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-correlation-id", correlation_id.encode()),
                ]
            await send(message)

        traceparent = logs.child_traceparent(headers.get(TRACEPARENT_HEADER))
        with logs.bound(correlation_id=correlation_id), logs.traced(traceparent):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                self._log(scope, status, (time.perf_counter() - started) * 1000)

    def _log(self, scope: Scope, status: int, duration_ms: float) -> None:
        if self._routes is None:
            self._routes = RouteTable(scope.get("app"))
        method = str(scope.get("method", ""))
        path = str(scope.get("path", ""))
        template = self._routes.template(path, method)
        route = None if template == UNMATCHED else template
        fields: dict[str, Any] = {
            "method": method,
            "route": route,
            "status": status,
            "duration_ms": round(duration_ms, 1),
        }
        if route is None:
            fields["path"] = path
        if status >= 500:
            level = logging.WARNING  # the failure itself is logged where it happened
        elif status < 400 and path.startswith(QUIET_PREFIXES):
            level = logging.DEBUG
        else:
            level = logging.INFO
        log.log(level, "%s %s %d", method, route or path, status, extra=fields)
