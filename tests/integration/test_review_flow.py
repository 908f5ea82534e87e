"""Fraud review end to end with the services as processes: held, decided once, tracked."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from bankflow.ledger.accounts import find_internal_account
from bankflow.review import ReviewNotHeld, decide, expire_reviews
from bankflow.settings import PROJECT_ROOT, Settings
from schemas.transfers import TransferRequest, TransferSource
from tests.integration.test_validator import produce_requests
from tests.ledger_support import open_test_accounts, start_service, stop_service, wait_for

pytestmark = pytest.mark.timeout(300)


def strict_rules(tmp_path: Path) -> Path:
    """The shipped rules, with a first payment of 10.00 or more enough for review."""
    text = (PROJECT_ROOT / "infra" / "fraud_rules.yaml").read_text()
    text = text.replace(
        "new_beneficiary: {amount_min_minor: 200000, score: 30}",
        "new_beneficiary: {amount_min_minor: 1000, score: 60}",
    )
    assert "amount_min_minor: 1000, score: 60" in text
    path = tmp_path / "rules.yaml"
    path.write_text(text.replace('version: "2026-11-25.1"', 'version: "test-strict"'))
    return path


def request(debit, credit, amount: int, requested_by: str) -> TransferRequest:
    return TransferRequest(
        transfer_id=uuid.uuid4(), source=TransferSource.API, debit_account=str(debit),
        credit_account=str(credit), amount_minor=amount, currency="EUR",
        requested_by=requested_by,
    )  # fmt: skip


def statuses(db, *requests: TransferRequest) -> list[str | None]:
    found = dict(
        db.execute(
            "select transfer_id, status from transfer_status where transfer_id = any(%s)",
            ([r.transfer_id for r in requests],),
        ).fetchall()
    )
    return [found.get(r.transfer_id) for r in requests]


def test_held_transfers_are_approved_rejected_or_timed_out_exactly_once(
    settings: Settings, topics, db, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"fraud_rules": strict_rules(tmp_path)})
    topics()
    a, b, c, d, e = open_test_accounts(db, settings, 5)
    (customer,) = db.execute("select customer_id from accounts where id = %s", (a,)).fetchone()
    cash = find_internal_account(db, "cash", "EUR")
    assert cash is not None
    me = f"customer:{customer}"
    deposit = request(cash.id, a, 100_000, "teller:test")
    small, approve, reject, expire = (
        request(a, b, 500, me), request(a, c, 5_000, me), request(a, d, 5_000, me),
        request(a, e, 5_000, me),
    )  # fmt: skip
    unknown = request(a, uuid.uuid4(), 100, me)
    everything = (deposit, small, approve, reject, expire, unknown)

    services = [
        start_service(settings, name, log=tmp_path / f"{name}.log")
        for name in ("validator", "tracker", "poster", "relay")
    ]
    try:
        produce_requests(settings, [deposit])
        wait_for(lambda: statuses(db, deposit) == ["posted"], 90, "deposit posted")
        produce_requests(settings, [small, approve, reject, expire, unknown])
        expected = ["posted", "posted", "review", "review", "review", "rejected"]
        wait_for(lambda: statuses(db, *everything) == expected, 90, "decisions tracked")

        held = db.execute(
            "select transfer_id, reasons, ruleset_version, status from review_queue "
            "order by transfer_id"
        ).fetchall()
        assert sorted(row[0] for row in held) == sorted(
            r.transfer_id for r in (approve, reject, expire)
        )
        assert all(row[1] == ["new_beneficiary_large_amount"] for row in held)
        assert all(row[2:] == ("test-strict", "held") for row in held)

        decide(db, settings, approve.transfer_id, decision="approved", actor="reviewer:ann")
        decide(db, settings, reject.transfer_id, decision="rejected", actor="reviewer:ann")
        with pytest.raises(ReviewNotHeld):  # a second decision is refused
            decide(db, settings, approve.transfer_id, decision="rejected", actor="reviewer:bob")
        db.execute(
            "update review_queue set held_at = now() - interval '1 hour' where transfer_id = %s",
            (expire.transfer_id,),
        )
        assert expire_reviews(db, settings.model_copy(update={"review_timeout_s": 60})) == 1

        expected = ["posted", "posted", "posted", "rejected", "rejected", "rejected"]
        wait_for(lambda: statuses(db, *everything) == expected, 90, "reviews carried out")
    finally:
        for service in services:
            stop_service(service)

    history = db.execute(
        "select status, reasons from transfer_status_history where transfer_id = %s order by at",
        (approve.transfer_id,),
    ).fetchall()
    # "accepted" and "posted" are written by different stages; both must be there.
    assert sorted(s for s, _ in history) == ["accepted", "posted", "requested", "review"]
    reasons = dict(
        db.execute(
            "select transfer_id, reasons from transfer_status where transfer_id = any(%s)",
            ([reject.transfer_id, expire.transfer_id, unknown.transfer_id],),
        ).fetchall()
    )
    assert reasons[reject.transfer_id] == ["review_rejected"]
    assert reasons[expire.transfer_id] == ["review_timeout"]
    assert reasons[unknown.transfer_id] == ["unknown_account"]
    decided = dict(db.execute("select transfer_id, decided_by from review_queue").fetchall())
    assert decided[approve.transfer_id] == "reviewer:ann"
    assert decided[expire.transfer_id] == "system:review-timeout"
    (posted,) = db.execute(
        "select count(*) from transfers where id = %s and status = 'posted'",
        (approve.transfer_id,),
    ).fetchone()
    assert posted == 1
