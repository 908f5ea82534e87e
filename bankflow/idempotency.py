"""The idempotency_keys table: which request a caller's key was first used for, for good.

A transfer id is derived from the caller and the idempotency key, so the same key
always names the same transfer. Whoever reuses a key with another request must be
told so, also long after the short-lived record (the API's, in Redis) expired: the
first request's fingerprint is kept here, with its transfer id, before the request
is produced. The API (async) and ``bankflow deposit`` (sync) share the SQL.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any, Final

import psycopg

from bankflow.errors import BankflowError

#: The first use of a key wins; a later one only reads what the first stored.
REMEMBER: Final = (
    "insert into idempotency_keys (scope, key_digest, fingerprint, transfer_id) "
    "values (%s, %s, %s, %s) on conflict (scope, key_digest) do nothing returning fingerprint"
)
RECALL: Final = "select fingerprint from idempotency_keys where scope = %s and key_digest = %s"


class IdempotencyKeyReused(BankflowError):
    """The key was first used for another request (a transfer's body, a batch's file);
    this one would be answered as that one. The one error of that meaning: the API's
    transfers, ``bankflow deposit`` and batch ingest all raise it."""


def key_digest(idempotency_key: str) -> str:
    """The key as stored: its SHA-256, so the client's own text is not kept."""
    return hashlib.sha256(idempotency_key.encode()).hexdigest()


def fingerprint(kind: str, canonical_body: bytes) -> str:
    """A request's fingerprint: its kind and its body, serialised canonically."""
    return hashlib.sha256(kind.encode() + b"\0" + canonical_body).hexdigest()


def remember(
    conn: psycopg.Connection[Any],
    scope: str,
    idempotency_key: str,
    print_: str,
    transfer_id: uuid.UUID,
) -> None:
    """Keep the first request of a key; raise ``IdempotencyKeyReused`` for another one."""
    params = (scope, key_digest(idempotency_key), print_, transfer_id)
    with conn.transaction():
        row = conn.execute(REMEMBER, params).fetchone()
        if row is None:
            row = conn.execute(RECALL, params[:2]).fetchone()
    check(row, print_)


async def remember_async(
    conn: psycopg.AsyncConnection[Any],
    scope: str,
    idempotency_key: str,
    print_: str,
    transfer_id: uuid.UUID,
) -> None:
    """``remember`` for the API's connections."""
    params = (scope, key_digest(idempotency_key), print_, transfer_id)
    async with conn.transaction():
        row = await (await conn.execute(REMEMBER, params)).fetchone()
        if row is None:
            row = await (await conn.execute(RECALL, params[:2])).fetchone()
    check(row, print_)


def check(row: tuple[Any, ...] | None, print_: str) -> None:
    if row is not None and row[0] != print_:
        raise IdempotencyKeyReused(
            "this idempotency key was already used with a different request; use a new key "
            "for a new transfer"
        )
