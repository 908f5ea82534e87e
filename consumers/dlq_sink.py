"""``bankflow run dlq-sink``: every message on transfers.dlq into the dead_letters table.

At least once from Kafka, idempotent in PostgreSQL: Kafka offsets are committed
after the rows are, and a repeated message (same original topic, partition and
offset) only counts another attempt.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import psycopg
from confluent_kafka import Consumer, Message

from bankflow import logs
from bankflow.bootstrap import db_connect, kafka_consumer
from bankflow.dead_letters import store
from bankflow.metrics import GAUGE_REFRESH_S, DeadLetterMetrics, logical_topic, registered
from bankflow.observability import Assignment, connection_alive, serve_metrics
from bankflow.runtime import (
    configure_logging,
    next_offsets,
    on_stop_signal,
    run_until_stopped,
)
from bankflow.settings import Settings
from schemas import headers as h
from schemas.topics import TRANSFERS_DLQ

log = logging.getLogger("bankflow.dlq_sink")

BATCH_MAX = 500
BATCH_WAIT_S = 0.5


class DeadLetterSink:
    def __init__(self, settings: Settings, consumer: Consumer, conn: psycopg.Connection[Any]):
        self.settings = settings
        self.consumer = consumer
        self.conn = conn
        self.stopping = False
        self.stored = 0
        self.metrics = registered(DeadLetterMetrics)
        self.next_count = 0.0
        self.assignment = Assignment()

    def ready(self) -> bool:
        """Ready while it owns partitions and its database connection is alive."""
        return connection_alive(self.conn) and self.assignment.ready()

    def subscribe(self) -> None:
        self.assignment.subscribe(self.consumer, [self.settings.topic(TRANSFERS_DLQ)])

    def poll_and_store(self) -> int:
        self._count_open()
        messages = [m for m in self.consumer.consume(BATCH_MAX, BATCH_WAIT_S) if m.error() is None]
        if not messages:
            return 0
        headers = [_headers(m) for m in messages]
        with self.conn.transaction():
            for m, m_headers in zip(messages, headers, strict=True):
                store(self.conn, m.key(), m.value(), m_headers)
        self.consumer.commit(offsets=next_offsets(messages), asynchronous=False)
        self.stored += len(messages)
        for m_headers in headers:
            topic = m_headers.get(h.ORIGINAL_TOPIC, "unknown")
            self.metrics.stored.labels(
                logical_topic(topic, self.settings.topic_prefix),
                m_headers.get(h.ERROR_CLASS, "unknown"),
            ).inc()
        _log_stored(messages, headers)
        return len(messages)

    def _count_open(self) -> None:
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
        self.conn = db_connect(self.settings, application_name="bankflow-dlq-sink", autocommit=True)


def _log_stored(messages: list[Message], headers: list[dict[str, str]]) -> None:
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
    raw = message.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    return {
        name: value.decode(errors="replace") if isinstance(value, bytes) else str(value or "")
        for name, value in pairs
    }


def build(settings: Settings) -> DeadLetterSink:
    consumer = kafka_consumer(settings, group_id=f"{settings.topic_prefix}bankflow-dlq-sink")
    conn = db_connect(settings, application_name="bankflow-dlq-sink", autocommit=True)
    return DeadLetterSink(settings, consumer, conn)


def run(settings: Settings) -> None:
    configure_logging()
    sink = build(settings)
    on_stop_signal(lambda: setattr(sink, "stopping", True))
    sink.subscribe()
    server = serve_metrics(settings.dlq_sink_metrics_port, sink.ready, host=settings.metrics_host)
    log.info("metrics on %s:%d", settings.metrics_host, server.port)
    try:
        run_until_stopped(sink.poll_and_store, lambda: sink.stopping, sink.reconnect, log)
    finally:
        server.close()
        sink.consumer.close()
        sink.conn.close()
        log.info("dlq sink stopped after storing %d dead letters", sink.stored)
