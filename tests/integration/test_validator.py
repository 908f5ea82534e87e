"""The validator against the real stack: decisions in Kafka transactions, poison to the DLQ."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from bankflow.bootstrap import kafka_consumer, kafka_producer
from bankflow.ledger.accounts import find_internal_account
from bankflow.settings import Settings
from schemas import headers as h
from schemas.topics import (
    TRANSFERS_ACCEPTED,
    TRANSFERS_DLQ,
    TRANSFERS_REJECTED,
    TRANSFERS_REQUESTED,
)
from schemas.transfers import AcceptedTransfer, RejectedTransfer, TransferRequest, TransferSource
from tests.ledger_support import drain_in_process, open_test_accounts

pytestmark = pytest.mark.timeout(300)


def transfer_request(debit: Any, credit: Any, amount: int = 100) -> TransferRequest:
    return TransferRequest(
        transfer_id=uuid.uuid4(),
        source=TransferSource.API,
        debit_account=str(debit),
        credit_account=str(credit),
        amount_minor=amount,
        currency="EUR",
        requested_by="teller:test",
    )


def produce_requests(
    settings: Settings,
    requests: list[TransferRequest],
    raw: list[bytes] = (),
    partition: int | None = None,
) -> None:
    producer = kafka_producer(settings)
    topic = settings.topic(TRANSFERS_REQUESTED)
    pin = {} if partition is None else {"partition": partition}
    for value in raw:
        producer.produce(topic, key=b"poison", value=value, **pin)
    for r in requests:
        producer.produce(
            topic, key=r.debit_account.encode(), value=r.model_dump_json().encode(), **pin
        )
        producer.poll(0)
    assert producer.flush(60) == 0


def read_committed(settings: Settings, *names: str, expected: int) -> dict[str, list]:
    """Every committed message of the topics, read until ``expected`` arrived and a quiet poll."""
    consumer = kafka_consumer(settings, group_id=f"{settings.topic_prefix}audit")
    consumer.assign(
        [
            TopicPartition(settings.topic(n), p, 0)
            for n in names
            for p in range(settings.topic_partitions)
        ]
    )
    found: dict[str, list] = {settings.topic(n): [] for n in names}
    try:
        for _ in range(240):  # bounded: 2 minutes of polls
            batch = consumer.consume(1000, timeout=0.5)
            for m in batch:
                if m.error() is None:
                    found[m.topic()].append(m)
            if sum(map(len, found.values())) >= expected and not batch:
                break
    finally:
        consumer.close()
    return {name: found[settings.topic(name)] for name in names}


def run_validator_until(settings: Settings, decisions: int, polls_max: int = 400) -> Any:
    from processors.validator import build

    runner = build(settings)
    runner.subscribe()
    try:
        for _ in range(polls_max):
            runner.step()
            if sum(runner.stage.decisions.values()) >= decisions:
                break
    finally:
        runner.close()
    return runner.stage


def test_poison_goes_to_the_dlq_and_the_requests_behind_it_are_decided(
    settings: Settings, topics, db
) -> None:
    topics()
    a, b = open_test_accounts(db, settings, 2)
    unknown = transfer_request(uuid.uuid4(), b)
    good = transfer_request(a, b)
    wrong_schema = b'{"transfer_id": "x", "amount_minor": "lots"}'
    produce_requests(settings, [unknown, good], raw=[b"\x00\xffgarbage", wrong_schema], partition=0)
    run_validator_until(settings, 4)

    out = read_committed(
        settings, TRANSFERS_ACCEPTED, TRANSFERS_REJECTED, TRANSFERS_DLQ, expected=4
    )
    dead = out[TRANSFERS_DLQ]
    assert [m.value() for m in dead] == [b"\x00\xffgarbage", wrong_schema]
    reasons = [dict(m.headers())[h.ERROR_MESSAGE].decode() for m in dead]
    assert "Invalid JSON" in reasons[0]
    assert "amount_minor" in reasons[1]
    assert all(
        dict(m.headers())[h.ORIGINAL_TOPIC].decode() == settings.topic(TRANSFERS_REQUESTED)
        for m in dead
    )
    (rejected,) = [RejectedTransfer.model_validate_json(m.value()) for m in out[TRANSFERS_REJECTED]]
    assert (rejected.transfer_id, rejected.reasons) == (unknown.transfer_id, ["unknown_account"])
    (accepted,) = [AcceptedTransfer.model_validate_json(m.value()) for m in out[TRANSFERS_ACCEPTED]]
    assert (accepted.transfer_id, accepted.debit_account_id) == (good.transfer_id, a)


def test_requests_flow_through_validator_and_poster_into_the_ledger(
    settings: Settings, topics, db
) -> None:
    topics()
    a, b = open_test_accounts(db, settings, 2)
    cash = find_internal_account(db, "cash", "EUR")
    deposit = transfer_request(cash.id, a, 10_000)
    produce_requests(settings, [deposit], partition=0)
    run_validator_until(settings, 1)
    drain_in_process(settings, 1)
    spend = [transfer_request(a, b, 3_000) for _ in range(4)]  # the fourth is one too many
    produce_requests(settings, spend, partition=0)
    run_validator_until(settings, 4)
    drain_in_process(settings, 5)

    rows = dict(db.execute("select status, count(*) from transfers group by status").fetchall())
    assert rows == {"posted": 4, "failed": 1}
    balances = dict(
        db.execute(
            "select id, balance_minor from accounts where id = any(%s)", ([a, b],)
        ).fetchall()
    )
    assert balances == {a: 1_000, b: 9_000}
