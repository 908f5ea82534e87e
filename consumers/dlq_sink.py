"""``bankflow run dlq-sink``: every message on transfers.dlq into the dead_letters table.

At least once from Kafka, idempotent in PostgreSQL: Kafka offsets are committed
after the rows are, and a repeated message (same original topic, partition and
offset) only counts another attempt.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import psycopg
from confluent_kafka import Message

from bankflow import logs
from bankflow.bootstrap import db_connect
from bankflow.dead_letters import store
from bankflow.metrics import GAUGE_REFRESH_S, DeadLetterMetrics, logical_topic, registered
from bankflow.observability import connection_alive
from bankflow.registry import service
from bankflow.settings import Settings
from bankflow.streaming import AfterEffect, Batch, Output, Stage, StageRunner, serve
from bankflow.streaming.kafka import position, stage_consumer
from schemas import headers as h
from schemas.topics import TRANSFERS_DLQ
from schemas.transfers import CONTROL_CHARACTERS

log = logging.getLogger("bankflow.dlq_sink")

BATCH_MAX = 500
BATCH_WAIT_S = 0.5
#: A header value is stored as text in a JSON document; longer ones are cut.
HEADER_VALUE_MAX = 2000


class DeadLetterSink(Stage):
    """Stores each dead letter (``store``) in one transaction per batch; the runtime
    commits the Kafka offsets afterwards."""

    name = "dlq-sink"
    commit = AfterEffect()
    batch_max = BATCH_MAX
    batch_wait_s = BATCH_WAIT_S

    def __init__(self, settings: Settings, conn: psycopg.Connection[Any]) -> None:
        self.settings = settings
        self.conn = conn
        self.stored = 0
        self.metrics = registered(DeadLetterMetrics)
        self.next_count = 0.0

    def topics(self) -> list[str]:
        return [TRANSFERS_DLQ]

    def ready(self) -> bool:
        return connection_alive(self.conn)

    def process(self, batch: Batch) -> list[Output]:
        with self.conn.transaction():
            for m in batch.messages:
                store(self.conn, m.key(), m.value(), _headers(m), position(m))
        return []

    def poison(self, message: Message, error: Exception, batch: Batch) -> list[Output]:
        """A dead letter that cannot be stored as it came (PostgreSQL refused a value):
        stored at its own place on the dead-letter topic with what went wrong, its
        key and payload kept as bytes. Sending it to the dead-letter topic again would
        only bring it back here."""
        headers = {
            h.ERROR_CLASS: type(error).__name__,
            h.ERROR_MESSAGE: _text(f"the dead-letter sink could not store it: {error}"),
        }
        with self.conn.transaction():
            store(self.conn, message.key(), message.value(), headers, position(message))
        return []

    def committed(self, batch: Batch, outputs: Sequence[Output]) -> None:
        headers = [_headers(m) for m in batch.messages]
        self.stored += len(batch.messages)
        for m_headers in headers:
            topic = m_headers.get(h.ORIGINAL_TOPIC, "unknown")
            self.metrics.stored.labels(
                logical_topic(topic, self.settings.topic_prefix),
                m_headers.get(h.ERROR_CLASS, "unknown"),
            ).inc()
        _log_stored(batch.messages, headers)

    def tick(self) -> None:
        """Every ``GAUGE_REFRESH_S``: the dead letters nobody replayed or discarded yet."""
        if time.monotonic() < self.next_count:
            return
        row = self.conn.execute(
            "select count(*) from dead_letters where status = 'open'"
        ).fetchone()
        self.metrics.open.set(row[0] if row else 0)
        self.next_count = time.monotonic() + GAUGE_REFRESH_S

    def reconnect(self) -> None:
        self.conn.close()
        self.conn = _connect(self.settings)

    def close(self) -> None:
        self.conn.close()
        log.info("dlq sink stored %d dead letters", self.stored)


def _log_stored(messages: Sequence[Message], headers: list[dict[str, str]]) -> None:
    """A line per dead letter stored: rare, and each one is for an operator to look at."""
    for m, m_headers in zip(messages, headers, strict=True):
        with logs.bound(**logs.message_fields(m_headers, m.value())):
            log.warning(
                "dead letter stored from %s: %s",
                m_headers.get(h.ORIGINAL_TOPIC, "unknown"),
                m_headers.get(h.ERROR_CLASS, "unknown"),
                extra={
                    "original_offset": m_headers.get(h.ORIGINAL_OFFSET),
                    "attempt": m_headers.get(h.ATTEMPT),
                    "error": m_headers.get(h.ERROR_MESSAGE),
                },
            )


def _headers(message: Message) -> dict[str, str]:
    """The headers as text PostgreSQL takes: control characters (NUL above all, which
    ``jsonb`` refuses) replaced, long values cut."""
    raw = message.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    return {
        _text(str(name)): _text(
            value.decode(errors="replace") if isinstance(value, bytes) else str(value or "")
        )
        for name, value in pairs
    }


def _text(value: str) -> str:
    return CONTROL_CHARACTERS.sub("\ufffd", value)[:HEADER_VALUE_MAX]


def _connect(settings: Settings) -> psycopg.Connection[Any]:
    return db_connect(settings, application_name="bankflow-dlq-sink", autocommit=True)


def build(settings: Settings) -> StageRunner[DeadLetterSink]:
    """The composition root: the sink's consumer and database connection."""
    group = service("dlq-sink").consumer_group(settings)
    consumer = stage_consumer(settings, group_id=group)
    return StageRunner(settings, DeadLetterSink(settings, _connect(settings)), consumer)


def run(settings: Settings) -> None:
    """``bankflow run dlq-sink``: store dead letters until SIGTERM or SIGINT."""
    serve(settings, "dlq-sink", lambda: build(settings), settings.dlq_sink_metrics_port)
