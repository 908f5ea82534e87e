"""The validator SIGKILLed at random moments: every request still gets exactly one decision."""

from __future__ import annotations

import ast
import random
import re
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import pytest
from confluent_kafka import KafkaException, TopicPartition

from bankflow.bootstrap import kafka_admin, kafka_consumer
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


def committed_progress(settings: Settings, partitions: Iterable[int] | None = None) -> int:
    """How many requests the validator group has committed past, over ``partitions``
    (all of them by default)."""
    consumer = kafka_consumer(settings, group_id=settings.validator_group)
    topic = settings.topic(TRANSFERS_REQUESTED)
    wanted = range(settings.topic_partitions) if partitions is None else partitions
    try:
        offsets = consumer.committed([TopicPartition(topic, p) for p in wanted], timeout=10)
    except KafkaException:  # the coordinator is busy with a rebalance: ask again later
        return -1
    finally:
        consumer.close()
    return sum(max(tp.offset, 0) for tp in offsets)


def owned_partitions(log: Path, topic: str) -> set[int]:
    """The partitions of ``topic`` a service's last "assigned ..." log line names."""
    lines = [line for line in log.read_text().splitlines() if " assigned " in line]
    if not lines:
        return set()
    return {int(p) for p in re.findall(re.escape(topic) + r"\[(\d+)\]", lines[-1])}


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


def member_shares(settings: Settings) -> list[set[int]]:
    """The partitions of transfers.requested each member of the validator group owns in
    the group's current generation (empty while the coordinator is busy)."""
    admin = kafka_admin(settings)
    futures = admin.describe_consumer_groups([settings.validator_group], request_timeout=10)
    try:
        group = futures[settings.validator_group].result(timeout=15)
    except KafkaException:
        return []
    topic = settings.topic(TRANSFERS_REQUESTED)
    return [
        {tp.partition for tp in m.assignment.topic_partitions if tp.topic == topic}
        if m.assignment
        else set()
        for m in group.members
    ]


def progress_now(settings: Settings, partitions: Iterable[int] | None = None) -> int:
    """``committed_progress``, asked again while the coordinator answers busy (-1)."""
    for _ in range(50):  # bounded: a few seconds of retries
        progress = committed_progress(settings, partitions)
        if progress >= 0:
            return progress
        time.sleep(0.1)
    raise AssertionError("the group coordinator stayed busy")


def decisions_logged(log: Path) -> int:
    """How many decisions a validator committed in its life, as it logs them when it
    stops ("validator decisions: {...}")."""
    counts = re.findall(r"validator decisions: (\{.*\})", log.read_text())
    assert counts, f"{log.name} logged no decision count (was it stopped cleanly?)"
    return sum(ast.literal_eval(counts[-1]).values())


def test_two_validator_instances_share_the_partitions_and_one_dying_loses_nothing(
    settings: Settings, topics, db, tmp_path: Path
) -> None:
    """Two instances (their own transactional ids) split the partitions; one is killed
    mid-stream, once it has committed decisions on its own partitions, the other takes
    its partitions over; every request is decided once, the survivor deciding the rest."""
    settings = settings.model_copy(update={"validator_batch_max": 20})
    topics()
    accounts = open_test_accounts(db, settings, 50)
    rng = random.Random(4)
    requests = [transfer_request(*rng.sample(accounts, 2)) for _ in range(REQUESTS * 2)]
    first = start_service(settings, "validator", log=tmp_path / "first.log",
                          BANKFLOW_INSTANCE_ID="first")  # fmt: skip
    second = start_service(settings, "validator", log=tmp_path / "second.log",
                           BANKFLOW_INSTANCE_ID="second")  # fmt: skip
    topic = settings.topic(TRANSFERS_REQUESTED)
    first_log = tmp_path / "first.log"

    def first_share() -> set[int]:
        """The first instance's partitions, once its log and the group agree on them: the
        group's current generation has two members, and the first's last assignment is
        one of their shares (not a lone instance's earlier "all of them")."""
        shares, mine = member_shares(settings), owned_partitions(first_log, topic)
        if len(shares) == 2 and all(shares) and mine in shares:
            return mine
        return set()

    try:
        wait_for(lambda: bool(first_share()), 60, "both to own partitions, first's share logged")
        mine = first_share()
        # The stream starts once the partitions are shared: an instance that joined alone
        # cannot have decided the first's share (or all of it) before the first got it.
        # Whatever is committed on the first's partitions now is not its own work all the
        # same; only what is committed on them past this point is, the first being their
        # owner until it is killed.
        own_at_share = progress_now(settings, mine)
        produce_requests(settings, requests)
        # The scenario, not hoped for but waited for: the instance about to die has
        # committed decisions on its own partitions (and not the whole stream yet).
        wait_for(
            lambda: committed_progress(settings, mine) > own_at_share,
            60,
            "first to commit on its own partitions",
            interval_s=0.05,
        )
        first.send_signal(signal.SIGSTOP)  # hold it still while its share is measured
        own_at_kill, killed_at = progress_now(settings, mine), progress_now(settings)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        wait_for(lambda: committed_progress(settings) >= len(requests), 120, "the survivor")
    finally:
        stop_service(second)
        if first.poll() is None:
            first.kill()
    out = read_committed(settings, TRANSFERS_ACCEPTED, TRANSFERS_REJECTED,
                         expected=len(requests))  # fmt: skip
    ids = Counter(
        uuid.UUID(m.value()[m.value().index(b'"transfer_id":"') + 15 :][:36].decode())
        for name in (TRANSFERS_ACCEPTED, TRANSFERS_REJECTED)
        for m in out[name]
    )
    assert set(ids) == {r.transfer_id for r in requests}, "a request has no decision"
    assert [tid for tid, n in ids.items() if n != 1] == [], "a request was decided twice"
    # The killed instance had decided part of the stream on its own partitions, and the
    # survivor decided only the rest: what the first committed was not decided again.
    first_own = own_at_kill - own_at_share
    assert first_own > 0 and 0 < killed_at < len(requests), (own_at_share, own_at_kill)
    survivor = decisions_logged(tmp_path / "second.log")
    assert 0 < survivor <= len(requests) - first_own, (survivor, first_own)
    assert "fraud rules" in (tmp_path / "first.log").read_text()  # it did start
