"""The outbox relay publishes in order, marks rows sent, and never marks what failed."""

from __future__ import annotations

import pytest
from confluent_kafka import TopicPartition

from bankflow.bootstrap import db_connect, kafka_consumer, kafka_producer
from bankflow.settings import Settings
from consumers.relay import DeliveryFailed, relay_once, try_become_leader
from schemas import headers as h
from schemas.topics import TRANSFERS_FAILED, TRANSFERS_POSTED
from schemas.transfers import TransferEvent
from tests.ledger_support import (
    accepted,
    drain_in_process,
    open_test_accounts,
    produce_accepted,
)


def read_all(settings: Settings, topic: str, expected: int) -> list:
    consumer = kafka_consumer(settings, group_id=f"{settings.topic_prefix}reader")
    consumer.assign([TopicPartition(topic, p, 0) for p in range(settings.topic_partitions)])
    messages = []
    try:
        for _ in range(60):  # bounded
            batch = consumer.consume(1000, timeout=0.5)
            messages.extend(m for m in batch if m.error() is None)
            if len(messages) >= expected and not batch:
                break
    finally:
        consumer.close()
    return messages


def test_events_are_published_once_each_with_their_event_id(settings: Settings, topics, db) -> None:
    topics()
    cash_funded, other = open_test_accounts(db, settings, 2)
    from bankflow.ledger.accounts import find_internal_account

    cash = find_internal_account(db, "cash", "EUR")
    transfers = [accepted(cash.id, cash_funded, 500)] + [
        accepted(cash_funded, other, 100)
        for _ in range(8)  # 5 post, 3 fail
    ]
    for t in transfers:
        produce_accepted(settings, [t], partition=0)  # one partition: a known order
    drain_in_process(settings, len(transfers))

    producer = kafka_producer(settings)
    assert relay_once(db, producer, batch_max=4) == 4
    assert relay_once(db, producer, batch_max=100) == 5
    assert relay_once(db, producer, batch_max=100) == 0
    assert db.execute("select count(*) from outbox where sent_at is null").fetchone()[0] == 0

    posted = read_all(settings, settings.topic(TRANSFERS_POSTED), 6)
    failed = read_all(settings, settings.topic(TRANSFERS_FAILED), 3)
    assert len(posted) == 6 and len(failed) == 3
    events = [TransferEvent.model_validate_json(m.value()) for m in posted + failed]
    assert {e.transfer_id for e in events} == {t.transfer_id for t in transfers}
    for message, event in zip(posted + failed, events, strict=True):
        assert dict(message.headers())[h.EVENT_ID].decode() == str(event.event_id)
        assert message.key() == str(event.transfer_id).encode()
    assert {e.reason for e in events if e.status == "failed"} == {"insufficient_funds"}
    # The balances after each posting travel with the event, for the cache to use.
    last = max((e for e in events if e.status == "posted"), key=lambda e: e.occurred_at)
    assert last.debit_balance_after_minor is not None


def test_a_round_the_broker_refuses_stays_unsent(settings: Settings, db) -> None:
    db.execute(
        "insert into outbox (event_id, topic, payload) values (gen_random_uuid(), %s, 'x')",
        (f"{settings.topic_prefix}no-such-topic",),
    )
    producer = kafka_producer(settings, **{"message.timeout.ms": 3000})
    with pytest.raises(DeliveryFailed):
        relay_once(db, producer, batch_max=10)
    assert db.execute("select count(*) from outbox where sent_at is null").fetchone()[0] == 1


def test_only_one_relay_leads(settings: Settings, db) -> None:
    first = db_connect(settings, autocommit=True)
    second = db_connect(settings, autocommit=True)
    try:
        assert try_become_leader(first, settings)
        assert not try_become_leader(second, settings)
        first.close()  # the leader dies: its lock goes with its connection
        assert try_become_leader(second, settings)
    finally:
        first.close()
        second.close()
