"""No silent skip: a gap in a partition halts that partition, the others post on.

Records of ``transfers.accepted`` deleted below the poster's stored position (retention
that ran while the poster was behind, or DeleteRecords) were never booked; reading on
from the first record that exists, as ``auto.offset.reset`` would, loses them without
a trace. The poster halts that partition instead, says which offsets are missing, and
resumes only when an operator accepts the gap.
"""

from __future__ import annotations

import json
import time

import pytest
from confluent_kafka import TopicPartition
from prometheus_client import REGISTRY

from bankflow.bootstrap import kafka_admin
from bankflow.ledger.accounts import find_internal_account
from bankflow.settings import Settings
from schemas.topics import TRANSFERS_ACCEPTED
from tests.ledger_support import (
    EUR,
    accepted,
    drain_in_process,
    open_test_accounts,
    produce_accepted,
    run_cli,
    transfer_count,
)

pytestmark = pytest.mark.timeout(240)

SCOPE = "poster:transfers.accepted:1"


def _stored(db, settings: Settings, partition: int) -> int:
    row = db.execute(
        "select next_offset from consumer_offsets where group_id = %s and topic = %s "
        "and partition = %s",
        (settings.poster_group, settings.topic(TRANSFERS_ACCEPTED), partition),
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_records_deleted_under_the_stored_position_halt_their_partition_only(
    settings: Settings, topics, db
) -> None:
    topics()
    (customer,) = open_test_accounts(db, settings, 1)
    cash = find_internal_account(db, "cash", EUR)
    assert cash is not None

    def deposits(partition: int, count: int) -> None:
        produce_accepted(
            settings, [accepted(cash.id, customer, 100) for _ in range(count)], partition=partition
        )

    for partition in range(3):
        deposits(partition, 5)
    drain_in_process(settings, 15)
    stored = _stored(db, settings, 1)
    for partition in range(3):
        deposits(partition, 5)
    # Three records of partition 1 that the poster never read are deleted.
    topic = settings.topic(TRANSFERS_ACCEPTED)
    admin = kafka_admin(settings)  # kept: the futures resolve only while it lives
    futures = admin.delete_records([TopicPartition(topic, 1, stored + 3)])
    for future in futures.values():
        future.result(timeout=30)

    from consumers.poster import build

    runner = build(settings)
    runner.subscribe()
    try:
        deadline = time.monotonic() + 60
        while transfer_count(db) < 25 or (topic, 1) not in runner.halted_partitions:
            assert time.monotonic() < deadline, "partitions 0 and 2 did not post, or 1 not halt"
            runner.step()
        for _ in range(10):  # the halted partition stays halted while the others are read
            runner.step()
        assert transfer_count(db) == 25  # 15 + the five new of partitions 0 and 2
        assert _stored(db, settings, 1) == stored
        reason = runner.halted_partitions[(topic, 1)]
        assert f"records {stored}..{stored + 2} were deleted" in reason
        gauge = REGISTRY.get_sample_value(
            "bankflow_stage_partition_halted",
            {"stage": "poster", "topic": TRANSFERS_ACCEPTED, "partition": "1"},
        )
        assert gauge == 1
        listed = run_cli(settings, "halt", "list", "--json")
        halts = {h["stage"]: h for h in json.loads(listed.stdout)}
        assert set(halts) == {SCOPE} and "were deleted" in halts[SCOPE]["reason"]

        # Clearing without accepting the gap only looks again: still halted.
        cleared = run_cli(settings, "halt", "clear", SCOPE, "--note", "look", "--actor", "ops")
        assert cleared.returncode == 0, cleared.stdout + cleared.stderr
        runner.next_halt_check = 0
        deadline = time.monotonic() + 30
        while not _halted_again(db):
            assert time.monotonic() < deadline, "the gap was not found again"
            runner.step()
        assert transfer_count(db) == 25

        # Accepting it moves the stored position past the gap, and the rest is posted.
        accepted_gap = run_cli(
            settings, "halt", "clear", SCOPE, "--accept-gap", "--actor", "ops@bank",
            "--note", "the three missing transfers were re-sent by their clients",
        )  # fmt: skip
        assert accepted_gap.returncode == 0, accepted_gap.stdout + accepted_gap.stderr
        runner.next_halt_check = 0
        deadline = time.monotonic() + 60
        while transfer_count(db) < 27:
            assert time.monotonic() < deadline, "partition 1 did not resume after the gap"
            runner.step()
    finally:
        runner.close()
    assert _stored(db, settings, 1) == stored + 5
    note = db.execute(
        "select note, cleared_by from stage_halts where stage = %s and note like 'gap accepted%%'",
        (SCOPE,),
    ).fetchone()
    assert note is not None and note[1] == "ops@bank"
    assert f"offsets {stored}..{stored + 2} left unprocessed" in note[0]


def _halted_again(db) -> bool:
    row = db.execute(
        "select count(*) from stage_halts where stage = %s and cleared_at is null", (SCOPE,)
    ).fetchone()
    return bool(row and row[0])
