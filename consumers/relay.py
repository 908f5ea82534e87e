"""The outbox relay: publishes outbox rows to Kafka in order, then marks them sent.

At least once: a crash after the broker acknowledged a round but before the rows
were marked sent publishes that round again. Every event carries its event id
(in the payload and the ``bankflow-event-id`` header) and consumers dedupe on it.
Only one relay publishes at a time (a PostgreSQL advisory lock), which keeps the
outbox's order on the topics; a second relay waits as a hot standby. A PostgreSQL or
Kafka outage is waited out with the stage runtime's backoff (``bankflow.streaming``);
the relay is not ready meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Any

import psycopg
from confluent_kafka import KafkaError, Message, Producer

from bankflow.bootstrap import db_connect, kafka_producer
from bankflow.errors import BankflowError
from bankflow.metrics import GAUGE_REFRESH_S, RelayMetrics, logical_topic, registered
from bankflow.observability import connection_alive
from bankflow.settings import Settings
from bankflow.streaming import is_transient, serve
from bankflow.streaming.backoff import Backoff
from schemas.headers import EVENT_ID

log = logging.getLogger("bankflow.relay")

#: How long one round may wait for the broker's acknowledgements before it is retried.
FLUSH_TIMEOUT_S = 30
#: A standby relay tries for the leader lock this often.
STANDBY_RETRY_S = 2.0


class DeliveryFailed(BankflowError):
    """The broker did not acknowledge every event of a round; the round is retried."""

    transient = True


def leader_lock_key(settings: Settings) -> str:
    return f"bankflow-relay:{settings.db_schema}"


def try_become_leader(conn: psycopg.Connection[Any], settings: Settings) -> bool:
    """Take the session-level advisory lock; it is released when the connection closes."""
    row = conn.execute(
        "select pg_try_advisory_lock(hashtextextended(%s, 0))", (leader_lock_key(settings),)
    ).fetchone()
    return bool(row and row[0])


def relay_once(
    conn: psycopg.Connection[Any], producer: Producer, batch_max: int, topic_prefix: str = ""
) -> int:
    """Publish up to ``batch_max`` unsent rows in id order and mark them sent.

    ``topic_prefix`` is taken off the topic names the published-events metric counts.
    """
    with conn.transaction():
        rows = conn.execute(
            "select id, event_id, topic, key, payload, headers from outbox where sent_at is null "
            "order by id limit %s for update",
            (batch_max,),
        ).fetchall()
        if not rows:
            return 0
        errors: list[str] = []

        def delivered(error: KafkaError | None, message: Message) -> None:
            if error is not None:
                errors.append(f"{message.topic()}: {error}")

        for _id, event_id, topic, key, payload, headers in rows:
            extra = [(k, str(v).encode()) for k, v in (headers or {}).items() if k != EVENT_ID]
            producer.produce(
                topic,
                key=key,
                value=payload,
                headers=[(EVENT_ID, str(event_id).encode()), *extra],
                on_delivery=delivered,
            )
            producer.poll(0)
        remaining = producer.flush(FLUSH_TIMEOUT_S)
        if errors or remaining:
            raise DeliveryFailed(f"{len(errors)} failed, {remaining} unacknowledged: {errors[:3]}")
        conn.execute(
            "update outbox set sent_at = now() where id = any(%s)", ([r[0] for r in rows],)
        )
    published = registered(RelayMetrics).published
    for topic, count in Counter(r[2] for r in rows).items():
        published.labels(logical_topic(topic, topic_prefix)).inc(count)
    return len(rows)


def count_unsent(conn: psycopg.Connection[Any]) -> int:
    """Outbox rows not yet published (the partial index ``outbox_unsent`` answers it)."""
    row = conn.execute("select count(*) from outbox where sent_at is null").fetchone()
    return int(row[0]) if row else 0


class Relay:
    """The relay's loop, run by ``bankflow.streaming.serve`` like a stage's."""

    def __init__(
        self, settings: Settings, conn: psycopg.Connection[Any], producer: Producer
    ) -> None:
        self.settings = settings
        self.conn = conn
        self.producer = producer
        self.stopped = threading.Event()
        self.published = 0
        self.leader = False
        self.next_count = 0.0
        self.backoff = Backoff("relay", self.stopped, log)

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.step()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self.backoff.failed(exc)
                self._reconnect()
            else:
                self.backoff.succeeded()

    def step(self) -> int:
        """Take the leader lock if not held yet, then publish one round."""
        if not self.leader:
            self.leader = try_become_leader(self.conn, self.settings)
            if not self.leader:
                self.stopped.wait(STANDBY_RETRY_S)
                return 0
            log.info("relay is the leader; publishing the outbox")
        if time.monotonic() >= self.next_count:
            registered(RelayMetrics).unsent.set(count_unsent(self.conn))
            self.next_count = time.monotonic() + GAUGE_REFRESH_S
        count = relay_once(
            self.conn, self.producer, self.settings.relay_batch_max,
            topic_prefix=self.settings.topic_prefix,
        )  # fmt: skip
        self.published += count
        if count == 0:
            self.stopped.wait(self.settings.relay_idle_poll_ms / 1000)
        return count

    def _reconnect(self) -> None:
        # The advisory lock goes with the connection: leadership is taken anew.
        self.leader = False
        try:
            self.conn.close()
            self.conn = _connect(self.settings)
        except Exception as still_down:
            if not is_transient(still_down):
                raise
            log.warning("reconnecting failed (%s)", still_down)

    def stop(self) -> None:
        self.stopped.set()

    def ready(self) -> bool:
        return self.leader and connection_alive(self.conn) and not self.backoff.waiting

    def close(self) -> None:
        try:
            self.producer.flush(FLUSH_TIMEOUT_S)
        finally:
            self.conn.close()
            log.info("relay stopped after publishing %d events", self.published)


def _connect(settings: Settings) -> psycopg.Connection[Any]:
    return db_connect(settings, application_name="bankflow-relay", autocommit=True)


def build(settings: Settings) -> Relay:
    """The composition root: the relay's database connection and producer."""
    return Relay(settings, _connect(settings), kafka_producer(settings))


def run(settings: Settings) -> None:
    """``bankflow run relay``: publish until SIGTERM or SIGINT."""
    serve(settings, "relay", lambda: build(settings), settings.relay_metrics_port)
