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
from schemas.topics import TRANSFERS_ACCEPTED, TRANSFERS_DLQ, TRANSFERS_REQUESTED
from schemas.transfers import TransferRequest
from tests.integration.test_validator import (
    produce_requests,
    read_committed,
    run_validator_until,
    transfer_request,
)
from tests.ledger_support import (
    accepted,
    drain_in_process,
    open_test_accounts,
    run_cli,
    transfer_count,
    wait_for,
)

pytestmark = pytest.mark.timeout(300)
ACTOR = "ops@bank.example"


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
    # Neither holds a transfer request: a replay refuses them, and they stay open.
    for letter in listed:
        refused = bankflow(settings, "dlq", "replay", str(letter["id"]), "--actor", ACTOR)
        assert refused.returncode == 1
        assert f"dead letter {letter['id']} " in refused.stderr
        assert "is not replayable: its payload is not a transfer request" in refused.stderr
    assert len(json.loads(bankflow(settings, "dlq", "list", "--json").stdout)) == 2
    no_actor = bankflow(settings, "dlq", "discard", str(listed[0]["id"]), "--reason", "junk")
    assert no_actor.returncode == 2 and "--actor" in no_actor.stderr
    discarded = bankflow(
        settings, "dlq", "discard", str(listed[0]["id"]), "--reason", "junk", "--actor", ACTOR
    )
    assert discarded.returncode == 0, discarded.stderr
    assert [d["id"] for d in json.loads(bankflow(settings, "dlq", "list", "--json").stdout)] == [
        listed[1]["id"]
    ]
    actions = db.execute("select action, actor, note from dead_letter_actions").fetchall()
    assert actions == [("discard", ACTOR, "junk")]


def test_a_poster_dead_letter_replays_through_the_validator_to_exactly_one_posting(
    settings: Settings, topics, db
) -> None:
    topics()
    (a,) = open_test_accounts(db, settings, 1)
    from bankflow.ledger.accounts import find_internal_account

    cash = find_internal_account(db, "cash", "EUR")
    # A broken deployment refuses this one transfer; the poster dead-letters it.
    db.execute("alter table transfers add constraint broken check (amount_minor <> 777) not valid")
    transfer = transfer_request(cash.id, a, 777).model_copy(update={"correlation_id": "corr-777"})
    produce_requests(settings, [transfer])
    assert run_validator_until(settings, 1).decisions == {TRANSFERS_ACCEPTED: 1}
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
    first = bankflow(settings, "dlq", "replay", str(letter["id"]), "--actor", ACTOR)
    assert first.returncode == 0, first.stderr
    requested = settings.topic(TRANSFERS_REQUESTED)
    assert f"as transfer request {transfer.transfer_id} to {requested}" in first.stderr
    # What was sent is the request the transfer was made from, with its correlation id
    # and none of the failure headers, on transfers.requested: nothing goes straight to
    # the poster.
    _original, sent = read_committed(settings, TRANSFERS_REQUESTED, expected=2)[TRANSFERS_REQUESTED]
    request = TransferRequest.model_validate_json(sent.value())
    assert (request.transfer_id, request.debit_account, request.credit_account) == (
        transfer.transfer_id, str(cash.id), str(a),
    )  # fmt: skip
    assert (request.amount_minor, request.currency) == (777, "EUR")
    assert dict(sent.headers() or []) == {h.CORRELATION_ID: b"corr-777"}
    assert len(read_committed(settings, TRANSFERS_ACCEPTED, expected=1)[TRANSFERS_ACCEPTED]) == 1

    # The validator answers the replay with the decision it made for the transfer id.
    validator = run_validator_until(settings, 1)
    assert validator.decisions == {TRANSFERS_ACCEPTED: 1}
    first_decision, again = read_committed(settings, TRANSFERS_ACCEPTED, expected=2)[
        TRANSFERS_ACCEPTED
    ]
    assert again.value() == first_decision.value()
    drain_in_process(settings, 1)
    second = bankflow(settings, "dlq", "replay", str(letter["id"]), "--actor", ACTOR)
    assert second.returncode == 1 and "replayed already; nothing sent" in second.stderr
    replay_all = bankflow(settings, "dlq", "replay", "--all", "--actor", ACTOR)
    assert replay_all.returncode == 0 and "no open dead letters" in replay_all.stderr
    # The request the client sent and the one replay: nothing more was sent.
    assert len(read_committed(settings, TRANSFERS_REQUESTED, expected=2)[TRANSFERS_REQUESTED]) == 2
    rows = db.execute("select id, status from transfers").fetchall()
    assert rows == [(transfer.transfer_id, "posted")]
    balance = db.execute("select balance_minor from accounts where id = %s", (a,)).fetchone()[0]
    assert balance == 777
    (action,) = db.execute("select action, actor, note from dead_letter_actions").fetchall()
    assert action[:2] == ("replay", ACTOR) and str(transfer.transfer_id) in action[2]


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
    discarded = bankflow(
        settings, "dlq", "discard", str(letter["id"]), "--reason", "junk", "--actor", ACTOR
    )
    assert discarded.returncode == 0, discarded.stderr

    # The same message again (a sink redelivery, or anyone writing it twice).
    producer.produce(dlq, key=b"k", value=b"junk", headers=_dead_letter_headers(settings, 7))
    assert producer.flush(30) == 0
    sink_until(settings, 1)
    assert json.loads(bankflow(settings, "dlq", "list", "--json").stdout) == []
    replayed = bankflow(settings, "dlq", "replay", "--all", "--actor", ACTOR)
    assert replayed.returncode == 0 and "replayed" not in replayed.stderr
    (again,) = json.loads(
        bankflow(settings, "dlq", "list", "--status", "discarded", "--json").stdout
    )
    assert again["id"] == letter["id"] and again["attempts"] == 2
    assert read_committed(settings, TRANSFERS_REQUESTED, expected=0)[TRANSFERS_REQUESTED] == []


