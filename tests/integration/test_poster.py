"""The poster against a real Kafka and PostgreSQL: volume, replay, poison, the zombie guard."""

from __future__ import annotations

import json

import pytest
from confluent_kafka import TopicPartition

from bankflow.bootstrap import kafka_consumer
from bankflow.ledger.errors import OffsetsMoved
from bankflow.ledger.store import OffsetRange, Topics, write_batch
from bankflow.settings import Settings
from schemas import headers as h
from schemas.topics import TRANSFERS_ACCEPTED, TRANSFERS_DLQ
from tests.ledger_support import (
    accepted,
    assert_ledger_matches,
    build_workload,
    drain_in_process,
    ledger_snapshot,
    open_test_accounts,
    produce_accepted,
    run_cli,
)

pytestmark = pytest.mark.timeout(300)


def test_ten_thousand_transfers_among_two_hundred_accounts_post_exactly_once(
    settings: Settings, topics, db
) -> None:
    topics()
    work = build_workload(db, settings, accounts=200, transfers=10_000)
    produce_accepted(settings, work.funding)
    drain_in_process(settings, len(work.funding))
    produce_accepted(settings, work.transfers)
    stats = drain_in_process(settings, len(work.all_transfers))

    assert_ledger_matches(db, settings, work)
    expected_failures = sum(1 for s in work.expected_status.values() if s == "failed")
    assert stats.failed == expected_failures > 0
    assert set(stats.reasons) == {"insufficient_funds", "unknown_account"}
    # The real command agrees, and says so in JSON.
    result = run_cli(settings, "verify", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["ok"] is True


def test_replaying_the_topic_from_offset_zero_changes_nothing(
    settings: Settings, topics, db
) -> None:
    topics()
    work = build_workload(db, settings, accounts=30, transfers=600, broke=3)
    produce_accepted(settings, work.funding)  # funded first: outcomes must not depend on order
    drain_in_process(settings, len(work.funding))
    produce_accepted(settings, work.transfers)
    drain_in_process(settings, len(work.all_transfers))
    before = ledger_snapshot(db)

    db.execute(
        "update consumer_offsets set next_offset = 0 where group_id = %s", (settings.poster_group,)
    )
    from consumers.poster import build

    runner = build(settings)
    poster = runner.stage
    runner.subscribe()
    try:
        for _ in range(200):  # bounded: far more polls than 600 messages need
            runner.step()
            if poster.stats.duplicates >= len(work.all_transfers):
                break
    finally:
        runner.close()
    assert poster.stats.duplicates == len(work.all_transfers)
    assert poster.stats.posted == poster.stats.failed == 0
    assert ledger_snapshot(db) == before
    assert_ledger_matches(db, settings, work)


def test_poison_goes_to_the_dead_letter_topic_and_the_poster_goes_on(
    settings: Settings, topics, db
) -> None:
    topics()
    a, b = open_test_accounts(db, settings, 2)
    poison = [
        (b"k1", b"not json at all"),
        (b"k2", b'{"transfer_id": "nope"}'),
        (
            b"k3",
            json.dumps(
                {**json.loads(accepted(a, b, 1).model_dump_json()), "amount_minor": -5}
            ).encode(),
        ),
    ]
    good = accepted(a, b, 100)  # fails for insufficient funds, but is a valid message
    produce_accepted(settings, [], raw=poison)
    produce_accepted(settings, [good])
    stats = drain_in_process(settings, 1)
    assert stats.dead_letters == 3

    rows = db.execute(
        "select topic, key, payload, headers from outbox where transfer_id is null order by key"
    ).fetchall()
    assert [r[0] for r in rows] == [settings.topic(TRANSFERS_DLQ)] * 3
    assert [bytes(r[1]) for r in rows] == [b"k1", b"k2", b"k3"]
    assert [bytes(r[2]) for r in rows] == [p[1] for p in poison]  # kept exactly as it arrived
    reasons = [r[3][h.ERROR_MESSAGE] for r in rows]
    assert "Invalid JSON" in reasons[0]
    assert "transfer_id" in reasons[1]
    assert "amount_minor: Input should be greater than 0" in reasons[2]
    assert all(r[3][h.ORIGINAL_TOPIC] == settings.topic(TRANSFERS_ACCEPTED) for r in rows)
    status = db.execute(
        "select status, reason from transfers where id = %s", (good.transfer_id,)
    ).fetchone()
    assert status == ("failed", "insufficient_funds")

    # The relay publishes them to the dead-letter topic, bytes and reasons intact.
    from bankflow.bootstrap import kafka_producer
    from consumers.relay import relay_once

    assert relay_once(db, kafka_producer(settings), batch_max=100) == 4
    consumer = kafka_consumer(settings, group_id=f"{settings.topic_prefix}dlq-reader")
    dlq = settings.topic(TRANSFERS_DLQ)
    consumer.assign([TopicPartition(dlq, p, 0) for p in range(settings.topic_partitions)])
    letters = []
    try:
        for _ in range(20):  # bounded: ten seconds
            letters += [m for m in consumer.consume(10, timeout=0.5) if m.error() is None]
            if len(letters) >= len(poison):
                break
    finally:
        consumer.close()
    assert sorted(m.value() for m in letters) == sorted(p[1] for p in poison)
    for m in letters:
        headers = {k: v.decode() for k, v in m.headers()}
        assert headers[h.ERROR_CLASS] == "PoisonMessage"
        assert headers[h.ORIGINAL_TOPIC] == settings.topic(TRANSFERS_ACCEPTED)
        assert h.EVENT_ID in headers


def test_a_batch_whose_stored_offsets_moved_writes_nothing(settings: Settings, topics, db) -> None:
    a, b = open_test_accounts(db, settings, 2)
    names = Topics("p", "f", "d")
    key = (settings.topic(TRANSFERS_ACCEPTED), 0)
    t1 = accepted(a, b, 1)
    from bankflow.ledger.store import ConsumedTransfer

    # Instance A commits offsets 0..9; instance B, still believing nothing is stored, may not.
    write_batch(db, "g", {key: OffsetRange(None, 10)}, [], [], names)
    with pytest.raises(OffsetsMoved, match=r"expected None, stored 10"):
        write_batch(
            db, "g", {key: OffsetRange(None, 5)}, [ConsumedTransfer(t1, key[0], 0, 4)], [], names
        )
    with pytest.raises(OffsetsMoved, match=r"expected 7, stored 10"):
        write_batch(
            db, "g", {key: OffsetRange(7, 12)}, [ConsumedTransfer(t1, key[0], 0, 11)], [], names
        )
    assert db.execute("select count(*) from transfers").fetchone()[0] == 0
    assert db.execute("select next_offset from consumer_offsets").fetchone()[0] == 10


def test_kafka_group_offsets_follow_the_stored_ones_for_tools(
    settings: Settings, topics, db
) -> None:
    topics()
    a, b = open_test_accounts(db, settings, 2)
    produce_accepted(settings, [accepted(a, b, 1) for _ in range(20)])
    drain_in_process(settings, 20)
    stored = {
        (t, p): o
        for t, p, o in db.execute("select topic, partition, next_offset from consumer_offsets")
    }
    consumer = kafka_consumer(settings, group_id=settings.poster_group)
    try:
        committed = consumer.committed([TopicPartition(t, p) for t, p in stored], timeout=10)
    finally:
        consumer.close()
    assert {(c.topic, c.partition): c.offset for c in committed} == stored


def test_a_database_that_refuses_everything_halts_the_poster_until_an_operator_clears_it(
    settings: Settings, topics, db
) -> None:
    from consumers.poster import REFUSED_IN_A_ROW_MAX, build

    topics()
    a, b = open_test_accounts(db, settings, 2)
    # A broken deployment: a constraint that no new transfer can meet.
    db.execute("alter table transfers add constraint broken check (amount_minor < 0) not valid")
    produce_accepted(
        settings, [accepted(a, b, 1) for _ in range(3 * REFUSED_IN_A_ROW_MAX)], partition=0
    )
    runner = build(settings)
    runner.subscribe()
    try:
        for _ in range(100):  # bounded
            runner.step()
            if runner.halted_reason:
                break
        assert runner.halted_reason and "schema or deployment problem" in runner.halted_reason
        assert not runner.ready()
    finally:
        runner.close()
    assert runner.stage.stats.dead_letters == REFUSED_IN_A_ROW_MAX
    stored = db.execute("select next_offset from consumer_offsets").fetchone()[0]
    assert stored == REFUSED_IN_A_ROW_MAX  # the rest wait for the fix, not in the DLQ

    # The halt survives a restart: a new poster reads it and posts nothing.
    db.execute("alter table transfers drop constraint broken")  # the cause is fixed ...
    again = build(settings)
    again.subscribe()
    try:
        for _ in range(5):
            again.step()
        assert again.halted_reason is not None and not again.ready()
        assert db.execute("select count(*) from transfers").fetchone()[0] == 0
    finally:
        again.close()
    listed = run_cli(settings, "halt", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    (halt,) = json.loads(listed.stdout)
    assert halt["stage"] == "poster" and "refused" in halt["reason"]
    status = run_cli(settings, "status", "--json")
    assert status.returncode == 1  # a halt is something for an operator to act on
    assert [h["stage"] for h in json.loads(status.stdout)["halted"]] == ["poster"]

    # ... and only an operator's command resumes it, from the stored position.
    cleared = run_cli(
        settings, "halt", "clear", "poster", "--note", "constraint dropped", "--actor", "ops@bank"
    )
    assert cleared.returncode == 0, cleared.stderr
    assert json.loads(run_cli(settings, "halt", "list", "--json").stdout) == []
    drain_in_process(settings, 2 * REFUSED_IN_A_ROW_MAX)
