"""The retrier: sends messages from the retry tiers back to their topic once they are due.

A message on ``transfers.retry.<tier>`` carries a not-before time (see
``bankflow.failures``). Within one partition of a tier every message waits the same
delay, so they come due in order: when the retrier meets one that is not due, it
pauses that partition and seeks back to it, and resumes the partition when the time
has come. Other partitions and tiers go on meanwhile, and nothing spins: the poll
waits until the next partition is due (at most ``POLL_MAX_S``).

Due messages are produced to their original topic, unchanged but for the headers,
in one Kafka transaction with the retry topics' offsets, so each comes back exactly
once (the stage runtime, ``bankflow.streaming``, owns the loop and the transaction).
A message with no usable not-before or origin, or whose origin is not a topic that
stages retry from, cannot be retried: it goes to the dead-letter topic.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import Consumer, Message, TopicPartition

from bankflow.failures import HeaderList, PoisonMessage, header_map
from bankflow.metrics import RetrierMetrics, logical_topic, registered
from bankflow.settings import Settings
from bankflow.streaming import Batch, KafkaTransaction, Output, Stage, StageRunner, serve
from bankflow.streaming.kafka import stage_consumer
from bankflow.streaming.stage import Partition, dead_letter_output
from schemas import headers as h
from schemas.topics import TRANSFERS_DLQ, retry_topic

log = logging.getLogger("bankflow.retrier")

#: The longest one poll waits; bounds how late a stop signal is noticed.
POLL_MAX_S = 1.0
#: The shortest: a partition due in a millisecond is not worth a busy loop.
POLL_MIN_S = 0.02
BATCH_MAX = 1000
#: How far the clock of the stage that set a not-before may run ahead of the retrier's.
CLOCK_SKEW_MAX_S = 60


class Retrier(Stage):
    name = "retrier"
    commit = KafkaTransaction()
    #: Only retried messages the validator signed are sent back; a forged one (which
    #: could name any origin or attempt count) is a dead letter.
    verifies = True
    batch_max = BATCH_MAX

    def __init__(self, settings: Settings, consumer: Consumer) -> None:
        self.settings = settings
        #: Pausing and seeking partitions is the retrier's business logic: it is handed
        #: the consumer the runtime polls.
        self.consumer = consumer
        self.paused: dict[Partition, datetime] = {}
        self.sent: Counter[str] = Counter()
        self.metrics = registered(RetrierMetrics)
        self.tiers = {retry_topic(tier): tier for tier in settings.retry_tiers}
        #: A retried message is sent back only to one of these, whatever its header says.
        self.origins = {settings.topic(t) for t in settings.retry_origins}
        #: No message waits longer than the longest tier (plus a margin for clocks).
        self.wait_max = timedelta(
            seconds=max(settings.retry_tiers.values(), default=0) + CLOCK_SKEW_MAX_S
        )

    def topics(self) -> list[str]:
        return [retry_topic(t) for t in self.settings.retry_tiers]

    def revoked(self, partitions: list[Partition]) -> None:
        for where in partitions:
            self.paused.pop(where, None)

    def tick(self) -> None:
        self._resume_due(datetime.now(UTC))

    def poll_timeout_s(self) -> float:
        return self._poll_timeout_s(datetime.now(UTC))

    def admit(self, messages: list[Message]) -> list[Message]:
        return self._hold_back(messages, datetime.now(UTC))

    def process(self, batch: Batch) -> list[Output]:
        return [self._send_back(m) for m in batch.messages]

    def committed(self, batch: Batch, outputs: Sequence[Output]) -> None:
        for m, output in zip(batch.messages, outputs, strict=True):
            tier = self.tiers.get(logical_topic(str(m.topic()), self.settings.topic_prefix))
            outcome = "dead_letter" if output.topic == TRANSFERS_DLQ else "returned"
            self.metrics.messages.labels(tier or "unknown", outcome).inc()
            self.sent[output.topic] += 1

    def rewound(self) -> None:
        # Every partition runs again from its committed offset: pauses start afresh.
        assignment = self.consumer.assignment()
        if assignment:
            self.consumer.resume(assignment)
        self.paused.clear()

    def close(self) -> None:
        log.info("retrier sent: %s", dict(self.sent))

    def _hold_back(self, messages: Sequence[Message], now: datetime) -> list[Message]:
        """The due messages; pause each partition at its first message that is not due."""
        due = []
        for m in messages:
            where = (str(m.topic()), int(m.partition() or 0))
            if where in self.paused:
                continue  # read past the pause point in this batch: read again later
            not_before = _not_before(m)
            # A not-before beyond the longest tier is forged or corrupt: pausing for it
            # would hold every message behind it, so it is due now (``_send_back``
            # dead-letters it).
            if not_before is not None and now < not_before <= now + self.wait_max:
                tp = TopicPartition(where[0], where[1], int(m.offset() or 0))
                self.consumer.pause([tp])
                self.consumer.seek(tp)
                self.paused[where] = not_before
                continue
            due.append(m)
        return due

    def _send_back(self, message: Message) -> Output:
        """A due message back to its origin, or to the dead-letter topic."""
        origin = header_map(message.headers()).get(h.ORIGINAL_TOPIC)
        not_before = _not_before(message)
        if origin is None or not_before is None:
            problem = "a retried message needs origin and not-before headers"
        elif not_before > datetime.now(UTC) + self.wait_max:
            problem = f"a not-before later than the longest retry tier ({not_before.isoformat()})"
        elif origin not in self.origins:
            problem = f"a retried message may only go back to {sorted(self.origins)}"
        else:
            logical = logical_topic(origin, self.settings.topic_prefix)
            return Output(
                logical, message.key(), message.value(), without_not_before(message.headers())
            )
        return dead_letter_output(message, PoisonMessage(problem))

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


def without_not_before(headers: Any) -> HeaderList:
    """The headers to send back with: all but the not-before time, which is spent, and
    the retry topic's signature, which does not hold on another topic."""
    pairs = list(headers.items()) if isinstance(headers, dict) else list(headers or ())
    return [(name, value) for name, value in pairs if name not in _SPENT]


_SPENT = frozenset({h.NOT_BEFORE, h.KEY_ID, h.SIGNATURE})


def _not_before(message: Message) -> datetime | None:
    text = header_map(message.headers()).get(h.NOT_BEFORE)
    try:
        at = datetime.fromisoformat(text) if text else None
    except ValueError:
        return None
    # A time without a zone cannot be compared with now: not a usable not-before.
    return at if at is None or at.tzinfo is not None else None


def build(settings: Settings, **consumer_config: Any) -> StageRunner[Retrier]:
    """The composition root; ``consumer_config`` adds consumer settings (tests)."""
    consumer = stage_consumer(
        settings, group_id=settings.retrier_group,
        **{"session.timeout.ms": 10_000, **consumer_config},
    )  # fmt: skip
    return StageRunner(settings, Retrier(settings, consumer), consumer)


def run(settings: Settings) -> None:
    """``bankflow run retrier``: send retried messages back when due, until stopped."""
    serve(settings, "retrier", lambda: build(settings), settings.retrier_metrics_port)
