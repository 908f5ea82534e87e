"""``/v1/review``: the fraud review queue, worked by reviewers.

Held transfers are listed oldest first with the reasons the rules gave. A decision
claims the held row and writes its message to the outbox in one transaction
(``bankflow.review``), so it is published exactly once and a second decision, by
anyone, answers 409. Who decided, and when, is recorded with the row.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query

from api.deps import AppSettings, AuthUser, Db, RequireRole
from api.errors import Conflict, NotFound
from api.problems import problem_responses
from bankflow import logs
from bankflow.domain.money import format_amount
from bankflow.review import CLAIM_SQL, OUTBOX_SQL, Decision, decision_event
from schemas.api_transfers import ReviewDecisionIn, ReviewItem, ReviewPage

router = APIRouter(prefix="/review", tags=["review"])
log = logging.getLogger("bankflow.api.review")
Reviewer = Annotated[AuthUser, RequireRole("reviewer")]

PAGE_SIZE_MAX = 200
_COLUMNS = (
    "transfer_id, debit_account_id, amount_minor, currency, risk_score, reasons, "
    "ruleset_version, held_at, status, decided_by, decided_at"
)


@router.get("", summary="Transfers held for review (reviewer)",
            responses=problem_responses(401, 403))  # fmt: skip
async def list_held(
    reviewer: Reviewer,
    db: Db,
    status: Annotated[Literal["held", "approved", "rejected", "timed_out"], Query()] = "held",
    after: Annotated[datetime | None, Query(description="`next` of the previous page.")] = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_SIZE_MAX)] = 50,
) -> ReviewPage:
    """Oldest first: the transfers waiting longest are the ones customers miss most."""
    rows = await (await db.execute(
        f"select {_COLUMNS} from review_queue where status = %s "
        "and held_at > coalesce(%s, '-infinity'::timestamptz) order by held_at limit %s",
        (status, after, limit + 1),
    )).fetchall()  # fmt: skip
    items = [_item(row) for row in rows[:limit]]
    more = len(rows) > limit
    return ReviewPage(items=items, next=items[-1].held_at.isoformat() if more else None)


@router.post("/{transfer_id}/approve", summary="Approve a held transfer (reviewer)",
             responses=problem_responses(401, 403, 404, 409))  # fmt: skip
async def approve(
    transfer_id: uuid.UUID, body: ReviewDecisionIn, reviewer: Reviewer, db: Db,
    settings: AppSettings,
) -> ReviewItem:  # fmt: skip
    return await _decide(db, settings, transfer_id, "approved", reviewer=reviewer, note=body.note)


@router.post("/{transfer_id}/reject", summary="Reject a held transfer (reviewer)",
             responses=problem_responses(401, 403, 404, 409))  # fmt: skip
async def reject(
    transfer_id: uuid.UUID, body: ReviewDecisionIn, reviewer: Reviewer, db: Db,
    settings: AppSettings,
) -> ReviewItem:  # fmt: skip
    return await _decide(db, settings, transfer_id, "rejected", reviewer=reviewer, note=body.note)


async def _decide(
    db: Db, settings: AppSettings, transfer_id: uuid.UUID, decision: Decision, *,
    reviewer: AuthUser, note: str | None,
) -> ReviewItem:  # fmt: skip
    async with db.transaction():
        claimed = await (await db.execute(CLAIM_SQL, {
            "status": decision, "actor": reviewer.actor, "note": note,
            "transfer_id": transfer_id,
        })).fetchone()  # fmt: skip
        if claimed is not None:
            event = decision_event(settings, bytes(claimed[0]), decision, reviewer.actor)
            await db.execute(OUTBOX_SQL, event.params())
        row = await (await db.execute(
            f"select {_COLUMNS} from review_queue where transfer_id = %s",
            (transfer_id,),
        )).fetchone()  # fmt: skip
    if row is None:
        raise NotFound(f"no transfer {transfer_id} in the review queue")
    if claimed is None:
        raise Conflict(f"transfer {transfer_id} was already decided: {row[8]} by {row[9]}")
    logs.annotate(transfer_id=transfer_id)
    log.info("held transfer %s by review", decision, extra={"decision": decision})
    return _item(row)


def _item(row: tuple) -> ReviewItem:  # type: ignore[type-arg]
    currency = row[3].strip()
    return ReviewItem(
        transfer_id=row[0], debit_account_id=row[1], amount=format_amount(row[2], currency),
        currency=currency, risk_score=row[4], reasons=row[5], ruleset_version=row[6],
        held_at=row[7], status=row[8], decided_by=row[9], decided_at=row[10],
    )  # fmt: skip
