"""Statements without a database: the month, the reconciliation, CSV and PDF."""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from bankflow.domain.statements import (
    InvalidMonth,
    StatementDoesNotReconcile,
    StatementLine,
    build_statement,
    month_period,
    statement_csv,
)
from bankflow.statement_pdf import grouped_iban, statement_pdf

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
IBAN = "DE89999900000000000042"


def lines(opening: int, amounts: list[int], start: datetime) -> list[StatementLine]:
    result, running = [], opening
    for i, amount in enumerate(amounts):
        running += amount
        result.append(
            StatementLine(
                entry_id=100 + i,
                posted_at=start + timedelta(hours=i),
                transfer_id=uuid.uuid4(),
                amount_minor=amount,
                balance_after_minor=running,
                description=f"payment {i}",
                category="rent" if i % 2 else None,
                counterparty_iban="DE07999900000000000043",
            )
        )
    return result


def build(
    opening: int,
    amounts: list[int],
    closing: int | None = None,
    month: str = "2026-10",
    currency: str = "EUR",
):
    period = month_period(month, NOW)
    entries = lines(opening, amounts, period.start)
    return build_statement(
        account_id=uuid.uuid4(),
        iban=IBAN,
        currency=currency,
        period=period,
        opening_minor=opening,
        lines=entries,
        closing_minor=opening + sum(amounts) if closing is None else closing,
        now=NOW,
    )


def test_month_periods_are_utc_calendar_months() -> None:
    period = month_period("2026-12", datetime(2027, 1, 5, tzinfo=UTC))
    assert (period.start, period.end) == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    assert month_period("2026-02", NOW).end == datetime(2026, 3, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    "text", ["2026-13", "2026-00", "2026-1", "26-11", "2026/11", "1999-12", "2026-12"]
)
def test_bad_or_future_months_are_refused(text: str) -> None:
    with pytest.raises(InvalidMonth):
        month_period(text, NOW)


def test_a_statement_adds_up_and_totals_in_and_out() -> None:
    statement = build(10_000, [2_500, -1_230, -70, 400])
    assert statement.total_in_minor == 2_900 and statement.total_out_minor == 1_300
    assert statement.closing_minor == 10_000 + 2_900 - 1_300
    assert statement.complete
    assert not build(0, [], month="2026-11").complete  # the month is still running


def test_a_statement_that_does_not_add_up_is_refused() -> None:
    with pytest.raises(StatementDoesNotReconcile):
        build(10_000, [100, -50], closing=10_049)
    period = month_period("2026-10", NOW)
    broken = lines(0, [100, 200], period.start)
    broken[1] = replace(broken[1], balance_after_minor=301)
    with pytest.raises(StatementDoesNotReconcile, match="entry 101"):
        build_statement(
            account_id=uuid.uuid4(), iban=IBAN, currency="EUR", period=period,
            opening_minor=0, lines=broken, closing_minor=301, now=NOW,
        )  # fmt: skip


def test_statement_csv_reconciles_and_guards_against_formulas() -> None:
    statement = build(1_000, [500, -250])
    evil = replace(statement.lines[0], description="=HYPERLINK(1)")
    statement = replace(statement, lines=(evil, statement.lines[1]))
    rows = list(csv.DictReader(io.StringIO(statement_csv(statement))))
    assert [r["kind"] for r in rows] == [
        "opening_balance", "entry", "entry", "total_in", "total_out", "closing_balance",
    ]  # fmt: skip
    assert rows[0]["balance_after"] == "10.00" and rows[-1]["balance_after"] == "12.50"
    assert [r["amount"] for r in rows[1:5]] == ["5.00", "-2.50", "5.00", "-2.50"]
    assert rows[1]["description"] == "'=HYPERLINK(1)"


@pytest.mark.parametrize(
    ("currency", "opening", "amounts", "closing"),
    [
        ("JPY", "1000", ["500", "-250", "500", "-250"], "1250"),
        ("KWD", "1.000", ["0.500", "-0.250", "0.500", "-0.250"], "1.250"),
    ],
)
def test_statement_csv_uses_the_currency_exponent(
    currency: str, opening: str, amounts: list[str], closing: str
) -> None:
    statement = build(1_000, [500, -250], currency=currency)
    rows = list(csv.DictReader(io.StringIO(statement_csv(statement))))
    assert rows[0]["balance_after"] == opening and rows[-1]["balance_after"] == closing
    assert [r["amount"] for r in rows[1:5]] == amounts


@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="needs poppler-utils (make setup)")
def test_the_pdf_has_the_bank_the_iban_and_a_table_across_pages() -> None:
    statement = build(0, [1_000 + i for i in range(120)] + [-555])
    document = statement_pdf(statement, generated_at=NOW, bank_code="99990000")
    assert document.startswith(b"%PDF")
    text = subprocess.run(
        ["pdftotext", "-layout", "-", "-"], input=document, capture_output=True, check=True
    ).stdout.decode()
    pages = text.split("\f")
    assert len([p for p in pages if p.strip()]) >= 3
    for page in (p for p in pages if p.strip()):
        assert "bankflow Bank" in page and grouped_iban(IBAN) in page
        if "payment" in page:
            assert "Balance EUR" in page  # the table's header starts every page it is on
    closing = f"{statement.closing_minor // 100}.{statement.closing_minor % 100:02d}"
    assert f"Closing balance {closing}" in " ".join(text.split())
