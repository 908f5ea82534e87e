"""Account references at the edge: an account id (a UUID) or a valid IBAN, nothing else.

One check (``parse_account_reference``) serves the API bodies and every batch format;
the Kafka message keeps references as text, and validation rejects what names none of
our accounts (tests/unit/test_validation.py).
"""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from schwifty import IBAN

from bankflow.domain.errors import InvalidAccountReference
from bankflow.domain.iban import parse_account_reference
from schemas.api_transfers import TransferIn, example_of

ACCOUNT_ID = "0b7e6c1e-4a0f-4e43-9a57-1a2f3c4d5e6f"


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        (ACCOUNT_ID, ACCOUNT_ID),
        (ACCOUNT_ID.upper(), ACCOUNT_ID),
        ("DE89370400440532013000", "DE89370400440532013000"),
        ("de89 3704 0044 0532 0130 00", "DE89370400440532013000"),
        ("CH5481230000001998736", "CH5481230000001998736"),
    ],
)
def test_ids_and_ibans_are_taken_in_canonical_form(text: str, canonical: str) -> None:
    assert parse_account_reference(text) == canonical


@pytest.mark.parametrize(
    "text",
    [
        "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz",  # once reached PostgreSQL's ::uuid cast
        "0b7e6c1e-4a0f-4e43-9a57-1a2f3c4d5e6",  # a digit short
        "{0b7e6c1e-4a0f-4e43-9a57-1a2f3c4d5e6f}",
        "urn:uuid:0b7e6c1e-4a0f-4e43-9a57-1a2f3c4d5e6f",
        "0b7e6c1e4a0f4e439a571a2f3c4d5e6f",  # a UUID, but not as an account id is written
        "0b7e6c1e-4a0f-4e43-9a57-1a2f3c4d5e6\u0661",  # a non-ASCII digit
        "DE89370400440532013001",  # wrong check digits
        "XX89370400440532013000",  # no such country
        "01-39139-1",  # a Swiss postal account
        "",
        " ",
        "A1",
    ],
)
def test_anything_else_is_refused_with_a_reason(text: str) -> None:
    with pytest.raises(InvalidAccountReference, match="account id"):
        parse_account_reference(text)


def test_a_huge_reference_is_refused_with_a_short_message() -> None:
    with pytest.raises(InvalidAccountReference) as refused:
        parse_account_reference("DE" + "9" * 5_000)
    assert len(str(refused.value)) < 200


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.text(max_size=70),
        st.uuids().map(str),
        st.from_regex(r"\A[A-Z]{2}[0-9]{2}[A-Z0-9 ]{11,30}\Z"),
    )
)
def test_any_text_is_canonical_or_refused_and_nothing_else(text: str) -> None:
    try:
        canonical = parse_account_reference(text)
    except InvalidAccountReference:
        return
    assert parse_account_reference(canonical) == canonical
    try:
        assert str(uuid.UUID(canonical)) == canonical
    except ValueError:
        assert str(IBAN(canonical)) == canonical


def test_the_transfer_body_refuses_a_bad_credit_account_naming_the_field() -> None:
    body = example_of(TransferIn)
    assert TransferIn.model_validate(body).credit_account == body["credit_account"]
    with pytest.raises(ValidationError) as refused:
        TransferIn.model_validate(
            {**body, "credit_account": "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz"}
        )
    assert [e["loc"] for e in refused.value.errors()] == [("credit_account",)]
    assert "not an account id" in str(refused.value)
    paper = TransferIn.model_validate({**body, "credit_account": "de89 3704 0044 0532 0130 00"})
    assert paper.credit_account == "DE89370400440532013000"
