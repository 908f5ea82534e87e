"""The validator SIGKILLed at random moments: every request still gets exactly one decision."""

from __future__ import annotations

import random
import signal
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import KafkaException, TopicPartition

from bankflow.bootstrap import kafka_consumer
from bankflow.settings import Settings
from schemas.topics import (
    TRANSFERS_ACCEPTED,
    TRANSFERS_DLQ,
    TRANSFERS_REJECTED,
    TRANSFERS_REQUESTED,
)
from schemas.transfers import RejectedTransfer
from tests.integration.test_validator import produce_requests, read_committed, transfer_request
from tests.ledger_support import open_test_accounts, start_service, stop_service, wait_for

pytestmark = pytest.mark.timeout(600)

REQUESTS = 5_000
KILLS = 6


def committed_progress(settings: Settings) -> int:
    """How many requests the validator group has committed past, over all partitions."""
    consumer = kafka_consumer(settings, group_id=settings.validator_group)
    topic = settings.topic(TRANSFERS_REQUESTED)
    try:
        offsets = consumer.committed(
            [TopicPartition(topic, p) for p in range(settings.topic_partitions)], timeout=10
        )
    except KafkaException:  # the coordinator is busy with a rebalance: ask again later
        return -1
    finally:
        consumer.close()
    return sum(max(tp.offset, 0) for tp in offsets)


def test_sigkill_at_random_moments_gives_each_request_exactly_one_decision(
    settings: Settings, topics, db, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"validator_batch_max": 50})
    topics()
    accounts = open_test_accounts(db, settings, 50)
    rng = random.Random(3)
    requests = [
        transfer_request(*rng.sample(accounts, 2))
        if i % 10
        else transfer_request(rng.choice(accounts), uuid.uuid4())  # unknown account: rejected
        for i in range(REQUESTS)
    ]
    produce_requests(settings, requests)

    kills_while_working = 0
    for attempt in range(KILLS):
        before = committed_progress(settings)
        validator = start_service(settings, "validator", log=tmp_path / f"validator-{attempt}.log")
        try:
            wait_for(
                lambda b=before: committed_progress(settings) > b,
                60,
                "the validator to commit a batch",
                interval_s=0.05,
            )
            time.sleep(rng.uniform(0.0, 0.3))
        finally:
            validator.send_signal(signal.SIGKILL)
            validator.wait(10)
        if committed_progress(settings) < REQUESTS:
            kills_while_working += 1
    assert kills_while_working >= 5, "the validator finished before the kills: make it bigger"

    final = start_service(settings, "validator", log=tmp_path / "validator-final.log")
    try:
        wait_for(lambda: committed_progress(settings) >= REQUESTS, 120, "the validator to finish")
    finally:
        stop_service(final)

    out = read_committed(
        settings, TRANSFERS_ACCEPTED, TRANSFERS_REJECTED, TRANSFERS_DLQ, expected=REQUESTS
    )
    ids = Counter()
    for name in (TRANSFERS_ACCEPTED, TRANSFERS_REJECTED):
        for message in out[name]:
            ids[
                uuid.UUID(
                    message.value()[message.value().index(b'"transfer_id":"') + 15 :][:36].decode()
                )
            ] += 1
    assert out[TRANSFERS_DLQ] == []
    assert set(ids) == {r.transfer_id for r in requests}, "a request has no decision"
    assert [tid for tid, n in ids.items() if n != 1] == [], "a request was decided twice"
    reasons = Counter(
        r
        for m in out[TRANSFERS_REJECTED]
        for r in RejectedTransfer.model_validate_json(m.value()).reasons
    )
    assert reasons == {"unknown_account": REQUESTS // 10}, reasons
