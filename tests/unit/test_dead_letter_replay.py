"""What a dead-letter replay sends: a transfer request, its original headers, nothing else."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from bankflow.dead_letters import (
    DeadLetter,
    InvalidActor,
    NotReplayable,
    checked_actor,
    replay_of,
)
from bankflow.failures import FAILURE_HEADERS
from schemas import headers as h
from schemas.transfers import AcceptedTransfer, RejectedTransfer, TransferRequest, TransferSource

PREFIX = "test-x."
AT = datetime(2026, 12, 2, 9, 30, tzinfo=UTC)


def letter(topic: str, payload: bytes, headers: dict[str, str] | None = None) -> DeadLetter:
    return DeadLetter(
        id=7, original_topic=PREFIX + topic, original_partition=0, original_offset=3,
        key=b"k", payload=payload, headers=headers or {}, error_class="PoisonMessage",
        reason="the database refused it", attempts=1, first_failure_at=AT,
        last_failure_at=AT, status="open",
    )  # fmt: skip


def accepted_transfer() -> AcceptedTransfer:
    return AcceptedTransfer(
        transfer_id=uuid.uuid4(), source=TransferSource.BATCH,
        debit_account_id=uuid.uuid4(), credit_account_id=uuid.uuid4(),
        amount_minor=12_345, currency="EUR", description="rent", category="housing",
        tags=["monthly"], reference="RF18539007547034", requested_at=AT,
        requested_by="customer:" + str(uuid.uuid4()), correlation_id="corr-1",
        ruleset_version="v3", risk_score=40, risk_reasons=["new_beneficiary"],
    )  # fmt: skip


@pytest.mark.parametrize("topic", ["transfers.accepted", "transfers.review"])
def test_an_accepted_transfer_replays_as_the_request_it_was_made_from(topic: str) -> None:
    accepted = accepted_transfer()
    request = replay_of(letter(topic, accepted.model_dump_json().encode()), PREFIX).request
    assert request == TransferRequest(
        transfer_id=accepted.transfer_id, source=TransferSource.BATCH,
        debit_account=str(accepted.debit_account_id),
        credit_account=str(accepted.credit_account_id), amount_minor=12_345, currency="EUR",
        description="rent", category="housing", tags=["monthly"],
        reference="RF18539007547034", requested_at=AT, requested_by=accepted.requested_by,
        correlation_id="corr-1",
    )  # fmt: skip
    assert "risk_score" not in request.model_dump_json()


@pytest.mark.parametrize("topic", ["transfers.requested", "transfers.retry.5s"])
def test_a_request_replays_as_itself_keyed_by_its_debit_account(topic: str) -> None:
    original = TransferRequest(
        transfer_id=uuid.uuid4(), source=TransferSource.API, debit_account="DE89370400440532013000",
        credit_account=str(uuid.uuid4()), amount_minor=1, currency="EUR", requested_at=AT,
    )  # fmt: skip
    replay = replay_of(letter(topic, original.model_dump_json().encode()), PREFIX)
    assert replay.request == original
    assert replay.key == b"DE89370400440532013000"
    assert TransferRequest.model_validate_json(replay.value) == original


def test_original_headers_are_kept_and_failure_and_signature_headers_dropped() -> None:
    stored = {
        h.CORRELATION_ID: "corr-from-header",
        h.TRACEPARENT: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        h.SIGNATURE: "c2lnbmVk",
        h.KEY_ID: "validator-1",
        h.EVENT_ID: str(uuid.uuid4()),
        **dict.fromkeys(FAILURE_HEADERS, "1"),
    }
    payload = accepted_transfer().model_dump_json().encode()
    headers = dict(replay_of(letter("transfers.accepted", payload, stored), PREFIX).headers)
    assert headers == {
        h.CORRELATION_ID: b"corr-from-header",
        h.TRACEPARENT: b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    }


def test_a_letter_without_a_correlation_header_takes_its_transfers_correlation_id() -> None:
    payload = accepted_transfer().model_dump_json().encode()
    stored = {h.ERROR_CLASS: "IntegrityError"}  # the poster's letters: failure headers only
    headers = replay_of(letter("transfers.accepted", payload, stored), PREFIX).headers
    assert headers == [(h.CORRELATION_ID, b"corr-1")]


@pytest.mark.parametrize(
    ("topic", "payload", "why"),
    [
        ("transfers.accepted", b"\x00garbage", "not an accepted transfer"),
        ("transfers.accepted", b'{"transfer_id": "1"}', "debit_account_id"),
        ("transfers.review", b'{"amount_minor": -5}', "not an accepted transfer"),
        ("transfers.requested", b'{"transfer_id": 1}', "not a transfer request"),
        ("transfers.retry.1m", b"[]", "not a transfer request"),
        ("transfers.posted", b"{}", "topic carries neither"),
        ("transfers.dlq", b"junk", "topic carries neither"),
    ],
)
def test_a_letter_that_holds_no_transfer_request_is_not_replayable(
    topic: str, payload: bytes, why: str
) -> None:
    with pytest.raises(NotReplayable, match=why) as refused:
        replay_of(letter(topic, payload), PREFIX)
    assert f"dead letter 7 (from {PREFIX}{topic}) is not replayable" in str(refused.value)
    assert "stays open" in str(refused.value)


def test_a_rejected_transfer_is_not_replayed_though_it_has_a_requests_fields() -> None:
    """A rejection shaped like a request must not come back as one: it was decided."""
    rejected = RejectedTransfer(
        transfer_id=uuid.uuid4(), source=TransferSource.API, debit_account="a",
        credit_account="b", amount_minor=1, currency="EUR", reasons=["unknown_account"],
    )  # fmt: skip
    with pytest.raises(NotReplayable):
        replay_of(letter("transfers.rejected", rejected.model_dump_json().encode()), PREFIX)


@pytest.mark.parametrize("actor", ["ops@bank.example", "Ada Lovelace", "x"])
def test_an_actor_names_someone(actor: str) -> None:
    assert checked_actor(actor) == actor


@pytest.mark.parametrize("actor", ["", " ", " ada", "ada\n", "a\x00b", "é", "a" * 129])
def test_an_empty_or_odd_actor_is_refused(actor: str) -> None:
    with pytest.raises(InvalidActor, match="--actor"):
        checked_actor(actor)
