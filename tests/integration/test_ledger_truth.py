"""The ledger is the truth: statuses follow it, and reviews never act on what it holds.

The tracker runs in this process on a real Kafka and PostgreSQL; the ledger's rows
are written by the poster's own store (``write_batch``), and the ledger's events are
published from the outbox as the relay would.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from bankflow.bootstrap import kafka_producer
from bankflow.ledger.accounts import create_customer, find_internal_account, open_account
from bankflow.ledger.store import ConsumedTransfer, OffsetRange, Topics, write_batch
from bankflow.ledger.verify import Bounds, verify
from bankflow.review import ReviewNotHeld, decide, expire_reviews
from bankflow.settings import Settings
from bankflow.signing import signers_for
from bankflow.streaming import StageRunner
from consumers.tracker import Tracker, build
from schemas.topics import (
    TRANSFERS_ACCEPTED,
    TRANSFERS_DLQ,
    TRANSFERS_FAILED,
    TRANSFERS_POSTED,
    TRANSFERS_REJECTED,
    TRANSFERS_REVIEW,
)
from schemas.transfers import AcceptedTransfer, RejectedTransfer, TransferEvent, event_id_for
from tests.integration.test_api_auth import bearer, create_staff, register, tokens_for
from tests.ledger_support import accepted, signed

pytestmark = pytest.mark.timeout(180)
#: Bound on waiting for the tracker to catch up with what a test produced.
TRACKER_WAIT_S = 60


class Ledger:
    """Posts transfers as the poster does, and publishes their events as the relay does."""

    def __init__(self, db: Any, settings: Settings) -> None:
        self.db, self.settings = db, settings
        self.topic = settings.topic(TRANSFERS_ACCEPTED)
        self.next_offset = 0
        self.names = Topics(
            settings.topic(TRANSFERS_POSTED),
            settings.topic(TRANSFERS_FAILED),
            settings.topic(TRANSFERS_DLQ),
        )

    def post(self, *transfers: AcceptedTransfer) -> None:
        start = self.next_offset
        self.next_offset += len(transfers)
        consumed = [ConsumedTransfer(t, self.topic, 0, start + n) for n, t in enumerate(transfers)]
        ranges = {(self.topic, 0): OffsetRange(start or None, self.next_offset)}
        write_batch(self.db, self.settings.poster_group, ranges, consumed, [], self.names)

    def relay(self, *transfers: AcceptedTransfer) -> None:
        """Publish the ledger's outbox rows of ``transfers`` and mark them sent."""
        rows = self.db.execute(
            "select id, topic, key, payload from outbox where transfer_id = any(%s) order by id",
            ([t.transfer_id for t in transfers],),
        ).fetchall()
        producer = kafka_producer(self.settings)
        for _id, topic, key, payload in rows:
            producer.produce(topic, key=bytes(key), value=bytes(payload))
        assert producer.flush(30) == 0
        self.db.execute(
            "update outbox set sent_at = now() where id = any(%s)", ([r[0] for r in rows],)
        )


def produce(settings: Settings, topic: str, *messages: Any) -> None:
    producer = kafka_producer(settings)
    for m in messages:
        value = m.model_dump_json().encode()
        # As the stages write them: signed where the topic must be (held and accepted).
        headers = signed(settings, topic, b"k", value) if signers_for(topic) else None
        producer.produce(settings.topic(topic), key=b"k", value=value, headers=headers)
    assert producer.flush(30) == 0


