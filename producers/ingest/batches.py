"""A file handed in as a batch: recorded with its submitter, ingested once.

``submit_batch`` is what the API, the CLI and the inbox watcher call. It records the
file in ``batches`` (migration 0008) before anything is sent, then ingests it (see
``producers.ingest.run``) with every line's outcome written to ``batch_lines`` as
its chunk is acknowledged, and finally records the counts. A byte-identical file
from the same submitter for the same customer is answered as a duplicate of the
batch that ingested it (``duplicate_of``), and nothing is sent again; one whose
ingest was cut short (a crash, an outage) is taken up again instead, its transfer
ids being the same. The same ``Idempotency-Key`` with another file is refused.

Statuses are not stored with the batch: ``LINE_OUTCOMES`` reads each line's from the
ledger (``transfers``: posted or failed, whatever any other record says) and, only
for what the ledger does not hold, from ``transfer_status`` (rejected, review).
"""

from __future__ import annotations

import contextlib
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import psycopg

from bankflow.bootstrap import db_connect
from bankflow.idempotency import IdempotencyKeyReused
from bankflow.settings import Settings
from producers.ingest.pain001 import message_id
from producers.ingest.run import (
    ERRORS_LISTED_MAX,
    Format,
    IngestReport,
    LineRecord,
    detect_format,
    file_digest,
    ingest,
)
from producers.ingest.submitters import Submitter
from schemas.batches import BatchStatus

Channel = Literal["api", "cli", "inbox"]
#: Characters of a file's name kept with its batch.
FILE_NAME_MAX: Final = 255

BATCH_COLUMNS: Final = (
    "id, submitted_by, customer_id, on_behalf_of, channel, format, digest, file_name, "
    "original_message_id, status, refused_reason, lines_read, requests_produced, "
    "lines_rejected, created_at"
)
#: Every line sent as a transfer, in file order, with its outcome: the ledger's when it
#: has one, else a rejection or a hold, else pending. Parameter: the batch id.
LINE_OUTCOMES: Final = """
select l.key, l.transfer_id, l.line,
       coalesce(t.status,
                case when s.status in ('rejected', 'review') then s.status end,
                'pending') as status,
       case when t.id is not null then t.reason
            when s.status in ('rejected', 'review')
            then nullif(array_to_string(s.reasons, ','), '') end as reason
from batch_lines l
left join transfers t on t.id = l.transfer_id
left join transfer_status s on s.transfer_id = l.transfer_id
where l.batch_id = %s and l.transfer_id is not null
order by l.ordinal
"""
#: Lines refused at the edge (nothing of them sent), in file order; parameters: the
#: batch id and how many at most.
REFUSED_LINES: Final = """
select line, field, reason, code, key from batch_lines
where batch_id = %s and code is not null order by ordinal limit %s
"""


@dataclass(frozen=True)
class Batch:
    id: uuid.UUID
    submitted_by: uuid.UUID
    customer_id: uuid.UUID
    on_behalf_of: uuid.UUID | None
    channel: Channel
    format: Format
    digest: str
    file_name: str
    original_message_id: str | None
    status: BatchStatus
    refused_reason: str | None
    lines_read: int
    requests_produced: int
    lines_rejected: int
    created_at: Any


@dataclass
class Submitted:
    """What came of handing a file in: its batch, and the ingest's report when it ran."""

    batch: Batch
    report: IngestReport
    #: The earlier batch this file is a byte-identical copy of; nothing was sent now.
    duplicate_of: uuid.UUID | None = None


