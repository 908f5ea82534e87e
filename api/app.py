"""The FastAPI application. Routes arrive resource by resource under ``api/routes/``.

For now it serves health checks: ``/healthz`` (the process is alive) and
``/readyz`` (Kafka, PostgreSQL and Redis answer), which load balancers and
``bankflow run all`` use.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from bankflow.bootstrap import db_connect, kafka_admin, redis_client
from bankflow.settings import Settings, get_settings

#: A readiness probe answers within a load balancer's usual 5 s timeout.
PROBE_TIMEOUT_S = 3


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(title="bankflow", version="0.1.0", docs_url="/docs")

    @app.get("/healthz", tags=["ops"], summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], summary="Kafka, PostgreSQL and Redis answer")
    async def readyz() -> JSONResponse:
        checks = await asyncio.to_thread(_dependency_checks, settings)
        ready = all(value == "ok" for value in checks.values())
        return JSONResponse(
            {"status": "ok" if ready else "unavailable", "checks": checks},
            status_code=200 if ready else 503,
        )

    return app


def _dependency_checks(settings: Settings) -> dict[str, Any]:
    checks: dict[str, Any] = {}
    try:
        kafka_admin(settings).list_topics(timeout=PROBE_TIMEOUT_S)
        checks["kafka"] = "ok"
    except Exception as exc:  # noqa: BLE001 - a probe reports any failure, it never raises
        checks["kafka"] = f"error: {exc}"
    try:
        with db_connect(settings, connect_timeout=PROBE_TIMEOUT_S) as conn:
            conn.execute("select 1")
        checks["postgres"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["postgres"] = f"error: {type(exc).__name__}"
    try:
        client = redis_client(settings)
        client.ping()
        client.close()
        checks["redis"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["redis"] = f"error: {type(exc).__name__}"
    return checks


def serve(settings: Settings) -> None:
    """``bankflow run api``: serve the app with uvicorn."""
    import uvicorn

    uvicorn.run(
        create_app(settings), host=settings.api_host, port=settings.api_port, log_level="info"
    )
