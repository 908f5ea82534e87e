"""What the consume-transform-produce stages share: their transactional producer and
the way they recover from a failed Kafka transaction.

A stage (the validator, the retrier) writes its outputs and its input offsets in one
transaction per batch. When a transaction fails, librdkafka says how: an abortable
error is aborted and the batch redone from the committed offsets; a fatal one (this
producer was fenced by a newer instance with the same transactional id, or broke)
needs a new producer, and the batch is redone too. Anything else is not expected
and stops the stage for its supervisor to restart.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
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
    consumer: Consumer,
    rebuild: Callable[[], Producer],
    log: logging.Logger,
) -> Producer:
    """Abort or rebuild after a failed transaction and rewind; the producer to go on with."""
    if error.txn_requires_abort():
        log.warning("transaction aborted (%s); redoing the batch", error)
        producer.abort_transaction(TXN_TIMEOUT_S)
    elif error.fatal():
        log.error("producer fenced or failed (%s); rebuilding it", error)
        producer = rebuild()
    else:
        raise KafkaException(error)
    rewind(consumer)
    return producer


def rewind(consumer: Consumer) -> None:
    """Seek every assigned partition back to its committed offset."""
    assignment = consumer.assignment()
    if not assignment:
        return
    for tp in consumer.committed(assignment, timeout=TXN_TIMEOUT_S):
        position = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
        consumer.seek(TopicPartition(tp.topic, tp.partition, position))