def test_a_replayed_dead_letter_delivered_again_stays_replayed(
    settings: Settings, topics, db
) -> None:
    topics()
    a, b = open_test_accounts(db, settings, 2)
    request = transfer_request(a, b)
    producer = kafka_producer(settings)
    dlq = settings.topic(TRANSFERS_DLQ)
    dead = {"key": b"k", "value": request.model_dump_json().encode(),
            "headers": _dead_letter_headers(settings, 9)}  # fmt: skip
    producer.produce(dlq, **dead)
    assert producer.flush(30) == 0
    sink_until(settings, 1)
    (letter,) = json.loads(bankflow(settings, "dlq", "list", "--json").stdout)
    first = bankflow(settings, "dlq", "replay", str(letter["id"]), "--actor", ACTOR)
    assert first.returncode == 0, first.stderr

    # The same dead letter again (a sink redelivery, or anyone writing it twice).
    producer.produce(dlq, **dead)
    assert producer.flush(30) == 0
    sink_until(settings, 1)
    assert json.loads(bankflow(settings, "dlq", "list", "--json").stdout) == []
    replay_all = bankflow(settings, "dlq", "replay", "--all", "--actor", ACTOR)
    assert replay_all.returncode == 0 and "no open dead letters" in replay_all.stderr
    listed = bankflow(settings, "dlq", "list", "--status", "replayed", "--json")
    (again,) = json.loads(listed.stdout)
    assert again["id"] == letter["id"] and again["attempts"] == 2
    sent = read_committed(settings, TRANSFERS_REQUESTED, expected=1)[TRANSFERS_REQUESTED]
    assert [TransferRequest.model_validate_json(m.value()) for m in sent] == [request]
    assert db.execute("select count(*) from dead_letter_actions").fetchone()[0] == 1


def test_replay_all_sends_every_open_request_and_refuses_the_rest(
    settings: Settings, topics, db
) -> None:
    """``--all``, judged by what it did: the open requests and accepted transfers are sent to
    transfers.requested and posted once after validation; a letter that holds no request
    stays open, a discarded one stays discarded, and the exit code says one was refused."""
    from bankflow.dead_letters import resolve, store
    from bankflow.ledger.accounts import find_internal_account

    topics()
    a, b = open_test_accounts(db, settings, 2)
    cash = find_internal_account(db, "cash", "EUR")
    funding = accepted(cash.id, a, 5_000)
    request = transfer_request(cash.id, b, 1_000)
    discarded = transfer_request(cash.id, b, 2_000)
    letters = [
        (TRANSFERS_ACCEPTED, funding.model_dump_json().encode()),
        (TRANSFERS_REQUESTED, request.model_dump_json().encode()),
        (TRANSFERS_REQUESTED, b"\x00not a request"),
        (TRANSFERS_REQUESTED, discarded.model_dump_json().encode()),
    ]
    for offset, (topic, payload) in enumerate(letters):
        where = (settings.topic(topic), 0, offset)
        store(db, b"k", payload, {h.ORIGINAL_TOPIC: where[0], h.ORIGINAL_PARTITION: "0",
                                  h.ORIGINAL_OFFSET: str(offset)}, where)  # fmt: skip
    ids = [row[0] for row in db.execute("select id from dead_letters order by id")]
    resolve(db, ids[3], "discard", ACTOR, "a duplicate")
    # The accepted transfer is one the validator decided (a letter of one nobody
    # decided is not replayable: test_what_no_allowed_stage_decided_is_not_replayable).
    db.execute(
        "insert into validator_decisions (transfer_id, topic, key, value) "
        "values (%s, 'transfers.accepted', %s, %s)",
        (funding.transfer_id, b"k", funding.model_dump_json().encode()),
    )

    replay_all = bankflow(settings, "dlq", "replay", "--all", "--actor", ACTOR)
    assert replay_all.returncode == 1
    assert f"dead letter {ids[2]} (from {settings.topic(TRANSFERS_REQUESTED)}) is not " in (
        replay_all.stderr
    )
    statuses = dict(db.execute("select id, status from dead_letters").fetchall())
    assert statuses == {ids[0]: "replayed", ids[1]: "replayed", ids[2]: "open",
                        ids[3]: "discarded"}  # fmt: skip
    sent = read_committed(settings, TRANSFERS_REQUESTED, expected=2)[TRANSFERS_REQUESTED]
    sent_ids = {TransferRequest.model_validate_json(m.value()).transfer_id for m in sent}
    assert sent_ids == {funding.transfer_id, request.transfer_id}
    assert len(sent) == 2

    # Validated, then posted once each.
    assert run_validator_until(settings, 2).decisions == {TRANSFERS_ACCEPTED: 2}
    drain_in_process(settings, 2)
    rows = dict(db.execute("select id, status from transfers").fetchall())
    assert rows == {funding.transfer_id: "posted", request.transfer_id: "posted"}
    balances = dict(db.execute("select id, balance_minor from accounts where id = any(%s)",
                               ([a, b],)).fetchall())  # fmt: skip
    assert balances == {a: 5_000, b: 1_000}


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


