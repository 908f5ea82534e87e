"""A transfer id is decided once: every copy of a request gets the first decision.

Copies are normal: the API's second attempt after a timeout, a replayed dead letter, a
message back from a retry tier. With tight fraud limits, a copy counted as a new
attempt would be rejected for velocity while the first is posted, and the status
would depend on which outcome reached the tracker first.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bankflow.bootstrap import kafka_producer
from bankflow.ledger.accounts import find_internal_account
from bankflow.settings import PROJECT_ROOT, Settings
from schemas import headers as h
from schemas.topics import (
    TRANSFERS_ACCEPTED,
    TRANSFERS_REJECTED,
    TRANSFERS_REQUESTED,
    TRANSFERS_REVIEW,
    retry_topic,
)
from schemas.transfers import TransferRequest, TransferSource
from tests.integration.test_validator import produce_requests, read_committed
from tests.ledger_support import open_test_accounts, signed, start_service, stop_service, wait_for

pytestmark = pytest.mark.timeout(300)


def two_a_minute(tmp_path: Path) -> Path:
    """The shipped rules, with a third transfer within a minute enough to reject."""
    text = (PROJECT_ROOT / "infra" / "fraud_rules.yaml").read_text()
    old = "- {name: 1m, seconds: 60, count_max: 5, sum_max_minor: 500000, score: 50}"
    assert old in text
    text = text.replace(
        old, "- {name: 1m, seconds: 60, count_max: 2, sum_max_minor: 500000, score: 100}"
    )
    path = tmp_path / "rules.yaml"
    path.write_text(text.replace('version: "2026-11-25.1"', 'version: "test-two-a-minute"'))
    return path


def test_copies_of_a_transfer_id_get_its_first_decision_and_move_money_once(
    settings: Settings, topics, db, tmp_path: Path
) -> None:
    settings = settings.model_copy(
        update={"fraud_rules": two_a_minute(tmp_path), "retry_tiers": {"fast": 1}}
    )
    topics(*settings.all_topics())
    a, b = open_test_accounts(db, settings, 2)
    (customer,) = db.execute("select customer_id from accounts where id = %s", (a,)).fetchone()
    cash = find_internal_account(db, "cash", "EUR")
    assert cash is not None
    me = f"customer:{customer}"
    t0 = datetime.now(UTC)

    def request(transfer_id: uuid.UUID, debit, credit, amount: int, *, by: str, at: datetime):
        return TransferRequest(
            transfer_id=transfer_id, source=TransferSource.API, debit_account=str(debit),
            credit_account=str(credit), amount_minor=amount, currency="EUR", requested_by=by,
            requested_at=at,
        )  # fmt: skip

    deposit = request(uuid.uuid4(), cash.id, a, 100_000, by="teller:test", at=t0)
    tid = uuid.uuid4()
    copies = [request(tid, a, b, 500, by=me, at=t0 + timedelta(seconds=s)) for s in range(1, 5)]
    later = request(uuid.uuid4(), a, b, 700, by=me, at=t0 + timedelta(seconds=10))

    services = [
        start_service(settings, name, log=tmp_path / f"{name}.log")
        for name in ("validator", "retrier", "tracker", "poster", "relay")
    ]
    try:
        produce_requests(settings, [deposit])
        wait_for(
            lambda: (
                db.execute(
                    "select status from transfers where id = %s", (deposit.transfer_id,)
                ).fetchone()
                == ("posted",)
            ),
            90,
            "the deposit posted",
        )
        produce_requests(settings, copies[:3])
        # The fourth copy comes back from a retry tier, as after a dependency's outage.
        retried = retry_topic("fast")
        key, value = str(a).encode(), copies[3].model_dump_json().encode()
        headers = [
            (h.ORIGINAL_TOPIC, settings.topic(TRANSFERS_REQUESTED).encode()),
            (h.ATTEMPT, b"1"),
            (h.ERROR_CLASS, b"DependencyUnavailable"),
            (h.NOT_BEFORE, datetime.now(UTC).isoformat().encode()),
        ]
        producer = kafka_producer(settings)
        producer.produce(
            settings.topic(retried), key=key, value=value,
            headers=signed(settings, retried, key, value, headers),
        )  # fmt: skip
        assert producer.flush(30) == 0
        out = read_committed(
            settings, TRANSFERS_ACCEPTED, TRANSFERS_REJECTED, TRANSFERS_REVIEW, expected=5
        )  # the deposit's decision and one for each copy
        produce_requests(settings, [later])
        wait_for(
            lambda: (
                db.execute(
                    "select status from transfer_status where transfer_id = %s",
                    (later.transfer_id,),
                ).fetchone()
                == ("posted",)
            ),
            90,
            "the later transfer posted",
        )
        wait_for(
            lambda: (
                db.execute(
                    "select status from transfer_status where transfer_id = %s", (tid,)
                ).fetchone()
                == ("posted",)
            ),
            90,
            "the transfer posted and tracked",
        )
    finally:
        for service in services:
            stop_service(service)

    answers = [
        (name, m.value())
        for name, messages in out.items()
        for m in messages
        if str(tid).encode() in m.value()
    ]
    assert len(answers) == 4, answers  # every copy answered ...
    assert {name for name, _ in answers} == {TRANSFERS_ACCEPTED}
    assert len({value for _, value in answers}) == 1  # ... with the very same decision
    assert db.execute(
        "select count(*) from validator_decisions where transfer_id = %s", (tid,)
    ).fetchone() == (1,)
    # Money moved once, and the status is the ledger's.
    assert db.execute(
        "select status, amount_minor from transfers where id = %s", (tid,)
    ).fetchall() == [("posted", 500)]
    # The transfer's 5.00 once, and the later transfer's 7.00.
    assert db.execute("select balance_minor from accounts where id = %s", (b,)).fetchone() == (
        1200,
    )
    # The limits were tight: two a minute. Decided afresh, the third copy would have been
    # rejected for velocity; and the next transfer is accepted only because the fraud
    # state counted the four copies as one transfer (counted twice, it would be the third).
    assert db.execute(
        "select count(*) from transfers where debit_account_id = %s", (a,)
    ).fetchone() == (2,)
