"""The broker's transactions work end to end with confluent-kafka (our money path)."""

from __future__ import annotations

import uuid

from confluent_kafka import Consumer, TopicPartition

from bankflow.bootstrap import kafka_consumer, kafka_producer
from bankflow.settings import Settings
from schemas.topics import TRANSFERS_ACCEPTED


def drain(consumer: Consumer, max_polls: int = 10, timeout_s: float = 1.0) -> list[bytes]:
    """Every value the consumer can read within a bounded number of polls."""
    values: list[bytes] = []
    for _ in range(max_polls):
        message = consumer.poll(timeout_s)
        if message is None:
            if values:
                break
            continue
        assert message.error() is None, message.error()
        values.append(message.value())
    return values


def read_committed(settings: Settings, topic: str) -> Consumer:
    consumer = kafka_consumer(settings, group_id=f"{settings.topic_prefix}reader")
    consumer.assign([TopicPartition(topic, p, 0) for p in range(settings.topic_partitions)])
    return consumer


def test_read_committed_sees_a_transaction_only_after_commit(settings: Settings, topics) -> None:
    (topic,) = topics(TRANSFERS_ACCEPTED)
    producer = kafka_producer(settings, transactional_id=f"{settings.topic_prefix}{uuid.uuid4()}")
    producer.init_transactions(30)
    consumer = read_committed(settings, topic)
    try:
        producer.begin_transaction()
        for i in range(3):
            producer.produce(topic, key=b"acct-1", value=f"transfer-{i}".encode())
        producer.flush(10)  # on the broker, but not yet committed

        assert drain(consumer, max_polls=4) == [], "read_committed saw uncommitted records"

        producer.commit_transaction(30)
        assert drain(consumer) == [b"transfer-0", b"transfer-1", b"transfer-2"]
    finally:
        consumer.close()


def test_an_aborted_transaction_is_never_seen(settings: Settings, topics) -> None:
    (topic,) = topics(TRANSFERS_ACCEPTED)
    producer = kafka_producer(settings, transactional_id=f"{settings.topic_prefix}{uuid.uuid4()}")
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, key=b"acct-1", value=b"aborted")
    producer.flush(10)
    producer.abort_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, key=b"acct-1", value=b"committed")
    producer.commit_transaction(30)

    consumer = read_committed(settings, topic)
    try:
        assert drain(consumer) == [b"committed"]
    finally:
        consumer.close()