def submit_batch(
    settings: Settings,
    path: Path,
    submitter: Submitter,
    *,
    channel: Channel,
    fmt: Format | None = None,
    debtor_account: str | None = None,
    idempotency_key: str | None = None,
    file_name: str | None = None,
    progress: Callable[[int], None] | None = None,
    skip: int = 0,
    keep_ids: bool = False,
) -> Submitted:
    """Record ``path`` as a batch of ``submitter`` and ingest it, once.

    Raises ``IdempotencyKeyReused`` when the key named another file; ``OSError`` when
    the file cannot be read; transient failures of Kafka or PostgreSQL as they come
    (the batch stays ``ingesting`` and the next submission takes it up).
    """
    digest = file_digest(path)
    fmt = fmt or detect_format(path)
    with db_connect(settings, autocommit=True) as conn:
        batch_id = _claim(
            conn, submitter, channel=channel, fmt=fmt, digest=digest,
            idempotency_key=idempotency_key, file_name=file_name or path.name,
            debtor_account=debtor_account,
        )  # fmt: skip
        with _locked(conn, batch_id):
            batch = get_batch(conn, batch_id)
            assert batch is not None  # noqa: S101 - claimed above, batches are never deleted
            if batch.status != "ingesting":
                duplicate = _report_of(path, batch)
                duplicate.batch_id = duplicate.duplicate_of = batch.id
                duplicate.submitted_by = submitter.describe()
                return Submitted(batch, duplicate, duplicate_of=batch.id)
            conn.execute(
                "delete from batch_lines where batch_id = %s and ordinal > %s", (batch_id, skip)
            )
            report = ingest(
                settings, path, fmt, debtor_account, submitter=submitter, progress=progress,
                skip=skip, keep_ids=keep_ids, record=_recorder(conn, batch_id),
            )  # fmt: skip
            report.batch_id, report.submitted_by = batch_id, submitter.describe()
            _finish(conn, batch_id, report, _original_message_id(path, fmt, report))
            batch = get_batch(conn, batch_id)
            assert batch is not None  # noqa: S101
    return Submitted(batch, report)


def _claim(
    conn: psycopg.Connection[Any], submitter: Submitter, *, channel: Channel, fmt: Format,
    digest: str, idempotency_key: str | None, file_name: str, debtor_account: str | None,
) -> uuid.UUID:  # fmt: skip
    """The batch this file is: the one its key or its bytes name already, or a new one."""
    for _ in range(3):  # bounded: a concurrent twin's row appears between two attempts
        found = _existing(conn, submitter, digest, idempotency_key, debtor_account)
        if found is not None:
            return found
        row = conn.execute(
            "insert into batches (id, submitted_by, submitter_role, customer_id, on_behalf_of,"
            " channel, format, digest, idempotency_key, file_name, debtor_account)"
            " values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " on conflict do nothing returning id",
            (uuid.uuid4(), submitter.user_id, submitter.role, submitter.customer_id,
             submitter.on_behalf_of, channel, fmt, digest, idempotency_key,
             file_name[:FILE_NAME_MAX], debtor_account),
        ).fetchone()  # fmt: skip
        if row is not None:
            claimed: uuid.UUID = row[0]
            return claimed
    raise RuntimeError("a batch could be neither found nor recorded")  # pragma: no cover


def _existing(
    conn: psycopg.Connection[Any],
    submitter: Submitter,
    digest: str,
    idempotency_key: str | None,
    debtor_account: str | None,
) -> uuid.UUID | None:
    if idempotency_key is not None:
        row = conn.execute(
            "select id, digest from batches where submitted_by = %s and idempotency_key = %s",
            (submitter.user_id, idempotency_key),
        ).fetchone()
        if row is not None:
            if row[1] != digest:
                raise IdempotencyKeyReused(
                    "this Idempotency-Key was already used for another file; use a new key "
                    "for a new file"
                )
            found: uuid.UUID = row[0]
            return found
    row = conn.execute(
        "select id from batches where submitted_by = %s and customer_id = %s and digest = %s"
        " and debtor_account is not distinct from %s and status <> 'refused'",
        (submitter.user_id, submitter.customer_id, digest, debtor_account),
    ).fetchone()
    return row[0] if row is not None else None


@contextlib.contextmanager
def _locked(conn: psycopg.Connection[Any], batch_id: uuid.UUID) -> Iterator[None]:
    """One ingest of a batch at a time: a twin waits, then finds it ingested."""
    key = _lock_key(batch_id)
    conn.execute("select pg_advisory_lock(%s)", (key,))
    try:
        yield
    finally:
        with contextlib.suppress(psycopg.Error):  # a lost connection releases it anyway
            conn.execute("select pg_advisory_unlock(%s)", (key,))


