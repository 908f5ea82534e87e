"""The balance cache agent: ``transfers.posted`` events keep Redis balances current.

A faust-streaming agent (DESIGN.md: side agents whose effects are idempotent, where
at-least-once is enough). It takes events in batches, skips event ids it has
processed already, reads the touched accounts' rows from PostgreSQL in one query,
and stores each as a ``BalanceSnapshot`` through the cache's version guard
(``bankflow.balance_cache``), so an entry only ever moves to a newer version.

Why PostgreSQL and not the balances the event carries: every event of one poster
batch has the same ``occurred_at``, so two events touching one account cannot be
ordered by their time, and the event names neither the entry id nor the pending
amounts and overdraft the balance view needs. The row's ``version`` orders
snapshots exactly; the relay publishes an event only after its batch committed, so
the row read is at least as new as the event. Offsets are committed (faust acks)
only after a batch is stored, so a crash processes it again, which changes nothing.

``bankflow run cache`` runs it; faust's consumer group is ``<topic prefix>bankflow-cache``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import faust
import psycopg
import redis.asyncio
from pydantic import ValidationError
from redis.exceptions import RedisError

from bankflow.balance_cache import BalanceCache
from bankflow.bootstrap import db_connect_async, redis_async
from bankflow.ledger.account_store import balance_snapshots
from bankflow.metrics import StageMetrics, registered
from bankflow.observability import serve_metrics
from bankflow.runtime import configure_logging
from bankflow.settings import Settings
from bankflow.streaming import is_transient
from bankflow.streaming.backoff import BACKOFF_S
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
    return f"{settings.topic_prefix}bankflow-cache"


class CacheUpdater:
    """Applies batches of posted events to the cache; owns its PostgreSQL connection."""

    def __init__(self, settings: Settings, client: redis.asyncio.Redis) -> None:
        self.settings = settings
        self.cache = BalanceCache(client, settings.redis_prefix)
        self.conn: psycopg.AsyncConnection[Any] | None = None
        self.stored = 0
        #: Set once the worker runs the agent; cleared while a batch is being retried.
        self.started = False
        self.failing = False

    def ready(self) -> bool:
        """For ``/readyz``: the agent runs and its last batch was stored."""
        return self.started and not self.failing

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

    async def apply_contained(self, values: Sequence[bytes]) -> None:
        """``apply``; if the batch raises for anything but an outage, each event alone, and
        the ones that still raise are skipped with their reason (counted as poison).

        The cache is a view: an event it cannot apply leaves its accounts to PostgreSQL
        (the API reads the ledger on a miss), and the tracker, which reads the same
        topic, dead-letters events that do not decode.
        """
        try:
            await self.apply_with_retries(values)
            return
        except Exception as exc:
            if is_transient(exc):
                raise
        for value in values:
            try:
                await self.apply_with_retries([value])
            except Exception as exc:
                if is_transient(exc):
                    raise
                registered(StageMetrics).poison.labels("cache", type(exc).__name__).inc()
                log.error("skipping an event the cache cannot apply (%s: %s)",
                          type(exc).__name__, exc)  # fmt: skip

    async def apply_with_retries(self, values: Sequence[bytes]) -> None:
        """``apply``, riding out PostgreSQL or Redis outages (0.5 s doubling to 30 s)."""
        for attempt, wait_s in enumerate((*BACKOFF_S, *BACKOFF_S[-1:] * 3, None)):
            try:
                await self.apply(values)
                self.failing = False
                return
            except (psycopg.OperationalError, RedisError) as exc:
                self.failing = True
                if wait_s is None:
                    raise
                log.warning("attempt %d failed (%r); retrying in %s s", attempt + 1, exc, wait_s)
                if self.conn is not None and isinstance(exc, psycopg.OperationalError):
                    await self.conn.close()
                await asyncio.sleep(wait_s)

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


def build_app(settings: Settings) -> tuple[faust.App, CacheUpdater]:
    """The faust app with its one agent, and what the agent updates the cache with."""
    app = faust.App(
        group_id(settings),
        broker=[f"kafka://{address}" for address in settings.kafka_bootstrap.split(",")],
        store="memory://",
        web_enabled=False,
        topic_partitions=1,  # its own assignor topic only; the source topic exists already
        topic_replication_factor=settings.topic_replication,
        consumer_auto_offset_reset="earliest",
    )
    source = app.topic(settings.topic(TRANSFERS_POSTED), value_type=bytes, value_serializer="raw")
    client = redis_async(
        settings, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
    )
    updater = CacheUpdater(settings, client)

    @app.agent(source)
    async def keep_balances(stream: faust.StreamT[bytes]) -> None:
        # take() acks a batch's events only after this body returned for it.
        async for values in stream.take(BATCH_MAX, within=BATCH_WAIT_S):
            try:
                await updater.apply_contained(values)
            except (psycopg.OperationalError, RedisError) as exc:
                # Out of retries: stop the worker (exit non-zero) so its supervisor
                # restarts it from the committed offsets; nothing is acked.
                await app.crash(exc)
                raise

    async def announce() -> None:
        updater.started = True
        log.info("cache agent: group %s, reading %s", app.conf.id, source.get_topic_name())

    app.task(announce)  # runs once the worker has started (and set up logging)
    return app, updater


def run(settings: Settings) -> None:
    """``bankflow run cache``: the agent as a faust worker until SIGTERM or SIGINT."""
    app, updater = build_app(settings)
    # Logging as every service has it; the worker leaves it alone (and shows no
    # terminal spinner) and stops on SIGTERM or SIGINT. faust's own start-up chatter
    # is long, so its loggers and its Kafka client's keep to warnings.
    configure_logging()
    for noisy in ("faust", "mode", "aiokafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # /metrics (the process's own), /healthz and /readyz, as every service serves them.
    metrics = serve_metrics(settings.cache_metrics_port, updater.ready, host=settings.metrics_host)
    worker = faust.Worker(app, quiet=True, override_logging=False)
    worker.spinner = None
    try:
        worker.execute_from_commandline()
    finally:
        metrics.close()
