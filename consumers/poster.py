"""The ledger poster: ``transfers.accepted`` into PostgreSQL, exactly once.

Kafka cannot commit PostgreSQL, so the poster keeps its consumer offsets in
PostgreSQL, in the same transaction as the ledger rows they produced, and on
partition assignment seeks to them rather than to Kafka's. It also commits them
to Kafka after the fact, for tools that read Kafka's group offsets; those are
never used to decide where to resume.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition
from pydantic import ValidationError

from bankflow.bootstrap import db_connect, kafka_consumer
from bankflow.errors import BankflowError
from bankflow.ledger.errors import OffsetsMoved
from bankflow.ledger.store import (
    BatchSummary,
    ConsumedTransfer,
    DeadLetter,
    OffsetRange,
    TopicPartitionKey,
    Topics,
    load_offsets,
    write_batch,
)
from bankflow.metrics import NO_REASON, PosterMetrics, registered
from bankflow.observability import connection_alive, serve_metrics
from bankflow.runtime import configure_logging, on_stop_signal, run_until_stopped
from bankflow.settings import Settings
from schemas.errors import describe
from schemas.topics import TRANSFERS_ACCEPTED, TRANSFERS_DLQ, TRANSFERS_FAILED, TRANSFERS_POSTED
from schemas.transfers import AcceptedTransfer

log = logging.getLogger("bankflow.poster")

#: librdkafka's session timeout: a poster that stops heartbeating loses its partitions
#: after this long. Shorter than Kafka's 45 s so a dead poster is replaced quickly.
SESSION_TIMEOUT_MS = 10_000


#: Single messages the database may refuse in a row before the poster halts (see
#: ``_dead_letter_refused``). Real poison is rare and scattered; ten in a row is not.
REFUSED_IN_A_ROW_MAX = 10


class PosterHalted(BankflowError):
    """The poster stopped on purpose: continuing would dead-letter good messages."""


@dataclass
class PosterStats:
    batches: int = 0
    posted: int = 0
    failed: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    offsets_moved: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def add(self, summary: BatchSummary) -> None:
        self.batches += 1
        self.posted += summary.posted
        self.failed += summary.failed
        self.duplicates += summary.duplicates
        self.dead_letters += summary.dead_letters
        for reason, count in summary.failure_reasons.items():
            self.reasons[reason] = self.reasons.get(reason, 0) + count


class Poster:
    """One poster instance: a consumer in the poster group and a database connection."""

    def __init__(
        self, settings: Settings, consumer: Consumer, conn: psycopg.Connection[Any]
    ) -> None:
        self.settings = settings
        self.consumer = consumer
        self.conn = conn
        self.group_id = settings.poster_group
        self.topics = Topics(
            posted=settings.topic(TRANSFERS_POSTED),
            failed=settings.topic(TRANSFERS_FAILED),
            dlq=settings.topic(TRANSFERS_DLQ),
        )
        #: Where each owned partition's stored offset stands (None: nothing stored yet).
        self.expected: dict[TopicPartitionKey, int | None] = {}
        self.stats = PosterStats()
        self.stopping = False
        self.refused_in_a_row = 0
        self.metrics = registered(PosterMetrics)

    def ready(self) -> bool:
        """Ready while it owns partitions and its database connection is alive."""
        return bool(self.expected) and connection_alive(self.conn)

    def subscribe(self) -> None:
        self.consumer.subscribe(
            [self.settings.topic(TRANSFERS_ACCEPTED)],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(p.topic, p.partition) for p in partitions]
        stored = load_offsets(self.conn, self.group_id, keys)
        for p in partitions:
            offset = stored.get((p.topic, p.partition))
            p.offset = offset if offset is not None else OFFSET_BEGINNING
            self.expected[(p.topic, p.partition)] = offset
        consumer.assign(partitions)
        log.info(
            "assigned %s", ", ".join(f"{p.topic}[{p.partition}]@{p.offset}" for p in partitions)
        )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for p in partitions:
            self.expected.pop((p.topic, p.partition), None)
        consumer.unassign()
        log.info("revoked %s", ", ".join(f"{p.topic}[{p.partition}]" for p in partitions))

    def run(self) -> None:
        """Post batches until asked to stop (SIGTERM, SIGINT or ``stopping``)."""
        self.subscribe()
        run_until_stopped(self.poll_and_post, lambda: self.stopping, self._reconnect, log)

    def poll_and_post(self) -> int:
        """Consume one batch and post it; returns the number of messages handled."""
        messages = self.consumer.consume(
            num_messages=self.settings.poster_batch_max,
            timeout=self.settings.poster_batch_wait_ms / 1000,
        )
        messages = [m for m in messages if self._usable(m)]
        if not messages:
            return 0
        try:
            self._post(messages)
        except OffsetsMoved as exc:
            self.stats.offsets_moved += 1
            log.warning("%s; re-reading the stored offsets", exc)
            self._rewind(stored=True)
        except psycopg.OperationalError:
            self._rewind(stored=False)
            raise
        return len(messages)

    def _usable(self, message: Message) -> bool:
        error = message.error()
        if error is None:
            return (message.topic(), message.partition()) in self.expected
        if error.code() != KafkaError._PARTITION_EOF:
            log.error("consumer error: %s", error)
        return False

    def _post(self, messages: Sequence[Message]) -> None:
        """Post ``messages``; a batch the database refuses is split to find the culprit."""
        transfers, letters, ranges = self._decode(messages)
        started = time.monotonic()
        try:
            summary = write_batch(self.conn, self.group_id, ranges, transfers, letters, self.topics)
        except (psycopg.errors.IntegrityError, psycopg.errors.DataError) as exc:
            if len(messages) == 1:
                self._dead_letter_refused(messages[0], exc)
                return
            half = len(messages) // 2
            log.warning("the database refused a batch of %d (%s); splitting it", len(messages), exc)
            self._post(messages[:half])
            self._post(messages[half:])
            return
        self._advance(ranges)
        self.stats.add(summary)
        self._observe(len(messages), summary, started, [d.error_class for d in letters])
        self.refused_in_a_row = 0

    def _observe(
        self, size: int, summary: BatchSummary, started: float, dead: Sequence[str]
    ) -> None:
        """A committed batch's metrics; latency runs from each request to this commit."""
        m = self.metrics
        m.commit_duration.observe(time.monotonic() - started)
        m.batch_size.observe(size)
        m.transfers.labels("posted", NO_REASON).inc(summary.posted)
        for reason, count in summary.failure_reasons.items():
            m.transfers.labels("failed", reason).inc(count)
        if summary.duplicates:
            m.transfers.labels("duplicate", NO_REASON).inc(summary.duplicates)
        for error_class in dead:
            m.transfers.labels("dead_letter", error_class).inc()
        for currency, minor in summary.posted_minor.items():
            m.posted_amount.labels(currency).inc(minor)
        now = time.time()
        for requested_at in summary.posted_requested_at:
            m.request_to_posted.observe(max(0.0, now - requested_at.timestamp()))

    def _dead_letter_refused(self, message: Message, exc: Exception) -> None:
        """One message the database refuses on its own goes to the dead-letter topic.

        Many in a row, with nothing posted between them, is not bad input but a broken
        database or deployment (a migration missing, a constraint added): the poster
        halts instead of dead-lettering the whole stream.
        """
        self.refused_in_a_row += 1
        if self.refused_in_a_row > REFUSED_IN_A_ROW_MAX:
            raise PosterHalted(
                f"the database refused {REFUSED_IN_A_ROW_MAX} messages in a row, the last "
                f"with {type(exc).__name__}: {exc}. This looks like a schema or deployment "
                "problem, not bad messages; stopping. The ones already dead-lettered can be "
                "replayed once it is fixed."
            )
        topic, partition, offset = position(message)
        letter = DeadLetter(
            topic,
            partition,
            offset,
            message.key(),
            message.value(),
            type(exc).__name__,
            f"database refused it: {exc}",
        )
        ranges = {(topic, partition): OffsetRange(self.expected[(topic, partition)], offset + 1)}
        started = time.monotonic()
        summary = write_batch(self.conn, self.group_id, ranges, [], [letter], self.topics)
        self._advance(ranges)
        self.stats.add(summary)
        self._observe(1, summary, started, [letter.error_class])

    def _decode(
        self, messages: Sequence[Message]
    ) -> tuple[list[ConsumedTransfer], list[DeadLetter], dict[TopicPartitionKey, OffsetRange]]:
        transfers: list[ConsumedTransfer] = []
        letters: list[DeadLetter] = []
        last: dict[TopicPartitionKey, int] = {}
        for m in messages:
            topic, partition, offset = position(m)
            last[(topic, partition)] = offset
            try:
                transfer = AcceptedTransfer.model_validate_json(m.value() or b"")
            except ValidationError as exc:
                letters.append(
                    DeadLetter(
                        topic,
                        partition,
                        offset,
                        m.key(),
                        m.value(),
                        "PoisonMessage",
                        describe(exc),
                    )
                )
                continue
            transfers.append(ConsumedTransfer(transfer, topic, partition, offset))
        ranges = {k: OffsetRange(self.expected[k], offset + 1) for k, offset in last.items()}
        return transfers, letters, ranges

    def _advance(self, ranges: dict[TopicPartitionKey, OffsetRange]) -> None:
        for key, offset_range in ranges.items():
            self.expected[key] = offset_range.next_offset
        # For tools only (kafka-consumer-groups, lag exporters); resumption uses PostgreSQL.
        self.consumer.commit(
            offsets=[TopicPartition(t, p, r.next_offset) for (t, p), r in ranges.items()],
            asynchronous=True,
        )

    def _rewind(self, stored: bool) -> None:
        """Seek every owned partition back to where its next batch must start."""
        if stored:
            fresh = load_offsets(self.conn, self.group_id, list(self.expected))
            self.expected = {k: fresh.get(k) for k in self.expected}
        for (topic, partition), offset in self.expected.items():
            position = offset if offset is not None else OFFSET_BEGINNING
            try:
                self.consumer.seek(TopicPartition(topic, partition, position))
            except Exception as exc:  # noqa: BLE001 - a partition revoked meanwhile is fine
                log.info("seek %s[%d] skipped: %s", topic, partition, exc)

    def _reconnect(self) -> None:
        try:
            self.conn.close()
        finally:
            self.conn = connect(self.settings)