@pytest.fixture
def tracker(settings: Settings, topics, db) -> Iterator[Callable[[Callable[[], bool], str], None]]:
    """Run the tracker in this process until a condition holds (bounded)."""
    topics()
    runner: StageRunner[Tracker] = build(settings)
    runner.subscribe()

    def until(condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + TRACKER_WAIT_S
        while not condition():
            assert time.monotonic() < deadline, f"the tracker never got to: {what}"
            runner.step()

    try:
        yield until
    finally:
        runner.close()


def status(db: Any, transfer: AcceptedTransfer) -> tuple[str, list[str]] | None:
    row = db.execute(
        "select status, reasons from transfer_status where transfer_id = %s",
        (transfer.transfer_id,),
    ).fetchone()
    return None if row is None else (row[0], row[1])


def review_status(db: Any, transfer: AcceptedTransfer) -> str | None:
    row = db.execute(
        "select status from review_queue where transfer_id = %s", (transfer.transfer_id,)
    ).fetchone()
    return None if row is None else row[0]


def history(db: Any, transfer: AcceptedTransfer) -> set[str]:
    rows = db.execute(
        "select status from transfer_status_history where transfer_id = %s",
        (transfer.transfer_id,),
    ).fetchall()
    return {r[0] for r in rows}


def rejection(transfer: AcceptedTransfer, reason: str) -> RejectedTransfer:
    return RejectedTransfer(
        **transfer.model_dump(exclude={"debit_account_id", "credit_account_id"}),
        debit_account=str(transfer.debit_account_id),
        credit_account=str(transfer.credit_account_id),
        reasons=[reason],
    )


def forged_event(transfer: AcceptedTransfer, status_: str) -> TransferEvent:
    now = datetime.now(UTC)
    return TransferEvent(
        event_id=event_id_for(transfer.transfer_id, f"forged.{status_}"),
        event_type=f"transfer.{status_}", transfer_id=transfer.transfer_id, status=status_,
        debit_account_id=transfer.debit_account_id,
        credit_account_id=transfer.credit_account_id, amount_minor=transfer.amount_minor,
        currency=transfer.currency, occurred_at=now, requested_at=now,
    )  # fmt: skip


def funded_accounts(db: Any, settings: Settings, ledger: Ledger) -> tuple[uuid.UUID, uuid.UUID]:
    ann = create_customer(db, "Ann Debtor")
    bob = create_customer(db, "Bob Beneficiary")
    a = open_account(db, settings, customer_id=ann, account_type="checking", currency="EUR").id
    b = open_account(db, settings, customer_id=bob, account_type="checking", currency="EUR").id
    cash = find_internal_account(db, "cash", "EUR")
    assert cash is not None
    ledger.post(accepted(cash.id, a, 100_000))
    return a, b


def test_the_ledger_outcome_wins_and_reviews_never_act_on_what_it_holds(
    settings: Settings, db: Any, tracker: Callable[[Callable[[], bool], str], None]
) -> None:
    ledger = Ledger(db, settings)
    a, b = funded_accounts(db, settings, ledger)
    rejected_then_posted, held_then_posted, posted_then_held, failed, decided_late = (
        accepted(a, b, 100), accepted(a, b, 200), accepted(a, b, 300), accepted(b, a, 10**9),
        accepted(a, b, 400),
    )  # fmt: skip

    # A copy was rejected by the rules, then the ledger posted the transfer id, then a
    # reviewer's rejection of another copy arrived late: the ledger wins, and stays.
    produce(settings, TRANSFERS_REJECTED, rejection(rejected_then_posted, "velocity_limit"))
    produce(settings, TRANSFERS_REVIEW, held_then_posted, decided_late)
    tracker(
        lambda: review_status(db, held_then_posted) == review_status(db, decided_late) == "held",
        "two transfers held",
    )
    ledger.post(rejected_then_posted, held_then_posted, posted_then_held, failed, decided_late)
    ledger.relay(rejected_then_posted, held_then_posted, posted_then_held)
    produce(settings, TRANSFERS_REVIEW, posted_then_held)  # a copy held after its posting
    produce(settings, TRANSFERS_REJECTED, rejection(rejected_then_posted, "review_rejected"))
    # An event that contradicts the ledger is recorded as the ledger has it.
    produce(settings, TRANSFERS_POSTED, forged_event(failed, "posted"))
    tracker(
        lambda: (
            [status(db, t) for t in (rejected_then_posted, posted_then_held, failed)]
            == [("posted", []), ("posted", []), ("failed", ["insufficient_funds"])]
            and review_status(db, held_then_posted) == "superseded"
        ),
        "the ledger's outcomes shown",
    )
    assert history(db, rejected_then_posted) == {"rejected", "posted"}
    assert review_status(db, posted_then_held) is None  # never queued: the ledger had it
    assert status(db, posted_then_held) == ("posted", [])

    # The ledger has the last one, its event is not through yet: no decision acts on it.
    with pytest.raises(ReviewNotHeld):
        decide(db, settings, decided_late.transfer_id, decision="approved", actor="reviewer:ann")
    assert review_status(db, decided_late) == "superseded"
    with pytest.raises(ReviewNotHeld):
        decide(db, settings, held_then_posted.transfer_id, decision="rejected", actor="r:bob")
    db.execute("update review_queue set held_at = now() - interval '1 hour', status = 'held', "
               "decided_at = null where transfer_id = %s", (decided_late.transfer_id,))  # fmt: skip
    assert expire_reviews(db, settings.model_copy(update={"review_timeout_s": 60})) == 0
    assert review_status(db, decided_late) == "superseded"
    (outbox,) = db.execute(
        "select count(*) from outbox where topic <> all(%s)",
        ([settings.topic(TRANSFERS_POSTED), settings.topic(TRANSFERS_FAILED)],),
    ).fetchone()
    assert outbox == 0  # no decision was published

    ledger.relay(failed, decided_late)
    tracker(lambda: status(db, decided_late) == ("posted", []), "the last posting shown")
    failures = [r for r in verify(db, settings, Bounds(status_lag_s=0)) if not r.ok]
    assert failures == [], failures


def test_a_reviewer_sees_both_sides_and_cannot_decide_a_transfer_in_the_ledger(
    settings: Settings, db: Any, tracker: Callable[[Callable[[], bool], str], None],
    redis_client: Any, monkeypatch: Any,
) -> None:  # fmt: skip
    settings = settings.model_copy(update={"password_hash_profile": "test"})
    ledger = Ledger(db, settings)
    a, b = funded_accounts(db, settings, ledger)
    outside = uuid.uuid4()  # a beneficiary the bank does not know
    held = accepted(a, b, 5_000).model_copy(
        update={"risk_score": 70, "risk_reasons": ["new_beneficiary_large_amount"],
                "ruleset_version": "test"}
    )  # fmt: skip
    unknown_beneficiary, in_ledger = accepted(a, outside, 100), accepted(a, b, 200)
    produce(settings, TRANSFERS_REVIEW, held, unknown_beneficiary, in_ledger)
    tracker(
        lambda: db.execute("select count(*) from review_queue").fetchone()[0] == 3,
        "three transfers held",
    )
    ledger.post(in_ledger)

    create_staff(settings, "reviewer@bank.example", "reviewer", monkeypatch)
    with TestClient(create_app(settings)) as client:
        register(client, "ann@example.com")
        customer = bearer(tokens_for(client, "ann@example.com"))
        reviewer = bearer(tokens_for(client, "reviewer@bank.example"))
        assert client.get("/v1/review", headers=customer).status_code == 403

        items = {i["transfer_id"]: i for i in client.get("/v1/review", headers=reviewer).json()[
            "items"]}  # fmt: skip
        ibans = dict(db.execute("select id, iban from accounts").fetchall())
        shown = items[str(held.transfer_id)]
        assert shown["debtor"] == {"account_id": str(a), "iban": ibans[a], "name": "Ann Debtor"}
        assert shown["beneficiary"] == {
            "account_id": str(b), "iban": ibans[b], "name": "Bob Beneficiary",
        }  # fmt: skip
        assert (shown["amount"], shown["currency"], shown["risk_score"], shown["reasons"]) == (
            "50.00", "EUR", 70, ["new_beneficiary_large_amount"],
        )  # fmt: skip
        assert items[str(unknown_beneficiary.transfer_id)]["beneficiary"] == {
            "account_id": str(outside), "iban": None, "name": None,
        }  # fmt: skip

        refused = client.post(f"/v1/review/{in_ledger.transfer_id}/approve", json={},
                              headers=reviewer)  # fmt: skip
        assert refused.status_code == 409, refused.text
        assert "already in the ledger" in refused.json()["detail"]
        superseded = client.get("/v1/review?status=superseded", headers=reviewer).json()
        assert [i["transfer_id"] for i in superseded["items"]] == [str(in_ledger.transfer_id)]
        assert superseded["items"][0]["decided_by"] == "system:ledger"
        approved = client.post(f"/v1/review/{held.transfer_id}/approve", json={},
                               headers=reviewer)  # fmt: skip
        assert approved.status_code == 200, approved.text
        assert approved.json()["beneficiary"]["name"] == "Bob Beneficiary"
