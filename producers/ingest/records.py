"""What every file format yields: one line's transfer, or one line's error."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from bankflow.domain.errors import InvalidAccountReference
from bankflow.domain.iban import parse_account_reference
from bankflow.errors import BankflowError
from schemas.api_transfers import AMOUNT_TEXT_MAX

#: The columns of a CSV file and the fields of a JSON Lines record, in order.
FIELDS = (
    "debit_account", "credit_account", "amount", "currency",
    "description", "category", "tags", "reference",
)  # fmt: skip
REQUIRED = ("debit_account", "credit_account", "amount", "currency")


class FileRefused(BankflowError):
    """The file as a whole cannot be ingested (bad header, totals that do not add up,
    an XML attack). Nothing of it is produced."""


class SubmitterRefused(BankflowError):
    """Nobody may submit the file as asked: an unknown or disabled submitter, a member
    of staff without the customer they act for, a role that may not submit batches."""


#: The reason code of a line whose debit account the submitter may not debit.
NOT_OWNER = "not_owner"


@dataclass(frozen=True, slots=True)
class BatchLine:
    """One transaction of a file, still as text, with where it came from.

    ``key`` identifies the transaction within the file (``line:12``, or the pain.001
    ``PmtInfId`` and ``EndToEndId``); with the file's hash it makes the transfer id.
    """

    line: int
    key: str
    debit_account: str | None
    credit_account: str
    amount: str
    currency: str
    description: str = ""
    category: str | None = None
    tags: list[str] = field(default_factory=list)
    reference: str | None = None


@dataclass(frozen=True, slots=True)
class LineError:
    line: int
    field: str
    reason: str
    #: The refused transaction's ``BatchLine.key`` where the line was read that far (a
    #: pain.002 reports a refused pain.001 transaction by its ids).
    key: str | None = None
    #: A stable reason code (``not_owner``); by default ``invalid_<field>``.
    code: str | None = None

    @property
    def reason_code(self) -> str:
        return self.code or f"invalid_{self.field}"

    def as_dict(self) -> dict[str, object]:
        return {
            "line": self.line, "field": self.field, "reason": self.reason,
            "code": self.reason_code,
        }  # fmt: skip


def checked(line: BatchLine) -> BatchLine | LineError:
    """The line with its account references in canonical form, or its first bad field.

    Every format's parser hands its lines through here, so a file holds the same
    references the API does: an account id (a UUID) or a valid IBAN, nothing else. A
    missing debit account (a pain.001 block without a debtor IBAN) is left for
    ``--debtor-account``. The amount's length is bounded before anything converts it.
    """
    if len(line.amount) > AMOUNT_TEXT_MAX:
        return LineError(line.line, "amount", f"longer than {AMOUNT_TEXT_MAX} characters", line.key)
    debit = line.debit_account
    try:
        if debit is not None:
            debit = parse_account_reference(debit)
    except InvalidAccountReference as exc:
        return LineError(line.line, "debit_account", str(exc), line.key)
    try:
        credit = parse_account_reference(line.credit_account)
    except InvalidAccountReference as exc:
        return LineError(line.line, "credit_account", str(exc), line.key)
    return dataclasses.replace(line, debit_account=debit, credit_account=credit)
