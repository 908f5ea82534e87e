"""A statement as a PDF document, made with reportlab's page layout engine (platypus).

Every page carries the bank's name, the account's IBAN, the month and the page
number; the entries are one table that continues across pages with its header
row repeated. Text uses the standard Helvetica fonts, so characters outside their
encoding (Windows-1252) are shown as "?" rather than as missing glyphs.
"""

from __future__ import annotations

import io
import unicodedata
from datetime import datetime, timedelta
from typing import Any, Final

from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.units import mm
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import LongTable, SimpleDocTemplate, Spacer, Table, TableStyle

from bankflow.domain.money import format_amount
from bankflow.domain.statements import Statement

#: The name printed at the top of every statement page.
BANK_NAME: Final = "bankflow Bank"
#: A description longer than this is cut, so a row stays one line high.
DESCRIPTION_CHARS_MAX: Final = 48
FONT: Final = "Helvetica"
FONT_BOLD: Final = "Helvetica-Bold"
PAGE_WIDTH, PAGE_HEIGHT = A4
MARGIN: Final = 15 * mm
#: Date, description, counterparty, amount, balance after: 180 mm, the width inside margins.
COLUMN_WIDTHS: Final = (24 * mm, 62 * mm, 44 * mm, 24 * mm, 26 * mm)


def _printable(text: str | None, limit: int | None = None) -> str:
    """Text the standard fonts can show: control characters dropped, others as '?'."""
    if not text:
        return ""
    visible = "".join(ch for ch in text if unicodedata.category(ch)[0] != "C")
    if limit is not None and len(visible) > limit:
        visible = visible[: limit - 1] + "…"
    return visible.encode("cp1252", "replace").decode("cp1252")


def grouped_iban(iban: str) -> str:
    """An IBAN in groups of four, as banks print it (ISO 13616)."""
    return " ".join(iban[i : i + 4] for i in range(0, len(iban), 4))


def _decorate(statement: Statement, bank_name: str, bank_code: str) -> Any:
    title = f"Account statement {statement.period.month}"
    if not statement.complete:
        title += " (month in progress)"

    def draw(canvas: Canvas, document: SimpleDocTemplate) -> None:
        canvas.saveState()
        top = PAGE_HEIGHT - MARGIN
        canvas.setFont(FONT_BOLD, 14)
        canvas.drawString(MARGIN, top - 4 * mm, _printable(bank_name))
        canvas.setFont(FONT, 9)
        canvas.drawRightString(PAGE_WIDTH - MARGIN, top - 4 * mm, f"Bank code {bank_code}")
        canvas.setFont(FONT_BOLD, 10)
        canvas.drawString(MARGIN, top - 11 * mm, title)
        canvas.setFont(FONT, 9)
        canvas.drawString(
            MARGIN,
            top - 16 * mm,
            f"IBAN {grouped_iban(statement.iban)}    Currency {statement.currency}",
        )
        canvas.line(MARGIN, top - 19 * mm, PAGE_WIDTH - MARGIN, top - 19 * mm)
        canvas.setFont(FONT, 8)
        canvas.drawRightString(PAGE_WIDTH - MARGIN, MARGIN - 6 * mm, f"Page {document.page}")
        canvas.restoreState()

    return draw


def _summary(statement: Statement) -> Table:
    money = statement.currency
    last_day = statement.period.end - timedelta(days=1)
    rows = [
        ["Period", f"{statement.period.start:%Y-%m-%d} to {last_day:%Y-%m-%d} (UTC)"],
        ["Opening balance", format_amount(statement.opening_minor, money)],
        ["Total in", format_amount(statement.total_in_minor, money)],
        ["Total out", format_amount(-statement.total_out_minor, money)],
        ["Closing balance", format_amount(statement.closing_minor, money)],
        ["Entries", str(len(statement.lines))],
    ]
    table = Table(rows, colWidths=(40 * mm, 70 * mm), hAlign="LEFT")
    table.setStyle(
        TableStyle(
            [
                ("FONT", (0, 0), (-1, -1), FONT, 9),
                ("FONT", (0, 0), (0, -1), FONT_BOLD, 9),
                ("ALIGN", (1, 1), (1, -2), "RIGHT"),
            ]
        )
    )
    return table


def _entries(statement: Statement) -> LongTable:
    money = statement.currency
    header = ["Date", "Description", "Counterparty", f"Amount {money}", f"Balance {money}"]
    rows: list[list[str]] = [header]
    for line in statement.lines:
        rows.append(
            [
                f"{line.posted_at:%Y-%m-%d}",
                _printable(line.description or line.category, DESCRIPTION_CHARS_MAX),
                _printable(line.counterparty_iban),
                format_amount(line.amount_minor, money),
                format_amount(line.balance_after_minor, money),
            ]
        )
    if not statement.lines:
        rows.append(["", "No entries this month", "", "", ""])
    # repeatRows: the header row starts every page the table continues on.
    table = LongTable(rows, colWidths=COLUMN_WIDTHS, repeatRows=1)
    table.setStyle(
        TableStyle(
            [
                ("FONT", (0, 0), (-1, -1), FONT, 8),
                ("FONT", (0, 0), (-1, 0), FONT_BOLD, 8),
                ("LINEBELOW", (0, 0), (-1, 0), 0.6, colors.black),
                ("ROWBACKGROUNDS", (0, 1), (-1, -1), [colors.white, colors.whitesmoke]),
                ("ALIGN", (3, 0), (4, -1), "RIGHT"),
            ]
        )
    )
    return table


def statement_pdf(
    statement: Statement, *, generated_at: datetime, bank_name: str = BANK_NAME, bank_code: str
) -> bytes:
    """The statement as PDF bytes."""
    buffer = io.BytesIO()
    document = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=MARGIN,
        rightMargin=MARGIN,
        topMargin=MARGIN + 24 * mm,
        bottomMargin=MARGIN,
        title=f"{bank_name} statement {statement.period.month} {statement.iban}",
        author=bank_name,
        creator="bankflow",
    )
    money = statement.currency
    closing = Table(
        [["Closing balance", format_amount(statement.closing_minor, money)]],
        colWidths=(40 * mm, 70 * mm),
        hAlign="LEFT",
    )
    closing.setStyle(TableStyle([("FONT", (0, 0), (-1, -1), FONT_BOLD, 9)]))
    generated = Table(
        [[f"Generated {generated_at:%Y-%m-%d %H:%M} UTC"]], colWidths=(110 * mm,), hAlign="LEFT"
    )
    generated.setStyle(TableStyle([("FONT", (0, 0), (-1, -1), FONT, 7)]))
    decorate = _decorate(statement, bank_name, bank_code)
    document.build(
        [_summary(statement), Spacer(1, 6 * mm), _entries(statement), Spacer(1, 4 * mm), closing,
         generated],
        onFirstPage=decorate,
        onLaterPages=decorate,
    )  # fmt: skip
    return buffer.getvalue()
