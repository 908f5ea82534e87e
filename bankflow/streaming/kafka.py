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
from collections.abc import Callable, Collection, Sequence
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
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
    """Why reading ``topic[partition]`` from ``expected`` (None: from the start, nothing
    processed yet) would skip records; None when nothing would be skipped.

    Kafka deletes records only from the start of a partition's log (retention,
    DeleteRecords; bankflow's topics are not compacted), so a position at or after the
    log's first offset skips nothing: what a read_committed consumer does not see
    between there and its first record are transaction markers and aborted records.
    """
    low, high = consumer.get_watermark_offsets(
        TopicPartition(topic, partition), timeout=WATERMARK_TIMEOUT_S, cached=False
    )
    if expected is None:
        if low > 0:
            return (
                f"{topic}[{partition}] starts at offset {low}: records 0..{low - 1} were "
                "deleted before anything of this partition was processed"
            )
        return None
    if expected < low:
        return (
            f"{topic}[{partition}]: records {expected}..{low - 1} were deleted before they "
            f"were processed (the stored position is {expected}, the log now starts at {low})"
        )
    if expected > high:
        return (
            f"{topic}[{partition}]: the stored position {expected} is past the end of the log "
            f"({high}); the topic was recreated or truncated"
        )
    return None


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
