"""Validation rules, one reason code each, with plain values."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bankflow.domain.iban import account_reference_key
from bankflow.domain.posting import AccountStatus, AccountType
from processors.validation import (
    AccountFacts,
    RejectReason,
    daily_limit_minor,
    daily_limit_reasons,
    transfer_limit_minor,
    validate,
)
from schemas.transfers import ACCOUNT_REFERENCE_MAX, TransferRequest, TransferSource

OWNER = uuid.uuid4()
#: The control characters the message schema refuses in text (TEXT_PATTERN).
CONTROLS = "".join(chr(c) for c in [*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])


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
                str(a.id), str(b.id), transfer_limit_minor(AccountType.CHECKING, "EUR") + 1
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


def test_limits_are_whole_units_scaled_by_the_currency_exponent() -> None:
    # The same contract in every currency: 5,000,000.00 EUR, 5,000,000 JPY, 5,000,000.000 KWD.
    assert transfer_limit_minor(AccountType.CHECKING, "EUR") == 5_000_000_00
    assert transfer_limit_minor(AccountType.CHECKING, "JPY") == 5_000_000
    assert transfer_limit_minor(AccountType.CHECKING, "KWD") == 5_000_000_000
    assert daily_limit_minor(AccountType.SAVINGS, "EUR") == 2_000_000_00
    assert transfer_limit_minor(AccountType.CASH, "JPY") is None
    yen = facts(currency="JPY"), facts(currency="JPY")
    over = request(str(yen[0].id), str(yen[1].id), 5_000_001, currency="JPY")
    assert validate(over, book(*yen)).reasons == (RejectReason.ABOVE_TRANSFER_LIMIT,)
    within = request(str(yen[0].id), str(yen[1].id), 5_000_000, currency="JPY")
    assert validate(within, book(*yen)).outcome == "accepted"
    assert daily_limit_reasons(AccountType.CHECKING, "KWD", 9_999_999_000, 1_000) == []
    assert daily_limit_reasons(AccountType.CHECKING, "KWD", 9_999_999_000, 1_001) == [
        RejectReason.ABOVE_DAILY_LIMIT
    ]


def test_a_request_in_a_currency_outside_the_table_is_not_a_transfer_request() -> None:
    with pytest.raises(ValueError, match="currency"):
        request(str(uuid.uuid4()), str(uuid.uuid4()), currency="XYZ")


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


#: What a reference on transfers.requested may be: any text the message schema lets
#: through (1 to 64 characters, no control characters), checked at no edge.
ANY_REFERENCE = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters=CONTROLS),
    min_size=1,
    max_size=ACCOUNT_REFERENCE_MAX,
)
#: References that look like what they are not: the id that once reached PostgreSQL's
#: ::uuid cast, IBAN-shaped text, ids with braces or a urn prefix, non-ASCII digits.
TRICKY_REFERENCES = [
    "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz",
    "DE89370400440532013001",
    "DE00" + "Z" * 30,
    "{0b7e6c1e-4a0f-4e43-9a57-1a2f3c4d5e6f}",
    "urn:uuid:0b7e6c1e-4a0f-4e43-9a57-1a2f3c4d5e6f",
    "0b7e6c1e4a0f4e439a571a2f3c4d5e6f",
    "١٢٣٤٥٦٧٨-١٢٣٤-١٢٣٤-١٢٣٤-١٢٣٤٥٦٧٨٩٠١٢",
    "' or 1=1 --",
    " ",
]


def assert_rejected_with_reasons(decision) -> None:
    assert decision.outcome == "rejected"
    assert decision.accepted is None
    assert decision.reasons, "a rejection always says why"
    assert all(isinstance(reason, RejectReason) for reason in decision.reasons)


@settings(max_examples=300, deadline=None)
@given(reference=st.one_of(ANY_REFERENCE, st.sampled_from(TRICKY_REFERENCES)))
def test_any_text_as_an_account_reference_is_rejected_with_a_reason(reference: str) -> None:
    a, b = facts(), facts()
    known = book(a, b)
    for debit, credit in ((reference, str(b.id)), (str(a.id), reference), (reference, reference)):
        decision = validate(request(debit, credit), known)
        assert_rejected_with_reasons(decision)
    # An unknown debit account is unknown_account, whatever its text.
    assert RejectReason.UNKNOWN_ACCOUNT in validate(request(reference, str(b.id)), known).reasons
    credit_reasons = validate(request(str(a.id), reference), known).reasons
    assert set(credit_reasons) <= {
        RejectReason.UNKNOWN_ACCOUNT,
        RejectReason.INVALID_IBAN,
        RejectReason.EXTERNAL_NOT_SUPPORTED,
    }


@pytest.mark.parametrize("reference", TRICKY_REFERENCES)
def test_a_reference_that_is_neither_an_id_nor_an_iban_is_unknown_or_an_invalid_iban(
    reference: str,
) -> None:
    a, b = facts(), facts()
    assert validate(request(reference, str(b.id)), book(a, b)).reasons == (
        RejectReason.UNKNOWN_ACCOUNT,
    )
    expected = (
        RejectReason.INVALID_IBAN if reference.startswith("DE") else RejectReason.UNKNOWN_ACCOUNT
    )
    assert validate(request(str(a.id), reference), book(a, b)).reasons == (expected,)
