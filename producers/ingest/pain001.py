"""ISO 20022 pain.001 customer credit-transfer initiations, streamed and hardened.

Any version and national variant whose elements carry the usual names
(``001.001.03``, ``001.001.09``, the German ``002.03`` and ``003.03``, the Swiss
``001.001.03.ch.02``): namespaces are ignored, ``BIC`` and ``BICFI`` are both
accepted, and ``ReqdExctnDt`` may hold a date or a ``Dt`` element.

The file is read twice, both times with ``iterparse`` (never whole in memory):
first to check ``NbOfTxs`` and ``CtrlSum`` of the group header and of each
payment information block, then to yield the transactions. defusedxml refuses
DTDs, entity declarations and external references, so an XXE or a
"billion laughs" file is refused before any entity is expanded or file read.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, BinaryIO

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import iterparse

from producers.ingest.records import BatchLine, FileRefused, LineError, checked
from schemas.api_transfers import AMOUNT_TEXT_MAX

TRANSACTION = "CdtTrfTxInf"
PAYMENT_BLOCK = "PmtInf"
GROUP_HEADER = "GrpHdr"
#: What the totals check adds up: a plain decimal, never an exponent, NaN or Infinity
#: (which Decimal takes, and whose sums raise or never compare equal).
_PLAIN_DECIMAL = re.compile(r"^[0-9]+(?:\.[0-9]+)?$")
#: Characters of a bad value quoted when a file is refused.
_QUOTED_MAX = 40


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _find(element: Any, *path: str) -> Any | None:
    """The first descendant along ``path`` of local names, namespaces ignored."""
    current = element
    for name in path:
        current = next((c for c in current if _local(c.tag) == name), None)
        if current is None:
            return None
    return current


def _text(element: Any, *path: str) -> str | None:
    found = _find(element, *path)
    return found.text.strip() if found is not None and found.text else None


def _events(stream: BinaryIO) -> Iterator[tuple[str, Any]]:
    stream.seek(0)
    try:
        yield from iterparse(
            stream,
            events=("start", "end"),
            forbid_dtd=True,
            forbid_entities=True,
            forbid_external=True,
        )
    except DefusedXmlException as exc:
        raise FileRefused(
            f"refused an unsafe XML construct ({type(exc).__name__}): DTDs, "
            "entities and external references are not allowed"
        ) from exc
    except SyntaxError as exc:  # ElementTree's ParseError
        raise FileRefused(f"not well-formed XML: {exc}") from exc


@dataclass
class _Totals:
    count: int = 0
    amount: Decimal = field(default_factory=Decimal)


def check_totals(stream: BinaryIO) -> int:
    """Check NbOfTxs and CtrlSum wherever given; returns the number of transactions.

    CtrlSum is the plain sum of the amounts, across currencies, as the standard
    defines it (the Swiss sample's group header sums CHF and EUR).
    """
    group = _Totals()
    block = _Totals()
    declared: list[tuple[str, str | None, str | None, _Totals]] = []
    header: tuple[str | None, str | None] | None = None
    for event, element in _events(stream):
        name = _local(element.tag)
        if event == "start" and name == PAYMENT_BLOCK:
            block = _Totals()
        if event != "end":
            continue
        if name == TRANSACTION:
            amount = _amount_value(element)
            group.count += 1
            group.amount += amount
            block.count += 1
            block.amount += amount
            element.clear()
        elif name == PAYMENT_BLOCK:
            where = f"payment information {_text(element, 'PmtInfId') or '?'}"
            declared.append((where, _text(element, "NbOfTxs"), _text(element, "CtrlSum"), block))
            element.clear()
        elif name == GROUP_HEADER:
            header = (_text(element, "NbOfTxs"), _text(element, "CtrlSum"))
    if header is None:
        raise FileRefused("not a pain.001 file: it has no group header (GrpHdr)")
    declared.append(("the group header", *header, group))
    for where, count, total, actual in declared:
        _compare(where, count, total, actual)
    if group.count == 0:
        raise FileRefused("the file holds no credit transfer transaction (CdtTrfTxInf)")
    return group.count


def _compare(where: str, count: str | None, total: str | None, actual: _Totals) -> None:
    if count is not None and count != str(actual.count):
        raise FileRefused(f"NbOfTxs of {where} says {count}, the file holds {actual.count}")
    if total is not None:
        declared = _decimal(total)
        if declared is None:
            raise FileRefused(
                f"CtrlSum of {where} is not a plain decimal of at most {AMOUNT_TEXT_MAX} "
                f"characters: {total[:_QUOTED_MAX]!r}"
            )
        if declared != actual.amount:
            raise FileRefused(
                f"CtrlSum of {where} says {total}, the amounts sum to {actual.amount}"
            )


def _amount_value(transaction: Any) -> Decimal:
    # A bad amount counts as 0 here; it is reported on its own line by the ingest.
    return _decimal(_text(transaction, "Amt", "InstdAmt") or "0") or Decimal(0)


def _decimal(text: str) -> Decimal | None:
    """A bounded plain decimal string as a Decimal; None for anything else."""
    if len(text) > AMOUNT_TEXT_MAX or not _PLAIN_DECIMAL.match(text):
        return None
    return Decimal(text)


def message_id(stream: BinaryIO) -> str:
    """The group header's MsgId (what a pain.002 report refers back to)."""
    for event, element in _events(stream):
        if event == "end" and _local(element.tag) == GROUP_HEADER:
            return _text(element, "MsgId") or ""
    return ""


def parse_pain001(stream: BinaryIO) -> Iterator[BatchLine | LineError]:
    """Every transaction as a line (``line`` counts transactions from 1), or its error:
    ``read_pain001`` with each line's references checked as every edge checks them."""
    for line in read_pain001(stream):
        yield checked(line)


def read_pain001(stream: BinaryIO) -> Iterator[BatchLine]:
    """Every transaction of the file as written, with its exact amount and currency,
    before any of our rules judge it (a postal-account creditor is found here, and
    refused by ``checked``)."""
    number = 0
    debtor_iban: str | None = None
    block_id = ""
    for event, element in _events(stream):
        name = _local(element.tag)
        if event == "end" and name == "DbtrAcct":
            debtor_iban = _text(element, "Id", "IBAN")
        elif event == "end" and name == "PmtInfId":
            block_id = (element.text or "").strip()
        elif event == "end" and name == TRANSACTION:
            number += 1
            yield _transaction(element, number, block_id, debtor_iban)
            element.clear()
        elif event == "end" and name == PAYMENT_BLOCK:
            element.clear()
            debtor_iban, block_id = None, ""


def _transaction(element: Any, number: int, block_id: str, debtor_iban: str | None) -> BatchLine:
    amount = _find(element, "Amt", "InstdAmt")
    end_to_end = _text(element, "PmtId", "EndToEndId") or f"#{number}"
    creditor = (
        _text(element, "CdtrAcct", "Id", "IBAN")
        or _text(element, "CdtrAcct", "Id", "Othr", "Id")
        or ""
    )
    reference = _text(element, "RmtInf", "Strd", "CdtrRefInf", "Ref")
    return BatchLine(
        line=number,
        key=f"pmtinf:{block_id}/e2e:{end_to_end}",
        debit_account=debtor_iban,
        credit_account=creditor,
        amount=(amount.text or "").strip() if amount is not None else "",
        currency=(amount.get("Ccy") or "") if amount is not None else "",
        description=_text(element, "RmtInf", "Ustrd") or _text(element, "Cdtr", "Nm") or "",
        reference=reference or end_to_end,
    )
