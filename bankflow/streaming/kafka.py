"""The Kafka plumbing of the runtime: transactional producers, recovering a failed
transaction, rewinding a consumer, and the offsets to commit after a batch.

A stage that commits with a Kafka transaction writes its outputs and its input
offsets in one transaction per batch. When a transaction fails, librdkafka says
how: an abortable error is aborted and the batch redone from the committed
offsets; a fatal one (this producer was fenced by a newer instance with the same
transactional id, or broke) needs a new producer, and the batch is redone too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from bankflow.bootstrap import kafka_consumer, kafka_producer
from bankflow.settings import Settings

#: A transaction the broker has not seen finish within this long is aborted by it, so
#: a stage killed mid-batch blocks read_committed readers for at most this long (a
#: restarted instance with the same transactional id aborts it at once).
TRANSACTION_TIMEOUT_MS = 10_000
#: How long one transactional call (init, send offsets, commit, abort) may take.
TXN_TIMEOUT_S = 30


def transactional_producer(settings: Settings, stage: str) -> Producer:
    """The stage's producer, its transactional id stable per instance (``instance_id``)."""
    producer = kafka_producer(
        settings,
        transactional_id=f"{settings.topic_prefix}bankflow-{stage}-{settings.instance_id}",
        **{
            "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
            "delivery.timeout.ms": TRANSACTION_TIMEOUT_MS,
        },
    )
    producer.init_transactions(TXN_TIMEOUT_S)
    return producer


def recover(
    error: KafkaError,
    producer: Producer,
    rebuild: Callable[[], Producer],
    log: logging.Logger,
) -> Producer:
    """Abort or rebuild after a failed transaction; the producer to go on with.

    A fatal error (this producer was fenced by a newer instance with the same
    transactional id, or broke) needs a new producer; any other is aborted, and a
    producer that cannot even abort is replaced too. The caller rewinds the consumer
    afterwards. ``rebuild`` may raise (the broker is down): the caller retries later.
    """
    if error.fatal():
        log.error("producer fenced or failed (%s); rebuilding it", error)
        return rebuild()
    try:
        producer.abort_transaction(TXN_TIMEOUT_S)
    except KafkaException as abort_failed:
        log.error("aborting failed (%s) after %s; rebuilding the producer", abort_failed, error)
        return rebuild()
    log.warning("transaction aborted (%s); redoing the batch", error)
    return producer


def rewind(
    consumer: Consumer, skip: Collection[tuple[str, int]] = ()
) -> dict[tuple[str, int], int | None]:
    """Seek every assigned partition but ``skip`` (halted ones) back to its committed
    offset; the offsets (None: nothing committed, read from the start)."""
    assignment = [tp for tp in consumer.assignment() if (tp.topic, tp.partition) not in skip]
    if not assignment:
        return {}
    placed: dict[tuple[str, int], int | None] = {}
    for tp in consumer.committed(assignment, timeout=TXN_TIMEOUT_S):
        position = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
        consumer.seek(TopicPartition(tp.topic, tp.partition, position))
        placed[(tp.topic, tp.partition)] = tp.offset if tp.offset >= 0 else None
    return placed


#: Stage consumers never let librdkafka choose where to read: an offset that is out of
#: range (records deleted by retention or DeleteRecords) is reported as an error that
#: the runtime turns into a halt of that partition, never a silent jump forward.
NO_AUTO_RESET = {"auto.offset.reset": "error"}
#: How long a watermark lookup may take before the check is tried again later.
WATERMARK_TIMEOUT_S = 10


def stage_consumer(settings: Settings, *, group_id: str, **overrides: Any) -> Consumer:
    """A stage's consumer: ``kafka_consumer`` that never resets an offset on its own."""
    return kafka_consumer(settings, group_id=group_id, **{**overrides, **NO_AUTO_RESET})


def committed_offsets(
    consumer: Consumer, partitions: Sequence[TopicPartition]
) -> dict[tuple[str, int], int | None]:
    """The group's committed next offset of each partition (None: nothing committed)."""
    found = consumer.committed(list(partitions), timeout=TXN_TIMEOUT_S)
    return {(tp.topic, tp.partition): tp.offset if tp.offset >= 0 else None for tp in found}


def gap(consumer: Consumer, topic: str, partition: int, expected: int | None) -> str | None:
    """Why reading ``topic[partition]`` from ``expected`` would skip records (``gaps``)."""
    return gaps(consumer, {(topic, partition): expected}).get((topic, partition))


def gaps(
    consumer: Consumer, expected: Mapping[tuple[str, int], int | None]
) -> dict[tuple[str, int], str]:
    """For each partition, why reading it from ``expected`` (None: from the start, nothing
    processed yet) would skip records; partitions that would skip nothing are left out.

    Kafka deletes records only from the start of a partition's log (retention,
    DeleteRecords; bankflow's topics are not compacted), so a position at or after the
    log's first offset skips nothing: what a read_committed consumer does not see
    between there and its first record are transaction markers and aborted records.
    Two batched lookups (the first and the next offset of every partition), however
    many partitions a rebalance hands over.
    """
    if not expected:
        return {}
    low = _log_offsets(consumer, expected, OFFSET_BEGINNING)
    high = _log_offsets(consumer, expected, OFFSET_END)
    found: dict[tuple[str, int], str] = {}
    for (topic, partition), position in expected.items():
        first, end = low[(topic, partition)], high[(topic, partition)]
        where = f"{topic}[{partition}]"
        if position is None and first > 0:
            found[(topic, partition)] = (
                f"{where} starts at offset {first}: records 0..{first - 1} were deleted "
                "before anything of this partition was processed"
            )
        elif position is not None and position < first:
            found[(topic, partition)] = (
                f"{where}: records {position}..{first - 1} were deleted before they were "
                f"processed (the stored position is {position}, the log now starts at {first})"
            )
        elif position is not None and position > end:
            found[(topic, partition)] = (
                f"{where}: the stored position {position} is past the end of the log "
                f"({end}); the topic was recreated or truncated"
            )
    return found


def _log_offsets(
    consumer: Consumer, partitions: Iterable[tuple[str, int]], which: int
) -> dict[tuple[str, int], int]:
    """The first (``OFFSET_BEGINNING``) or next (``OFFSET_END``) offset of each partition's
    log, asked of the brokers in one request (ListOffsets with the logical time)."""
    asked = [TopicPartition(topic, partition, which) for topic, partition in partitions]
    answered = consumer.offsets_for_times(asked, timeout=WATERMARK_TIMEOUT_S)
    found = {}
    for tp in answered:
        if tp.error is not None:
            raise KafkaException(tp.error)
        found[(tp.topic, tp.partition)] = max(tp.offset, 0)
    return found


def next_offsets(messages: Sequence[Message]) -> list[TopicPartition]:
    """The offsets to commit after ``messages``: one past the last of each partition."""
    last: dict[tuple[str, int], int] = {}
    for m in messages:
        last[(str(m.topic()), int(m.partition() or 0))] = int(m.offset() or 0)
    return [TopicPartition(t, p, offset + 1) for (t, p), offset in last.items()]


def position(message: Message) -> tuple[str, int, int]:
    """Topic, partition and offset of a consumed message."""
    return str(message.topic()), int(message.partition() or 0), int(message.offset() or 0)


def usable(message: Message, log: logging.Logger) -> bool:
    """A message to process; consumer errors are logged (end of partition is not one)."""
    error = message.error()
    if error is not None and error.code() != KafkaError._PARTITION_EOF:
        log.error("consumer error: %s", error)
    return error is None
