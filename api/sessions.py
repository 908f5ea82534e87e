"""Sign-in sessions: password sign-in with lockout, token pairs, rotation, logout, revocation.

A sign-in starts a *family*: the access and refresh tokens issued then, and every
pair a refresh issues after it, carry the same family id (``fid``). Revoking a
family (logout, a refresh token presented twice, a role change) ends all of them:
refresh tokens in PostgreSQL (``refresh_tokens.revoked_at``), access tokens by a
Redis key that every authenticated request checks, kept until the last access
token of the family has expired. When Redis does not answer, the check asks
PostgreSQL instead (a logout revokes the family there too), so a Redis outage
neither lets a revoked token through nor stops the API.

Redis keys (under ``BANKFLOW_REDIS_PREFIX``): ``auth:denied-token:<jti>``,
``auth:revoked-family:<fid>``, and ``auth:failed-login:<sha256 of email>`` for
emails that belong to nobody (see ``_unknown_email_attempt``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from redis.exceptions import RedisError

from api import tokens
from api.context import ApiContext
from api.errors import AccountLocked, InvalidCredentials, InvalidToken
from bankflow.identity import store
from bankflow.identity.policy import Attempt, login_delay_s
from schemas.auth import Role, normalize_email
from schemas.transfers import CONTROL_CHARACTERS

log = logging.getLogger(__name__)

#: Failed sign-ins for an unknown email are counted this long (known accounts keep
#: their count until a success), so a guesser cannot tell the two apart by waiting.
UNKNOWN_EMAIL_WINDOW_S = 24 * 3600
INVALID_CREDENTIALS = "the email or the password is wrong"
LOCKED = (
    "too many failed sign-in attempts: signing in with this email is locked for a while; "
    "try again later"
)


async def pause(seconds: float) -> None:
    """Wait before answering a sign-in attempt (tests replace it to record the delays)."""
    await asyncio.sleep(seconds)


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int


def _now() -> datetime:
    return datetime.now(UTC)


def denied_token_key(ctx: ApiContext, token_id: uuid.UUID) -> str:
    return ctx.redis_key("auth", "denied-token", str(token_id))


def revoked_family_key(ctx: ApiContext, family_id: uuid.UUID) -> str:
    return ctx.redis_key("auth", "revoked-family", str(family_id))


def failed_login_key(ctx: ApiContext, email: str) -> str:
    # Hashed: no email address is written to Redis.
    digest = hashlib.sha256(normalize_email(email).encode()).hexdigest()
    return ctx.redis_key("auth", "failed-login", digest)


# ------------------------------------------------------------------ sign-in


async def sign_in(ctx: ApiContext, email: str, password: str) -> TokenPair:
    """Check a password (counted, slowed, locked per PCI DSS 8.3.4) and start a family.

    Whether the email exists shows neither in the answer nor in its timing: unknown
    emails are counted and locked the same way (in Redis) and checked against a
    dummy hash.
    """
    email = normalize_email(email)
    now = _now()
    found = None
    # An email with a control character cannot have been registered (and PostgreSQL
    # refuses NUL): it is an unknown email, answered the same way and in the same time.
    if not CONTROL_CHARACTERS.search(email):
        async with ctx.db_pool.connection() as conn:
            found = await store.begin_sign_in(conn, email, ctx.lockout, now)
    credentials, attempt = found if found else (None, await _unknown_email_attempt(ctx, email))
    if not attempt.allowed:
        remaining = (attempt.locked_until or now) - _now()
        retry_after_s = max(1, math.ceil(remaining.total_seconds()))
        raise AccountLocked(LOCKED, headers={"Retry-After": str(retry_after_s)})
    await pause(attempt.delay_s)
    password_hash = credentials.password_hash if credentials else ctx.dummy_hash
    matches = await ctx.check_password(password_hash, password)
    if credentials is None or not matches or credentials.disabled:
        raise InvalidCredentials(INVALID_CREDENTIALS)
    new_hash = None
    if ctx.hasher.check_needs_rehash(credentials.password_hash):
        new_hash = await ctx.hash_password(password)
    async with ctx.db_pool.connection() as conn, conn.transaction():
        user = await store.sign_in_succeeded(conn, credentials.id, new_hash)
        return await _issue_pair(
            ctx, conn, credentials.id, user.role, user.customer_id, family_id=uuid.uuid4()
        )


async def _unknown_email_attempt(ctx: ApiContext, email: str) -> Attempt:
    """Count a failed sign-in for an email nobody has, exactly as for an account."""
    policy, key = ctx.lockout, failed_login_key(ctx, email)
    failures = 0
    try:
        failures = int(await ctx.redis.get(key) or 0)
        if failures >= policy.attempts_max:
            ttl_s = max(1, int(await ctx.redis.ttl(key)))
            locked_until = _now() + timedelta(seconds=ttl_s)
            return Attempt(allowed=False, failures=failures, locked_until=locked_until, delay_s=0)
        async with ctx.redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            if failures + 1 >= policy.attempts_max:
                pipe.expire(key, policy.lockout_s)  # locked from now on, like an account
            elif failures == 0:
                pipe.expire(key, UNKNOWN_EMAIL_WINDOW_S)
            await pipe.execute()
    except RedisError as exc:  # without Redis, unknown emails are simply not counted
        log.warning("failed-login count for an unknown email not kept: %r", exc)
    return Attempt(
        allowed=True,
        failures=failures + 1,
        locked_until=None,
        delay_s=login_delay_s(policy, failures),
    )


async def _issue_pair(
    ctx: ApiContext,
    conn: store.Conn,
    user_id: uuid.UUID,
    role: Role,
    customer_id: uuid.UUID | None,
    *,
    family_id: uuid.UUID,
) -> TokenPair:
    now_s = int(time.time())
    access, _ = tokens.issue(
        ctx.tokens,
        "access",
        user_id=user_id,
        family_id=family_id,
        now=now_s,
        role=role,
        customer_id=customer_id,
    )
    refresh_token, claims = tokens.issue(
        ctx.tokens, "refresh", user_id=user_id, family_id=family_id, now=now_s
    )
    await store.add_refresh_token(
        conn,
        jti=claims.token_id,
        family_id=family_id,
        user_id=user_id,
        issued_at=datetime.fromtimestamp(claims.issued_at, UTC),
        expires_at=datetime.fromtimestamp(claims.expires_at, UTC),
    )
    return TokenPair(access, refresh_token, ctx.tokens.access_ttl_s)


# ---------------------------------------------------------------- refresh


REFRESH_REFUSED = {
    "unknown": "this refresh token is not known",
    "revoked": "this refresh token was revoked; sign in again",
    "expired": "this refresh token has expired; sign in again",
    "disabled": "this user is disabled",
    "reused": (
        "this refresh token was used before, so a copy of it may be in other hands: "
        "every token of this sign-in is revoked; sign in again"
    ),
}


async def refresh(ctx: ApiContext, refresh_token: str) -> TokenPair:
    """Spend a refresh token for a new pair in the same family (rotation).

    A token presented a second time revokes its whole family: either the client or
    a thief holds a copy, and the server cannot tell which.
    """
    claims = tokens.decode(ctx.tokens, refresh_token, "refresh")
    async with ctx.db_pool.connection() as conn, conn.transaction():
        use = await store.use_refresh_token(conn, claims.token_id, claims.user_id, _now())
        if use.verdict == "ok" and use.role is not None:
            return await _issue_pair(
                ctx, conn, claims.user_id, use.role, use.customer_id, family_id=claims.family_id
            )
        if use.verdict in ("reused", "disabled") and use.family_id is not None:
            await store.revoke_family(conn, use.family_id)
    # Committed: the family is revoked in PostgreSQL whatever happens in Redis.
    if use.verdict in ("reused", "disabled") and use.family_id is not None:
        try:
            await deny_families(ctx, [use.family_id])
        except RedisError as exc:
            log.error("revoked family %s not denied in Redis: %r", use.family_id, exc)
    raise InvalidToken(REFRESH_REFUSED[use.verdict])


# ------------------------------------------------------- logout, revocation


async def deny_families(ctx: ApiContext, families: Iterable[uuid.UUID]) -> None:
    """Make every access token of these families fail from now on (Redis)."""
    # An access token lives at most its TTL (plus the leeway of the expiry check).
    ttl_s = ctx.tokens.access_ttl_s + tokens.LEEWAY_S
    async with ctx.redis.pipeline(transaction=False) as pipe:
        for family_id in families:
            pipe.set(revoked_family_key(ctx, family_id), b"1", ex=ttl_s)
        await pipe.execute()


async def logout(
    ctx: ApiContext, *, token_id: uuid.UUID, family_id: uuid.UUID, expires_at: int
) -> None:
    """End a sign-in: deny the presented access token and revoke its family.

    Redis first: if it fails, nothing is revoked and the client is told to retry,
    rather than told it is signed out while its access token still works.
    """
    ttl_s = max(1, expires_at - int(time.time()) + tokens.LEEWAY_S)
    async with ctx.redis.pipeline(transaction=True) as pipe:
        pipe.set(denied_token_key(ctx, token_id), b"1", ex=ttl_s)
        pipe.set(
            revoked_family_key(ctx, family_id), b"1", ex=ctx.tokens.access_ttl_s + tokens.LEEWAY_S
        )
        await pipe.execute()
    async with ctx.db_pool.connection() as conn:
        await store.revoke_family(conn, family_id)


async def is_revoked(ctx: ApiContext, claims: tokens.Claims) -> bool:
    """Whether an access token was denied (logout) or its family revoked."""
    try:
        denied = await ctx.redis.mget(
            [denied_token_key(ctx, claims.token_id), revoked_family_key(ctx, claims.family_id)]
        )
        return any(value is not None for value in denied)
    except RedisError as exc:
        log.warning("revocation check falls back to PostgreSQL: %r", exc)
    async with ctx.db_pool.connection() as conn:
        return await store.family_revoked(conn, claims.family_id)
