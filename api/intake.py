"""Turning an HTTP request into a transfer request on Kafka, exactly once per key.

The transfer id is derived from the caller and the ``Idempotency-Key`` (DESIGN.md),
so a retried request maps to the same id whatever happens. A record per key in
Redis remembers a fingerprint of the body: the same key with another body is
refused (422), the same key and body answers as the first time did. Only the
request that created the record produces; a concurrent twin waits for it (a few
seconds at most) and, should the first have died before the broker acknowledged,
produces the same message itself: the transfer id makes that harmless downstream.

The Redis record lives a day; the fingerprint is also kept for good in PostgreSQL
(``bankflow.idempotency``) before anything is produced, so the same key with another
body is refused however long after the first request it comes.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from typing import Any, Literal

import orjson
import psycopg
import redis.asyncio
from psycopg_pool import AsyncConnectionPool

from api.context import ApiContext
from api.errors import ApiError
from bankflow import idempotency, logs
from schemas import headers as h
from schemas.topics import TRANSFERS_REQUESTED
from schemas.transfers import TransferRequest, transfer_id_for

#: A key is remembered for a day: retries come within minutes, a day is generous.
IDEMPOTENCY_TTL_S = 86_400
#: A twin request waits this long for the first one to be acknowledged.
PENDING_WAIT_S = 5.0
PENDING_POLL_S = 0.02
#: The API remembers a request it sent for this long, so ``GET /v1/transfers/{id}``
#: answers ``requested`` before the tracker has written the status.
RECENT_TTL_S = 3600


class IdempotencyConflict(ApiError):
    status = 422
    slug = "idempotency-key-reused"
    title = "Idempotency-Key reused with a different request"


class StateUnavailable(ApiError):
    status = 503
    slug = "state-unavailable"
    title = "Service temporarily unavailable"


def fingerprint(kind: str, body: dict[str, Any]) -> str:
    return idempotency.fingerprint(kind, orjson.dumps(body, option=orjson.OPT_SORT_KEYS))


def transfer_id(user_id: uuid.UUID, idempotency_key: str) -> uuid.UUID:
    return transfer_id_for(str(user_id), idempotency_key)


def _key(ctx: ApiContext, user_id: uuid.UUID, idempotency_key: str) -> str:
    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:40]
    return ctx.redis_key("idem", str(user_id), digest)


async def submit(
    ctx: ApiContext,
    pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]],
    *,
    user_id: uuid.UUID,
    idempotency_key: str,
    print_: str,
    request: TransferRequest,
    summary: dict[str, Any],
) -> None:
    """Produce ``request`` once per key; return when the broker has it (or had it before)."""
    key = _key(ctx, user_id, idempotency_key)
    logs.annotate(transfer_id=request.transfer_id)  # the request's log line names it
    trace = logs.traceparent()
    headers: list[tuple[str, str | bytes | None]] = [
        (h.CORRELATION_ID, (request.correlation_id or "").encode())
    ]
    if trace:
        headers.append((h.TRACEPARENT, trace.encode()))
    try:
        state = await _claim(ctx.redis, key, print_)
        if state == "new" or (state == "pending" and not await _wait_sent(ctx.redis, key)):
            # Redis knows nothing (a new key, or its record expired) or the first request
            # died: the durable record decides whether this body may be produced.
            await _remember(ctx.redis, key, pool, scope=f"user:{user_id}",
                            idempotency_key=idempotency_key, print_=print_,
                            transfer_id=request.transfer_id)  # fmt: skip
            await ctx.producer.send(
                ctx.settings.topic(TRANSFERS_REQUESTED),
                key=request.debit_account.encode(),
                value=request.model_dump_json().encode(),
                headers=headers,
            )
            async with ctx.redis.pipeline(transaction=False) as pipe:
                pipe.set(key, _record(print_, "sent"), ex=IDEMPOTENCY_TTL_S)
                pipe.set(
                    ctx.redis_key("transfer", str(request.transfer_id)),
                    orjson.dumps(summary),
                    ex=RECENT_TTL_S,
                )
                await pipe.execute()
    except redis.RedisError as exc:
        raise StateUnavailable(
            "the idempotency store is unavailable; retry with the same Idempotency-Key",
            headers={"Retry-After": "2"},
        ) from exc


async def _remember(
    client: redis.asyncio.Redis,
    key: str,
    pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]],
    *,
    scope: str,
    idempotency_key: str,
    print_: str,
    transfer_id: uuid.UUID,
) -> None:
    """Keep the key's first fingerprint in PostgreSQL; 422 if it was another body.

    A refused request drops the Redis record it just made, so a retry of the first
    body finds the durable record again instead of this body's fingerprint.
    """
    try:
        async with pool.connection() as db:
            await idempotency.remember_async(db, scope, idempotency_key, print_, transfer_id)
    except idempotency.IdempotencyKeyReused as exc:
        raw = await client.get(key)
        if raw is not None and orjson.loads(raw)["fingerprint"] == print_:
            await client.delete(key)
        raise IdempotencyConflict(
            "this Idempotency-Key was already used with a different request; use a new "
            "key for a new transfer"
        ) from exc
    except psycopg.OperationalError as exc:  # PoolTimeout too: PostgreSQL is away
        raise StateUnavailable(
            "the idempotency store is unavailable; retry with the same Idempotency-Key",
            headers={"Retry-After": "2"},
        ) from exc


async def recent(ctx: ApiContext, transfer: uuid.UUID) -> dict[str, Any] | None:
    """What the API remembers of a transfer it sent in the last hour (None if nothing)."""
    try:
        raw = await ctx.redis.get(ctx.redis_key("transfer", str(transfer)))
    except redis.RedisError:
        return None
    return orjson.loads(raw) if raw else None


def _record(print_: str, state: str) -> bytes:
    return orjson.dumps({"fingerprint": print_, "state": state})


async def _claim(
    client: redis.asyncio.Redis, key: str, print_: str
) -> Literal["new", "pending", "sent"]:
    if await client.set(key, _record(print_, "pending"), nx=True, ex=IDEMPOTENCY_TTL_S):
        return "new"
    raw = await client.get(key)
    if raw is None:  # expired in between: claim again
        return await _claim(client, key, print_)
    record = orjson.loads(raw)
    if record["fingerprint"] != print_:
        raise IdempotencyConflict(
            "this Idempotency-Key was already used with a different request; use a new "
            "key for a new transfer"
        )
    state: Literal["pending", "sent"] = record["state"]
    return state


async def _wait_sent(client: redis.asyncio.Redis, key: str) -> bool:
    """Wait for the first request with this key to be acknowledged; False if it was not."""
    deadline = asyncio.get_running_loop().time() + PENDING_WAIT_S
    while asyncio.get_running_loop().time() < deadline:
        raw = await client.get(key)
        if raw is None:  # the first request was refused (or the record expired)
            return False
        if orjson.loads(raw)["state"] == "sent":
            return True
        await asyncio.sleep(PENDING_POLL_S)
    return False
