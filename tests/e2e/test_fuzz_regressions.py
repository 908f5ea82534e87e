"""Messages the fuzz test (``test_fuzz_pipeline.py``) found killing a stage, kept as cases.

Each case starts the one stage that reads the topic as its own process, puts the
message on partition 0 of the topic, then a valid control message behind it on the
same partition, and asserts that the stage processed the control and is still the
process that was started.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from bankflow.bootstrap import kafka_consumer, kafka_producer
from bankflow.ledger.accounts import find_internal_account
from bankflow.settings import Settings
from bankflow.signing import signers_for
from schemas import headers as h
from schemas.topics import (
    TRANSFERS_ACCEPTED,
    TRANSFERS_DLQ,
    TRANSFERS_FAILED,
    TRANSFERS_POSTED,
    TRANSFERS_REJECTED,
    TRANSFERS_REQUESTED,
    TRANSFERS_REVIEW,
)
from schemas.transfers import TransferEvent, TransferRequest, TransferSource, event_id_for
from tests.e2e.fuzz_support import Pipeline, dead_letter_headers, retry_headers
from tests.ledger_support import open_test_accounts, signed

pytestmark = pytest.mark.timeout(180)

TIERS = {"t1": 1, "t2": 2}
CONTROL_TIMEOUT_S = 30
ID = "6f1c2b0e-5d3a-4c8e-9a7b-2f4e6d8c0a1b"
NOW = "2026-12-02T10:00:00+00:00"
REQUEST = {
    "transfer_id": ID, "source": "api", "debit_account": "DE89370400440532013000",
    "credit_account": "DE89370400440532013001", "amount_minor": 100, "currency": "EUR",
}  # fmt: skip
ACCEPTED = {
    "transfer_id": ID, "source": "api", "debit_account_id": ID, "credit_account_id": ID,
    "amount_minor": 100, "currency": "EUR",
}  # fmt: skip
EVENT = {
    "event_id": ID, "event_type": "transfer.failed", "transfer_id": ID, "status": "failed",
    "debit_account_id": ID, "credit_account_id": ID, "amount_minor": 100, "currency": "EUR",
    "occurred_at": NOW, "requested_at": NOW,
}  # fmt: skip


def doc(base: dict[str, Any], **changes: Any) -> bytes:
    return json.dumps({**base, **changes}).encode()


@dataclass(frozen=True)
class Poison:
    """A message that killed ``stage``: on ``topic`` (logical), with its key and headers."""

    stage: str
    topic: str
    value: bytes | None
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)
    key: bytes | None = b"k"
    found: str = ""  # the stage's last log line when it died


def dlq(**changes: bytes) -> list[tuple[str, bytes | None]]:
    """Valid dead-letter headers with some values replaced."""
    names = {
        "topic": h.ORIGINAL_TOPIC, "partition": h.ORIGINAL_PARTITION,
        "offset": h.ORIGINAL_OFFSET, "attempt": h.ATTEMPT, "first": h.FIRST_FAILURE_AT,
    }  # fmt: skip
    replaced = {names[k]: v for k, v in changes.items()}
    return [(n, replaced.get(n, v)) for n, v in dead_letter_headers("fuzz-origin", 7)]


CASES = [
    Poison("dlq-sink", TRANSFERS_DLQ, b"x", dlq(topic=b"\x00"),
           found="psycopg.DataError: PostgreSQL text fields cannot contain NUL (0x00) bytes"),
    Poison("dlq-sink", TRANSFERS_DLQ, b"x",
           dlq(partition=b"FI88B DEBY3279A88Z83Y57E12X66F83A2B0"),
           found="ValueError: invalid literal for int() with base 10: 'FI88B DEBY3279A88Z83Y57"),
    Poison("validator", TRANSFERS_REQUESTED,
           doc(REQUEST, credit_account="zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz"),
           found="psycopg.errors.InvalidTextRepresentation: invalid input syntax for type uuid"),
    Poison("tracker", TRANSFERS_REVIEW, doc(ACCEPTED, risk_score=2**31),
           found="psycopg.errors.NumericValueOutOfRange: integer out of range"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.stage}-{c.topic}-{c.found[:40]}")
def test_a_poison_message_does_not_kill_its_stage(  # noqa: PLR0917 - fixtures
    case: Poison, settings: Settings, topics, db, redis_client, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"retry_tiers": TIERS})
    topics(*settings.all_topics())
    pipeline = Pipeline(settings, tmp_path)
    pipeline.start([case.stage])
    try:
        pipeline.wait_ready(60)
        control, processed = CONTROLS[case.stage](settings, db, redis_client, case.topic)
        producer = kafka_producer(settings)
        for key, value, headers in ((case.key, case.value, case.headers), control):
            # Signed as the stage that writes the topic signs: the poison must reach the
            # stage's own logic, not stop at the signature check.
            sent = (
                signed(settings, case.topic, key, value, headers)
                if signers_for(case.topic)
                else headers
            )
            producer.produce(
                settings.topic(case.topic), key=key, value=value, headers=sent,
                partition=0,
            )  # fmt: skip
        assert producer.flush(30) == 0
        deadline = time.monotonic() + CONTROL_TIMEOUT_S
        while not processed() and not pipeline.dead() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not pipeline.dead(), f"{case.stage} died:\n{pipeline.tail(case.stage)}"
        assert processed(), f"{case.stage} did not process the control behind the poison"
    finally:
        pipeline.stop()


# ------------------------------------------------------------------ controls

Control = tuple[tuple[bytes, bytes, list[tuple[str, bytes]]], Callable[[], bool]]


def _deposit(settings: Settings, db: Any) -> TransferRequest:
    (account,) = open_test_accounts(db, settings, 1)
    cash = find_internal_account(db, "cash", "EUR")
    assert cash is not None
    return TransferRequest(
        transfer_id=uuid.uuid4(), source=TransferSource.API, debit_account=str(cash.id),
        credit_account=str(account), amount_minor=100, currency="EUR",
        requested_by="teller:regression",
    )  # fmt: skip


def _on_topic(settings: Settings, topic: str, needle: str) -> Callable[[], bool]:
    """Whether a committed message on ``topic`` mentions ``needle`` (read from the start)."""

    def found() -> bool:
        consumer = kafka_consumer(
            settings, group_id=f"{settings.topic_prefix}probe-{uuid.uuid4().hex[:6]}",
            **{"isolation.level": "read_committed", "enable.auto.commit": False},
        )  # fmt: skip
        full = settings.topic(topic)
        consumer.assign([TopicPartition(full, p, 0) for p in range(settings.topic_partitions)])
        try:
            for _ in range(4):
                for m in consumer.consume(500, timeout=0.5):
                    if m.error() is None and needle.encode() in (m.value() or b""):
                        return True
            return False
        finally:
            consumer.close()

    return found


def _validator(settings: Settings, db: Any, _redis: Any, _topic: str) -> Control:
    request = _deposit(settings, db)
    message = (b"k", request.model_dump_json().encode(), [])
    return message, _on_topic(settings, TRANSFERS_ACCEPTED, str(request.transfer_id))


def _retrier(settings: Settings, db: Any, _redis: Any, _topic: str) -> Control:
    request = _deposit(settings, db)
    message = (b"k", request.model_dump_json().encode(),
               retry_headers(settings, TRANSFERS_REQUESTED))  # fmt: skip
    return message, _on_topic(settings, TRANSFERS_REQUESTED, str(request.transfer_id))


def _tracker(settings: Settings, db: Any, _redis: Any, topic: str) -> Control:
    """A valid message of the topic's own model, for a transfer the tracker then shows."""
    request = _deposit(settings, db)
    ids = {"debit_account_id": request.debit_account, "credit_account_id": request.credit_account}
    plain = request.model_dump(mode="json")
    now = datetime.now(UTC).isoformat()
    documents = {
        TRANSFERS_REQUESTED: plain,
        TRANSFERS_ACCEPTED: {**plain, **ids},
        TRANSFERS_REVIEW: {**plain, **ids},
        TRANSFERS_REJECTED: {**plain, "reasons": ["unknown_account"]},
        TRANSFERS_POSTED: {**EVENT, **ids, "event_id": str(uuid.uuid4()), "status": "posted",
                           "event_type": "transfer.posted", "transfer_id": str(request.transfer_id),
                           "occurred_at": now},
    }  # fmt: skip
    documents[TRANSFERS_FAILED] = {**documents[TRANSFERS_POSTED], "status": "failed",
                                   "event_type": "transfer.failed"}  # fmt: skip

    def tracked() -> bool:
        row = db.execute(
            "select 1 from transfer_status where transfer_id = %s", (request.transfer_id,)
        ).fetchone()
        return row is not None

    return (b"k", json.dumps(documents[topic]).encode(), []), tracked