def test_a_discard_that_holds_the_letter_wins_and_the_waiting_replay_sends_nothing(
    settings: Settings, topics, db
) -> None:
    """The other order: the discard's update holds the row; the replay (``replay``, as the
    CLI runs it) waits for it and is then told the letter was discarded, and sends nothing."""
    from bankflow.bootstrap import db_connect
    from bankflow.dead_letters import DeadLetterNotOpen, replay, resolve, store

    topics()
    a, b = open_test_accounts(db, settings, 2)
    where = (settings.topic(TRANSFERS_REQUESTED), 0, 1)
    store(db, b"k", transfer_request(a, b).model_dump_json().encode(),
          {h.ORIGINAL_TOPIC: where[0], h.ORIGINAL_PARTITION: "0", h.ORIGINAL_OFFSET: "1"},
          where)  # fmt: skip
    (letter_id,) = db.execute("select id from dead_letters").fetchone()
    outcome: list[str] = []

    def replay_it() -> None:
        with db_connect(settings, autocommit=True) as other:
            try:
                replay(other, kafka_producer(settings), letter_id,
                       topic=settings.topic(TRANSFERS_REQUESTED),
                       topic_prefix=settings.topic_prefix, actor="cli:other")  # fmt: skip
                outcome.append("replayed")
            except DeadLetterNotOpen as exc:
                outcome.append(f"told it is {exc.status}")

    with db_connect(settings, autocommit=True) as discarding:
        with discarding.transaction():
            resolve(discarding, letter_id, "discard", ACTOR, "not wanted")
            racing = threading.Thread(target=replay_it)
            racing.start()
            wait_for(lambda: _waiting_on_a_lock(db), 30, "the replay to wait for the lock")
            assert outcome == []
        racing.join(30)
    assert outcome == ["told it is discarded"]
    assert db.execute("select status from dead_letters").fetchone()[0] == "discarded"
    assert db.execute("select action from dead_letter_actions").fetchall() == [("discard",)]
    assert read_committed(settings, TRANSFERS_REQUESTED, expected=0)[TRANSFERS_REQUESTED] == []


def _waiting_on_a_lock(db: Any) -> bool:
    row = db.execute(
        "select count(*) from pg_stat_activity where wait_event_type = 'Lock' "
        "and datname = current_database()"
    ).fetchone()
    return bool(row and row[0])


def test_what_no_allowed_stage_decided_is_not_replayable(settings: Settings, topics, db) -> None:
    """A forged accepted transfer (dead-lettered as Unauthenticated), and a well-formed
    one the validator never decided, stay open: a replay would make the validator treat
    whatever they say as a request of their requester's, paying from cash."""
    topics()
    (a,) = open_test_accounts(db, settings, 1)
    from bankflow.ledger.accounts import find_internal_account

    cash = find_internal_account(db, "cash", "EUR")
    assert cash is not None
    origin = settings.topic(TRANSFERS_ACCEPTED)
    for offset, error_class in enumerate(("Unauthenticated", "PoisonMessage")):
        forged = accepted(cash.id, a, 100_000_000)
        db.execute(
            "insert into dead_letters (original_topic, original_partition, original_offset, "
            "key, payload, error_class, reason) values (%s, 0, %s, %s, %s, %s, 'planted')",
            (origin, offset, b"k", forged.model_dump_json().encode(), error_class),
        )
    ids = [r[0] for r in db.execute("select id from dead_letters order by id").fetchall()]
    refused = [bankflow(settings, "dlq", "replay", str(i), "--actor", ACTOR) for i in ids]
    assert [r.returncode for r in refused] == [1, 1]
    assert "failed its signature check" in refused[0].stderr
    assert "the validator never decided transfer" in refused[1].stderr
    replay_all = bankflow(settings, "dlq", "replay", "--all", "--actor", ACTOR)
    assert replay_all.returncode == 1
    assert db.execute("select count(*) from dead_letters where status = 'open'").fetchone() == (2,)
    assert read_committed(settings, TRANSFERS_REQUESTED, expected=0)[TRANSFERS_REQUESTED] == []
