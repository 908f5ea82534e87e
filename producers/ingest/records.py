"""What every file format yields: one line's transfer, or one line's error."""

from __future__ import annotations

from dataclasses import dataclass, field

from bankflow.errors import BankflowError

#: The columns of a CSV file and the fields of a JSON Lines record, in order.
FIELDS = (
    "debit_account", "credit_account", "amount", "currency",
    "description", "category", "tags", "reference",
)  # fmt: skip
REQUIRED = ("debit_account", "credit_account", "amount", "currency")


class FileRefused(BankflowError):
    """The file as a whole cannot be ingested (bad header, totals that do not add up,
    an XML attack). Nothing of it is produced."""


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

    def as_dict(self) -> dict[str, object]:
        return {"line": self.line, "field": self.field, "reason": self.reason}
