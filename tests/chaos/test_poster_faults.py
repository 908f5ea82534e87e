"""The poster under faults: SIGKILL at random moments, and a zombie paused past its session.

Both must leave the ledger exactly as the workload says it must be (every outcome
is known in advance, see tests/ledger_support.py), with `verify` passing.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest

from bankflow.ledger.accounts import find_internal_account
from bankflow.settings import Settings
from consumers.poster import SESSION_TIMEOUT_MS
from tests.ledger_support import (
    assert_ledger_matches,
    build_workload,
    drain_in_process,
    produce_accepted,
    start_service,
    stop_service,
    transfer_count,
    wait_for,
)

pytestmark = pytest.mark.timeout(600)

#: Small batches: many transactions, so a kill lands inside one more often.
BATCH_MAX = 100
KILLS = 6


def small_batches(settings: Settings) -> Settings:
    return settings.model_copy(update={"poster_batch_max": BATCH_MAX, "poster_batch_wait_ms": 20})


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(
    settings: Settings, topics, db, tmp_path: Path
) -> None:
    settings = small_batches(settings)
    topics()
    work = build_workload(db, settings, accounts=200, transfers=30_000, seed=11)
    produce_accepted(settings, work.funding)
    drain_in_process(settings, len(work.funding))
    produce_accepted(settings, work.transfers)
    total = len(work.all_transfers)
    rng = random.Random(5)

    kills_while_posting = 0
    for attempt in range(KILLS):
        before = transfer_count(db)
        # Kill at a random point of progress, at most half of this attempt's share of
        # what is left, so every attempt finds work (a random moment in time did not:
        # one CI run's fast posters finished the workload before the sixth kill).
        share = (total - before) // (2 * (KILLS - attempt))
        kill_at = before + rng.randint(1, max(1, share))
        poster = start_service(settings, "poster", log=tmp_path / f"poster-{attempt}.log")
        try:
            wait_for(lambda k=kill_at: transfer_count(db) >= k, 60, "the kill point", 0.005)
        finally:
            poster.send_signal(signal.SIGKILL)
            poster.wait(10)
        if transfer_count(db) < total:
            kills_while_posting += 1
    assert kills_while_posting >= 5, "the workload finished before the kills: make it bigger"

    final = start_service(settings, "poster", log=tmp_path / "poster-final.log")
    try:
        wait_for(lambda: transfer_count(db) >= total, 240, "the poster to drain the topic")
    finally:
        stop_service(final)
    assert_ledger_matches(db, settings, work)


def read_partitions(settings: Settings) -> list[int]:
    from bankflow.bootstrap import kafka_admin
    from schemas.topics import TRANSFERS_ACCEPTED

    topic = settings.topic(TRANSFERS_ACCEPTED)
    return list(kafka_admin(settings).list_topics(topic, timeout=10).topics[topic].partitions)


def owns_one_partition(log: Path) -> bool:
    """Whether the poster's latest assignment (from its log) is exactly one partition."""
    lines = [line for line in log.read_text().splitlines() if " INFO assigned " in line]
    return bool(lines) and lines[-1].count("transfers.accepted[") == 1


def in_transaction(db, pid: int) -> bool:
    """Whether the poster is inside a batch's database transaction.

    The poster's connection is in autocommit mode, so "idle in transaction" (between
    two statements of an open transaction) happens only inside ``write_batch``; an
    active statement outside it (reading the stored offsets at assignment) is not
    a batch, and a pause there would hold nothing to guard.
    """
    row = db.execute(
        "select count(*) from pg_stat_activity where application_name = %s "
        "and state = 'idle in transaction'",
        (f"bankflow-poster-{pid}",),
    ).fetchone()
    return bool(row and row[0])


def pause_mid_batch(db, pid: int, attempts: int = 50) -> None:
    """SIGSTOP the poster inside a batch's transaction, checked after the stop.

    Seen mid-batch and stopped a moment later, it may have committed in between and be
    paused outside any transaction: then there is nothing for the guard to guard, and
    the test would prove nothing. Let it go on and catch it again.
    """
    for _ in range(attempts):
        wait_for(lambda: in_transaction(db, pid), 30, "the zombie to be mid-batch", 0.001)
        os.kill(pid, signal.SIGSTOP)
        if in_transaction(db, pid):
            return
        os.kill(pid, signal.SIGCONT)
    raise AssertionError(f"could not pause the poster inside a transaction in {attempts} tries")


def test_a_zombie_poster_resumed_mid_batch_changes_nothing(
    settings: Settings, topics, db, tmp_path: Path
) -> None:
    """Two posters, two partitions over disjoint accounts: one partition each.

    The zombie is paused inside a database transaction. The other poster goes on with
    its own partition (no shared account locks), is given the zombie's partition
    after the session timeout, and meets the zombie's stored offset: whichever of the
    two then writes second finds the offsets moved and must commit nothing.
    """
    settings = small_batches(settings).model_copy(update={"topic_partitions": 2})
    topics(partitions=2)
    assert len(read_partitions(settings)) == 2
    cash = find_internal_account(db, "cash", "EUR")
    assert cash is not None
    halves = [
        build_workload(db, settings, accounts=100, transfers=15_000, seed=seed) for seed in (13, 17)
    ]
    work = halves[0].merged_with(halves[1], cash.balance_minor)
    produce_accepted(settings, work.funding)
    drain_in_process(settings, len(work.funding))
    for partition, half in enumerate(halves):
        produce_accepted(settings, half.transfers, partition=partition)
    total = len(work.all_transfers)

    logs = [tmp_path / "poster-zombie.log", tmp_path / "poster-other.log"]
    zombie = start_service(settings, "poster", log=logs[0])
    other = start_service(settings, "poster", log=logs[1])
    try:
        # Both must be settled members, one partition each, before the pause: then the
        # other poster is certain to reach for the zombie's partition while the zombie
        # holds its offset row, and to find it moved once the zombie commits.
        wait_for(
            lambda: all(owns_one_partition(log) for log in logs),
            60,
            "each poster to own one partition",
        )
        wait_for(lambda: transfer_count(db) > len(work.funding) + 500, 60, "both posters to post")
        pause_mid_batch(db, zombie.pid)
        paused_at = transfer_count(db)
        time.sleep(SESSION_TIMEOUT_MS / 1000 + 5)  # past the session: its partition moves
        os.kill(zombie.pid, signal.SIGCONT)
        assert paused_at < total, "the workload finished before the pause: make it bigger"
        wait_for(lambda: transfer_count(db) >= total, 240, "the posters to drain the topic")
    finally:
        os.kill(zombie.pid, signal.SIGCONT)
        stop_service(zombie)
        stop_service(other)
    assert_ledger_matches(db, settings, work)
    # The guard engaged: one of them found the stored offsets moved under its batch and
    # re-read them instead of committing.
    assert any("reading again from the stored positions" in log.read_text() for log in logs), (
        "\n".join(log.read_text() for log in logs)
    )
