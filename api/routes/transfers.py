"""``/v1/transfers``, ``/v1/deposits``, ``/v1/withdrawals``: money moves, exactly once per key.

``POST`` answers ``202`` with the transfer id and status ``requested`` once the
broker acknowledged the request; the pipeline decides and posts it. Status comes
from PostgreSQL (written by the tracker from the outcome topics); the API never
reads Kafka to answer. ``Prefer: wait=N`` (N up to 10 seconds) waits for the final
status and answers ``200`` with it when it arrives in time.
"""

from __future__ import annotations

import asyncio
import base64
import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response

from api import intake
from api.deps import AuthUser, Context, CurrentUser, DbPool, RequireRole
from api.errors import ApiError, NotFound
from api.problems import problem_responses
from bankflow.domain.money import format_amount
from schemas.api_transfers import (
    CashIn,
    StatusChange,
    TransferAccepted,
    TransferIn,
    TransferOut,
    TransferPage,
)
from schemas.transfers import TransferRequest, TransferSource

router = APIRouter(tags=["transfers"])

#: A page of transfers is at most this long.
PAGE_SIZE_MAX = 100
#: ``Prefer: wait=N`` is honoured up to this many seconds.
WAIT_MAX_S = 10
WAIT_POLL_S = 0.1
TERMINAL = frozenset({"posted", "rejected", "failed"})

IdempotencyKey = Annotated[
    str,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=128,
        pattern=r"^[\x21-\x7e]+$",
        description="Any unique text per transfer (a UUID is good); a retry sends the same.",
    ),
]
Prefer = Annotated[
    str | None,
    Header(description="`wait=N`: wait up to N seconds (at most 10) for the final status."),
]
CorrelationId = Annotated[
    str | None,
    Header(alias="X-Correlation-ID", max_length=128, pattern=r"^[\x21-\x7e]+$"),
]


class UnprocessableTransfer(ApiError):
    status = 422
    slug = "unprocessable-transfer"
    title = "Transfer cannot be processed"


@router.post(
    "/transfers",
    status_code=202,
    summary="Send money from one of your accounts",
    dependencies=[RequireRole("customer", "teller", "admin")],
    responses={200: {"model": TransferAccepted}, **problem_responses(401, 403, 404, 503)},
)
async def create_transfer(
    body: TransferIn,
    user: CurrentUser,
    ctx: Context,
    pool: DbPool,
    response: Response,
    idempotency_key: IdempotencyKey,
    prefer: Prefer = None,
    correlation_id: CorrelationId = None,
) -> TransferAccepted:
    if user.role == "customer":
        await _require_own_account(ctx, pool, user, body.debit_account)
    request = _request(
        user, idempotency_key, correlation_id, debit=str(body.debit_account),
        credit=body.credit_account, body=body, category=body.category, tags=body.tags,
    )  # fmt: skip
    return await _submit(
        ctx, pool, user, idempotency_key, kind="transfer", body=body, request=request,
        response=response, prefer=prefer,
    )  # fmt: skip


@router.post(
    "/deposits",
    status_code=202,
    summary="Cash paid in at a teller's desk (teller)",
    dependencies=[RequireRole("teller")],
    responses={200: {"model": TransferAccepted}, **problem_responses(401, 403, 422, 503)},
)
async def deposit(
    body: CashIn,
    user: CurrentUser,
    ctx: Context,
    pool: DbPool,
    response: Response,
    idempotency_key: IdempotencyKey,
    prefer: Prefer = None,
    correlation_id: CorrelationId = None,
) -> TransferAccepted:
    return await _cash(
        "deposit", body, user, ctx, pool, response=response, key=idempotency_key,
        prefer=prefer, correlation_id=correlation_id,
    )  # fmt: skip


@router.post(
    "/withdrawals",
    status_code=202,
    summary="Cash paid out at a teller's desk (teller)",
    dependencies=[RequireRole("teller")],
    responses={200: {"model": TransferAccepted}, **problem_responses(401, 403, 422, 503)},
)
async def withdraw(
    body: CashIn,
    user: CurrentUser,
    ctx: Context,
    pool: DbPool,
    response: Response,
    idempotency_key: IdempotencyKey,
    prefer: Prefer = None,
    correlation_id: CorrelationId = None,
) -> TransferAccepted:
    return await _cash(
        "withdrawal", body, user, ctx, pool, response=response, key=idempotency_key,
        prefer=prefer, correlation_id=correlation_id,
    )  # fmt: skip


