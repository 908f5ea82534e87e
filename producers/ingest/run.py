"""``bankflow ingest``: one file into transfer requests on ``transfers.requested``.

The file is streamed (never whole in memory). Every transaction becomes a
request whose id derives from the file's SHA-256 and the transaction's key (its
line, or its pain.001 payment block and EndToEndId), so ingesting the same file
twice, or again after a crash, makes no duplicate transfer: the ledger skips an
id it already holds. A bad line is reported with its number, field and reason;
the good lines go on.

Every file has a submitter (``producers.ingest.submitters``): a line may debit only
an account of the customer it is submitted for, or it is refused here with the
reason code ``not_owner`` and nothing of it is sent; every request carries that
customer as ``requested_by``. ``producers.ingest.batches`` records the file as a
batch around this.
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal

import orjson
import psycopg

from bankflow.bootstrap import db_connect, kafka_producer
from bankflow.domain.errors import DomainError, InvalidAccountReference, UnsupportedCurrency
from bankflow.domain.iban import account_reference_key, looks_like_iban, parse_account_reference
from bankflow.domain.money import parse_amount
from bankflow.domain.posting import INTERNAL_TYPES
from bankflow.settings import Settings
from producers.ingest.pain001 import check_totals, parse_pain001
from producers.ingest.records import NOT_OWNER, BatchLine, FileRefused, LineError
from producers.ingest.submitters import Submitter
from producers.ingest.tabular import parse_csv, parse_jsonl
from producers.intake import publish
from schemas.topics import TRANSFERS_REQUESTED
from schemas.transfers import (
    ACCOUNT_REFERENCE_MAX,
    CATEGORY_MAX,
    CONTROL_CHARACTERS,
    DESCRIPTION_MAX,
    REFERENCE_MAX,
    TAG_LENGTH_MAX,
    TAGS_MAX,
    TransferIds,
)

Format = Literal["csv", "jsonl", "pain001"]
FORMATS: tuple[Format, ...] = ("csv", "jsonl", "pain001")
#: Requests per acknowledged produce round: large enough to stream, small enough that
#: a crash leaves little to redo (and redoing is harmless: ids are derived).
CHUNK = 5_000
#: Bytes read to guess a file's format.
SNIFF_BYTES = 4096
#: Errors listed in a report; the count is always the full number.
ERRORS_LISTED_MAX = 1_000


@dataclass
class IngestReport:
    file: str
    format: str = ""
    sha256: str = ""
    lines_read: int = 0
    requests_produced: int = 0
    errors: list[LineError] = field(default_factory=list)
    error_count: int = 0
    refused: str | None = None
    resumed_from: int = 0
    #: (transaction key, transfer id) of every request, kept only when asked (--wait).
    transfers: list[tuple[str, uuid.UUID]] | None = None
    #: (transaction key, reason code) of every line refused before it was sent, kept
    #: with ``transfers`` (unlike ``errors``, not cut at ``ERRORS_LISTED_MAX``).
    refused_lines: list[tuple[str, str]] | None = None
    #: The batch the file was recorded as (``producers.ingest.batches``), and the earlier
    #: batch it is a byte-identical copy of (then nothing was sent).
    batch_id: uuid.UUID | None = None
    duplicate_of: uuid.UUID | None = None
    submitted_by: str | None = None

    def add_error(self, error: LineError) -> None:
        if self.refused_lines is not None and error.key is not None:
            self.refused_lines.append((error.key, error.reason_code))
        self.error_count += 1
        if len(self.errors) < ERRORS_LISTED_MAX:
            self.errors.append(error)

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.file, "format": self.format, "sha256": self.sha256,
            "lines_read": self.lines_read, "requests_produced": self.requests_produced,
            "lines_rejected": self.error_count, "refused": self.refused,
            "resumed_from_line": self.resumed_from,
            "errors": [e.as_dict() for e in self.errors],
            "batch_id": _text(self.batch_id), "duplicate_of": _text(self.duplicate_of),
            "submitted_by": self.submitted_by,
        }  # fmt: skip


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def detect_format(path: Path) -> Format:
    """pain001 for XML, jsonl for a file of JSON objects, csv otherwise."""
    with path.open("rb") as stream:
        head = stream.read(SNIFF_BYTES).lstrip(b"\xef\xbb\xbf").lstrip()
    if head.startswith(b"<"):
        return "pain001"
    if head.startswith(b"{"):
        return "jsonl"
    return "csv"


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class DebitResolver:
    """Finds our accounts by id or IBAN (cached) and keeps a file to its submitter's.

    A line may debit only an account of the customer the submitter submits for, and
    never one of the bank's own. An account of another customer, one of the bank's
    and one that does not exist are refused alike (``not_owner``), so a file cannot
    tell which accounts exist.
    """

    def __init__(self, conn: psycopg.Connection[Any], submitter: Submitter) -> None:
        self.conn = conn
        self.submitter = submitter
        self.cache: dict[str, tuple[uuid.UUID, uuid.UUID, str] | None] = {}

    def lookup(self, reference: str) -> tuple[uuid.UUID, uuid.UUID, str] | None:
        key = account_reference_key(reference)
        if key not in self.cache:
            column = "iban" if looks_like_iban(key) else "id::text"
            row = self.conn.execute(
                f"select id, customer_id, type from accounts where {column} = %s",  # noqa: S608
                (key,),
            ).fetchone()
            self.cache[key] = (row[0], row[1], row[2]) if row else None
        return self.cache[key]

    def may_debit(self, reference: str) -> uuid.UUID | None:
        """The account's id when the submitter may debit it, else None."""
        found = self.lookup(reference)
        if found is None:
            return None
        account_id, customer_id, account_type = found
        if customer_id != self.submitter.customer_id or account_type in INTERNAL_TYPES:
            return None
        return account_id

    def debit(self, line: BatchLine) -> tuple[str, str] | LineError:
        """The debit account's id and the requester (``customer:<id>``), as text."""
        if not line.debit_account:
            return LineError(line.line, "debit_account", "missing (give --debtor-account)")
        account_id = self.may_debit(line.debit_account)
        if account_id is None:
            return LineError(
                line.line, "debit_account",
                f"{line.debit_account} is not an account {self.submitter.describe()} may debit",
                code=NOT_OWNER,
            )  # fmt: skip
        return str(account_id), self.submitter.requested_by


