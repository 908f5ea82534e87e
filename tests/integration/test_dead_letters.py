"""Dead letters end in the table, are listed with their reason, and replay exactly once."""

from __future__ import annotations

import json
import subprocess
import threading
from typing import Any

import pytest

from bankflow.bootstrap import kafka_producer
from bankflow.settings import Settings
from consumers.relay import relay_once
from schemas import headers as h
from schemas.topics import TRANSFERS_DLQ, TRANSFERS_REQUESTED
from tests.integration.test_validator import (
    produce_requests,
    run_validator_until,
    transfer_request,
)
from tests.ledger_support import (
    accepted,
    drain_in_process,
    open_test_accounts,
    produce_accepted,
    run_cli,
    transfer_count,
    wait_for,
)

pytestmark = pytest.mark.timeout(300)


def bankflow(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(settings, *args)


def sink_until(settings: Settings, count: int) -> None:
    from consumers.dlq_sink import build

    sink = build(settings)
    sink.subscribe()
    try:
        for _ in range(100):  # bounded
            sink.step()
            if sink.stage.stored >= count:
                return
    finally:
        sink.close()
    raise AssertionError(f"the sink stored {sink.stage.stored} of {count}")


def test_poison_requests_are_listed_with_their_reason(settings: Settings, topics, db) -> None:
    topics()
    produce_requests(settings, [], raw=[b"\x00garbage", b'{"transfer_id": 1}'], partition=0)
    run_validator_until(settings, 2)
    sink_until(settings, 2)
    listed = json.loads(bankflow(settings, "dlq", "list", "--json").stdout)
    assert [d["error_class"] for d in listed] == ["PoisonMessage", "PoisonMessage"]
    assert "Invalid JSON" in listed[0]["reason"]
    assert "transfer_id" in listed[1]["reason"]
    shown = json.loads(bankflow(settings, "dlq", "show", str(listed[0]["id"])).stdout)
    assert shown["payload"].startswith("\x00garbage")
    discarded = bankflow(settings, "dlq", "discard", str(listed[0]["id"]), "--reason", "junk")
    assert discarded.returncode == 0, discarded.stderr
    assert [d["id"] for d in json.loads(bankflow(settings, "dlq", "list", "--json").stdout)] == [
        listed[1]["id"]
    ]
    actions = db.execute("select action, note from dead_letter_actions").fetchall()
    assert actions == [("discard", "junk")]


def test_a_dead_letter_whose_cause_was_fixed_replays_to_exactly_one_posting(
    settings: Settings, topics, db
) -> None:
    topics()
    (a,) = open_test_accounts(db, settings, 1)
    from bankflow.ledger.accounts import find_internal_account

    cash = find_internal_account(db, "cash", "EUR")
    # A broken deployment refuses this one transfer; the poster dead-letters it.
    db.execute("alter table transfers add constraint broken check (amount_minor <> 777) not valid")
    transfer = accepted(cash.id, a, 777)
    produce_accepted(settings, [transfer])
    from consumers.poster import build

    poster = build(settings)
    poster.subscribe()
    try:
        for _ in range(100):  # bounded
            poster.step()
            if poster.stage.stats.dead_letters:
                break
    finally:
        poster.close()
    assert transfer_count(db) == 0
    assert relay_once(db, kafka_producer(settings), batch_max=10) == 1
    sink_until(settings, 1)
    (letter,) = json.loads(bankflow(settings, "dlq", "list", "--json").stdout)
    assert "database refused it" in letter["reason"]

    db.execute("alter table transfers drop constraint broken")  # the cause is fixed
    first = bankflow(settings, "dlq", "replay", str(letter["id"]))
    assert first.returncode == 0, first.stderr
    drain_in_process(settings, 1)
    second = bankflow(settings, "dlq", "replay", str(letter["id"]))
    assert "replayed already; nothing sent" in second.stderr
    replay_all = bankflow(settings, "dlq", "replay", "--all")
    assert replay_all.returncode == 0
    drain_in_process(settings, 1, timeout_s=10)
    rows = db.execute("select id, status from transfers").fetchall()
    assert rows == [(transfer.transfer_id, "posted")]
    balance = db.execute("select balance_minor from accounts where id = %s", (a,)).fetchone()[0]
    assert balance == 777


def test_a_request_that_exhausts_its_retry_tiers_is_dead_lettered_with_its_attempts(
    settings: Settings, topics, db
) -> None:
    import socket
    import time

    from processors.retrier import build as build_retrier

    with socket.socket() as probe:  # a port where no Redis answers
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    settings = settings.model_copy(
        update={"retry_tiers": {"first": 1, "second": 2},
                "redis_url": f"redis://127.0.0.1:{dead_port}/0"}
    )  # fmt: skip
    topics(*settings.all_topics())
    a, b = open_test_accounts(db, settings, 2)
    produce_requests(settings, [transfer_request(a, b)])
    retrier = build_retrier(settings)
    retrier.subscribe()
    try:
        for _ in range(3):  # first try, then once per tier; the retrier sends it back
            run_validator_until(settings, 1)
            deadline = time.monotonic() + 30
            while not retrier.step() and time.monotonic() < deadline:
                pass
            if sum(retrier.stage.sent.values()) == 2:
                break
        run_validator_until(settings, 1)  # the third failure: no tier left
    finally:
        retrier.close()
    sink_until(settings, 1)
    (letter,) = json.loads(bankflow(settings, "dlq", "list", "--json").stdout)
    assert letter["error_class"] == "DependencyUnavailable"
    assert "Redis" in letter["reason"]
    assert letter["attempts"] == 3
    assert letter["first_failure_at"] < letter["last_failure_at"]


def _dead_letter_headers(settings: Settings, offset: int) -> list[tuple[str, bytes]]:
    return [
        (h.ORIGINAL_TOPIC, settings.topic(TRANSFERS_REQUESTED).encode()),
        (h.ORIGINAL_PARTITION, b"0"),
        (h.ORIGINAL_OFFSET, str(offset).encode()),
        (h.ERROR_CLASS, b"PoisonMessage"),
        (h.ERROR_MESSAGE, b"not a transfer"),
    ]


def test_a_discarded_dead_letter_delivered_again_stays_discarded(
    settings: Settings, topics, db
) -> None:
    topics()
    producer = kafka_producer(settings)
    dlq = settings.topic(TRANSFERS_DLQ)
    producer.produce(dlq, key=b"k", value=b"junk", headers=_dead_letter_headers(settings, 7))
    assert producer.flush(30) == 0
    sink_until(settings, 1)
    (letter,) = json.loads(bankflow(settings, "dlq", "list", "--json").stdout)
    assert (
        bankflow(settings, "dlq", "discard", str(letter["id"]), "--reason", "junk").returncode == 0
    )

    # The same message again (a sink redelivery, or anyone writing it twice).
    producer.produce(dlq, key=b"k", value=b"junk", headers=_dead_letter_headers(settings, 7))
    assert producer.flush(30) == 0
    sink_until(settings, 1)
    assert json.loads(bankflow(settings, "dlq", "list", "--json").stdout) == []
    replayed = bankflow(settings, "dlq", "replay", "--all")
    assert replayed.returncode == 0 and "replayed" not in replayed.stderr
    (again,) = json.loads(
        bankflow(settings, "dlq", "list", "--status", "discarded", "--json").stdout
    )
    assert again["id"] == letter["id"] and again["attempts"] == 2


def test_a_replay_and_a_discard_of_one_letter_at_once_exactly_one_wins(
    settings: Settings, topics, db
) -> None:
    """The replay holds the letter (``claim``) while it publishes; the discard that comes
    meanwhile waits for it and is then told the letter is no longer open."""
    from bankflow.bootstrap import db_connect
    from bankflow.dead_letters import DeadLetterNotFound, claim, resolve, store

    topics()
    store(db, b"k", b"junk", {h.ORIGINAL_TOPIC: "t", h.ORIGINAL_PARTITION: "0",
                              h.ORIGINAL_OFFSET: "1"}, ("t", 0, 1))  # fmt: skip
    (letter_id,) = db.execute("select id from dead_letters").fetchone()
    outcome: list[str] = []

    def discard() -> None:
        with db_connect(settings, autocommit=True) as other:
            try:
                resolve(other, letter_id, "discard", "cli:other", "at the same time")
                outcome.append("discarded")
            except DeadLetterNotFound:
                outcome.append("told it is not open")

    with db_connect(settings, autocommit=True) as replaying:
        with replaying.transaction():
            claim(replaying, letter_id)
            racing = threading.Thread(target=discard)
            racing.start()
            # The discard is blocked on the claimed row: it cannot have an outcome yet.
            wait_for(lambda: _waiting_on_a_lock(db), 30, "the discard to wait for the lock")
            assert outcome == []
            resolve(replaying, letter_id, "replay", "cli:me", None)
        racing.join(30)
    assert outcome == ["told it is not open"]
    assert db.execute("select status from dead_letters").fetchone()[0] == "replayed"
    assert db.execute("select action from dead_letter_actions").fetchall() == [("replay",)]


def _waiting_on_a_lock(db: Any) -> bool:
    row = db.execute(
        "select count(*) from pg_stat_activity where wait_event_type = 'Lock' "
        "and datname = current_database()"
    ).fetchone()
    return bool(row and row[0])
