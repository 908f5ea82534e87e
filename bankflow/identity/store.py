"""Users and refresh tokens in PostgreSQL (``users``, ``refresh_tokens``; migration 0005).

Async (psycopg), for the API; the CLI runs the same functions with ``asyncio.run``.
Functions that change several rows open their own transaction; callers pass a
connection in autocommit mode (the API's pool and ``db_connect_async`` give one).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import psycopg
from psycopg.rows import class_row

from bankflow.identity.errors import EmailTaken, RoleChangeRefused, UserNotFound
from bankflow.identity.policy import Attempt, LockoutPolicy, begin_attempt
from schemas.auth import Role, normalize_email

Conn = psycopg.AsyncConnection[Any]

#: A customer's name is in ``customers``; a member of staff's in ``users``.
USER_COLUMNS = (
    "u.id, u.email, u.role, u.customer_id, coalesce(u.full_name, c.full_name) as full_name, "
    "u.disabled, u.locked_until, u.created_at"
)
USERS_FROM = "users u left join customers c on c.id = u.customer_id"


@dataclass(frozen=True)
class User:
    id: uuid.UUID
    email: str
    role: Role
    customer_id: uuid.UUID | None
    full_name: str | None
    disabled: bool
    locked_until: datetime | None
    created_at: datetime


async def create_user(
    conn: Conn, *, email: str, password_hash: str, role: Role, full_name: str | None
) -> User:
    """A new user; a customer also gets their row in ``customers`` (which holds the name)."""
    email = normalize_email(email)
    user_id = uuid.uuid4()
    customer_id = uuid.uuid4() if role == "customer" else None
    try:
        async with conn.transaction():
            if customer_id is not None:
                await conn.execute(
                    "insert into customers (id, kind, full_name) values (%s, 'person', %s)",
                    (customer_id, full_name),
                )
            await conn.execute(
                "insert into users (id, email, password_hash, role, customer_id, full_name)"
                " values (%s, %s, %s, %s, %s, %s)",
                (
                    user_id,
                    email,
                    password_hash,
                    role,
                    customer_id,
                    None if customer_id else full_name,
                ),
            )
    except psycopg.errors.UniqueViolation as exc:
        raise EmailTaken(f"a user with the email {email!r} exists already") from exc
    user = await get_user(conn, user_id)
    assert user is not None  # noqa: S101 - inserted just above
    return user


async def get_user(conn: Conn, user_id: uuid.UUID) -> User | None:
    async with conn.cursor(row_factory=class_row(User)) as cur:
        await cur.execute(f"select {USER_COLUMNS} from {USERS_FROM} where u.id = %s", (user_id,))  # noqa: S608
        return await cur.fetchone()


async def list_users(
    conn: Conn, *, role: Role | None = None, after_id: uuid.UUID | None = None, limit: int = 50
) -> list[User]:
    """Users in email order, after the user ``after_id`` (keyset paging by email).

    The cursor is a user id rather than an email, so no address appears in a URL.
    """
    async with conn.cursor(row_factory=class_row(User)) as cur:
        await cur.execute(
            f"select {USER_COLUMNS} from {USERS_FROM}"  # noqa: S608 - constant column lists
            " where (%(role)s::text is null or u.role = %(role)s)"
            "   and (%(after)s::uuid is null"
            "        or u.email > (select email from users where id = %(after)s::uuid))"
            " order by u.email limit %(limit)s",
            {"role": role, "after": after_id, "limit": limit},
        )
        return await cur.fetchall()


async def change_role(
    conn: Conn,
    user_id: uuid.UUID,
    role: Role,
    deny: Callable[[list[uuid.UUID]], Awaitable[None]] | None = None,
) -> User:
    """Give a member of staff another staff role and revoke their sign-in families.

    ``deny`` is called with the revoked families before the change commits (the API
    denies their access tokens in Redis there): if it fails, nothing changes. The
    user row stays locked until the end, so a sign-in or refresh running at the same
    time waits and then issues tokens with the new role.
    """
    async with conn.transaction():
        row = await (
            await conn.execute("select role from users where id = %s for update", (user_id,))
        ).fetchone()
        if row is None:
            raise UserNotFound(f"no user {user_id}")
        if (row[0] == "customer") != (role == "customer"):
            raise RoleChangeRefused(
                "a customer's user stays a customer and staff stay staff; "
                "create a separate user instead"
            )
        await conn.execute("update users set role = %s where id = %s", (role, user_id))
        families = await revoke_user_families(conn, user_id)
        if deny is not None:
            await deny(families)
    user = await get_user(conn, user_id)
    assert user is not None  # noqa: S101 - locked and updated above
    return user


# ------------------------------------------------------------------ sign-in


@dataclass(frozen=True)
class Credentials:
    id: uuid.UUID
    password_hash: str
    disabled: bool
    failed_logins: int
    locked_until: datetime | None


async def begin_sign_in(
    conn: Conn, email: str, policy: LockoutPolicy, now: datetime
) -> tuple[Credentials, Attempt] | None:
    """Count a sign-in attempt before its password is checked; None for an unknown email."""
    async with conn.transaction():
        async with conn.cursor(row_factory=class_row(Credentials)) as cur:
            await cur.execute(
                "select id, password_hash, disabled, failed_logins, locked_until"
                " from users where email = %s for update",
                (normalize_email(email),),
            )
            found = await cur.fetchone()
        if found is None:
            return None
        attempt = begin_attempt(policy, found.failed_logins, found.locked_until, now)
        if attempt.allowed:
            await conn.execute(
                "update users set failed_logins = %s, locked_until = %s where id = %s",
                (attempt.failures, attempt.locked_until, found.id),
            )
    return found, attempt


@dataclass(frozen=True)
class SignedIn:
    role: Role
    customer_id: uuid.UUID | None


async def sign_in_succeeded(
    conn: Conn, user_id: uuid.UUID, new_password_hash: str | None = None
) -> SignedIn:
    """The password was right: clear the failure count (and store a stronger hash)."""
    row = await (
        await conn.execute(
            "update users set failed_logins = 0, locked_until = null,"
            " password_hash = coalesce(%s, password_hash)"
            " where id = %s returning role, customer_id",
            (new_password_hash, user_id),
        )
    ).fetchone()
    if row is None:
        raise UserNotFound(f"no user {user_id}")
    return SignedIn(role=row[0], customer_id=row[1])


# ----------------------------------------------------------- refresh tokens


async def add_refresh_token(
    conn: Conn,
    *,
    jti: uuid.UUID,
    family_id: uuid.UUID,
    user_id: uuid.UUID,
    issued_at: datetime,
    expires_at: datetime,
) -> None:
    await conn.execute(
        "insert into refresh_tokens (jti, family_id, user_id, issued_at, expires_at)"
        " values (%s, %s, %s, %s, %s)",
        (jti, family_id, user_id, issued_at, expires_at),
    )


RefreshVerdict = Literal["ok", "reused", "revoked", "unknown", "expired", "disabled"]


@dataclass(frozen=True)
class RefreshUse:
    verdict: RefreshVerdict
    family_id: uuid.UUID | None = None
    role: Role | None = None
    customer_id: uuid.UUID | None = None


async def use_refresh_token(
    conn: Conn, jti: uuid.UUID, user_id: uuid.UUID, now: datetime
) -> RefreshUse:
    """Spend a refresh token; call inside a transaction (``conn.transaction()``).

    ``reused`` means the token was spent before: someone holds a copy, so the caller
    revokes its family. The token row is locked, so two refreshes with one token
    cannot both succeed; the user row is share-locked against a role change.
    """
    row = await (
        await conn.execute(
            "select r.family_id, r.used_at, r.revoked_at, r.expires_at, u.role, u.customer_id,"
            "       u.disabled,"
            "       exists (select 1 from refresh_tokens f"
            "               where f.family_id = r.family_id and f.revoked_at is not null)"
            " from refresh_tokens r join users u on u.id = r.user_id"
            " where r.jti = %s and r.user_id = %s"
            " for update of r for share of u",
            (jti, user_id),
        )
    ).fetchone()
    if row is None:
        return RefreshUse("unknown")
    family_id, used_at, revoked_at, expires_at, role, customer_id, disabled, family_revoked = row
    if revoked_at is not None or family_revoked:
        return RefreshUse("revoked", family_id)
    if used_at is not None:
        return RefreshUse("reused", family_id)
    if expires_at <= now:
        return RefreshUse("expired", family_id)
    if disabled:
        return RefreshUse("disabled", family_id)
    await conn.execute("update refresh_tokens set used_at = %s where jti = %s", (now, jti))
    return RefreshUse("ok", family_id, role, customer_id)


async def revoke_family(conn: Conn, family_id: uuid.UUID) -> None:
    await conn.execute(
        "update refresh_tokens set revoked_at = now() where family_id = %s and revoked_at is null",
        (family_id,),
    )


async def revoke_user_families(conn: Conn, user_id: uuid.UUID) -> list[uuid.UUID]:
    """Revoke every live family of a user; returns them."""
    cur = await conn.execute(
        "update refresh_tokens set revoked_at = now()"
        " where user_id = %s and revoked_at is null returning family_id",
        (user_id,),
    )
    return sorted({row[0] for row in await cur.fetchall()})


async def family_revoked(conn: Conn, family_id: uuid.UUID) -> bool:
    """Whether a sign-in family was revoked (logout, reuse, role change)."""
    row = await (
        await conn.execute(
            "select exists (select 1 from refresh_tokens"
            " where family_id = %s and revoked_at is not null)",
            (family_id,),
        )
    ).fetchone()
    return bool(row and row[0])
