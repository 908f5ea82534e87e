"""The two baselines of ``bankflow bench api``, served by uvicorn like the real API.

- ``bare_app``: one endpoint that answers 202 and does nothing else: FastAPI's and
  uvicorn's own cost per request.
- ``skeleton_app``: ``POST /v1/transfers`` with the real API's authentication (the
  same token checks) and body validation (the same model, the same header rules),
  answering what the real endpoint answers, but without any I/O: no Redis, no
  PostgreSQL, no Kafka. The practical ceiling for the real endpoint.

Both read their settings like the API does (``BANKFLOW_*``), so tokens minted for
the bench's API are accepted by the skeleton too.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated

from fastapi import Depends, FastAPI
from fastapi.responses import Response
from fastapi.security import OAuth2PasswordBearer

from api import intake, tokens
from api.errors import Unauthorized
from api.problems import install
from api.routes.transfers import IdempotencyKey
from bankflow.settings import get_settings
from schemas.api_transfers import TransferAccepted, TransferIn

_bearer = OAuth2PasswordBearer(tokenUrl="/v1/auth/token", auto_error=False)


def bare_app() -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/v1/transfers", status_code=202)
    async def accept() -> Response:
        return Response(status_code=202)

    return app


@lru_cache(maxsize=1)
def _config() -> tokens.TokenConfig:
    return tokens.TokenConfig.from_settings(get_settings())


async def caller(token: Annotated[str | None, Depends(_bearer)]) -> tokens.Claims:
    """The real API's token checks (``api.tokens.decode``), without the Redis lookups."""
    if not token:
        raise Unauthorized("this operation needs an access token")
    return tokens.decode(_config(), token, "access")


Caller = Annotated[tokens.Claims, Depends(caller)]


def skeleton_app() -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    install(app)

    @app.post("/v1/transfers", status_code=202)
    async def create_transfer(
        body: TransferIn,
        claims: Caller,
        idempotency_key: IdempotencyKey,
    ) -> TransferAccepted:
        body.amount_minor()
        return TransferAccepted(
            id=intake.transfer_id(claims.user_id, idempotency_key), status="requested"
        )

    return app