def _lock_key(batch_id: uuid.UUID) -> int:
    return int.from_bytes(batch_id.bytes[:8], "big", signed=True)


def _recorder(
    conn: psycopg.Connection[Any], batch_id: uuid.UUID
) -> Callable[[list[LineRecord]], None]:
    def record(lines: list[LineRecord]) -> None:
        with conn.cursor().copy(
            "copy batch_lines (batch_id, ordinal, line, key, transfer_id, field, reason, code)"
            " from stdin"
        ) as copy:
            for line in lines:
                copy.write_row((batch_id, *line))

    return record


def _finish(
    conn: psycopg.Connection[Any], batch_id: uuid.UUID, report: IngestReport, original: str | None
) -> None:
    """The batch's outcome, counted from its lines (a run cut short and taken up again
    sent part of them the first time)."""
    conn.execute(
        "update batches set status = %s, refused_reason = %s, lines_read = %s,"
        " requests_produced = (select count(*) from batch_lines"
        "                      where batch_id = %s and transfer_id is not null),"
        " lines_rejected = (select count(*) from batch_lines"
        "                   where batch_id = %s and code is not null),"
        " original_message_id = %s, updated_at = now() where id = %s",
        ("refused" if report.refused else "ingested", report.refused, report.lines_read,
         batch_id, batch_id, original, batch_id),
    )  # fmt: skip


def _original_message_id(path: Path, fmt: Format, report: IngestReport) -> str | None:
    if fmt != "pain001" or report.refused:
        return None
    with path.open("rb") as stream:
        return message_id(stream)


def _report_of(path: Path, batch: Batch) -> IngestReport:
    """The report of a batch ingested before (nothing was sent this time)."""
    return IngestReport(
        str(path), format=batch.format, sha256=batch.digest, lines_read=batch.lines_read,
        error_count=batch.lines_rejected, refused=batch.refused_reason,
    )  # fmt: skip


def get_batch(conn: psycopg.Connection[Any], batch_id: uuid.UUID) -> Batch | None:
    row = conn.execute(
        f"select {BATCH_COLUMNS} from batches where id = %s",  # noqa: S608 - constant columns
        (batch_id,),
    ).fetchone()
    return Batch(*row) if row is not None else None


def batch_outcomes(
    conn: psycopg.Connection[Any], batch_id: uuid.UUID
) -> tuple[list[tuple[str, uuid.UUID]], dict[uuid.UUID, tuple[str, str | None]]]:
    """The batch's (key, transfer id) in file order, and each transfer's outcome now."""
    rows = conn.execute(LINE_OUTCOMES, (batch_id,)).fetchall()
    return [(r[0], r[1]) for r in rows], {r[1]: (r[3], r[4]) for r in rows}


def refused_lines(conn: psycopg.Connection[Any], batch_id: uuid.UUID) -> list[tuple[str, str]]:
    """(key, reason code) of the lines refused at the edge that were read that far."""
    rows = conn.execute(REFUSED_LINES, (batch_id, 2**31 - 1)).fetchall()
    return [(r[4], r[3]) for r in rows if r[4] is not None]


def status_counts(outcomes: list[tuple[str, str | None]], refused: int) -> dict[str, Any]:
    """Lines per status (``refused``: at the edge) and outcomes per reason."""
    statuses = Counter(status for status, _ in outcomes)
    if refused:
        statuses["refused"] = refused
    reasons = Counter(reason for _, reason in outcomes if reason)
    return {"statuses": dict(statuses), "reasons": dict(reasons)}


__all__ = [
    "ERRORS_LISTED_MAX",
    "LINE_OUTCOMES",
    "REFUSED_LINES",
    "Batch",
    "Submitted",
    "batch_outcomes",
    "get_batch",
    "refused_lines",
    "status_counts",
    "submit_batch",
]
