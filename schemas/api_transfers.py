"""API bodies of transfers, cash and the fraud review queue.

Amounts are decimal strings with the currency's exponent at this edge, parsed by
``bankflow.domain.money`` while the body is validated, so a bad amount answers 422
naming the ``amount`` field; an account reference that is neither an account id (a
UUID) nor a valid IBAN answers 422 naming its field the same way. Responses never
carry a field the caller may not see.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

from bankflow.domain.errors import InvalidAccountReference, InvalidAmount, UnsupportedCurrency
from bankflow.domain.iban import parse_account_reference
from bankflow.domain.money import parse_amount
from schemas.transfers import (
    ACCOUNT_REFERENCE_MAX,
    CATEGORY_MAX,
    DESCRIPTION_MAX,
    TAGS_MAX,
    TEXT_PATTERN,
    Currency,
    Tag,
)

TransferStatus = Literal["requested", "review", "accepted", "rejected", "posted", "failed"]

#: The longest decimal string an amount may be written as, here and in batch files:
#: AMOUNT_MINOR_MAX has 16 digits, and a bound keeps a 5,000-digit "amount" from ever
#: reaching int() (which refuses more than 4,300 digits with a ValueError).
AMOUNT_TEXT_MAX: Final = 32

Amount = Annotated[str, Field(min_length=1, max_length=AMOUNT_TEXT_MAX, examples=["12.50"])]


def _account_reference(text: str) -> str:
    try:
        return parse_account_reference(text)
    except InvalidAccountReference as exc:
        raise ValueError(str(exc)) from None


#: An account named by its id or its IBAN, checked and put in canonical form (a
#: lower-case UUID, a compact upper-case IBAN) by ``parse_account_reference``.
AccountReference = Annotated[
    str,
    Field(
        min_length=1,
        max_length=ACCOUNT_REFERENCE_MAX,
        description="An account id (a UUID) or a valid IBAN.",
        examples=["DE60999900000000000017"],
    ),
    AfterValidator(_account_reference),
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Declared before ``amount`` so the amount's check can read it.
    currency: Currency
    amount: Amount

    @field_validator("amount")
    @classmethod
    def _amount_in_minor_units(cls, amount: str, info: ValidationInfo) -> str:
        currency = info.data.get("currency")
        if currency is None:
            return amount  # the currency's own error is reported
        try:
            parse_amount(amount, currency)
        except (InvalidAmount, UnsupportedCurrency) as exc:
            raise ValueError(str(exc)) from None
        return amount

    def amount_minor(self) -> int:
        return parse_amount(self.amount, self.currency)


class TransferIn(_Body):
    """``POST /v1/transfers``: move money from one of the caller's accounts."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "examples": [
                {
                    "debit_account": "0b7e6c1e-4a0f-4e43-9a57-1a2f3c4d5e6f",
                    "credit_account": "DE60999900000000000017",
                    "amount": "25.00",
                    "currency": "EUR",
                    "description": "Concert tickets",
                    "category": "leisure",
                    "tags": ["friends"],
                }
            ]
        },
    )

    debit_account: uuid.UUID
    credit_account: AccountReference
    description: str = Field(default="", max_length=DESCRIPTION_MAX, pattern=TEXT_PATTERN)
    category: str | None = Field(default=None, max_length=CATEGORY_MAX, pattern=TEXT_PATTERN)
    tags: list[Tag] = Field(default_factory=list, max_length=TAGS_MAX)


class CashIn(_Body):
    """``POST /v1/deposits`` and ``/v1/withdrawals``: cash at a teller's desk."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "examples": [
                {
                    "account_id": "0b7e6c1e-4a0f-4e43-9a57-1a2f3c4d5e6f",
                    "amount": "200.00",
                    "currency": "EUR",
                }
            ]
        },
    )

    account_id: uuid.UUID
    description: str = Field(default="", max_length=DESCRIPTION_MAX, pattern=TEXT_PATTERN)


class TransferAccepted(BaseModel):
    """The answer to a request the broker acknowledged (or its final status, if asked)."""

    id: uuid.UUID
    status: TransferStatus
    reasons: list[str] = Field(default_factory=list)


class StatusChange(BaseModel):
    status: TransferStatus
    reasons: list[str]
    at: datetime


class TransferOut(BaseModel):
    id: uuid.UUID
    status: TransferStatus
    reasons: list[str]
    debit_account: str
    credit_account: str
    amount: str
    currency: str
    description: str
    category: str | None
    tags: list[str]
    requested_at: datetime
    #: The fraud rule set that scored the transfer, and its score (None before scoring).
    ruleset_version: str | None
    risk_score: int | None
    history: list[StatusChange]


class TransferPage(BaseModel):
    items: list[TransferOut]
    next: str | None = Field(description="Pass as `cursor` for the next page; null at the end.")


class ReviewParty(BaseModel):
    """One side of a held transfer, as far as the bank knows it (not at all: nulls)."""

    account_id: uuid.UUID | None
    iban: str | None
    name: str | None


ReviewStatus = Literal["held", "approved", "rejected", "timed_out", "superseded"]


class ReviewItem(BaseModel):
    transfer_id: uuid.UUID
    debit_account_id: uuid.UUID
    debtor: ReviewParty
    beneficiary: ReviewParty
    amount: str
    currency: str
    risk_score: int
    reasons: list[str]
    ruleset_version: str
    held_at: datetime
    #: ``superseded``: the transfer reached the ledger (through a copy) before anyone
    #: decided; nobody can decide it any more.
    status: ReviewStatus
    decided_by: str | None
    decided_at: datetime | None


class ReviewPage(BaseModel):
    items: list[ReviewItem]
    next: str | None


class ReviewDecisionIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"note": "Customer confirmed by phone"}]},
    )

    note: str | None = Field(default=None, max_length=500, pattern=TEXT_PATTERN)


def example_of(model: type[BaseModel]) -> dict[str, Any]:
    """The first example of a body model (for OpenAPI and tests)."""
    extra = model.model_config.get("json_schema_extra")
    examples = extra.get("examples") if isinstance(extra, dict) else None
    if isinstance(examples, list) and examples and isinstance(examples[0], dict):
        return dict(examples[0])
    return {}
