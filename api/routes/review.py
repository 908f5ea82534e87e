"""``/v1/review``: the fraud review queue, worked by reviewers.

Held transfers are listed oldest first with the reasons the rules gave, the score,
and both sides as the bank knows them (account, IBAN, holder's name). A decision
claims the held row and writes its message to the outbox in one transaction
(``bankflow.review``), so it is published exactly once and a second decision, by
anyone, answers 409. A held transfer that reached the ledger (through a copy) is
``superseded``: deciding it answers 409 too. Who decided, and when, is recorded with
the row.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import AppSettings, AuthUser, Db, RequireRole
from api.errors import Conflict, NotFound
from api.problems import problem_responses
from bankflow import logs
from bankflow.domain.money import format_amount
from bankflow.review import (
    CLAIM_SQL,
    DECISION_SQL,
    OUTBOX_SQL,
    SUPERSEDE_ONE_SQL,
    Decision,
    decision_event,
)
from schemas.api_transfers import (
    ReviewDecisionIn,
    ReviewItem,
    ReviewPage,
    ReviewParty,
    ReviewStatus,
)

router = APIRouter(prefix="/review", tags=["review"])
log = logging.getLogger("bankflow.api.review")
Reviewer = Annotated[AuthUser, RequireRole("reviewer")]

PAGE_SIZE_MAX = 200
#: A held row with both sides as the bank knows them: IBAN and the holder's name.
_SELECT = """
select r.transfer_id, r.debit_account_id, r.amount_minor, r.currency, r.risk_score, r.reasons,
       r.ruleset_version, r.held_at, r.status, r.decided_by, r.decided_at,
       da.iban, dc.full_name, r.credit_account_id, ca.iban, cc.full_name
from review_queue r
left join accounts da on da.id = r.debit_account_id
left join customers dc on dc.id = da.customer_id
left join accounts ca on ca.id = r.credit_account_id
left join customers cc on cc.id = ca.customer_id
"""


@router.get("", summary="Transfers held for review (reviewer)",
            responses=problem_responses(401, 403))  # fmt: skip
async def list_held(
    reviewer: Reviewer,
    db: Db,
    status: Annotated[ReviewStatus, Query()] = "held",
    after: Annotated[datetime | None, Query(description="`next` of the previous page.")] = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_SIZE_MAX)] = 50,
) -> ReviewPage:
    """Oldest first: the transfers waiting longest are the ones customers miss most."""
    rows = await (await db.execute(
        f"{_SELECT} where r.status = %s "
        "and r.held_at > coalesce(%s, '-infinity'::timestamptz) order by r.held_at limit %s",
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
        # A held transfer already in the ledger is closed first: the claim then answers 409.
        await db.execute(SUPERSEDE_ONE_SQL, {"transfer_id": transfer_id})
        claimed = await (await db.execute(CLAIM_SQL, {
            "status": decision, "actor": reviewer.actor, "note": note,
            "transfer_id": transfer_id,
        })).fetchone()  # fmt: skip
        if claimed is not None:
            event = decision_event(settings, bytes(claimed[0]), decision, reviewer.actor)
            await db.execute(OUTBOX_SQL, event.params())
            await db.execute(DECISION_SQL, event.decision_params())
        row = await (await db.execute(
            f"{_SELECT} where r.transfer_id = %s",
            (transfer_id,),
        )).fetchone()  # fmt: skip
    if row is None:
        raise NotFound(f"no transfer {transfer_id} in the review queue")
    if claimed is None and row[8] == "superseded":
        raise Conflict(f"transfer {transfer_id} is already in the ledger: nobody decides it")
    if claimed is None:
        raise Conflict(f"transfer {transfer_id} was already decided: {row[8]} by {row[9]}")
    logs.annotate(transfer_id=transfer_id)
    log.info("held transfer %s by review", decision, extra={"decision": decision})
    return _item(row)


def _item(row: tuple) -> ReviewItem:  # type: ignore[type-arg]
    currency = row[3].strip()
    return ReviewItem(
        transfer_id=row[0], debit_account_id=row[1],
        debtor=ReviewParty(account_id=row[1], iban=row[11], name=row[12]),
        beneficiary=ReviewParty(account_id=row[13], iban=row[14], name=row[15]),
        amount=format_amount(row[2], currency),
        currency=currency, risk_score=row[4], reasons=row[5], ruleset_version=row[6],
        held_at=row[7], status=row[8], decided_by=row[9], decided_at=row[10],
    )  # fmt: skip
