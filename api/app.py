"""The FastAPI application.

``/healthz`` (the process is alive) and ``/readyz`` (Kafka, PostgreSQL and Redis
answer) serve load balancers and ``bankflow run all``; resources live under
``/v1``, one router module each in ``api/routes/`` (see ``api.routes.ROUTERS``),
with their dependencies in ``api.deps``. Every error is a problem document
(``api.problems``); request bodies are limited to ``BANKFLOW_API_BODY_MAX_BYTES``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from api import problems
from api.context import ApiContext
from api.deps import Public
from api.metrics import RequestMetrics
from api.middleware import BodySizeLimit, UnexpectedErrors
from api.openapi import openapi_builder
from api.ops import close_monitor
from api.ratelimit import RateLimitByAddress
from api.request_log import RequestLog
from api.routes import ROUTERS
from api.routes.ops import STATIC_DIR, STATIC_PATH, OpsStaticFiles, page_router
from bankflow.settings import Settings, get_settings

#: One look at a dependency waits at most this long.
PROBE_TIMEOUT_S = 3
#: How often the API looks at its dependencies for ``/readyz``: a probe answers what
#: was seen at most this long ago (plus a look's time).
READINESS_REFRESH_S = 2.0
API_PREFIX = "/v1"
DESCRIPTION = """\
Transfers over HTTP for bankflow's client apps.

Sign in with `POST /v1/auth/token` (OAuth2 password flow, the email as `username`)
and send the access token as `Authorization: Bearer <token>`. Each operation says
which roles may call it (`x-roles`) or that it needs no token (`x-public`).
Errors are RFC 9457 problem documents (`application/problem+json`) with a stable
`type`; validation errors list each failing field and the reason.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        context = await ApiContext.open(settings)
        app.state.context = context
        watching = asyncio.create_task(_watch_dependencies(context), name="readiness")
        try:
            yield
        finally:
            watching.cancel()
            await close_monitor(app)
            await context.close()

    app = FastAPI(
        title="bankflow",
        version="0.1.0",
        description=DESCRIPTION,
        docs_url="/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    problems.install(app)
    # Added last, so outermost of the two: a body that is too large is refused before
    # anything else looks at it, and any error left over becomes a 500 problem.
    app.add_middleware(UnexpectedErrors)
    app.add_middleware(
        RateLimitByAddress,
        limit=settings.api_rate_per_address_per_min,
        exempt=frozenset({"/healthz", "/readyz"}),
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.api_body_max_bytes)
    # Outermost of all: every answer is counted, the 413s, 429s and 500s above included.
    app.add_middleware(RequestMetrics)
    # Around even that: every line logged while a request is served carries its correlation id.
    app.add_middleware(RequestLog)
    _add_health_checks(app, settings)
    v1 = APIRouter(prefix=API_PREFIX)
    for router in ROUTERS:
        v1.include_router(router)
    app.include_router(v1)
    app.include_router(page_router)
    app.mount(STATIC_PATH, OpsStaticFiles(directory=STATIC_DIR), name="ops-static")
    app.openapi = openapi_builder(app)  # type: ignore[method-assign]
    return app


def _add_health_checks(app: FastAPI, settings: Settings) -> None:
    @app.get("/healthz", tags=["ops"], summary="The process is alive", dependencies=[Public])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["ops"],
        summary="Kafka, PostgreSQL and Redis answer",
        dependencies=[Public],
    )
    async def readyz(request: Request) -> JSONResponse:
        checks = request.app.state.context.readiness
        ready = _all_ok(checks)
        return JSONResponse(
            {"status": "ok" if ready else "unavailable", "checks": checks},
            status_code=200 if ready else 503,
        )


async def _watch_dependencies(context: ApiContext) -> None:
    """Every ``READINESS_REFRESH_S``, ask Kafka, PostgreSQL and Redis through the clients
    the API already has; ``/readyz`` (here and on the metrics port) answers the last
    result, so a probe opens nothing and costs the dependencies nothing."""
    while True:
        context.readiness = await _dependency_checks(context)
        await asyncio.sleep(READINESS_REFRESH_S)


async def _dependency_checks(context: ApiContext) -> dict[str, str]:
    checks: dict[str, str] = {}
    try:
        await asyncio.to_thread(context.producer.producer.list_topics, timeout=PROBE_TIMEOUT_S)
        checks["kafka"] = "ok"
    except Exception as exc:  # noqa: BLE001 - a probe reports any failure, it never raises
        checks["kafka"] = f"error: {exc}"
    try:
        async with context.db_pool.connection(timeout=PROBE_TIMEOUT_S) as conn:
            await conn.execute("select 1")
        checks["postgres"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["postgres"] = f"error: {type(exc).__name__}"
    try:
        await context.redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["redis"] = f"error: {type(exc).__name__}"
    return checks


def _all_ok(checks: dict[str, str]) -> bool:
    return bool(checks) and all(value == "ok" for value in checks.values())


def serve(settings: Settings) -> None:
    """``bankflow run api``: serve the app with uvicorn, one worker per process.

    ``/metrics`` is served on ``BANKFLOW_API_METRICS_PORT`` (with ``/healthz`` and a
    ``/readyz`` that checks the same dependencies as the app's), not on the app: the
    app's port is public, Prometheus scrapes without a token, and one worker per
    process keeps the default registry the process's whole truth.
    """
    import uvicorn

    from bankflow.observability import serve_metrics
    from bankflow.runtime import configure_logging

    configure_logging()

    app = create_app(settings)

    def ready() -> bool:
        # The app's last look at its dependencies (``_watch_dependencies``); read from the
        # metrics server's thread, it only reads a reference.
        context = getattr(app.state, "context", None)
        return context is not None and _all_ok(context.readiness)

    server = serve_metrics(settings.api_metrics_port, ready, host=settings.metrics_host)
    try:
        # uvicorn's own logging config is left out, so its lines go through ours (JSON,
        # redacted); its access log is replaced by ``api.request_log.RequestLog``.
        uvicorn.run(
            app, host=settings.api_host, port=settings.api_port, log_config=None,
            access_log=False,
        )  # fmt: skip
    finally:
        server.close()
