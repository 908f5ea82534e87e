"""What the API's requests share: clients, the password hasher, token and lockout settings.

Built once per process in the app's lifespan (``ApiContext.open``) and kept on
``app.state.context``; routes reach it through the dependencies in ``api.deps``.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from typing import Any

import psycopg
import redis.asyncio
from argon2 import PasswordHasher
from psycopg_pool import AsyncConnectionPool

from api.kafka import AsyncProducer
from api.tokens import TokenConfig
from bankflow.bootstrap import db_pool_async, redis_async
from bankflow.identity.passwords import password_hasher, verify_password
from bankflow.identity.policy import LockoutPolicy
from bankflow.settings import Settings

#: Redis answers in well under a millisecond; a request waits no longer than this for it.
REDIS_TIMEOUT_S = 1.0
#: argon2id with the default profile takes 64 MiB and about 50 ms of a core per hash:
#: at most this many run at once, which bounds memory at 256 MiB and keeps the event
#: loop's threads free for everything else.
HASHES_AT_ONCE_MAX = 4


@dataclass
class ApiContext:
    settings: Settings
    db_pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]]
    redis: redis.asyncio.Redis
    tokens: TokenConfig
    lockout: LockoutPolicy
    hasher: PasswordHasher
    #: A hash of a random password: an unknown email is checked against it, so it
    #: costs the same time as a known one.
    dummy_hash: str
    hash_slots: asyncio.Semaphore
    #: Produces transfer requests; the broker's acknowledgement is awaited per request.
    producer: AsyncProducer
    #: Who owns each account asked about: an account never changes owner, so the answer
    #: can be kept (bounded: ``ACCOUNT_OWNERS_MAX``, oldest dropped first).
    account_owners: dict[Any, Any] = field(default_factory=dict)
    #: The last look at Kafka, PostgreSQL and Redis (``api.app._watch_dependencies``),
    #: what ``/readyz`` answers; empty until the first look.
    readiness: dict[str, str] = field(default_factory=dict)

    @classmethod
    async def open(cls, settings: Settings) -> ApiContext:
        pool = db_pool_async(settings, max_size=settings.api_db_pool_max)
        # Not waiting: the API starts (and /readyz says what is missing) while PostgreSQL
        # is still coming up.
        await pool.open(wait=False)
        hasher = password_hasher(settings.password_hash_profile)
        dummy_hash = await asyncio.to_thread(hasher.hash, secrets.token_urlsafe(16))
        return cls(
            settings=settings,
            db_pool=pool,
            redis=redis_async(
                settings, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
            ),
            tokens=TokenConfig.from_settings(settings),
            lockout=LockoutPolicy(
                attempts_max=settings.login_lockout_attempts,
                lockout_s=settings.login_lockout_s,
                slowdown_after=settings.login_slowdown_after_attempts,
                delay_base_ms=settings.login_delay_base_ms,
                delay_max_ms=settings.login_delay_max_ms,
            ),
            hasher=hasher,
            dummy_hash=dummy_hash,
            hash_slots=asyncio.Semaphore(HASHES_AT_ONCE_MAX),
            producer=AsyncProducer(settings),
        )

    async def close(self) -> None:
        await asyncio.to_thread(self.producer.close)
        await self.db_pool.close()
        await self.redis.aclose()

    def redis_key(self, *parts: str) -> str:
        return self.settings.redis_prefix + ":".join(parts)

    async def hash_password(self, password: str) -> str:
        async with self.hash_slots:
            return await asyncio.to_thread(self.hasher.hash, password)

    async def check_password(self, password_hash: str, password: str) -> bool:
        async with self.hash_slots:
            return await asyncio.to_thread(verify_password, self.hasher, password_hash, password)
