"""The retrier: sends messages from the retry tiers back to their topic once they are due.

A message on ``transfers.retry.<tier>`` carries a not-before time (see
``bankflow.failures``). Within one partition of a tier every message waits the same
delay, so they come due in order: when the retrier meets one that is not due, it
pauses that partition and seeks back to it, and resumes the partition when the time
has come. Other partitions and tiers go on meanwhile, and nothing spins: the poll
waits until the next partition is due (at most ``POLL_MAX_S``).

Due messages are produced to their original topic, unchanged but for the headers,
in one Kafka transaction with the retry topics' offsets, so each comes back exactly
once. A message with no usable not-before or origin cannot be retried: it goes to
the dead-letter topic.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from bankflow.bootstrap import kafka_consumer
from bankflow.failures import HeaderList, PoisonMessage, header_map, route_failure
from bankflow.metrics import RetrierMetrics, logical_topic, registered
from bankflow.observability import Assignment, serve_metrics
from bankflow.runtime import configure_logging, next_offsets, on_stop_signal, usable
from bankflow.settings import Settings
from processors.transactions import TXN_TIMEOUT_S, recover, transactional_producer
from schemas import headers as h
from schemas.topics import retry_topic

log = logging.getLogger("bankflow.retrier")

#: The longest one poll waits; bounds how late a stop signal is noticed.
POLL_MAX_S = 1.0
#: The shortest: a partition due in a millisecond is not worth a busy loop.
POLL_MIN_S = 0.02
BATCH_MAX = 1000

Partition = tuple[str, int]


class Retrier:
    def __init__(self, settings: Settings, consumer: Consumer) -> None:
        self.settings = settings
        self.consumer = consumer
        self.producer = self._new_producer()
        self.paused: dict[Partition, datetime] = {}
        self.stopping = False
        self.sent: Counter[str] = Counter()
        self.metrics = registered(RetrierMetrics)
        self.tiers = {retry_topic(tier): tier for tier in settings.retry_tiers}
        self.assignment = Assignment()

    def _new_producer(self) -> Producer:
        return transactional_producer(self.settings, "retrier")

    def subscribe(self) -> None:
        topics = [self.settings.topic(retry_topic(t)) for t in self.settings.retry_tiers]
        self.assignment.subscribe(self.consumer, topics, on_revoke=self._forget)

    def _forget(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.paused.pop((tp.topic, tp.partition), None)

    def run(self) -> None:
        self.subscribe()
        while not self.stopping:
            self.step()

    def step(self, now: datetime | None = None) -> int:
        """Resume what is due, read a batch, send back what is due; how many were sent."""
        now = now or datetime.now(UTC)
        self._resume_due(now)
        messages = [
            m for m in self.consumer.consume(BATCH_MAX, self._poll_timeout_s(now))
            if usable(m, log)
        ]  # fmt: skip
        due = self._hold_back(messages, now)
        if not due:
            return 0
        self.producer.begin_transaction()
        try:
            outcomes = [self._send_back(m, now) for m in due]
            self.producer.send_offsets_to_transaction(
                next_offsets(due), self.consumer.consumer_group_metadata(), TXN_TIMEOUT_S
            )
            self.producer.commit_transaction(TXN_TIMEOUT_S)
        except KafkaException as exc:
            self._recover(exc.args[0])
            return 0
        for m, outcome in zip(due, outcomes, strict=True):
            tier = self.tiers.get(logical_topic(str(m.topic()), self.settings.topic_prefix))
            self.metrics.messages.labels(tier or "unknown", outcome).inc()
        return len(due)

    def _hold_back(self, messages: Sequence[Message], now: datetime) -> list[Message]:
        """The due messages; pause each partition at its first message that is not due."""
        due = []
        for m in messages:
            where = (str(m.topic()), int(m.partition() or 0))
            if where in self.paused:
                continue  # read past the pause point in this batch: read again later
            not_before = _not_before(m)
            if not_before is not None and not_before > now:
                tp = TopicPartition(where[0], where[1], int(m.offset() or 0))
                self.consumer.pause([tp])
                self.consumer.seek(tp)
                self.paused[where] = not_before
                continue
            due.append(m)
        return due

    def _send_back(self, message: Message, now: datetime) -> str:
        """Produce one due message back to its origin; "returned", or "dead_letter"."""
        headers = header_map(message.headers())
        origin = headers.get(h.ORIGINAL_TOPIC)
        if origin is None or _not_before(message) is None:
            route = route_failure(
                origin=(str(message.topic()), int(message.partition() or 0),
                        int(message.offset() or 0)),
                headers=message.headers(),
                error=PoisonMessage("a retried message needs origin and not-before headers"),
                tiers=self.settings.retry_tiers, now=now,
            )  # fmt: skip
            destination, out_headers = self.settings.topic(route.topic), route.headers
            outcome = "dead_letter"
        else:
            destination, out_headers = origin, without_not_before(message.headers())
            outcome = "returned"
        self.producer.produce(
            destination, key=message.key(), value=message.value(), headers=out_headers
        )
        self.sent[destination] += 1
        return outcome

    def _resume_due(self, now: datetime) -> None:
        due = [where for where, at in self.paused.items() if at <= now]
        if due:
            self.consumer.resume([TopicPartition(t, p) for t, p in due])
            for where in due:
                del self.paused[where]

    def _poll_timeout_s(self, now: datetime) -> float:
        if not self.paused:
            return POLL_MAX_S
        wait = (min(self.paused.values()) - now).total_seconds()
        return min(POLL_MAX_S, max(POLL_MIN_S, wait))

    def _recover(self, error: KafkaError) -> None:
        # Every partition runs again from its committed offset: pauses start afresh.
        assignment = self.consumer.assignment()
        if assignment:
            self.consumer.resume(assignment)
        self.paused.clear()
        self.producer = recover(error, self.producer, self.consumer, self._new_producer, log)


def without_not_before(headers: Any) -> HeaderList:
    """The headers to send back with: all but the not-before time, which is spent."""
    pairs = list(headers.items()) if isinstance(headers, dict) else list(headers or ())
    return [(name, value) for name, value in pairs if name != h.NOT_BEFORE]


def _not_before(message: Message) -> datetime | None:
    text = header_map(message.headers()).get(h.NOT_BEFORE)
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


def build(settings: Settings, **consumer_config: Any) -> Retrier:
    """The retrier with its clients; ``consumer_config`` adds consumer settings (tests)."""
    consumer = kafka_consumer(
        settings, group_id=settings.retrier_group,
        **{"session.timeout.ms": 10_000, **consumer_config},
    )  # fmt: skip
    return Retrier(settings, consumer)


def run(settings: Settings) -> None:
    """``bankflow run retrier``: send retried messages back when due, until stopped."""
    configure_logging()
    retrier = build(settings)
    on_stop_signal(lambda: setattr(retrier, "stopping", True))
    server = serve_metrics(
        settings.retrier_metrics_port, retrier.assignment.ready, host=settings.metrics_host
    )
    log.info("metrics on %s:%d", settings.metrics_host, server.port)
    try:
        retrier.run()
    finally:
        server.close()
        retrier.consumer.close()
        log.info("retrier stopped: %s", dict(retrier.sent))
