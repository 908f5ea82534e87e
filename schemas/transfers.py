"""Messages about transfers, as they travel on Kafka.

Money is ``amount_minor`` (an integer count of minor units) plus ``currency``;
decimal strings exist only at the edges (API, files, CLI), parsed by
``bankflow.domain.money``.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from bankflow.domain.money import AMOUNT_MINOR_MAX, CURRENCY_PATTERN

#: The namespace of every id bankflow derives (transfer ids from idempotency keys,
#: event ids from transfer ids). Changing it would change every derived id.
BANKFLOW_NAMESPACE: Final = uuid.UUID("6f1c2b0e-5d3a-4c8e-9a7b-2f4e6d8c0a1b")

_NAMESPACE_BYTES: Final = BANKFLOW_NAMESPACE.bytes

#: Limits of the free-text fields, shared with code that checks them without pydantic.
DESCRIPTION_MAX: Final = 500
CATEGORY_MAX: Final = 64
TAGS_MAX: Final = 20
TAG_LENGTH_MAX: Final = 32
REFERENCE_MAX: Final = 140
ACCOUNT_REFERENCE_MAX: Final = 64

#: Text that may travel to PostgreSQL: no control characters (PostgreSQL refuses NUL,
#: and no field has a use for the others); tabs and line breaks stay allowed.
TEXT_PATTERN: Final = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
CONTROL_CHARACTERS: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

#: One of the currencies of ``bankflow.domain.money.CURRENCY_EXPONENTS``, the one table.
Currency = Annotated[str, Field(pattern=CURRENCY_PATTERN, examples=["EUR"])]
AmountMinor = Annotated[int, Field(gt=0, le=AMOUNT_MINOR_MAX, examples=[1250])]
Tag = Annotated[str, Field(min_length=1, max_length=TAG_LENGTH_MAX, pattern=TEXT_PATTERN)]


class TransferSource(StrEnum):
    API = "api"
    BATCH = "batch"
    EXTERNAL = "external"


def transfer_id_for(caller: str, idempotency_key: str) -> uuid.UUID:
    """The transfer id of a request: the same caller and key always give the same id."""
    return uuid.uuid5(BANKFLOW_NAMESPACE, f"transfer:{caller}:{idempotency_key}")


class TransferIds:
    """``transfer_id_for`` for one caller and many keys, with the caller's part hashed once.

    Batch files derive one id per line; this gives exactly the ids ``transfer_id_for``
    would, at about a third of its cost.
    """

    def __init__(self, caller: str) -> None:
        self._prefix = hashlib.sha1(  # noqa: S324 - UUIDv5 is defined on SHA-1
            _NAMESPACE_BYTES + f"transfer:{caller}:".encode()
        )

    def __call__(self, idempotency_key: str) -> uuid.UUID:
        digest = self._prefix.copy()
        digest.update(idempotency_key.encode())
        return uuid.UUID(bytes=digest.digest()[:16], version=5)


def event_id_for(transfer_id: uuid.UUID, event_type: str) -> uuid.UUID:
    """One event id per transfer and kind of event, so a re-published event dedupes.

    A name-based (version 5, SHA-1) UUID whose name is the event type and the
    transfer id's 16 bytes; written out rather than through ``uuid.uuid5`` because
    the poster derives thousands per batch and formatting the name as text cost
    more than the hash.
    """
    name = _NAMESPACE_BYTES + b"event:" + event_type.encode() + b":" + transfer_id.bytes
    return uuid.UUID(bytes=hashlib.sha1(name).digest()[:16], version=5)  # noqa: S324


class _Message(BaseModel):
    # Unknown fields are ignored so that a newer producer can add one without
    # breaking an older consumer; every field we rely on is declared and checked.
    model_config = ConfigDict(frozen=True, extra="ignore")


class TransferDetails(_Message):
    """What every stage carries along about a transfer, beyond its money."""

    description: str = Field(default="", max_length=DESCRIPTION_MAX, pattern=TEXT_PATTERN)
    category: str | None = Field(default=None, max_length=CATEGORY_MAX, pattern=TEXT_PATTERN)
    tags: list[Tag] = Field(default_factory=list, max_length=TAGS_MAX)
    reference: str | None = Field(default=None, max_length=REFERENCE_MAX, pattern=TEXT_PATTERN)
    requested_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    requested_by: str | None = Field(default=None, max_length=128, pattern=TEXT_PATTERN)
    correlation_id: str | None = Field(default=None, max_length=128, pattern=TEXT_PATTERN)


class TransferRequest(TransferDetails):
    """On ``transfers.requested``: what a client, a file or the CLI asked for.

    Accounts are named as the requester named them: an account id or an IBAN.
    """

    transfer_id: uuid.UUID
    source: TransferSource
    debit_account: str = Field(min_length=1, max_length=ACCOUNT_REFERENCE_MAX, pattern=TEXT_PATTERN)
    credit_account: str = Field(
        min_length=1, max_length=ACCOUNT_REFERENCE_MAX, pattern=TEXT_PATTERN
    )
    amount_minor: AmountMinor
    currency: Currency


class AcceptedTransfer(TransferDetails):
    """On ``transfers.accepted``: a request the validator accepted, accounts resolved.

    The same message goes to ``transfers.review`` when the fraud rules hold it; a
    reviewer's approval publishes it unchanged to ``transfers.accepted``.
    """

    transfer_id: uuid.UUID
    source: TransferSource
    debit_account_id: uuid.UUID
    credit_account_id: uuid.UUID
    amount_minor: AmountMinor
    currency: Currency
    #: The fraud rule set that scored the transfer, its total score and what fired.
    ruleset_version: str | None = None
    risk_score: int = 0
    risk_reasons: list[str] = Field(default_factory=list)


class RejectedTransfer(TransferDetails):
    """On ``transfers.rejected``: a request the validator refused, with every reason."""

    transfer_id: uuid.UUID
    source: TransferSource
    debit_account: str
    credit_account: str
    amount_minor: AmountMinor
    currency: Currency
    reasons: list[str] = Field(min_length=1)
    decided_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    ruleset_version: str | None = None
    risk_score: int = 0
    #: Who decided when a person did (a reviewer); None for the validator's rules.
    decided_by: str | None = None


TransferEventType = Literal["transfer.posted", "transfer.failed"]


class TransferEvent(_Message):
    """On ``transfers.posted`` / ``transfers.failed``: what the ledger did, once.

    Published through the outbox, so it may arrive twice: consumers dedupe on ``event_id``.
    """

    event_id: uuid.UUID
    event_type: TransferEventType
    transfer_id: uuid.UUID
    status: Literal["posted", "failed"]
    reason: str | None = None
    debit_account_id: uuid.UUID
    credit_account_id: uuid.UUID
    amount_minor: AmountMinor
    currency: Currency
    debit_balance_after_minor: int | None = None
    credit_balance_after_minor: int | None = None
    occurred_at: datetime
    requested_at: datetime
    correlation_id: str | None = None