@router.get(
    "/transfers/{transfer_id}",
    summary="A transfer's status and history",
    dependencies=[RequireRole("customer", "teller", "reviewer", "auditor", "admin")],
    responses=problem_responses(401, 403, 404),
)
async def get_transfer(
    transfer_id: uuid.UUID, user: CurrentUser, ctx: Context, pool: DbPool
) -> TransferOut:
    async with pool.connection() as db:
        rows = await (await db.execute(
            f"select {_COLUMNS} from transfer_status where transfer_id = %s", (transfer_id,)
        )).fetchall()  # fmt: skip
        found = await _with_history(db, rows)
    if found and _may_see(user, found[0][1]):
        return found[0][0]
    remembered = await intake.recent(ctx, transfer_id)
    if remembered and _may_see(user, remembered["requested_by"]):
        return TransferOut.model_validate({**remembered["out"], "history": []})
    raise NotFound(f"no transfer {transfer_id}")


@router.get(
    "/transfers",
    summary="Your transfers, newest first",
    dependencies=[RequireRole("customer", "teller", "admin")],
    responses=problem_responses(401, 403),
)
async def list_transfers(
    user: CurrentUser,
    pool: DbPool,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_SIZE_MAX)] = 20,
) -> TransferPage:
    after = _decode_cursor(cursor) if cursor else (datetime.max.replace(tzinfo=UTC), _MAX_ID)
    async with pool.connection() as db:
        rows = await (await db.execute(
            f"select {_COLUMNS} from transfer_status where requested_by = %s "
            "and (requested_at, transfer_id) < (%s, %s) "
            "order by requested_at desc, transfer_id desc limit %s",
            (_requester(user), after[0], after[1], limit + 1),
        )).fetchall()  # fmt: skip
        page = await _with_history(db, rows[:limit])
    items = [out for out, _ in page]
    more = len(rows) > limit
    return TransferPage(
        items=items,
        next=_encode_cursor(items[-1].requested_at, items[-1].id) if more and items else None,
    )


# ------------------------------------------------------------------ helpers

_COLUMNS = (
    "transfer_id, status, reasons, debit_account, credit_account, amount_minor, currency, "
    "description, category, tags, requested_at, ruleset_version, risk_score, requested_by"
)
_MAX_ID = uuid.UUID(int=(1 << 128) - 1)
_WAIT = re.compile(r"(?:^|[,;\s])wait=(\d+)")


def _requester(user: AuthUser) -> str:
    """``requested_by`` as the validator reads it: customers by customer id, staff by user."""
    if user.role == "customer" and user.customer_id is not None:
        return f"customer:{user.customer_id}"
    return user.actor


def _may_see(user: AuthUser, requested_by: str | None) -> bool:
    # Staff see every transfer; a customer only their own, and another customer's
    # transfer answers 404 exactly as one that does not exist.
    return user.role != "customer" or requested_by == _requester(user)


def _request(
    user: AuthUser,
    idempotency_key: str,
    correlation_id: str | None,
    *,
    debit: str,
    credit: str,
    body: TransferIn | CashIn,
    category: str | None = None,
    tags: list[str] | None = None,
) -> TransferRequest:
    return TransferRequest(
        transfer_id=intake.transfer_id(user.id, idempotency_key), source=TransferSource.API,
        debit_account=debit, credit_account=credit, amount_minor=body.amount_minor(),
        currency=body.currency, description=body.description, category=category,
        tags=tags or [], requested_by=_requester(user),
        correlation_id=correlation_id or uuid.uuid4().hex,
    )  # fmt: skip


async def _submit(
    ctx: Any, pool: Any, user: AuthUser, idempotency_key: str, *, kind: str,
    body: TransferIn | CashIn, request: TransferRequest, response: Response,
    prefer: str | None,
) -> TransferAccepted:  # fmt: skip
    out = _out_of_request(request)
    await intake.submit(
        ctx, pool, user_id=user.id, idempotency_key=idempotency_key,
        print_=intake.fingerprint(kind, body.model_dump(mode="json")), request=request,
        summary={"requested_by": request.requested_by, "out": out},
    )  # fmt: skip
    wait_s = _wait_s(prefer)
    if wait_s:
        response.headers["Preference-Applied"] = f"wait={wait_s}"
        final = await _final_status(pool, request.transfer_id, wait_s)
        if final is not None:
            response.status_code = 200
            return TransferAccepted(id=request.transfer_id, status=final[0], reasons=final[1])
    return TransferAccepted(id=request.transfer_id, status="requested")


def _wait_s(prefer: str | None) -> int:
    match = _WAIT.search(prefer or "")
    return min(int(match.group(1)), WAIT_MAX_S) if match else 0


