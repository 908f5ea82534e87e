"""The retrier against the real broker: waits per partition, sends back exactly once."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bankflow.bootstrap import kafka_producer
from bankflow.failures import header_map
from bankflow.settings import Settings
from processors.retrier import build
from schemas import headers as h
from schemas.topics import TRANSFERS_ACCEPTED, TRANSFERS_DLQ, TRANSFERS_REQUESTED, retry_topic
from tests.integration.test_validator import read_committed
from tests.ledger_support import signed

pytestmark = pytest.mark.timeout(120)
TIERS = {"fast": 1, "slow": 3}
#: How long the waiting partition's messages wait in the first test.
WAIT_S = 5


def retried(origin: str, not_before: datetime | None, attempt: int = 1) -> list:
    headers = [(h.ORIGINAL_TOPIC, origin), (h.ATTEMPT, str(attempt)), (h.ERROR_CLASS, "X")]
    if not_before is not None:
        headers.append((h.NOT_BEFORE, not_before.isoformat()))
    return [(k, v.encode()) for k, v in headers]


def produce_retry(
    producer: Any,
    settings: Settings,
    tier: str,
    *,
    key: bytes,
    value: bytes,
    headers: list[tuple[str, Any]],
    partition: int,
) -> None:
    """A message on a retry topic, signed as the validator signs what it sends there."""
    topic = retry_topic(tier)
    producer.produce(
        settings.topic(topic), key=key, value=value, partition=partition,
        headers=signed(settings, topic, key, value, headers),
    )  # fmt: skip


def test_messages_come_back_when_due_and_a_waiting_partition_blocks_no_other(
    settings, topics
) -> None:
    settings = settings.model_copy(update={"retry_tiers": TIERS})
    topics(TRANSFERS_REQUESTED, TRANSFERS_DLQ, *(retry_topic(t) for t in TIERS))
    origin = settings.topic(TRANSFERS_REQUESTED)
    # The retrier owns every partition of both tiers before anything is produced, so the
    # wait below is measured from a retrier that already reads: a slow group join cannot
    # use it up and let the waiting messages come due before the others were read.
    retrier = build(settings)
    retrier.subscribe()
    try:
        deadline = time.monotonic() + 60
        while len(retrier.positions) < len(TIERS) * settings.topic_partitions:
            assert time.monotonic() < deadline, f"retrier not assigned: {retrier.positions}"
            retrier.step()
        now = datetime.now(UTC)
        # Long enough for the due messages to be read and sent back first on a loaded machine.
        later = now + timedelta(seconds=WAIT_S)
        producer = kafka_producer(settings)
        produce_retry(
            producer,
            settings,
            "fast",
            key=b"a",
            value=b"waits-1",
            headers=retried(origin, later),
            partition=0,
        )
        produce_retry(
            producer,
            settings,
            "fast",
            key=b"a",
            value=b"waits-2",
            headers=retried(origin, later),
            partition=0,
        )
        produce_retry(
            producer,
            settings,
            "fast",
            key=b"b",
            value=b"due",
            headers=retried(origin, now),
            partition=1,
        )
        produce_retry(
            producer,
            settings,
            "fast",
            key=b"c",
            value=b"no-time",
            headers=retried(origin, None),
            partition=2,
        )
        produce_retry(
            producer,
            settings,
            "slow",
            key=b"d",
            value=b"due-2",
            headers=retried(origin, now, 2),
            partition=0,
        )
        assert producer.flush(30) == 0

        deadline = time.monotonic() + 60
        while sum(retrier.stage.sent.values()) < 5 and time.monotonic() < deadline:
            retrier.step()
        assert retrier.stage.paused == {}
    finally:
        retrier.close()

    out = read_committed(settings, TRANSFERS_REQUESTED, TRANSFERS_DLQ, expected=5)
    back = {m.value(): m for m in out[TRANSFERS_REQUESTED]}
    assert sorted(back) == [b"due", b"due-2", b"waits-1", b"waits-2"]
    # Order within the partition is kept, and nothing came back before its time.
    assert back[b"waits-1"].offset() < back[b"waits-2"].offset()
    later_ms = int(later.timestamp() * 1000)
    for name in (b"waits-1", b"waits-2"):
        _kind, sent_ms = back[name].timestamp()
        assert sent_ms >= later_ms
    # The waiting partition blocked no other: the due messages of the other partition of
    # its tier and of the other tier were sent back before the waiting ones came due.
    for name in (b"due", b"due-2"):
        _kind, sent_ms = back[name].timestamp()
        assert sent_ms < later_ms, (name, sent_ms, later_ms)
    # Headers travel on (the attempt count decides the next tier), the spent time does not.
    headers = header_map(back[b"due-2"].headers())
    assert headers[h.ATTEMPT] == "2" and h.NOT_BEFORE not in headers
    (dead,) = out[TRANSFERS_DLQ]
    assert dead.value() == b"no-time"
    assert "not-before" in header_map(dead.headers())[h.ERROR_MESSAGE]

    # Exactly once: a new retrier in the same group finds nothing left to send.
    again = build(settings)
    again.subscribe()
    try:
        for _ in range(5):
            again.step()
    finally:
        again.close()
    assert sum(again.stage.sent.values()) == 0


def test_a_forged_message_neither_blocks_its_partition_nor_goes_anywhere_but_the_dlq(
    settings, topics
) -> None:
    """Anyone who can write to a retry topic may write any header: a not-before in the
    year 9999 must not pause the partition (holding every message behind it), and an
    origin that is not a topic stages retry from must not be where it is sent."""
    settings = settings.model_copy(update={"retry_tiers": TIERS})
    topics(TRANSFERS_REQUESTED, TRANSFERS_DLQ, TRANSFERS_ACCEPTED, *(retry_topic(t) for t in TIERS))
    origin = settings.topic(TRANSFERS_REQUESTED)
    now = datetime.now(UTC)
    producer = kafka_producer(settings)
    far = datetime(9999, 1, 1, tzinfo=UTC)
    produce_retry(
        producer,
        settings,
        "fast",
        key=b"a",
        value=b"forever",
        headers=retried(origin, far),
        partition=0,
    )
    accepted = settings.topic(TRANSFERS_ACCEPTED)
    produce_retry(
        producer,
        settings,
        "fast",
        key=b"a",
        value=b"elsewhere",
        headers=retried(accepted, now),
        partition=0,
    )
    produce_retry(
        producer,
        settings,
        "fast",
        key=b"a",
        value=b"behind",
        headers=retried(origin, now),
        partition=0,
    )
    assert producer.flush(30) == 0

    retrier = build(settings)
    retrier.subscribe()
    deadline = time.monotonic() + 60
    try:
        while sum(retrier.stage.sent.values()) < 3 and time.monotonic() < deadline:
            retrier.step()
        assert retrier.stage.paused == {}
    finally:
        retrier.close()
    out = read_committed(settings, TRANSFERS_REQUESTED, TRANSFERS_DLQ, TRANSFERS_ACCEPTED,
                         expected=3)  # fmt: skip
    assert [m.value() for m in out[TRANSFERS_REQUESTED]] == [b"behind"]
    assert out[TRANSFERS_ACCEPTED] == []
    reasons = {m.value(): header_map(m.headers())[h.ERROR_MESSAGE] for m in out[TRANSFERS_DLQ]}
    assert "later than the longest retry tier" in reasons[b"forever"]
    assert "may only go back to" in reasons[b"elsewhere"]


def test_an_unsigned_or_wrongly_signed_retried_message_is_a_dead_letter(settings, topics) -> None:
    """Whoever can write a retry topic but holds no validator key cannot get anything sent
    back: not without a signature, not signed by another signer, not with its value
    changed after signing."""
    settings = settings.model_copy(update={"retry_tiers": TIERS})
    topics(TRANSFERS_REQUESTED, TRANSFERS_DLQ, *(retry_topic(t) for t in TIERS))
    origin = settings.topic(TRANSFERS_REQUESTED)
    fast = retry_topic("fast")
    headers = retried(origin, datetime.now(UTC))
    producer = kafka_producer(settings)
    producer.produce(settings.topic(fast), key=b"a", value=b"unsigned", headers=headers)
    by_review = signed(settings, fast, b"a", b"by-review", headers, signer="review")
    producer.produce(settings.topic(fast), key=b"a", value=b"by-review", headers=by_review)
    changed = signed(settings, fast, b"a", b"original", headers)
    producer.produce(settings.topic(fast), key=b"a", value=b"changed", headers=changed)
    produce_retry(producer, settings, "fast", key=b"a", value=b"genuine", headers=headers,
                  partition=0)  # fmt: skip
    assert producer.flush(30) == 0

    retrier = build(settings)
    retrier.subscribe()
    deadline = time.monotonic() + 60
    try:
        while sum(retrier.stage.sent.values()) < 4 and time.monotonic() < deadline:
            retrier.step()
    finally:
        retrier.close()
    out = read_committed(settings, TRANSFERS_REQUESTED, TRANSFERS_DLQ, expected=4)
    assert [m.value() for m in out[TRANSFERS_REQUESTED]] == [b"genuine"]
    back = header_map(out[TRANSFERS_REQUESTED][0].headers())
    assert h.SIGNATURE not in back and h.KEY_ID not in back  # not valid on another topic
    dead = {m.value(): header_map(m.headers()) for m in out[TRANSFERS_DLQ]}
    assert set(dead) == {b"unsigned", b"by-review", b"changed"}
    assert {d[h.ERROR_CLASS] for d in dead.values()} == {"Unauthenticated"}
    assert "no signature" in dead[b"unsigned"][h.ERROR_MESSAGE]
    assert "'review' may not sign" in dead[b"by-review"][h.ERROR_MESSAGE]
    assert "does not match" in dead[b"changed"][h.ERROR_MESSAGE]
