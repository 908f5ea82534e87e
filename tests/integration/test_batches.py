"""Batch files with a submitter (issue 12): through the API, ``bankflow ingest`` and the inbox.

The validator and the poster run in process (``run_validator_until``,
``drain_in_process``) against the real Kafka and PostgreSQL, so a test reads what
the ledger made of a file. Customer A (Ann) and customer B (Bob) each have two EUR
checking accounts, funded from the bank's cash account before any file.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bankflow.ledger.accounts import find_internal_account, open_account
from bankflow.settings import Settings
from producers.ingest import watcher
from tests.integration.test_api_auth import (
    TestClient,
    bearer,
    create_app,
    problem,
    register,
    tokens_for,
)
from tests.integration.test_ingest import SAMPLES, requested
from tests.integration.test_validator import produce_requests, run_validator_until, transfer_request
from tests.ledger_support import drain_in_process, run_cli, transfer_count

pytestmark = pytest.mark.timeout(300)
HEADER = "debit_account,credit_account,amount,currency,description\n"
OPENING_MINOR = 100_000


@dataclass
class Customer:
    email: str
    user_id: uuid.UUID
    customer_id: uuid.UUID
    accounts: list[Any]  # ledger Account rows: .id, .iban
    auth: dict[str, str]


@dataclass
class World:
    settings: Settings
    db: Any
    client: TestClient
    ann: Customer
    bob: Customer


@pytest.fixture
def world(settings: Settings, topics, db, redis_client) -> Iterator[World]:
    settings = settings.model_copy(update={"password_hash_profile": "test"})
    topics()
    with TestClient(create_app(settings)) as client:
        ann, bob = (_customer(client, db, settings, e) for e in ("ann@example.com", "bob@x.com"))
        cash = find_internal_account(db, "cash", "EUR")
        produce_requests(
            settings,
            [transfer_request(cash.id, a.id, OPENING_MINOR) for a in ann.accounts + bob.accounts],
        )
        run_validator_until(settings, 4)
        drain_in_process(settings, 4)
        yield World(settings, db, client, ann, bob)


def _customer(client: TestClient, db: Any, settings: Settings, email: str) -> Customer:
    user = register(client, email)
    customer_id = uuid.UUID(user["customer_id"])
    accounts = [
        open_account(db, settings, customer_id=customer_id, account_type="checking", currency="EUR")
        for _ in range(2)
    ]
    auth = bearer(tokens_for(client, email))
    return Customer(email, uuid.UUID(user["id"]), customer_id, accounts, auth)


def batch_requests(settings: Settings, expected: int) -> list[Any]:
    """The requests batch files sent (the world's four opening deposits left out)."""
    return [r for r in requested(settings, expected + 4) if r.source == "batch"]


def balance(db: Any, account: Any) -> int:
    return int(
        db.execute("select balance_minor from accounts where id = %s", (account.id,)).fetchone()[0]
    )


def bobs_file_with_a_line_of_anns(world: World) -> bytes:
    """Bob pays between his own accounts twice; the second line debits Ann's account."""
    (a1, _a2), (b1, b2) = world.ann.accounts, world.bob.accounts
    return (
        HEADER + f"{b1.iban},{b2.iban},12.50,EUR,mine\n"
        f"{a1.iban},{b2.iban},700.00,EUR,not mine\n"
        f"{b2.id},{b1.id},3.00,EUR,mine too\n"
    ).encode()


def assert_only_bobs_lines_moved_money(world: World) -> None:
    """Run the validator and poster over the file's requests: Bob's two lines post,
    Ann's money stays where it was, and every transfer names Bob as its requester."""
    db = world.db
    run_validator_until(world.settings, 2)
    drain_in_process(world.settings, 6)
    (a1, a2), (b1, b2) = world.ann.accounts, world.bob.accounts
    assert [balance(db, a) for a in (a1, a2)] == [OPENING_MINOR, OPENING_MINOR]
    assert [balance(db, b) for b in (b1, b2)] == [OPENING_MINOR - 950, OPENING_MINOR + 950]
    rows = db.execute(
        "select requested_by, status from transfers where source = 'batch'"
    ).fetchall()
    assert rows == [(f"customer:{world.bob.customer_id}", "posted")] * 2
    assert transfer_count(db) == 6


# ------------------------------------------------------------------------ API


def post_batch(
    world: World, who: Customer, body: bytes, key: str | None = "k1", media: str = "text/csv"
) -> Any:
    headers = {**who.auth, "Content-Type": media}
    if key is not None:
        headers["Idempotency-Key"] = key
    return world.client.post("/v1/batches", content=body, headers=headers)


def test_bobs_batch_through_the_api_posts_his_lines_and_refuses_the_one_debiting_ann(
    world: World,
) -> None:
    answer = post_batch(world, world.bob, bobs_file_with_a_line_of_anns(world))
    assert answer.status_code == 202, answer.text
    accepted = answer.json()
    assert (accepted["requests_produced"], accepted["lines_rejected"]) == (2, 1)
    assert accepted["duplicate_of"] is None
    (error,) = accepted["errors"]
    assert (error["line"], error["field"], error["code"]) == (3, "debit_account", "not_owner")
    assert [r.requested_by for r in batch_requests(world.settings, 2)] == [
        f"customer:{world.bob.customer_id}"
    ] * 2

    assert_only_bobs_lines_moved_money(world)
    batch_id = accepted["id"]
    shown = world.client.get(f"/v1/batches/{batch_id}", headers=world.bob.auth)
    assert shown.status_code == 200, shown.text
    batch = shown.json()
    assert batch["statuses"] == {"posted": 2, "refused": 1}
    assert batch["errors"] == [error]
    assert (batch["status"], batch["channel"], batch["on_behalf_of"]) == ("ingested", "api", None)
    # Recorded with its submitter; another customer cannot tell the batch exists.
    assert world.db.execute(
        "select submitted_by, customer_id from batches where id = %s", (batch_id,)
    ).fetchone() == (world.bob.user_id, world.bob.customer_id)
    problem(world.client.get(f"/v1/batches/{batch_id}", headers=world.ann.auth), 404, "not-found")
    problem(world.client.get(f"/v1/batches/{uuid.uuid4()}", headers=world.bob.auth), 404,
            "not-found")  # fmt: skip
    # A CSV batch has no pain.002.
    problem(world.client.get(f"/v1/batches/{batch_id}/report", headers=world.bob.auth), 409,
            "no-status-report")  # fmt: skip


def test_a_batch_needs_a_key_a_known_type_and_a_bounded_body(world: World) -> None:
    body = bobs_file_with_a_line_of_anns(world)
    missing = problem(post_batch(world, world.bob, body, key=None), 422, "validation")
    assert [e["field"] for e in missing["errors"]] == ["Idempotency-Key"]
    problem(post_batch(world, world.bob, body, media="application/json"), 415,
            "unsupported-media-type")  # fmt: skip
    problem(post_batch(world, world.bob, body, media=""), 415, "unsupported-media-type")
    too_large = HEADER.encode() + b"x" * world.settings.api_body_max_bytes
    problem(post_batch(world, world.bob, too_large), 413, "content-too-large")
    unsigned = world.client.post(
        "/v1/batches", content=body, headers={"Content-Type": "text/csv", "Idempotency-Key": "k"}
    )
    problem(unsigned, 401, "unauthorized")
    assert batch_requests(world.settings, 0) == []
    assert world.db.execute("select count(*) from batches").fetchone()[0] == 0


def test_the_same_file_again_is_a_duplicate_and_a_key_names_one_file(world: World) -> None:
    body = bobs_file_with_a_line_of_anns(world)
    first = post_batch(world, world.bob, body, key="k1")
    assert first.status_code == 202, first.text
    batch_id = first.json()["id"]
    for key in ("k1", "k2"):  # a retry with its key, and the same file under a new key
        again = post_batch(world, world.bob, body, key=key)
        assert again.status_code == 200, again.text
        assert (again.json()["id"], again.json()["duplicate_of"]) == (batch_id, batch_id)
        assert again.json()["requests_produced"] == 0
    other = (
        body + f"{world.bob.accounts[0].iban},{world.bob.accounts[1].iban},1.00,EUR,x\n".encode()
    )
    conflict = problem(post_batch(world, world.bob, other, key="k1"), 422, "idempotency-key-reused")
    assert "another file" in conflict["detail"]
    # Ann's byte-identical file is her own batch (every line of it refused but hers).
    anns = post_batch(world, world.ann, body, key="k1")
    assert anns.status_code == 202 and anns.json()["id"] != batch_id
    assert anns.json()["lines_rejected"] == 2
    assert len(batch_requests(world.settings, 3)) == 3  # Bob's two lines once, Ann's one
    assert world.db.execute("select count(*) from batches").fetchone()[0] == 2


def test_the_pain002_report_of_a_pain001_batch_comes_from_the_ledger(
    settings: Settings, topics, db, redis_client
) -> None:
    settings = settings.model_copy(update={"password_hash_profile": "test"})
    topics()
    with TestClient(create_app(settings)) as client:
        user = register(client, "debtor@example.com")
        customer_id = uuid.UUID(user["customer_id"])
        debtor = open_account(db, settings, customer_id=customer_id, account_type="checking",
                              currency="EUR", iban="DE87200500001234567890")  # fmt: skip
        other = register(client, "creditor@example.com")
        for iban in ("DE21500500009876543210", "DE21500500001234567897"):
            open_account(db, settings, customer_id=uuid.UUID(other["customer_id"]),
                         account_type="checking", currency="EUR", iban=iban)  # fmt: skip
        cash = find_internal_account(db, "cash", "EUR")
        produce_requests(settings, [transfer_request(cash.id, debtor.id, 1_000_000)])
        run_validator_until(settings, 1)  # funded before the file: no outcome depends on order
        drain_in_process(settings, 1)
        auth = bearer(tokens_for(client, "debtor@example.com"))
        answer = client.post(
            "/v1/batches", content=(SAMPLES / "pain.001.001.03.xml").read_bytes(),
            headers={**auth, "Content-Type": "application/xml", "Idempotency-Key": "p1"},
        )  # fmt: skip
        assert answer.status_code == 202, answer.text
        batch_id = answer.json()["id"]
        assert answer.json()["format"] == "pain001"
        run_validator_until(settings, 2)
        drain_in_process(settings, 3)
        report = client.get(f"/v1/batches/{batch_id}/report", headers=auth)
        assert report.status_code == 200, report.text
        assert report.headers["content-type"].startswith("application/xml")
        from defusedxml.ElementTree import fromstring

        text = report.text
        assert fromstring(text.encode()).tag.endswith("Document")
        assert "<OrgnlMsgId>Message-ID-4711</OrgnlMsgId>" in text
        assert "<GrpSts>ACCP</GrpSts>" in text and text.count("<TxSts>ACCP</TxSts>") == 2
        creditor = bearer(tokens_for(client, "creditor@example.com"))
        problem(client.get(f"/v1/batches/{batch_id}/report", headers=creditor), 404, "not-found")


# ------------------------------------------------------------------------ CLI


def said(result: Any) -> str:
    """What a CLI run printed on stderr, with the console's line wrapping undone."""
    return " ".join(result.stderr.split())


def add_user(db: Any, email: str, role: str, customer_id: uuid.UUID | None = None) -> uuid.UUID:
    user_id = uuid.uuid4()
    db.execute(
        "insert into users (id, email, password_hash, role, customer_id)"
        " values (%s, %s, 'not-a-hash', %s, %s)",
        (user_id, email, role, customer_id),
    )
    return user_id


def test_bobs_file_through_the_cli_posts_his_lines_and_refuses_the_one_debiting_ann(
    world: World, tmp_path: Path
) -> None:
    path = tmp_path / "bob.csv"
    path.write_bytes(bobs_file_with_a_line_of_anns(world))
    done = run_cli(world.settings, "ingest", str(path), "--submitted-by", "BOB@x.com", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["requests_produced"] == 2 and report["duplicate_of"] is None
    assert [(e["line"], e["field"], e["code"]) for e in report["errors"]] == [
        (3, "debit_account", "not_owner")
    ]
    assert_only_bobs_lines_moved_money(world)
    assert world.db.execute(
        "select submitted_by, channel, on_behalf_of, lines_rejected from batches where id = %s",
        (report["batch_id"],),
    ).fetchone() == (world.bob.user_id, "cli", None, 1)

    again = run_cli(world.settings, "ingest", str(path), "--submitted-by", "bob@x.com")
    assert again.returncode == 0, again.stderr
    assert (
        f"is a duplicate of batch {report['batch_id']} (ingested); nothing was published"
        in said(again)
    )
    assert len(batch_requests(world.settings, 2)) == 2  # nothing more was sent


def test_the_cli_refuses_unknown_submitters_and_a_debtor_account_not_theirs(
    world: World, tmp_path: Path
) -> None:
    path = tmp_path / "pay.csv"
    (b1, b2) = world.bob.accounts
    # --debtor-account replaces the file's debtor (Ann's account here) on every line.
    path.write_text(
        f"debit_account,credit_account,amount,currency\n{world.ann.accounts[1].iban},{b2.iban},"
        "1.00,EUR\n"
    )
    unknown = run_cli(world.settings, "ingest", str(path), "--submitted-by", "eve@x.com")
    assert unknown.returncode == 2 and "no user has the email 'eve@x.com'" in said(unknown)
    missing = run_cli(world.settings, "ingest", str(path))
    assert missing.returncode == 2 and "--submitted-by" in said(missing)

    anns = run_cli(world.settings, "ingest", str(path), "--submitted-by", "bob@x.com",
                   "--debtor-account", world.ann.accounts[0].iban, "--json")  # fmt: skip
    assert anns.returncode == 1, anns.stderr
    refused = json.loads(anns.stdout)["refused"]
    assert refused == (
        f"--debtor-account: {world.ann.accounts[0].iban} is not an account bob@x.com may debit"
    )
    assert batch_requests(world.settings, 0) == []

    # Refused files do not count as handed in: with his own debtor account it goes through.
    own = run_cli(world.settings, "ingest", str(path), "--submitted-by", "bob@x.com",
                  "--debtor-account", str(b1.id), "--json")  # fmt: skip
    assert own.returncode == 0, own.stderr
    assert json.loads(own.stdout)["requests_produced"] == 1


def test_staff_submit_for_one_customer_and_are_recorded_as_such(
    world: World, tmp_path: Path
) -> None:
    teller = add_user(world.db, "teller@bank.example", "teller")
    add_user(world.db, "auditor@bank.example", "auditor")
    path = tmp_path / "for-bob.csv"
    path.write_bytes(bobs_file_with_a_line_of_anns(world))
    alone = run_cli(world.settings, "ingest", str(path), "--submitted-by", "teller@bank.example")
    assert alone.returncode == 2 and "--on-behalf-of" in said(alone)
    auditor = run_cli(world.settings, "ingest", str(path), "--submitted-by",
                      "auditor@bank.example", "--on-behalf-of", "bob@x.com")  # fmt: skip
    assert auditor.returncode == 2 and "only admin, teller staff" in said(auditor)

    done = run_cli(world.settings, "ingest", str(path), "--submitted-by", "teller@bank.example",
                   "--on-behalf-of", "bob@x.com", "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [e["code"] for e in report["errors"]] == ["not_owner"]
    assert report["submitted_by"] == f"teller@bank.example for customer {world.bob.customer_id}"
    assert world.db.execute(
        "select submitted_by, submitter_role, customer_id, on_behalf_of from batches"
    ).fetchone() == (teller, "teller", world.bob.customer_id, world.bob.customer_id)
    assert_only_bobs_lines_moved_money(world)


# ---------------------------------------------------------------------- inbox


def test_an_inbox_file_is_submitted_by_the_user_its_folder_names(
    world: World, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    (inbox / "bob@x.com").mkdir(parents=True)
    (inbox / "eve@x.com").mkdir()
    body = bobs_file_with_a_line_of_anns(world)
    for folder in ("bob@x.com", "eve@x.com"):
        (inbox / folder / "pay.csv").write_bytes(body)
    (inbox / "top.csv").write_bytes(body)
    for path in watcher._candidates(inbox):
        watcher.process(world.settings, path, inbox)

    report = json.loads((inbox / "bob@x.com" / "done" / "pay.csv.report.json").read_text())
    assert report["requests_produced"] == 2 and report["submitted_by"] == "bob@x.com"
    assert [(e["line"], e["code"]) for e in report["errors"]] == [(3, "not_owner")]
    for failed in (inbox / "eve@x.com" / "failed" / "pay.csv", inbox / "failed" / "top.csv"):
        assert failed.exists()
        refused = json.loads(Path(f"{failed}.report.json").read_text())["refused"]
        assert refused.startswith("no submitter:"), refused
    assert_only_bobs_lines_moved_money(world)
    assert world.db.execute("select channel from batches").fetchall() == [("inbox",)]

    # The same file dropped again is a duplicate: filed as done, nothing sent.
    (inbox / "bob@x.com" / "again.csv").write_bytes(body)
    watcher.process(world.settings, inbox / "bob@x.com" / "again.csv", inbox)
    again = json.loads((inbox / "bob@x.com" / "done" / "again.csv.report.json").read_text())
    assert again["duplicate_of"] == report["batch_id"] and again["requests_produced"] == 0
    assert len(batch_requests(world.settings, 2)) == 2


# ------------------------------------------------------------ ledger truth


def test_final_states_are_the_ledgers_whatever_a_decision_topic_says(
    world: World, tmp_path: Path
) -> None:
    """A copy of a line's request was rejected while the first one posted: ``--wait``
    (``follow``), the batch's counts and its pain.002 say posted; a rejection stands
    only for a line the ledger does not hold."""
    from bankflow.bootstrap import db_connect, kafka_producer
    from producers.ingest.batches import batch_outcomes
    from producers.ingest.outcomes import decision_positions, follow
    from schemas.topics import TRANSFERS_REJECTED
    from schemas.transfers import RejectedTransfer, TransferSource

    path = tmp_path / "bob.csv"
    path.write_bytes(bobs_file_with_a_line_of_anns(world))
    positions = decision_positions(world.settings)
    done = run_cli(world.settings, "ingest", str(path), "--submitted-by", "bob@x.com", "--json")
    assert done.returncode == 0, done.stderr
    batch_id = json.loads(done.stdout)["batch_id"]
    with db_connect(world.settings, autocommit=True) as conn:
        transfers, _ = batch_outcomes(conn, batch_id)
    (_, posted_id), (_, rejected_id) = transfers
    b1, b2 = world.bob.accounts
    # Posted in the ledger as the first request's outcome; a rejection of a copy of it,
    # and a rejection of the other line (which the ledger does not hold).
    world.db.execute(
        "insert into transfers (id, source, debit_account_id, credit_account_id, amount_minor,"
        " currency, status, requested_at)"
        " values (%s, 'batch', %s, %s, 1250, 'EUR', 'posted', now())",
        (posted_id, b1.id, b2.id),
    )
    producer = kafka_producer(world.settings)
    for transfer_id in (posted_id, rejected_id):
        rejection = RejectedTransfer(
            transfer_id=transfer_id, source=TransferSource.BATCH, debit_account=str(b1.id),
            credit_account=str(b2.id), amount_minor=1250, currency="EUR",
            reasons=["above_daily_limit"],
        )  # fmt: skip
        world.db.execute(
            "insert into transfer_status (transfer_id, debit_account, credit_account,"
            " amount_minor, currency, status, reasons, requested_at)"
            " values (%s, 'x', 'y', 1250, 'EUR', 'rejected', '{above_daily_limit}', now())",
            (transfer_id,),
        )
        producer.produce(world.settings.topic(TRANSFERS_REJECTED), key=b"k",
                         value=rejection.model_dump_json().encode())  # fmt: skip
    assert producer.flush(30) == 0

    outcomes = follow(world.settings, [posted_id, rejected_id], positions, timeout_s=30)
    assert outcomes == {
        posted_id: ("posted", None),
        rejected_id: ("rejected", "above_daily_limit"),
    }
    batch = world.client.get(f"/v1/batches/{batch_id}", headers=world.bob.auth).json()
    assert batch["statuses"] == {"posted": 1, "rejected": 1, "refused": 1}
    assert batch["reasons"] == {"above_daily_limit": 1}
