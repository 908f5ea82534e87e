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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from confluent_kafka import Message
from pydantic import ValidationError

from bankflow.bootstrap import db_connect
from bankflow.ledger.errors import OffsetsMoved
from bankflow.ledger.store import (
    BatchSummary,
    ConsumedTransfer,
    DeadLetter,
    TopicPartitionKey,
    Topics,
    load_offsets,
    write_batch,
)
from bankflow.metrics import NO_REASON, PosterMetrics, registered
from bankflow.observability import connection_alive
from bankflow.settings import Settings
from bankflow.streaming import Batch, InDatabase, Output, Stage, StageHalted, StageRunner, serve
from bankflow.streaming.errors import PositionMoved
from bankflow.streaming.halts import Halts
from bankflow.streaming.kafka import position, stage_consumer
from schemas.errors import describe
from schemas.topics import TRANSFERS_ACCEPTED, TRANSFERS_DLQ, TRANSFERS_FAILED, TRANSFERS_POSTED
from schemas.transfers import AcceptedTransfer

log = logging.getLogger("bankflow.poster")

#: librdkafka's session timeout: a poster that stops heartbeating loses its partitions
#: after this long. Shorter than Kafka's 45 s so a dead poster is replaced quickly.
SESSION_TIMEOUT_MS = 10_000


#: Single messages the database may refuse in a row before the poster halts (see
#: ``Poster.poison``). Real poison is rare and scattered; ten in a row is not.
REFUSED_IN_A_ROW_MAX = 10
#: SQLSTATE classes in which PostgreSQL refuses the data itself: 22 data exception (a
#: value out of range, bad text), 23 integrity constraint violation.
REFUSED_SQLSTATE_CLASSES = frozenset({"22", "23"})


@dataclass
class PosterStats:
    batches: int = 0
    posted: int = 0
    failed: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def add(self, summary: BatchSummary) -> None:
        self.batches += 1
        self.posted += summary.posted
        self.failed += summary.failed
        self.duplicates += summary.duplicates
        self.dead_letters += summary.dead_letters
        for reason, count in summary.failure_reasons.items():
            self.reasons[reason] = self.reasons.get(reason, 0) + count


class Poster(Stage):
    """The ledger poster's business logic: a batch of accepted transfers into the ledger,
    with the batch's offsets, in one PostgreSQL transaction (``write_batch``)."""

    name = "poster"
    commit = InDatabase()
    #: Only what the validator or a review approval signed is booked; anything else
    #: reaches ``poison`` as ``Unauthenticated`` (a dead letter, never an entry).
    verifies = True

    def __init__(self, settings: Settings, conn: psycopg.Connection[Any]) -> None:
        self.settings = settings
        self.conn = conn
        self.group_id = settings.poster_group
        self.batch_max = settings.poster_batch_max
        self.batch_wait_s = settings.poster_batch_wait_ms / 1000
        self.topics_out = Topics(
            posted=settings.topic(TRANSFERS_POSTED),
            failed=settings.topic(TRANSFERS_FAILED),
            dlq=settings.topic(TRANSFERS_DLQ),
        )
        self.stats = PosterStats()
        self.refused_in_a_row = 0
        self.metrics = registered(PosterMetrics)
        self.halts = Halts(self.name, lambda: self.conn)

    def topics(self) -> list[str]:
        return [TRANSFERS_ACCEPTED]

    def ready(self) -> bool:
        return connection_alive(self.conn)

    def stored_offsets(
        self, partitions: list[TopicPartitionKey]
    ) -> Mapping[TopicPartitionKey, int | None]:
        return load_offsets(self.conn, self.group_id, partitions)

    def process(self, batch: Batch) -> list[Output]:
        """Post the batch and store its offsets atomically. A batch the database refuses
        raises, and the runtime splits it to the message it refuses (``poison``)."""
        transfers, letters = self._decode(batch.messages)
        self._write(batch, transfers, letters)
        self.refused_in_a_row = 0
        return []

    def poison(self, message: Message, error: Exception, batch: Batch) -> list[Output]:
        """One message the database (or anything else) refuses on its own: a dead letter,
        stored with the batch's offsets in one transaction.

        Many database refusals in a row, with nothing posted between them, is not bad
        input but a broken database or deployment (a migration missing, a constraint
        added): the poster halts instead of dead-lettering the whole stream, and stays
        halted, across restarts, until an operator clears it.
        """
        refused = _refused_by_database(error)
        if refused:
            self.refused_in_a_row += 1
            if self.refused_in_a_row > REFUSED_IN_A_ROW_MAX:
                self.refused_in_a_row = 0
                raise StageHalted(
                    f"the database refused {REFUSED_IN_A_ROW_MAX} messages in a row, the "
                    f"last with {type(error).__name__}: {error}. This looks like a schema or "
                    "deployment problem, not bad messages. The ones already dead-lettered "
                    "can be replayed once it is fixed; then `bankflow halt clear poster`."
                )
        topic, partition, offset = position(message)
        reason = f"database refused it: {error}" if refused else f"{type(error).__name__}: {error}"
        letter = DeadLetter(
            topic, partition, offset, message.key(), message.value(), type(error).__name__, reason
        )
        self._write(batch, [], [letter])
        return []

    def reconnect(self) -> None:
        try:
            self.conn.close()
        finally:
            self.conn = connect(self.settings)

    def close(self) -> None:
        self.conn.close()
        log.info("poster totals: %s", self.stats)

    def _write(
        self, batch: Batch, transfers: list[ConsumedTransfer], letters: list[DeadLetter]
    ) -> None:
        started = time.monotonic()
        try:
            summary = write_batch(
                self.conn, self.group_id, batch.ranges, transfers, letters, self.topics_out
            )
        except OffsetsMoved as exc:
            raise PositionMoved(str(exc)) from exc
        self.stats.add(summary)
        self._observe(len(batch.messages), summary, started, [d.error_class for d in letters])

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

    def _decode(
        self, messages: Sequence[Message]
    ) -> tuple[list[ConsumedTransfer], list[DeadLetter]]:
        """The transfers of a batch; a message that is not one becomes a dead letter."""
        transfers: list[ConsumedTransfer] = []
        letters: list[DeadLetter] = []
        for m in messages:
            topic, partition, offset = position(m)
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
        return transfers, letters


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


def _refused_by_database(error: Exception) -> bool:
    sqlstate = getattr(error, "sqlstate", None) or ""
    return isinstance(error, psycopg.Error) and sqlstate[:2] in REFUSED_SQLSTATE_CLASSES


def build(settings: Settings) -> StageRunner[Poster]:
    """The composition root: the poster's consumer and database connection."""
    consumer = stage_consumer(
        settings,
        group_id=settings.poster_group,
        **{"session.timeout.ms": SESSION_TIMEOUT_MS, "heartbeat.interval.ms": 1000},
    )
    return StageRunner(settings, Poster(settings, connect(settings)), consumer)


def connect(settings: Settings) -> psycopg.Connection[Any]:
    # Autocommit: every write goes through an explicit transaction block in write_batch,
    # and reads between batches hold no snapshot open.
    return db_connect(settings, application_name=f"bankflow-poster-{os.getpid()}", autocommit=True)


def run(settings: Settings) -> None:
    """``bankflow run poster``: post until SIGTERM or SIGINT, then close cleanly."""
    tune_gc()
    log.info(
        "poster: group %s, batches of up to %d messages or %d ms",
        settings.poster_group,
        settings.poster_batch_max,
        settings.poster_batch_wait_ms,
    )
    serve(settings, "poster", lambda: build(settings), settings.poster_metrics_port)