async def _final_status(pool: Any, transfer_id: uuid.UUID, wait_s: int) -> Any:
    deadline = asyncio.get_running_loop().time() + wait_s
    while True:
        async with pool.connection() as db:
            row = await (await db.execute(
                "select status, reasons from transfer_status where transfer_id = %s",
                (transfer_id,),
            )).fetchone()  # fmt: skip
        if row is not None and row[0] in TERMINAL:
            return row
        if asyncio.get_running_loop().time() >= deadline:
            return None
        await asyncio.sleep(WAIT_POLL_S)


#: Account owners the API keeps in memory (about 100 bytes each).
ACCOUNT_OWNERS_MAX = 100_000


async def _require_own_account(ctx: Any, pool: Any, user: AuthUser, account: uuid.UUID) -> None:
    """404 unless the customer owns the account (another's answers as one that does not exist)."""
    owners: dict[uuid.UUID, uuid.UUID] = ctx.account_owners
    owner = owners.get(account)
    if owner is None:
        async with pool.connection() as db:
            row = await (await db.execute(
                "select customer_id from accounts where id = %s", (account,)
            )).fetchone()  # fmt: skip
        if row is not None:
            owner = owners[account] = row[0]
            if len(owners) > ACCOUNT_OWNERS_MAX:
                del owners[next(iter(owners))]  # dicts keep insertion order: the oldest
    if owner is None or owner != user.customer_id:
        raise NotFound(f"no account {account}")


async def _cash(
    kind: str, body: CashIn, user: AuthUser, ctx: Any, pool: Any, *, response: Response,
    key: str, prefer: str | None, correlation_id: str | None,
) -> TransferAccepted:  # fmt: skip
    """A deposit (from the bank's cash account) or a withdrawal (to it), like any transfer."""
    cash, account = str(await _cash_account(pool, body.currency)), str(body.account_id)
    debit, credit = (cash, account) if kind == "deposit" else (account, cash)
    request = _request(user, key, correlation_id, debit=debit, credit=credit, body=body)
    return await _submit(
        ctx, pool, user, key, kind=kind, body=body, request=request, response=response,
        prefer=prefer,
    )  # fmt: skip


async def _cash_account(pool: Any, currency: str) -> uuid.UUID:
    async with pool.connection() as db:
        row = await (await db.execute(
            "select id from accounts where type = 'cash' and currency = %s", (currency,)
        )).fetchone()  # fmt: skip
    if row is None:
        raise UnprocessableTransfer(f"the bank holds no {currency} cash", field="currency")
    cash: uuid.UUID = row[0]
    return cash


def _out_of_request(request: TransferRequest) -> dict[str, Any]:
    return {
        "id": str(request.transfer_id), "status": "requested", "reasons": [],
        "debit_account": request.debit_account, "credit_account": request.credit_account,
        "amount": format_amount(request.amount_minor, request.currency),
        "currency": request.currency, "description": request.description,
        "category": request.category, "tags": request.tags,
        "requested_at": request.requested_at.isoformat(), "ruleset_version": None,
        "risk_score": None,
    }  # fmt: skip


async def _with_history(db: Any, rows: list[Any]) -> list[tuple[TransferOut, str | None]]:
    if not rows:
        return []
    history = await (await db.execute(
        "select transfer_id, status, reasons, at from transfer_status_history "
        "where transfer_id = any(%s) order by at, transfer_status_rank(status)",
        ([r[0] for r in rows],),
    )).fetchall()  # fmt: skip
    changes: dict[uuid.UUID, list[StatusChange]] = {}
    for tid, status, reasons, at in history:
        changes.setdefault(tid, []).append(StatusChange(status=status, reasons=reasons, at=at))
    return [
        (
            TransferOut(
                id=r[0], status=r[1], reasons=r[2], debit_account=r[3], credit_account=r[4],
                amount=format_amount(r[5], r[6].strip()), currency=r[6].strip(),
                description=r[7], category=r[8], tags=r[9], requested_at=r[10],
                ruleset_version=r[11], risk_score=r[12], history=changes.get(r[0], []),
            ),
            r[13],
        )
        for r in rows
    ]  # fmt: skip


def _encode_cursor(at: datetime, transfer_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(f"{at.isoformat()}|{transfer_id}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        at, tid = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        return datetime.fromisoformat(at), uuid.UUID(tid)
    except ValueError as exc:
        raise BadCursor("cursor is not one this API gave out", field="cursor") from exc


class BadCursor(ApiError):
    status = 400
    slug = "bad-cursor"
    title = "Bad cursor"