def to_request(
    line: BatchLine,
    ids: TransferIds,
    resolver: DebitResolver,
    debtor_account: str | None,
    requested_at: str,
) -> tuple[uuid.UUID, bytes, bytes] | LineError:
    """One line as a serialised ``TransferRequest`` (id, key, value), or why it cannot be.

    Every field is checked here against the limits ``TransferRequest`` declares, and
    the JSON is written directly: at a million lines, building and validating a
    pydantic model per line cost more than everything else together. The tests
    validate what this writes against ``TransferRequest``, which stays the contract.
    """
    if debtor_account:
        line = _with_debtor(line, debtor_account)
    debit = resolver.debit(line)
    if isinstance(debit, LineError):
        return debit
    account_id, requester = debit
    # The amount is read with its currency's exponent: "1.000" KWD is 1000 minor
    # units, "100" JPY is 100, and "1.50" JPY is refused on the amount field.
    try:
        amount_minor = parse_amount(line.amount, line.currency)
    except UnsupportedCurrency as exc:
        return LineError(line.line, "currency", str(exc))
    except DomainError as exc:
        return LineError(line.line, "amount", str(exc))
    too_long = _too_long(line)
    if too_long is not None:
        return LineError(line.line, too_long[0], too_long[1])
    transfer_id = ids(line.key)
    value = orjson.dumps({
        "transfer_id": transfer_id, "source": "batch", "debit_account": account_id,
        "credit_account": line.credit_account, "amount_minor": amount_minor,
        "currency": line.currency, "description": line.description, "category": line.category,
        "tags": line.tags, "reference": line.reference, "requested_at": requested_at,
        "requested_by": requester, "correlation_id": None,
    })  # fmt: skip
    return transfer_id, account_id.encode(), value


def _too_long(line: BatchLine) -> tuple[str, str] | None:
    """The first field over its limit, with the reason; None when all fit."""
    limits = (
        ("credit_account", line.credit_account, ACCOUNT_REFERENCE_MAX),
        ("description", line.description, DESCRIPTION_MAX),
        ("category", line.category or "", CATEGORY_MAX),
        ("reference", line.reference or "", REFERENCE_MAX),
    )
    for name, text, limit in limits:
        if len(text) > limit:
            return name, f"longer than {limit} characters"
        if CONTROL_CHARACTERS.search(text):
            return name, "contains a control character"
    if len(line.tags) > TAGS_MAX:
        return "tags", f"more than {TAGS_MAX} tags"
    if any(len(tag) > TAG_LENGTH_MAX for tag in line.tags):
        return "tags", f"a tag is longer than {TAG_LENGTH_MAX} characters"
    if any(CONTROL_CHARACTERS.search(tag) for tag in line.tags):
        return "tags", "a tag contains a control character"
    return None


def _with_debtor(line: BatchLine, debtor_account: str) -> BatchLine:
    return BatchLine(
        line.line,
        line.key,
        debtor_account,
        line.credit_account,
        line.amount,
        line.currency,
        line.description,
        line.category,
        line.tags,
        line.reference,
    )


def _parse(stream: BinaryIO, fmt: Format) -> Iterator[BatchLine | LineError]:
    if fmt == "pain001":
        check_totals(stream)  # a mismatch refuses the file before anything is produced
        yield from parse_pain001(stream)
    elif fmt == "jsonl":
        yield from parse_jsonl(stream)
    else:
        yield from parse_csv(stream)


