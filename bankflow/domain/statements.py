"""Monthly statements: the period, the reconciliation, and the CSV rendering.

A statement covers one calendar month in UTC: entries posted from the first
instant of the month up to (not including) the first instant of the next. Its
opening balance is the balance after the account's last entry before the month
(zero for none), its closing balance the balance after its last entry before the
month's end. ``build_statement`` checks, entry by entry, that the opening balance
plus each amount gives the balance after that entry, and that the last one is the
closing balance: a statement that does not add up is never handed out.
"""

from __future__ import annotations

import csv
import io
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from bankflow.domain.errors import DomainError
from bankflow.domain.money import format_amount

_MONTH = re.compile(r"^(?P<year>\d{4})-(?P<month>0[1-9]|1[0-2])$")
#: Statements start in the year 2000; nothing in this ledger is older.
FIRST_YEAR: Final = 2000
#: Spreadsheet programs run a cell that starts with one of these as a formula (OWASP
#: "CSV injection"); text cells that do are prefixed with an apostrophe.
FORMULA_STARTS: Final = ("=", "+", "-", "@", "\t", "\r")
CSV_COLUMNS: Final = (
    "kind",
    "posted_at",
    "entry_id",
    "transfer_id",
    "description",
    "category",
    "counterparty_iban",
    "amount",
    "balance_after",
)


class InvalidMonth(DomainError):
    """A statement month that is not ``YYYY-MM`` or lies outside what can have entries."""


class StatementDoesNotReconcile(DomainError):
    """Opening balance plus the month's entries is not the closing balance.

    Never expected: the ledger writes each entry's balance after from the previous
    one. If it happens the statement is withheld and the ledger needs a look
    (``bankflow verify``).
    """


@dataclass(frozen=True, slots=True)
class Period:
    month: str
    start: datetime
    end: datetime


def month_period(text: str, now: datetime) -> Period:
    """The UTC period of ``YYYY-MM``; refuses a malformed month or one not begun at ``now``."""
    match = _MONTH.match(text)
    if match is None:
        raise InvalidMonth(f"{text!r} is not a month written as YYYY-MM")
    year, month = int(match["year"]), int(match["month"])
    if year < FIRST_YEAR:
        raise InvalidMonth(f"statements start in {FIRST_YEAR}")
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    if start > now:
        raise InvalidMonth(f"{text} has not begun yet")
    return Period(text, start, end)


@dataclass(frozen=True, slots=True)
class StatementLine:
    entry_id: int
    posted_at: datetime
    transfer_id: uuid.UUID
    amount_minor: int
    balance_after_minor: int
    description: str
    category: str | None
    counterparty_iban: str | None


@dataclass(frozen=True, slots=True)
class Statement:
    account_id: uuid.UUID
    iban: str
    currency: str
    period: Period
    opening_minor: int
    total_in_minor: int
    total_out_minor: int
    closing_minor: int
    lines: tuple[StatementLine, ...]
    #: False while the month is still running: more entries may come.
    complete: bool


def build_statement(
    *,
    account_id: uuid.UUID,
    iban: str,
    currency: str,
    period: Period,
    opening_minor: int,
    lines: Sequence[StatementLine],
    closing_minor: int,
    now: datetime,
) -> Statement:
    """A statement whose every line is checked against the running balance.

    ``lines`` are the month's entries in ledger (id) order; ``closing_minor`` is the
    balance after the last entry before the month's end, read independently.
    """
    running = opening_minor
    for line in lines:
        running += line.amount_minor
        if running != line.balance_after_minor:
            raise StatementDoesNotReconcile(
                f"account {account_id}, {period.month}: after entry {line.entry_id} the "
                f"running balance is {running} but the ledger says {line.balance_after_minor}"
            )
    if running != closing_minor:
        raise StatementDoesNotReconcile(
            f"account {account_id}, {period.month}: opening {opening_minor} plus the entries "
            f"gives {running}, but the closing balance is {closing_minor}"
        )
    return Statement(
        account_id=account_id,
        iban=iban,
        currency=currency,
        period=period,
        opening_minor=opening_minor,
        total_in_minor=sum(line.amount_minor for line in lines if line.amount_minor > 0),
        total_out_minor=-sum(line.amount_minor for line in lines if line.amount_minor < 0),
        closing_minor=closing_minor,
        lines=tuple(lines),
        complete=period.end <= now,
    )


def _text_cell(value: str | None) -> str:
    if not value:
        return ""
    return f"'{value}" if value.startswith(FORMULA_STARTS) else value


def statement_csv(statement: Statement) -> str:
    """RFC 4180 CSV: an opening row, one row per entry, totals in and out, a closing row.

    Amounts are decimal strings with the currency's places (negative: money out);
    text cells are guarded against being run as spreadsheet formulas.
    """
    money = statement.currency
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    start = statement.period.start.isoformat()
    end = statement.period.end.isoformat()
    opening = format_amount(statement.opening_minor, money)
    writer.writerow(["opening_balance", start, "", "", "", "", "", "", opening])
    for line in statement.lines:
        writer.writerow(
            [
                "entry",
                line.posted_at.isoformat(),
                line.entry_id,
                line.transfer_id,
                _text_cell(line.description),
                _text_cell(line.category),
                line.counterparty_iban or "",
                format_amount(line.amount_minor, money),
                format_amount(line.balance_after_minor, money),
            ]
        )
    total_in = format_amount(statement.total_in_minor, money)
    total_out = format_amount(-statement.total_out_minor, money)
    writer.writerow(["total_in", end, "", "", "", "", "", total_in, ""])
    writer.writerow(["total_out", end, "", "", "", "", "", total_out, ""])
    closing = format_amount(statement.closing_minor, money)
    writer.writerow(["closing_balance", end, "", "", "", "", "", "", closing])
    return out.getvalue()
