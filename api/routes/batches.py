"""``/v1/batches``: a batch file handed in over HTTP by a signed-in customer.

``POST`` takes the file as the body (``text/csv``, ``application/x-ndjson``, or
``application/xml`` for a pain.001) with an ``Idempotency-Key``, records it as a
batch of the caller and ingests it as the CLI and the inbox watcher do
(``producers.ingest.batches``): a line whose debit account is not the caller's is
refused (``not_owner``) and nothing of it is sent. It answers ``202`` once every
good line's request was acknowledged by the broker; the same file again (whatever
the key) answers ``200`` with ``duplicate_of``, and the same key with another file
``422``. The body is bounded by ``BANKFLOW_API_BODY_MAX_BYTES`` (413 beyond it);
larger files go through the inbox or the CLI.

``GET /v1/batches/{id}`` counts its lines per status, the ledger's first, and lists
the lines refused at the edge; ``GET /v1/batches/{id}/report`` is the pain.002 of a
pain.001 batch. Only the submitter and staff see a batch; anyone else gets 404.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Final

import anyio.to_thread
from fastapi import APIRouter, Header, Request, Response

from api.deps import AnyUser, Context, CurrentUser, DbPool, RequireRole
from api.errors import ApiError, Conflict, NotFound, ServiceUnavailable
from api.intake import IdempotencyConflict
from api.problems import problem_responses
from bankflow.errors import BankflowError
from bankflow.idempotency import IdempotencyKeyReused
from bankflow.settings import Settings
from producers.ingest.batches import (
    BATCH_COLUMNS,
    ERRORS_LISTED_MAX,
    LINE_OUTCOMES,
    REFUSED_LINES,
    Batch,
    Submitted,
    status_counts,
    submit_batch,
)
from producers.ingest.outcomes import pain002
from producers.ingest.run import Format
from producers.ingest.submitters import customer_submitter
from schemas.batches import BatchAccepted, BatchLineError, BatchOut

router = APIRouter(tags=["batches"])

#: The media types a batch file may be sent as, and the format each names.
MEDIA_TYPES: Final[dict[str, Format]] = {
    "text/csv": "csv",
    "application/x-ndjson": "jsonl",
    "application/jsonl": "jsonl",
    "application/xml": "pain001",
    "text/xml": "pain001",
}
#: Batches ingested at once by one API process: each parses its file on a worker
#: thread with its own PostgreSQL connection and Kafka producer, and two keep the
#: event loop's threads (and two cores) free for everything else.
BATCHES_AT_ONCE_MAX: Final = 2

IdempotencyKey = Annotated[
    str,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=128,
        pattern=r"^[\x21-\x7e]+$",
        description="Any unique text per file (a UUID is good); a retry sends the same.",
    ),
]
#: What each media type's body looks like, for the OpenAPI document.
_EXAMPLES: Final[dict[str, str]] = {
    "csv": "debit_account,credit_account,amount,currency,description\n"
    "DE89370400440532013000,DE21500500009876543210,12.50,EUR,invoice 17\n",
    "jsonl": '{"debit_account": "DE89370400440532013000", "credit_account": '
    '"DE21500500009876543210", "amount": "12.50", "currency": "EUR"}\n',
    "pain001": '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<Document xmlns="urn:iso:std:iso:20022:tech:xsd:pain.001.001.03">'
    "<CstmrCdtTrfInitn>...</CstmrCdtTrfInitn></Document>\n",
}


class UnsupportedBatchType(ApiError):
    status = 415
    slug = "unsupported-media-type"
    title = "Unsupported batch file type"


class BatchRefused(ApiError):
    status = 422
    slug = "batch-refused"
    title = "Batch file refused"


class NoStatusReport(Conflict):
    slug = "no-status-report"
    title = "No status report for this batch"


@router.post(
    "/batches",
    status_code=202,
    summary="Hand in a batch file (CSV, JSON Lines or pain.001) of your payments",
    dependencies=[RequireRole("customer")],
    responses={200: {"model": BatchAccepted}, **problem_responses(401, 403, 413, 415, 503)},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                media: {"schema": {"type": "string", "format": "binary"}, "example": _EXAMPLES[f]}
                for media, f in MEDIA_TYPES.items()
            },
        }
    },
)
async def submit(
    request: Request,
    user: CurrentUser,
    ctx: Context,
    pool: DbPool,
    response: Response,
    idempotency_key: IdempotencyKey,
) -> BatchAccepted:
    fmt = _format(request.headers.get("content-type", ""))
    body = await request.body()  # bounded by the API's body size limit (413 beyond)
    async with pool.connection() as db:
        row = await (
            await db.execute("select email from users where id = %s", (user.id,))
        ).fetchone()
    if row is None or user.customer_id is None:
        raise NotFound("no such user")
    submitter = customer_submitter(user.id, row[0], user.customer_id)

    def run() -> Submitted:
        with tempfile.TemporaryDirectory(prefix="bankflow-batch-") as folder:
            path = Path(folder) / f"batch.{fmt}"
            path.write_bytes(body)
            return submit_batch(
                ctx.settings, path, submitter, channel="api", fmt=fmt,
                idempotency_key=idempotency_key, file_name="",
            )  # fmt: skip

    submitted = await _in_thread(request, ctx.settings, run)
    report = submitted.report
    if report.refused:
        raise BatchRefused(report.refused, batch_id=str(submitted.batch.id))
    if submitted.duplicate_of is not None:
        response.status_code = 200
    return BatchAccepted(
        id=submitted.batch.id, status=submitted.batch.status, format=fmt,
        lines_read=report.lines_read, requests_produced=report.requests_produced,
        lines_rejected=report.error_count, duplicate_of=submitted.duplicate_of,
        errors=[BatchLineError.model_validate(e.as_dict()) for e in report.errors],
    )  # fmt: skip


@router.get(
    "/batches/{batch_id}",
    summary="A batch: its lines counted per status, and the lines refused",
    responses=problem_responses(401, 403, 404),
)
async def get_batch(batch_id: uuid.UUID, user: AnyUser, pool: DbPool) -> BatchOut:
    async with pool.connection() as db:
        batch = await _visible_batch(db, batch_id, user)
        outcomes = await (await db.execute(LINE_OUTCOMES, (batch_id,))).fetchall()
        refused = await (await db.execute(REFUSED_LINES, (batch_id, ERRORS_LISTED_MAX))).fetchall()
    counts = status_counts([(r[3], r[4]) for r in outcomes], batch.lines_rejected)
    return BatchOut(
        id=batch.id, status=batch.status, format=batch.format,
        file_name=batch.file_name, channel=batch.channel,
        on_behalf_of=batch.on_behalf_of, submitted_at=batch.created_at,
        refused_reason=batch.refused_reason, lines_read=batch.lines_read,
        requests_produced=batch.requests_produced, lines_rejected=batch.lines_rejected,
        statuses=counts["statuses"], reasons=counts["reasons"],
        errors=[BatchLineError(line=r[0], field=r[1], reason=r[2], code=r[3]) for r in refused],
    )  # fmt: skip


@router.get(
    "/batches/{batch_id}/report",
    summary="The pain.002 status report of a pain.001 batch",
    responses={
        200: {"content": {"application/xml": {}}, "description": "A pain.002.001.03 document"},
        **problem_responses(401, 403, 404, 409),
    },
    response_class=Response,
)
async def get_report(batch_id: uuid.UUID, user: AnyUser, pool: DbPool) -> Response:
    async with pool.connection() as db:
        batch = await _visible_batch(db, batch_id, user)
        if batch.format != "pain001":
            raise NoStatusReport(f"batch {batch_id} is a {batch.format} file, not a pain.001")
        if batch.status != "ingested":
            raise NoStatusReport(f"batch {batch_id} is {batch.status}")
        outcomes = await (await db.execute(LINE_OUTCOMES, (batch_id,))).fetchall()
        refused = await (await db.execute(REFUSED_LINES, (batch_id, 2**31 - 1))).fetchall()
    document = pain002(
        batch.original_message_id or "",
        [(r[0], r[1]) for r in outcomes],
        {r[1]: (r[3], r[4]) for r in outcomes},
        [(r[4], r[3]) for r in refused if r[4] is not None],
    )
    return Response(document, media_type="application/xml")


# ------------------------------------------------------------------ helpers


def _format(content_type: str) -> Format:
    media_type = content_type.split(";", 1)[0].strip().lower()
    fmt = MEDIA_TYPES.get(media_type)
    if fmt is None:
        raise UnsupportedBatchType(
            f"a batch file is sent as one of {', '.join(MEDIA_TYPES)}, "
            f"not {media_type or 'no Content-Type'}"
        )
    return fmt


async def _in_thread(
    request: Request, settings: Settings, run: Callable[[], Submitted]
) -> Submitted:
    """``run`` on a worker thread (the ingest blocks), at most ``BATCHES_AT_ONCE_MAX`` at once."""
    state = request.app.state
    if getattr(state, "batch_slots", None) is None:
        state.batch_slots = anyio.CapacityLimiter(BATCHES_AT_ONCE_MAX)
    try:
        return await anyio.to_thread.run_sync(run, limiter=state.batch_slots)
    except IdempotencyKeyReused as exc:
        raise IdempotencyConflict(str(exc)) from exc
    except BankflowError as exc:
        if exc.transient:
            raise ServiceUnavailable(
                "Kafka or PostgreSQL did not answer; send the file again with the same "
                "Idempotency-Key",
                headers={"Retry-After": "5"},
            ) from exc
        raise


async def _visible_batch(db: Any, batch_id: uuid.UUID, user: Any) -> Batch:
    """The batch, if the caller submitted it or is staff; 404 otherwise, as for none."""
    row = await (
        await db.execute(
            f"select {BATCH_COLUMNS} from batches where id = %s",
            (batch_id,),
        )
    ).fetchone()
    batch = Batch(*row) if row is not None else None
    if batch is None or (not user.is_staff and batch.submitted_by != user.id):
        raise NotFound(f"no batch {batch_id}")
    return batch