#: One transaction of a file as ``batch_lines`` records it: its ordinal among the file's
#: transactions, its line, key, and either the transfer id it was sent as or why it was
#: refused (field, reason, reason code).
LineRecord = tuple[int, int, str | None, uuid.UUID | None, str | None, str | None, str | None]


def ingest(
    settings: Settings,
    path: Path,
    fmt: Format | None = None,
    debtor_account: str | None = None,
    *,
    submitter: Submitter,
    progress: Callable[[int], None] | None = None,
    skip: int = 0,
    keep_ids: bool = False,
    record: Callable[[list[LineRecord]], None] | None = None,
) -> IngestReport:
    """Ingest one file for ``submitter``; a refused file is reported with ``refused``.

    ``progress`` is called with the number of lines done after every acknowledged
    chunk; ``skip`` resumes after that many lines (the inbox watcher's checkpoint).
    ``record`` is given every line's outcome, a chunk at a time, after the chunk's
    requests were acknowledged and before ``progress`` hears of it.
    """
    report = IngestReport(
        str(path), resumed_from=skip, transfers=[] if keep_ids else None,
        refused_lines=[] if keep_ids else None,
    )  # fmt: skip
    try:
        report.format = fmt or detect_format(path)
        report.sha256 = file_digest(path)
    except OSError as exc:
        report.refused = f"cannot read {path}: {exc.strerror}"
        return report
    with path.open("rb") as stream, db_connect(settings, autocommit=True) as conn:
        resolver = DebitResolver(conn, submitter)
        if debtor_account:
            debtor_account = _checked_debtor(debtor_account, resolver, report)
            if debtor_account is None:
                return report
        out = _Out(kafka_producer(settings), settings.topic(TRANSFERS_REQUESTED), progress, record)
        # The same bytes for another customer, or with another debtor account, are
        # other transfers: the ids say whose file it is, not only what it holds.
        ids = TransferIds(f"file:{report.sha256}:{submitter.customer_id}:{debtor_account or ''}")
        # One time for the whole file: it was requested when it was handed in.
        requested_at = datetime.now(UTC).isoformat()
        try:
            for item in _parse(stream, report.format):
                report.lines_read += 1
                if report.lines_read > skip:
                    _one(
                        item, report, out, ids=ids, resolver=resolver,
                        debtor_account=debtor_account, requested_at=requested_at,
                    )  # fmt: skip
        except FileRefused as exc:
            report.refused = str(exc)
            return report
        out.send(report)
    return report


def _checked_debtor(reference: str, resolver: DebitResolver, report: IngestReport) -> str | None:
    """``--debtor-account`` in canonical form, or None with the file refused: it must be an
    account the submitter may debit, or no line could be."""
    try:
        canonical = parse_account_reference(reference)
    except InvalidAccountReference as exc:
        report.refused = f"--debtor-account: {exc}"
        return None
    if resolver.may_debit(canonical) is None:
        report.refused = (
            f"--debtor-account: {reference} is not an account "
            f"{resolver.submitter.describe()} may debit"
        )
        return None
    return canonical


def _one(
    item: BatchLine | LineError,
    report: IngestReport,
    out: _Out,
    *,
    ids: TransferIds,
    resolver: DebitResolver,
    debtor_account: str | None,
    requested_at: str,
) -> None:
    """One transaction: sent (in the next chunk) or refused, and recorded either way."""
    ordinal = report.lines_read
    if isinstance(item, LineError):
        report.add_error(item)
        out.refused(ordinal, item)
    else:
        outcome = to_request(item, ids, resolver, debtor_account, requested_at)
        if isinstance(outcome, LineError):
            error = dataclasses.replace(outcome, key=item.key)
            report.add_error(error)
            out.refused(ordinal, error)
        else:
            transfer_id, key, value = outcome
            out.chunk.append((key, value))
            if out.record is not None:
                out.records.append((ordinal, item.line, item.key, transfer_id, None, None, None))
            if report.transfers is not None:
                report.transfers.append((item.key, transfer_id))
    if len(out.chunk) >= CHUNK or len(out.records) >= CHUNK:
        out.send(report)


@dataclass
class _Out:
    """Where a file's requests go (a chunk at a time), and its lines' records."""

    producer: Any
    topic: str
    progress: Callable[[int], None] | None
    record: Callable[[list[LineRecord]], None] | None
    chunk: list[tuple[bytes, bytes]] = field(default_factory=list)
    records: list[LineRecord] = field(default_factory=list)

    def refused(self, ordinal: int, error: LineError) -> None:
        if self.record is not None:
            self.records.append(
                (ordinal, error.line, error.key, None, error.field, error.reason,
                 error.reason_code)
            )  # fmt: skip

    def send(self, report: IngestReport) -> None:
        """Publish the chunk (acknowledged), then record its lines, then report progress."""
        if self.chunk:
            publish(self.producer, self.topic, self.chunk)
            report.requests_produced += len(self.chunk)
            self.chunk.clear()
        if self.record is not None and self.records:
            self.record(self.records)
            self.records.clear()
        if self.progress is not None:
            self.progress(report.lines_read)
