"""Validation rules, one reason code each, with plain values."""

from __future__ import annotations

import uuid

import pytest

from bankflow.domain.iban import account_reference_key
from bankflow.domain.posting import AccountStatus, AccountType
from processors.validation import (
    TRANSFER_LIMIT_MINOR,
    AccountFacts,
    RejectReason,
    validate,
)
from schemas.transfers import TransferRequest, TransferSource

OWNER = uuid.uuid4()


def facts(**kwargs) -> AccountFacts:
    fields = {
        "id": uuid.uuid4(),
        "iban": f"DE00TEST{uuid.uuid4().hex[:12].upper()}",
        "customer_id": OWNER,
        "type": AccountType.CHECKING,
        "currency": "EUR",
        "status": AccountStatus.ACTIVE,
        **kwargs,
    }
    return AccountFacts(**fields)


def book(*accounts: AccountFacts) -> dict[str, AccountFacts]:
    index: dict[str, AccountFacts] = {}
    for a in accounts:
        index[str(a.id)] = index[a.iban] = a
    return index


def request(debit: str, credit: str, amount: int = 100, **kwargs) -> TransferRequest:
    return TransferRequest(
        transfer_id=uuid.uuid4(),
        source=TransferSource.API,
        debit_account=debit,
        credit_account=credit,
        amount_minor=amount,
        currency=kwargs.pop("currency", "EUR"),
        **kwargs,
    )


def test_an_accepted_request_names_its_accounts_by_id_and_keeps_its_details() -> None:
    a, b = facts(), facts()
    r = request(
        a.iban,
        str(b.id),
        250,
        description="rent",
        tags=["home"],
        requested_by=f"customer:{OWNER}",
        correlation_id="c-1",
    )
    decision = validate(r, book(a, b))
    assert decision.outcome == "accepted"
    accepted = decision.accepted
    assert (accepted.debit_account_id, accepted.credit_account_id) == (a.id, b.id)
    assert (
        accepted.transfer_id,
        accepted.amount_minor,
        accepted.description,
        accepted.tags,
        accepted.correlation_id,
    ) == (r.transfer_id, 250, "rent", ["home"], "c-1")


@pytest.mark.parametrize(
    ("make", "reasons"),
    [
        (lambda a, b: request(str(uuid.uuid4()), str(b.id)), [RejectReason.UNKNOWN_ACCOUNT]),
        (lambda a, b: request(str(a.id), str(a.id)), [RejectReason.SAME_ACCOUNT]),
        (
            lambda a, b: request(str(a.id), str(b.id), currency="USD"),
            [RejectReason.CURRENCY_MISMATCH],
        ),
        (
            lambda a, b: request(str(a.id), str(b.id), requested_by=f"customer:{uuid.uuid4()}"),
            [RejectReason.NOT_ACCOUNT_OWNER],
        ),
        (
            lambda a, b: request(
                str(a.id), str(b.id), TRANSFER_LIMIT_MINOR[AccountType.CHECKING] + 1
            ),
            [RejectReason.ABOVE_TRANSFER_LIMIT],
        ),
        (
            lambda a, b: request(str(a.id), "DE89370400440532013000"),
            [RejectReason.EXTERNAL_NOT_SUPPORTED],
        ),
        (lambda a, b: request(str(a.id), "DE89370400440532013001"), [RejectReason.INVALID_IBAN]),
    ],
)
def test_each_rule_rejects_with_its_reason(make, reasons) -> None:
    a, b = facts(), facts()
    decision = validate(make(a, b), book(a, b))
    assert decision.outcome == "rejected"
    assert list(decision.reasons) == reasons
    assert decision.accepted is None


def test_frozen_and_closed_accounts_are_refused_on_either_side() -> None:
    a, frozen, closed = (
        facts(),
        facts(status=AccountStatus.FROZEN),
        facts(status=AccountStatus.CLOSED),
    )
    assert validate(request(str(frozen.id), str(a.id)), book(a, frozen)).reasons == (
        RejectReason.ACCOUNT_FROZEN,
    )
    assert validate(request(str(a.id), str(closed.id)), book(a, closed)).reasons == (
        RejectReason.ACCOUNT_CLOSED,
    )


def test_every_reason_that_applies_is_reported() -> None:
    a, b = facts(status=AccountStatus.FROZEN), facts()
    decision = validate(
        request(str(a.id), str(b.id), currency="USD", requested_by=f"customer:{uuid.uuid4()}"),
        book(a, b),
    )
    assert set(decision.reasons) == {
        RejectReason.ACCOUNT_FROZEN,
        RejectReason.CURRENCY_MISMATCH,
        RejectReason.NOT_ACCOUNT_OWNER,
    }


def test_a_customer_may_never_debit_the_banks_own_accounts() -> None:
    cash, a = facts(type=AccountType.CASH, customer_id=OWNER), facts()
    decision = validate(
        request(str(cash.id), str(a.id), requested_by=f"customer:{OWNER}"), book(cash, a)
    )
    assert decision.reasons == (RejectReason.NOT_ACCOUNT_OWNER,)
    # Staff and systems (a teller's deposit) may.
    assert (
        validate(request(str(cash.id), str(a.id), requested_by="teller:t-1"), book(cash, a)).outcome
        == "accepted"
    )


def test_account_references_are_looked_up_in_one_form() -> None:
    assert account_reference_key("de89 3704 0044 0532 0130 00") == "DE89370400440532013000"
    some_id = uuid.uuid4()
    assert account_reference_key(str(some_id).upper()) == str(some_id)


def test_an_account_id_that_starts_like_an_iban_is_still_an_id() -> None:
    from bankflow.domain.iban import looks_like_iban

    assert not looks_like_iban("ab12cdef-0000-4000-8000-000000000000")
    assert looks_like_iban("DE89 3704 0044 0532 0130 00")
    a, b = facts(id=uuid.UUID("ab12cdef-0000-4000-8000-000000000000")), facts()
    assert validate(request(str(a.id), str(b.id)), book(a, b)).outcome == "accepted"
