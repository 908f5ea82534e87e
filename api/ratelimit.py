"""Request rate limits per client address and per signed-in user, counted in Redis.

Fixed one-minute windows (``INCR`` plus an expiry set on the window's first hit):
every API process shares the counts, and a client over its limit gets ``429`` with
``Retry-After`` (the seconds left in the window). The address limit is checked for
every request before routing (``RateLimitByAddress``); the user limit once the
access token is known (``api.deps.current_user``).

When Redis does not answer, requests are let through and a warning is logged: the
limits protect the service from a flood, and refusing every customer because the
counter is down would be the worse outage.
"""

from __future__ import annotations

import logging
import time

import redis.asyncio
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import ApiError
from api.problems import problem_response

log = logging.getLogger(__name__)

WINDOW_S = 60


class TooManyRequests(ApiError):
    status = 429
    slug = "too-many-requests"
    title = "Too many requests"


async def over_limit(client: redis.asyncio.Redis, key: str, limit: int) -> int | None:
    """Count one request under ``key``; the seconds to wait when over ``limit``, else None."""
    window = int(time.time()) // WINDOW_S
    counter = f"{key}:{window}"
    try:
        async with client.pipeline(transaction=False) as pipe:
            pipe.incr(counter)
            pipe.expire(counter, WINDOW_S + 1, nx=True)
            count, _ = await pipe.execute()
    except redis.RedisError as exc:
        log.warning("rate limit not checked, Redis unavailable: %s", exc)
        return None
    if int(count) <= limit:
        return None
    return max(1, (window + 1) * WINDOW_S - int(time.time()))


async def count_and_read(
    client: redis.asyncio.Redis, key: str, limit: int, read: list[str]
) -> tuple[int | None, list[bytes | None]]:
    """``over_limit`` and an ``MGET`` of ``read`` in one round trip (a request's checks
    cost Redis round trips, and each costs the API more CPU than Redis time)."""
    window = int(time.time()) // WINDOW_S
    counter = f"{key}:{window}"
    async with client.pipeline(transaction=False) as pipe:
        pipe.mget(read)
        pipe.incr(counter)
        pipe.expire(counter, WINDOW_S + 1, nx=True)
        values, count, _ = await pipe.execute()
    if int(count) <= limit:
        return None, values
    return max(1, (window + 1) * WINDOW_S - int(time.time())), values


def too_many(limit: int, retry_after: int) -> TooManyRequests:
    return TooManyRequests(
        f"more than {limit} requests a minute from this user; wait {retry_after} s",
        headers={"Retry-After": str(retry_after)},
    )


async def check_user(client: redis.asyncio.Redis, prefix: str, user: str, limit: int) -> None:
    retry_after = await over_limit(client, f"{prefix}rl:user:{user}", limit)
    if retry_after is not None:
        raise TooManyRequests(
            f"more than {limit} requests a minute from this user; wait {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )


class RateLimitByAddress:
    """ASGI middleware: at most ``limit`` requests a minute per client address."""

    def __init__(self, app: ASGIApp, *, limit: int, exempt: frozenset[str]) -> None:
        self.app = app
        self.limit = limit
        self.exempt = exempt  # paths probes and scrapers hit: never limited

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.exempt:
            await self.app(scope, receive, send)
            return
        context = getattr(scope["app"].state, "context", None)
        address = (scope.get("client") or ("unknown", 0))[0]
        retry_after = None
        if context is not None:
            key = f"{context.settings.redis_prefix}rl:addr:{address}"
            retry_after = await over_limit(context.redis, key, self.limit)
        if retry_after is None:
            await self.app(scope, receive, send)
            return
        response = problem_response(
            429, "too-many-requests",
            f"more than {self.limit} requests a minute from this address; wait {retry_after} s",
            instance=scope.get("path"), headers={"Retry-After": str(retry_after)},
        )  # fmt: skip
        await response(scope, receive, send)
