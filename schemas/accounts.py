"""API bodies of accounts, balances, history and statements.

Separate from the stored rows: money leaves as decimal strings with the currency's
places (``"12.30"``, negative for money out), never as floats or minor units, and
no response carries another customer's data or the ledger's internals.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.config import JsonDict

from schemas.transfers import CATEGORY_MAX, TAG_LENGTH_MAX, Currency

OpenableType = Literal["checking", "savings"]
AccountStatus = Literal["active", "frozen", "closed"]
#: A decimal string as clients write amounts: digits, optionally a point and more digits.
DecimalString = Annotated[
    str, Field(pattern=r"^[0-9]{1,16}(\.[0-9]{1,3})?$", max_length=20, examples=["250.00"])
]

_ACCOUNT_EXAMPLE: JsonDict = {
    "id": "3f2a9c4e-7b1d-4e8a-9c0f-2d6b8e1a4c7f",
    "customer_id": "0e8f7d6c-5b4a-4392-8170-6f5e4d3c2b1a",
    "iban": "DE89999900000000000042",
    "type": "checking",
    "currency": "EUR",
    "status": "active",
    "overdraft_limit": "0.00",
    "created_at": "2026-11-26T09:30:00Z",
    "updated_at": "2026-11-26T09:30:00Z",
}


class AccountCreate(BaseModel):
    """Open an account: staff name the customer; a customer opens one of their own."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "customer_id": "0e8f7d6c-5b4a-4392-8170-6f5e4d3c2b1a",
                    "type": "checking",
                    "currency": "EUR",
                }
            ]
        },
    )

    customer_id: uuid.UUID | None = Field(
        default=None,
        description="Required for tellers and admins; a customer may leave it out "
        "(or give their own).",
    )
    type: OpenableType
    currency: Currency


class AccountChange(BaseModel):
    """What an admin changes about an account: its status and/or its overdraft limit."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"status": "frozen"}, {"overdraft_limit": "500.00"}],
        },
    )

    status: AccountStatus | None = Field(
        default=None, description="`frozen` stops payments in and out; `closed` is final."
    )
    overdraft_limit: DecimalString | None = Field(
        default=None,
        description="How far below zero the balance may go, in the account's currency. "
        "Savings accounts have none.",
    )

    @model_validator(mode="after")
    def _something_to_change(self) -> Self:
        if self.status is None and self.overdraft_limit is None:
            raise ValueError("give status, overdraft_limit or both")
        return self


class AccountOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_ACCOUNT_EXAMPLE]})

    id: uuid.UUID
    customer_id: uuid.UUID
    iban: str
    type: str = Field(description="`checking` or `savings` (staff also see the bank's own).")
    currency: str
    status: AccountStatus
    overdraft_limit: str
    created_at: datetime
    updated_at: datetime


class AccountPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"items": [_ACCOUNT_EXAMPLE], "next": None}]}
    )

    items: list[AccountOut]
    next: str | None = Field(description="Pass as `cursor` for the next page; null on the last.")


class BalanceOut(BaseModel):
    """An account's balances as decimal strings in its currency."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "account_id": "3f2a9c4e-7b1d-4e8a-9c0f-2d6b8e1a4c7f",
                    "currency": "EUR",
                    "posted": "1250.00",
                    "pending": "-20.00",
                    "available": "1730.00",
                    "pending_debits": "20.00",
                    "pending_credits": "0.00",
                    "overdraft_limit": "500.00",
                    "version": 42,
                }
            ]
        }
    )

    account_id: uuid.UUID
    currency: str
    posted: str = Field(description="The ledger balance: every posted entry, nothing else.")
    pending: str = Field(
        description="Two-phase transfers not posted yet, net (credits minus debits)."
    )
    available: str = Field(
        description="What a payment could take now: posted - pending debits + overdraft "
        "limit for an active account (pending credits do not count until posted); "
        "0 for a frozen or closed account."
    )
    pending_debits: str
    pending_credits: str
    overdraft_limit: str
    version: int = Field(
        description="The account's version these balances are as of; it only grows, "
        "and the API never answers with a lower one than it has shown."
    )


class EntryOut(BaseModel):
    """One entry of an account's history: one side of a posted transfer."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "entry_id": 1042,
                    "transfer_id": "9b2c4d6e-8f0a-4b1c-9d2e-3f4a5b6c7d8e",
                    "posted_at": "2026-11-26T09:31:02Z",
                    "direction": "out",
                    "amount": "-12.30",
                    "balance_after": "1237.70",
                    "currency": "EUR",
                    "description": "Coffee beans",
                    "category": "groceries",
                    "tags": ["coffee"],
                    "reference": None,
                    "counterparty_iban": "DE07999900000000000043",
                }
            ]
        }
    )

    entry_id: int
    transfer_id: uuid.UUID
    posted_at: datetime
    direction: Literal["in", "out"]
    amount: str = Field(description="Signed: negative for money out.")
    balance_after: str
    currency: str
    description: str
    category: str | None = Field(max_length=CATEGORY_MAX)
    tags: list[Annotated[str, Field(max_length=TAG_LENGTH_MAX)]]
    reference: str | None
    counterparty_iban: str | None


class EntryPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"items": [EntryOut.model_json_schema()["examples"][0]], "next": None}]
        }
    )

    items: list[EntryOut]
    next: str | None = Field(
        description="Pass as `cursor` for older entries; null at the end of the history. "
        "A page may be shorter than `limit` (even empty) while `next` is set: each "
        "request examines a bounded number of entries."
    )


class StatementEntryOut(BaseModel):
    entry_id: int
    transfer_id: uuid.UUID
    posted_at: datetime
    amount: str
    balance_after: str
    description: str
    category: str | None
    counterparty_iban: str | None


class StatementOut(BaseModel):
    """A month of an account: opening balance + entries = closing balance (checked)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "account_id": "3f2a9c4e-7b1d-4e8a-9c0f-2d6b8e1a4c7f",
                    "iban": "DE89999900000000000042",
                    "currency": "EUR",
                    "month": "2026-11",
                    "period_start": "2026-11-01T00:00:00Z",
                    "period_end": "2026-12-01T00:00:00Z",
                    "complete": True,
                    "opening_balance": "1000.00",
                    "total_in": "250.00",
                    "total_out": "12.30",
                    "closing_balance": "1237.70",
                    "entries": [],
                }
            ]
        }
    )

    account_id: uuid.UUID
    iban: str
    currency: str
    month: str
    period_start: datetime
    period_end: datetime
    complete: bool = Field(description="False while the month is still running.")
    opening_balance: str
    total_in: str
    total_out: str = Field(description="Money out in the month, as a positive amount.")
    closing_balance: str
    entries: list[StatementEntryOut]
