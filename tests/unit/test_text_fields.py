"""Free text that reaches PostgreSQL carries no control characters (it refuses NUL).

A NUL in a transfer's description used to pass every check until the poster's COPY
failed on it, and in a customer's name it made registration answer 500 (found by
schemathesis). Each edge refuses it now, naming the field.
"""

from __future__ import annotations

import uuid

import pytest
from pydantic import ValidationError

from producers.ingest.records import BatchLine
from producers.ingest.run import _too_long
from schemas.api_transfers import TransferIn
from schemas.auth import RegisterRequest
from schemas.transfers import TransferRequest, TransferSource


def request(**changes: object) -> dict[str, object]:
    return {
        "transfer_id": str(uuid.uuid4()), "source": TransferSource.API,
        "debit_account": "a", "credit_account": "b", "amount_minor": 1, "currency": "EUR",
        **changes,
    }  # fmt: skip


@pytest.mark.parametrize("field", ["description", "category", "reference", "requested_by"])
@pytest.mark.parametrize("text", ["a\x00b", "bell\x07", "del\x7f"])
def test_messages_refuse_control_characters_by_field(field: str, text: str) -> None:
    with pytest.raises(ValidationError) as refused:
        TransferRequest.model_validate(request(**{field: text}))
    assert refused.value.errors()[0]["loc"] == (field,)


def test_tabs_and_line_breaks_stay_allowed() -> None:
    TransferRequest.model_validate(request(description="rent\tNovember\r\nthanks"))


def test_api_bodies_refuse_nul_in_names_emails_and_descriptions() -> None:
    with pytest.raises(ValidationError, match="full_name"):
        RegisterRequest.model_validate(
            {"email": "a@example.com", "password": "x" * 12, "full_name": "Ada\x00"}
        )
    with pytest.raises(ValidationError, match="email"):
        RegisterRequest.model_validate(
            {"email": "a\x00@example.com", "password": "x" * 12, "full_name": "Ada"}
        )
    with pytest.raises(ValidationError, match="description"):
        TransferIn.model_validate({"debit_account": str(uuid.uuid4()),
                                   "credit_account": "DE89370400440532013000",
                                   "amount": "1.00", "currency": "EUR",
                                   "description": "x\x00"})  # fmt: skip


def test_a_batch_line_with_a_control_character_is_reported_with_its_field() -> None:
    line = BatchLine(7, "line:7", None, "DE02999900000000000001", "1.00", "EUR",
                     description="pay\x00ment")  # fmt: skip
    assert _too_long(line) == ("description", "contains a control character")
    tagged = BatchLine(8, "line:8", None, "x", "1.00", "EUR", tags=["ok", "b\x00d"])
    assert _too_long(tagged) == ("tags", "a tag contains a control character")
