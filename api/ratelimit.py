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


#: Set on a request's ASGI state once its address was counted (by ``current_user``,
#: together with the user's counter), so the middleware does not count it again.
ADDRESS_COUNTED = "bankflow_address_counted"


async def count_and_read(
    client: redis.asyncio.Redis, counters: list[tuple[str, int]], read: list[str]
) -> tuple[int | None, int | None, list[bytes | None]]:
    """Count one request under each ``(key, limit)`` and ``MGET`` ``read``, in one round
    trip (each round trip costs the API more CPU than Redis time). Returns the index of
    the first counter over its limit (None if none), the seconds to wait, the values."""
    window = int(time.time()) // WINDOW_S
    async with client.pipeline(transaction=False) as pipe:
        pipe.mget(read)
        for key, _ in counters:
            pipe.incr(f"{key}:{window}")
            pipe.expire(f"{key}:{window}", WINDOW_S + 1, nx=True)
        replies = await pipe.execute()
    counts = replies[1::2]
    for n, ((_, limit), count) in enumerate(zip(counters, counts, strict=True)):
        if int(count) > limit:
            return n, max(1, (window + 1) * WINDOW_S - int(time.time())), replies[0]
    return None, None, replies[0]


def address_key(prefix: str, address: str) -> str:
    return f"{prefix}rl:addr:{address}"


def too_many(limit: int, retry_after: int, who: str = "user") -> TooManyRequests:
    return TooManyRequests(
        f"more than {limit} requests a minute from this {who}; wait {retry_after} s",
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
        if context is None:
            await self.app(scope, receive, send)
            return
        key = address_key(context.settings.redis_prefix, address)
        if _has_bearer(scope):
            # A signed-in request: ``current_user`` counts the address with the user in
            # one round trip. Should nothing have counted it (a bearer header on a public
            # route, a token that did not decode), it is counted once it is answered.
            scope.setdefault("state", {})
            await self.app(scope, receive, send)
            if not scope["state"].get(ADDRESS_COUNTED):
                await over_limit(context.redis, key, self.limit)
            return
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


def _has_bearer(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            return bytes(value[:7]).lower() == b"bearer "
    return False
