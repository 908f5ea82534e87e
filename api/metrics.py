"""Request metrics for the API: an ASGI middleware counting and timing every answer.

Requests are labelled by route template (``/v1/transfers/{transfer_id}``), never by
the path itself, so an id never becomes a label value; a path no route matches is
``unmatched``, and a method outside HTTP's usual ones is ``other``. The API runs one
uvicorn worker per process, so the default registry is the whole truth for its
``BANKFLOW_API_METRICS_PORT`` (served by ``api.app.serve``); more API processes
each get a metrics port of their own (see docs/architecture.md).
"""

from __future__ import annotations

import re
import time

from fastapi.routing import iter_route_contexts
from starlette.routing import Mount, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bankflow.metrics import ApiMetrics, registered

#: Any other method (a client can send anything) is counted as "other": bounded labels.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"


class RequestMetrics:
    """Count every HTTP answer by route template, method and status, and time it.

    Installed outermost, so it also sees the answers the other middlewares give
    before any route runs (413 for a body over the limit, 429, the last-resort 500).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.metrics = registered(ApiMetrics)
        self._routes: RouteTable | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers when the app fails before it starts one

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            if self._routes is None:
                self._routes = RouteTable(scope.get("app"))
            method = scope.get("method", "")
            method = method if method in METHODS else "other"
            route = self._routes.template(scope.get("path", ""), method)
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.duration.labels(route, method).observe(time.perf_counter() - started)


class RouteTable:
    """Every route's full template (``/v1`` included) and the pattern it matches.

    Built from the app's routes rather than read from the request's scope: FastAPI
    puts the included router's own route there, whose path lacks the prefix, and
    requests refused before routing (413, 429) have none at all.
    """

    def __init__(self, app: object) -> None:
        self.routes: list[tuple[re.Pattern[str], str, frozenset[str]]] = []
        #: Mounted apps (the ops page's static files) are labelled by their mount path.
        self.mounts = [r.path for r in getattr(app, "routes", []) if isinstance(r, Mount)]
        for context in iter_route_contexts(getattr(app, "routes", [])):
            path = context.path
            if isinstance(path, str):
                pattern, _format, _convertors = compile_path(path)
                self.routes.append((pattern, path, frozenset(context.methods or ())))

    def template(self, path: str, method: str) -> str:
        """The route serving ``method path``; else one that serves the path (a 405)."""
        fallback = UNMATCHED
        for mount in self.mounts:
            if path.startswith(f"{mount}/"):
                return mount
        for pattern, template, methods in self.routes:
            if pattern.match(path):
                if not methods or method in methods:
                    return template
                if fallback == UNMATCHED:
                    fallback = template
        return fallback