def position(message: Message) -> tuple[str, int, int]:
    """Topic, partition and offset of a consumed message (never None for one without error)."""
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    if topic is None or partition is None or offset is None:
        raise ValueError("a consumed message without topic, partition or offset")
    return topic, partition, offset


def tune_gc() -> None:
    """Make the garbage collector fit a process that allocates in bursts of batches.

    A batch of 2,000 transfers allocates tens of thousands of short-lived objects;
    with the default thresholds that triggers dozens of collections per batch, each
    scanning everything imported at start-up. Freezing the start-up objects and
    collecting young objects less often cut the poster's Python time per batch by a
    quarter in ``bankflow bench poster``. Reference cycles are still collected.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


def build(settings: Settings) -> Poster:
    """Wire a poster from the settings (the one place that builds its clients)."""
    consumer = kafka_consumer(
        settings,
        group_id=settings.poster_group,
        **{"session.timeout.ms": SESSION_TIMEOUT_MS, "heartbeat.interval.ms": 1000},
    )
    # Autocommit: every write goes through an explicit transaction block in write_batch,
    # and reads between batches hold no snapshot open.
    return Poster(settings, consumer, connect(settings))


def connect(settings: Settings) -> psycopg.Connection[Any]:
    return db_connect(settings, application_name=f"bankflow-poster-{os.getpid()}", autocommit=True)


def run(settings: Settings) -> None:
    """``bankflow run poster``: post until SIGTERM or SIGINT, then close cleanly."""
    configure_logging()
    poster = build(settings)
    tune_gc()
    on_stop_signal(lambda: setattr(poster, "stopping", True))
    log.info(
        "poster started: group %s, batches of up to %d messages or %d ms",
        settings.poster_group,
        settings.poster_batch_max,
        settings.poster_batch_wait_ms,
    )
    server = serve_metrics(settings.poster_metrics_port, poster.ready, host=settings.metrics_host)
    log.info("metrics on %s:%d", settings.metrics_host, server.port)
    try:
        poster.run()
    finally:
        server.close()
        poster.consumer.close()
        poster.conn.close()
        log.info("poster stopped: %s", poster.stats)
