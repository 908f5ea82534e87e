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
from collections.abc import Callable, Sequence

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from bankflow.bootstrap import kafka_producer
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


def rewind(consumer: Consumer) -> None:
    """Seek every assigned partition back to its committed offset."""
    assignment = consumer.assignment()
    if not assignment:
        return
    for tp in consumer.committed(assignment, timeout=TXN_TIMEOUT_S):
        position = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
        consumer.seek(TopicPartition(tp.topic, tp.partition, position))


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
