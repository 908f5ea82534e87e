"""An idempotency key names one request for good: after the short-lived record expired too."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest

from bankflow.settings import Settings
from schemas.topics import TRANSFERS_REQUESTED
from schemas.transfers import TransferRequest
from tests.integration.test_api_auth import TestClient, create_app, problem
from tests.integration.test_api_transfers import customer, send, transfer
from tests.integration.test_validator import read_committed
from tests.ledger_support import open_test_accounts, run_cli

pytestmark = pytest.mark.timeout(240)


def _expire_idempotency_records(redis_client: Any, settings: Settings) -> int:
    """What a day's TTL does to the API's Redis records of keys."""
    keys = list(redis_client.scan_iter(match=f"{settings.redis_prefix}*idem*", count=1000))
    return int(redis_client.delete(*keys)) if keys else 0


def test_a_key_reused_with_another_body_after_its_record_expired_is_refused(
    settings: Settings, topics, db: Any, redis_client: Any
) -> None:
    settings = settings.model_copy(update={"password_hash_profile": "test"})
    topics()
    with TestClient(create_app(settings)) as client:
        ann, (a1, a2) = customer(client, db, settings, "ann@example.com")
        first = send(client, ann, transfer(a1, a2, "1.00"), "rent-december", wait=0)
        assert first.status_code == 202, first.text
        assert _expire_idempotency_records(redis_client, settings) == 1

        other = send(client, ann, transfer(a1, a2, "900.00"), "rent-december", wait=0)
        body = problem(other, 422, "idempotency-key-reused")
        assert "different request" in body["detail"]
        # Refused twice in a row (the refusal left no record of its own behind), and the
        # first body is still answered as the first time: same transfer id.
        problem(send(client, ann, transfer(a1, a2, "900.00"), "rent-december", wait=0), 422,
                "idempotency-key-reused")  # fmt: skip
        again = send(client, ann, transfer(a1, a2, "1.00"), "rent-december", wait=0)
        assert again.status_code == 202, again.text
        assert again.json()["id"] == first.json()["id"]
        _expire_idempotency_records(redis_client, settings)
        retried = send(client, ann, transfer(a1, a2, "1.00"), "rent-december", wait=0)
        assert retried.json()["id"] == first.json()["id"]

    kept = db.execute("select scope, transfer_id from idempotency_keys").fetchall()
    assert [(scope.split(":")[0], str(t)) for scope, t in kept] == [("user", first.json()["id"])]
    produced = read_committed(settings, TRANSFERS_REQUESTED, expected=3)[TRANSFERS_REQUESTED]
    amounts = {TransferRequest.model_validate_json(m.value()).amount_minor for m in produced}
    assert amounts == {100}  # the 900.00 was never produced


def test_a_deposit_without_a_key_prints_the_one_it_made_and_a_retry_reuses_it(
    settings: Settings, topics, db: Any
) -> None:
    topics()
    (account,) = open_test_accounts(db, settings, 1)
    first = run_cli(settings, "deposit", str(account), "10.00", "EUR")
    assert first.returncode == 0, first.stderr
    key = re.search(r"idempotency key (\S+) \(repeat with --idempotency-key \1\)", first.stderr)
    assert key, first.stderr
    uuid.UUID(key.group(1))
    transfer_id = re.search(r"deposit (\S+) requested", first.stderr).group(1)

    retry = run_cli(settings, "deposit", str(account), "10.00", "EUR",
                    "--idempotency-key", key.group(1))  # fmt: skip
    assert retry.returncode == 0, retry.stderr
    assert f"deposit {transfer_id} requested" in retry.stderr
    assert "idempotency key" not in retry.stderr  # given, so not printed

    other = run_cli(settings, "deposit", str(account), "20.00", "EUR",
                    "--idempotency-key", key.group(1))  # fmt: skip
    assert other.returncode == 1
    assert "already used with a different request" in other.stderr

    produced = read_committed(settings, TRANSFERS_REQUESTED, expected=2)[TRANSFERS_REQUESTED]
    requests = [TransferRequest.model_validate_json(m.value()) for m in produced]
    assert [(str(r.transfer_id), r.amount_minor) for r in requests] == [(transfer_id, 1000)] * 2
