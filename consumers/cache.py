"""The balance cache agent: ``transfers.posted`` events keep Redis balances current.

A stage on the runtime (``bankflow.streaming``) that commits its Kafka offsets after
its effect (``AfterEffect``): effects are idempotent, so at least once is enough. It
takes events in batches, skips event ids it has processed already, reads the touched
accounts' rows from PostgreSQL in one query, and stores each as a
``BalanceSnapshot`` through the cache's version guard (``bankflow.balance_cache``),
so an entry only ever moves to a newer version.

Why PostgreSQL and not the balances the event carries: every event of one poster
batch has the same ``occurred_at``, so two events touching one account cannot be
ordered by their time, and the event names neither the entry id nor the pending
amounts and overdraft the balance view needs. The row's ``version`` orders
snapshots exactly; the relay publishes an event only after its batch committed, so
the row read is at least as new as the event. Offsets are committed only after a
batch is stored, so a crash processes it again, which changes nothing.

The cache (``BalanceCache``) and the ledger reads are asyncio code the API shares;
the stage drives them on an event loop of its own, one batch at a time.

``bankflow run cache`` runs it; its consumer group is ``<topic prefix>bankflow-cache``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import psycopg
import redis.asyncio
from pydantic import ValidationError

from bankflow.balance_cache import BalanceCache
from bankflow.bootstrap import db_connect_async, redis_async
from bankflow.ledger.account_store import balance_snapshots
from bankflow.registry import service
from bankflow.settings import Settings
from bankflow.streaming import AfterEffect, Batch, Output, Stage, StageRunner, serve
from bankflow.streaming.kafka import stage_consumer
from schemas.topics import TRANSFERS_POSTED
from schemas.transfers import TransferEvent

log = logging.getLogger("bankflow.cache")

#: Events taken at once: one PostgreSQL query and one Redis round trip per batch.
BATCH_MAX = 500
#: A batch is cut after this long, so a single event reaches the cache within it.
BATCH_WAIT_S = 0.05
#: Redis answers in well under a millisecond; a call waits no longer than this.
REDIS_TIMEOUT_S = 2.0


def group_id(settings: Settings) -> str:
    """The agent's consumer group, as the service registry names it."""
    return service("cache").consumer_group(settings)


class CacheUpdater:
    """Applies batches of posted events to the cache; owns its PostgreSQL connection."""

    def __init__(self, settings: Settings, client: redis.asyncio.Redis) -> None:
        self.settings = settings
        self.cache = BalanceCache(client, settings.redis_prefix)
        self.conn: psycopg.AsyncConnection[Any] | None = None
        self.stored = 0

    async def _db(self) -> psycopg.AsyncConnection[Any]:
        if self.conn is None or self.conn.closed:
            self.conn = await db_connect_async(
                self.settings, application_name="bankflow-cache", autocommit=True
            )
        return self.conn

    async def apply(self, values: Sequence[bytes]) -> int:
        """Bring the cache up to date for these events; how many entries moved forward."""
        events = _decode(values)
        if not events:
            return 0
        unseen = await self.cache.unseen([e.event_id for e in events])
        fresh = [e for e, new in zip(events, unseen, strict=True) if new]
        if not fresh:
            return 0
        accounts = sorted({a for e in fresh for a in (e.debit_account_id, e.credit_account_id)})
        snapshots = await balance_snapshots(await self._db(), accounts)
        stored = sum(await self.cache.store(snapshots))
        # Marked only once the entries are stored: a crash before this processes the
        # events again, which stores nothing older.
        await self.cache.mark_seen(e.event_id for e in fresh)
        self.stored += stored
        return stored

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()


def _decode(values: Sequence[bytes]) -> list[TransferEvent]:
    events = []
    for value in values:
        try:
            event = TransferEvent.model_validate_json(value)
        except ValidationError as exc:
            # Not money: a malformed event is the relay's bug, logged, and the cache
            # falls back to PostgreSQL for whatever it would have touched.
            log.error("skipping an event that does not decode: %s", exc)
            continue
        if event.status == "posted":
            events.append(event)
    return events


class CacheAgent(Stage):
    """The stage around ``CacheUpdater``: one batch of events, applied on its event loop."""

    name = "cache"
    commit = AfterEffect()
    batch_max = BATCH_MAX
    batch_wait_s = BATCH_WAIT_S

    def __init__(self, updater: CacheUpdater, loop: asyncio.AbstractEventLoop) -> None:
        self.updater = updater
        self.loop = loop

    def topics(self) -> list[str]:
        return [TRANSFERS_POSTED]

    def process(self, batch: Batch) -> list[Output]:
        values = [m.value() or b"" for m in batch.messages]
        self.loop.run_until_complete(self.updater.apply(values))
        return []

    def reconnect(self) -> None:
        # The connection is opened again on the next batch (``CacheUpdater._db``).
        self.loop.run_until_complete(self.updater.close())

    def close(self) -> None:
        self.loop.run_until_complete(self.updater.close())
        self.loop.run_until_complete(self.updater.cache.client.aclose())
        self.loop.close()
        log.info("cache agent stored %d entries", self.updater.stored)


def build(settings: Settings) -> StageRunner[CacheAgent]:
    """The composition root: the agent's consumer, Redis client and event loop."""
    loop = asyncio.new_event_loop()
    client = redis_async(
        settings, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
    )
    consumer = stage_consumer(settings, group_id=group_id(settings))
    agent = CacheAgent(CacheUpdater(settings, client), loop)
    return StageRunner(settings, agent, consumer)


def run(settings: Settings) -> None:
    """``bankflow run cache``: keep Redis balances current until SIGTERM or SIGINT."""
    serve(settings, "cache", lambda: build(settings), settings.cache_metrics_port)
