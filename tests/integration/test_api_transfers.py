"""Transfers, cash and fraud review through the API, with the pipeline running as processes.

The app runs in process (``TestClient``); the validator, tracker, poster and relay
run as real processes against the real Kafka, PostgreSQL and Redis. The fraud rules
are the shipped ones but for the new-beneficiary threshold (10.00), so a review is
easy to provoke.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from bankflow.ledger.accounts import open_account
from bankflow.settings import Settings
from schemas.topics import TRANSFERS_REQUESTED
from tests.integration.test_api_auth import (
    TestClient,
    bearer,
    create_app,
    create_staff,
    problem,
    register,
    tokens_for,
)
from tests.integration.test_review_flow import strict_rules
from tests.integration.test_validator import read_committed
from tests.ledger_support import run_cli, start_service, stop_service

pytestmark = pytest.mark.timeout(240)
SERVICES = ("validator", "tracker", "poster", "relay")


@pytest.fixture
def pipeline(settings: Settings, topics, db, redis_client, tmp_path: Path) -> Iterator[Settings]:
    settings = settings.model_copy(
        update={"password_hash_profile": "test", "fraud_rules": strict_rules(tmp_path)}
    )
    topics()
    processes = [start_service(settings, name, log=tmp_path / f"{name}.log") for name in SERVICES]
    try:
        yield settings
    finally:
        for process in processes:
            stop_service(process)


def customer(client: TestClient, db: Any, settings: Settings, email: str) -> tuple[dict, list]:
    """A registered, signed-in customer with two EUR checking accounts."""
    user = register(client, email)
    accounts = [
        str(open_account(db, settings, customer_id=uuid.UUID(user["customer_id"]),
                         account_type="checking", currency="EUR").id)
        for _ in range(2)
    ]  # fmt: skip
    return bearer(tokens_for(client, email)), accounts


def send(client: TestClient, auth: dict, body: dict, key: str | None = None, wait: int = 10):
    headers = {**auth, "Idempotency-Key": key or uuid.uuid4().hex, "Prefer": f"wait={wait}"}
    return client.post("/v1/transfers", json=body, headers=headers)


def transfer(debit: str, credit: str, amount: str) -> dict[str, str]:
    return {"debit_account": debit, "credit_account": credit, "amount": amount, "currency": "EUR"}


def test_money_moves_through_the_api_and_a_held_transfer_is_reviewed(
    pipeline: Settings, db: Any, monkeypatch: Any
) -> None:
    settings = pipeline
    create_staff(settings, "teller@bank.example", "teller", monkeypatch)
    create_staff(settings, "reviewer@bank.example", "reviewer", monkeypatch)
    with TestClient(create_app(settings)) as client:
        ann, (a1, a2) = customer(client, db, settings, "ann@example.com")
        bob, (b1, _b2) = customer(client, db, settings, "bob@example.com")
        teller = bearer(tokens_for(client, "teller@bank.example"))
        reviewer = bearer(tokens_for(client, "reviewer@bank.example"))

        paid_in = client.post(
            "/v1/deposits", json={"account_id": a1, "amount": "1000.00", "currency": "EUR"},
            headers={**teller, "Idempotency-Key": "cash-1", "Prefer": "wait=10"},
        )  # fmt: skip
        assert (paid_in.status_code, paid_in.json()["status"]) == (200, "posted"), paid_in.text

        small = send(client, ann, transfer(a1, a2, "5.00"))
        assert (small.status_code, small.json()["status"]) == (200, "posted"), small.text
        shown = client.get(f"/v1/transfers/{small.json()['id']}", headers=ann).json()
        assert shown["amount"] == "5.00" and shown["ruleset_version"] == "test-strict"
        assert [c["status"] for c in shown["history"]] == ["requested", "accepted", "posted"]
        problem(client.get(f"/v1/transfers/{small.json()['id']}", headers=bob), 404, "not-found")
        problem(send(client, bob, transfer(a1, b1, "1.00")), 404, "not-found")  # not Bob's

        held = send(client, ann, transfer(a1, b1, "50.00"), wait=0)
        assert held.status_code == 202 and held.json()["status"] == "requested"
        held_id = held.json()["id"]
        queue = _wait_for_queue(client, reviewer, held_id)
        assert queue["reasons"] == ["new_beneficiary_large_amount"]
        problem(client.get("/v1/review", headers=ann), 403, "forbidden")
        problem(client.post(f"/v1/review/{held_id}/approve", json={}, headers=ann), 403,
                "forbidden")  # fmt: skip
        approved = client.post(
            f"/v1/review/{held_id}/approve", json={"note": "called Ann"}, headers=reviewer
        )
        assert approved.status_code == 200, approved.text
        assert approved.json()["status"] == "approved"
        problem(client.post(f"/v1/review/{held_id}/reject", json={}, headers=reviewer), 409,
                "conflict")  # fmt: skip
        problem(client.post(f"/v1/review/{uuid.uuid4()}/approve", json={}, headers=reviewer),
                404, "not-found")  # fmt: skip
        _wait_for_status(client, ann, held_id, "posted")

        listed = client.get("/v1/transfers", headers=ann).json()["items"]
        assert {t["id"] for t in listed} == {small.json()["id"], held_id}

    balances = dict(db.execute(
        "select id::text, balance_minor from accounts where id = any(%s::uuid[])",
        ([a1, a2, b1],),
    ).fetchall())  # fmt: skip
    assert balances == {a1: 100_000 - 500 - 5_000, a2: 500, b1: 5_000}
    verified = run_cli(settings, "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_one_key_makes_one_transfer_and_another_body_is_refused(
    pipeline: Settings, db: Any
) -> None:
    settings = pipeline
    with TestClient(create_app(settings)) as client:
        ann, (a1, a2) = customer(client, db, settings, "ann@example.com")
        body = transfer(a1, a2, "1.00")
        with ThreadPoolExecutor(50) as pool:
            answers = list(pool.map(lambda _: send(client, ann, body, "same-key", 0), range(50)))
        assert {a.status_code for a in answers} == {202}, {a.text for a in answers}
        assert len({a.json()["id"] for a in answers}) == 1
        problem(send(client, ann, transfer(a1, a2, "2.00"), "same-key"), 422,
                "idempotency-key-reused")  # fmt: skip
        bad = problem(send(client, ann, {**body, "amount": "1.001"}), 422, "validation")
        assert "amount" in bad["detail"] and "decimal places" in str(bad)
        transfer_id = answers[0].json()["id"]
        _wait_for_status(client, ann, transfer_id, "failed")  # Ann has no money
    produced = read_committed(settings, TRANSFERS_REQUESTED, expected=1)[TRANSFERS_REQUESTED]
    assert [m.value().count(transfer_id.encode()) for m in produced] == [1]  # produced once


def _wait_for_queue(client: TestClient, reviewer: dict, transfer_id: str) -> dict:
    for _ in range(300):
        items = client.get("/v1/review", headers=reviewer).json()["items"]
        found = [i for i in items if i["transfer_id"] == transfer_id]
        if found:
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"{transfer_id} never reached the review queue")


def _wait_for_status(client: TestClient, auth: dict, transfer_id: str, status: str) -> None:
    seen = None
    for _ in range(300):
        seen = client.get(f"/v1/transfers/{transfer_id}", headers=auth).json().get("status")
        if seen == status:
            return
        time.sleep(0.1)
    raise AssertionError(f"{transfer_id} is {seen}, never {status}")


#: References the API must refuse: the id that once reached PostgreSQL's ::uuid cast,
#: an IBAN with wrong check digits, an id in braces, a word.
BAD_REFERENCES = [
    "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz",
    "DE89370400440532013001",
    "{0b7e6c1e-4a0f-4e43-9a57-1a2f3c4d5e6f}",
    "savings",
]


def test_an_account_reference_that_is_neither_an_id_nor_an_iban_is_a_422_naming_it(
    settings: Settings, topics, db: Any, redis_client: Any
) -> None:
    settings = settings.model_copy(update={"password_hash_profile": "test"})
    topics()
    with TestClient(create_app(settings)) as client:
        ann, (a1, a2) = customer(client, db, settings, "ann@example.com")
        for bad in BAD_REFERENCES:
            body = problem(send(client, ann, transfer(a1, bad, "1.00"), wait=0), 422, "validation")
            assert [e["field"] for e in body["errors"]] == ["credit_account"], body
            assert "credit_account" in body["detail"]
            assert bad[:20] in str(body["errors"]), body
        for bad in BAD_REFERENCES[:1]:
            body = problem(send(client, ann, transfer(bad, a2, "1.00"), wait=0), 422, "validation")
            assert [e["field"] for e in body["errors"]] == ["debit_account"], body
        # An IBAN as written on paper is taken, and handed on in its compact form.
        iban = db.execute("select iban from accounts where id = %s", (a2,)).fetchone()[0]
        paper = " ".join(iban[i : i + 4] for i in range(0, len(iban), 4)).lower()
        accepted = send(client, ann, transfer(a1, paper, "1.00"), wait=0)
        assert accepted.status_code == 202, accepted.text
    produced = read_committed(settings, TRANSFERS_REQUESTED, expected=1)[TRANSFERS_REQUESTED]
    assert len(produced) == 1  # nothing of the refused bodies reached Kafka
    assert f'"credit_account":"{iban}"'.encode() in produced[0].value()