def _poster(settings: Settings, db: Any, _redis: Any, _topic: str) -> Control:
    request = _deposit(settings, db)
    accepted = {
        **request.model_dump(mode="json", exclude={"debit_account", "credit_account"}),
        "debit_account_id": request.debit_account, "credit_account_id": request.credit_account,
    }  # fmt: skip

    def posted() -> bool:
        row = db.execute("select 1 from transfers where id = %s", (request.transfer_id,))
        return row.fetchone() is not None

    return (b"k", json.dumps(accepted).encode(), []), posted


def _dlq_sink(settings: Settings, db: Any, _redis: Any, _topic: str) -> Control:
    def stored() -> bool:
        row = db.execute("select 1 from dead_letters where original_topic = 'fuzz-control'")
        return row.fetchone() is not None

    return (b"k", b"control", dead_letter_headers("fuzz-control", 1)), stored


def _cache(settings: Settings, db: Any, redis_client: Any, _topic: str) -> Control:
    account, other = open_test_accounts(db, settings, 2)
    transfer_id = uuid.uuid4()
    now = datetime.now(UTC)
    event = TransferEvent(
        event_id=event_id_for(transfer_id, "transfer.posted"), event_type="transfer.posted",
        transfer_id=transfer_id, status="posted", debit_account_id=account,
        credit_account_id=other, amount_minor=1, currency="EUR", occurred_at=now,
        requested_at=now,
    )  # fmt: skip

    def cached() -> bool:
        return bool(redis_client.exists(f"{settings.redis_prefix}balance:{account}"))

    return (b"k", event.model_dump_json().encode(), []), cached


CONTROLS: dict[str, Callable[[Settings, Any, Any, str], Control]] = {
    "validator": _validator, "retrier": _retrier, "tracker": _tracker, "poster": _poster,
    "dlq-sink": _dlq_sink, "cache": _cache,
}  # fmt: skip
