"""The ops page: ``GET /ops`` and the JSON it polls, ``/v1/ops/lag`` and ``/v1/ops/throughput``.

The JSON endpoints need a staff role (teller, reviewer, auditor, admin). The page
itself (``/ops``, with its script and style under ``/ops/static/``) is public and
holds no data: a browser cannot send a bearer token when it opens a URL, and a
token in the URL ends up in histories and logs (RFC 6750, section 5.3). The page
signs in with ``POST /v1/auth/token`` (or takes an access token from the URL's
fragment, ``/ops#token=...``, which browsers never send to the server), keeps the
tokens in ``sessionStorage`` and sends them with each poll; a customer's token gets
403 from the JSON and the page says so. Everything the page loads is served from
``api/static/``: operators' networks are closed, so nothing comes from a CDN, and
the content security policy allows nothing but this origin.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from confluent_kafka import KafkaException
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from api import ops
from api.deps import Context, Public, RequireRole
from api.errors import ServiceUnavailable
from api.problems import problem_responses
from schemas.auth import STAFF_ROLES
from schemas.ops import LagView, ThroughputView

router = APIRouter(prefix="/ops", tags=["ops"], dependencies=[RequireRole(*STAFF_ROLES)])
#: Mounted at the root by ``api.app``, not under ``/v1``: a page, not a resource.
page_router = APIRouter(tags=["ops"])

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
#: Where ``api.app`` mounts ``OpsStaticFiles``: the page's script and style.
STATIC_PATH = "/ops/static"
#: The page and its files allow nothing from elsewhere, no inline script, no framing.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class OpsStaticFiles(StaticFiles):
    """Starlette's ``StaticFiles`` over ``api/static/``, with the page's security headers.

    Starlette resolves every name inside the folder (a traversal or a symlink out of it
    is a 404) and answers conditional requests; the headers are all this adds.
    """

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(SECURITY_HEADERS)
        return response


async def _monitor(request: Request, ctx: Context) -> ops.OpsMonitor:
    monitor: ops.OpsMonitor | None = getattr(request.app.state, "ops", None)
    if monitor is None:
        monitor = request.app.state.ops = ops.OpsMonitor(ctx.settings)
    return monitor


async def _snapshot(request: Request, ctx: Context) -> ops.Snapshot:
    monitor = await _monitor(request, ctx)
    try:
        return await monitor.snapshot(ctx.db_pool)
    except (KafkaException, TimeoutError) as exc:
        raise ServiceUnavailable(
            f"Kafka did not answer the lag reading: {exc}", headers={"Retry-After": "5"}
        ) from exc


@router.get(
    "/lag",
    summary="Consumer lag of every group of ours (staff)",
    responses=problem_responses(401, 403, 503),
)
async def lag(request: Request, ctx: Context) -> LagView:
    """What ``bankflow lag --json`` shows, measured by this API process, with a history."""
    return LagView.model_validate(ops.lag_view(await _snapshot(request, ctx)))


@router.get(
    "/throughput",
    summary="Messages per second per topic, postings, dead letters, review queue, "
    "supervised services (staff)",
    responses=problem_responses(401, 403, 503),
)
async def throughput(request: Request, ctx: Context) -> ThroughputView:
    """Also what ``bankflow run all`` says of each service it supervises (``supervisor``)."""
    view = ops.throughput_view(await _snapshot(request, ctx))
    view["supervisor"] = await asyncio.to_thread(ops.supervisor_view, ctx.settings)
    return ThroughputView.model_validate(view)


@page_router.get(
    "/ops",
    summary="The ops page (it signs in itself; its data needs a staff role)",
    response_class=HTMLResponse,
    dependencies=[Public],
)
async def page() -> HTMLResponse:
    html = await asyncio.to_thread((STATIC_DIR / "ops.html").read_bytes)
    return HTMLResponse(html, headers=SECURITY_HEADERS)
