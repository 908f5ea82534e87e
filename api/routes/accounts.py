"""``/v1/accounts``: open, list, read and change accounts; balances, history and statements.

Who may do what:

- ``POST /v1/accounts``: tellers and admins open an account for a customer (naming
  ``customer_id``); a customer may open their own (leaving ``customer_id`` out), up to
  ``ACCOUNTS_PER_CUSTOMER_MAX`` accounts, as a bank's app lets its users do.
- Reading (``GET``): every role; a customer sees only their own accounts, and another
  customer's account id answers 404 exactly as an unknown one does.
- ``PATCH /v1/accounts/{id}`` (status, overdraft limit): admins only.

Balances are served from the Redis cache (``bankflow.balance_cache``) that the cache
agent keeps current from ``transfers.posted``; on a miss, when Redis does not
answer, or when the entry is older than a version this process has already seen,
they are read from PostgreSQL (and the cache is brought forward). See
docs/architecture.md, "Accounts, balances, history and statements".
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from cachetools import LRUCache
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import RedisError

from api.deps import AdminUser, AnyUser, AuthUser, Context, Db, DbPool, RequireRole
from api.errors import ApiError, Conflict, NotFound
from api.problems import problem_responses
from bankflow import statement_pdf
from bankflow.balance_cache import BalanceCache
from bankflow.domain.balances import BalanceSnapshot
from bankflow.domain.errors import InvalidAmount
from bankflow.domain.history import (
    HistoryFilter,
    InvalidCursor,
    InvalidHistoryQuery,
    decode_cursor,
    next_cursor,
    window_size,
)
from bankflow.domain.money import format_amount, parse_amount
from bankflow.domain.statements import (
    InvalidMonth,
    Statement,
    StatementDoesNotReconcile,
    build_statement,
    month_period,
    statement_csv,
)
from bankflow.ledger import account_store, history
from bankflow.ledger.account_store import AccountRow
from schemas.accounts import (
    AccountChange,
    AccountCreate,
    AccountOut,
    AccountPage,
    BalanceOut,
    EntryOut,
    EntryPage,
    StatementEntryOut,
    StatementOut,
)
from schemas.transfers import CATEGORY_MAX, TAG_LENGTH_MAX

log = logging.getLogger(__name__)

router = APIRouter(prefix="/accounts", tags=["accounts"])

#: A page of accounts or of history holds at most this many items.
PAGE_SIZE_MAX = 200
#: A history request examines at most this many of the account's entries when a filter
#: drops some (a few milliseconds of index and primary-key lookups); a filter that
#: matches rarely gives short pages with a cursor instead of one long scan.
HISTORY_SCAN_MAX = 5000
#: A statement of more entries than this is refused (use the history): a month of
#: 20,000 entries is a 400-page PDF, which takes a core seconds to make.
STATEMENT_ENTRIES_MAX = 20_000
#: Accounts whose last seen version one API process remembers (about 100 bytes each).
SEEN_VERSIONS_MAX = 100_000
#: The response header that says where a balance came from: ``cache`` or ``ledger``.
BALANCE_SOURCE_HEADER = "Bankflow-Balance-Source"
NO_NUL = r"^[^\x00]*$"

AccountOpener = Annotated[AuthUser, RequireRole("customer", "teller", "admin")]


class StatementTooLarge(ApiError):
    status = 422
    slug = "statement-too-large"
    title = "Statement too large"


# ------------------------------------------------------------------ helpers


def _invalid(location: str, field: str, reason: str) -> RequestValidationError:
    """A 422 naming one field, for rules checked here rather than by pydantic."""
    return RequestValidationError(
        [{"loc": (location, field), "msg": reason, "type": "value_error"}]
    )


def _owner(user: AuthUser) -> uuid.UUID | None:
    """Whose accounts the caller may see: a customer's own; None (everyone's) for staff."""
    if user.role != "customer":
        return None
    # A customer token always names its customer; a nil id matches no account.
    return user.customer_id or uuid.UUID(int=0)


async def _account_or_404(db: Any, account_id: uuid.UUID, user: AuthUser) -> AccountRow:
    account = await account_store.get_account(db, account_id, owner=_owner(user))
    if account is None:
        # The same answer for an unknown id and for another customer's account.
        raise NotFound(f"no account {account_id}")
    return account


def _account_out(account: AccountRow) -> AccountOut:
    return AccountOut(
        id=account.id,
        customer_id=account.customer_id,
        iban=account.iban,
        type=account.type,
        currency=account.currency,
        status=account.status,  # type: ignore[arg-type]
        overdraft_limit=format_amount(account.overdraft_limit_minor, account.currency),
        created_at=account.created_at,
        updated_at=account.updated_at,
    )


def encode_account_cursor(account: AccountRow) -> str:
    raw = f"a1|{account.created_at.isoformat()}|{account.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_account_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        version, created_at, account_id = raw.split("|")
        if version != "a1":
            raise ValueError(version)
        return datetime.fromisoformat(created_at), uuid.UUID(account_id)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise _invalid("query", "cursor", "not a cursor this API handed out") from None


class SeenVersions:
    """The highest version of each account this process has answered with or read.

    Bounded (least recently used accounts are forgotten; a look counts as a use). A
    cache entry below it is older than something this process already showed, for
    instance after Redis was unreachable and the balance came from PostgreSQL: it is
    not served.
    """

    def __init__(self, size_max: int) -> None:
        self._versions: LRUCache[uuid.UUID, int] = LRUCache(maxsize=size_max)

    def get(self, account_id: uuid.UUID) -> int:
        return self._versions.get(account_id, -1)

    def observe(self, account_id: uuid.UUID, version: int) -> None:
        # The look marks the account most recently used; storing a newer version
        # does too, and forgets the least recently used account beyond the bound.
        if version > self._versions.get(account_id, -1):
            self._versions[account_id] = version


class BalanceReader:
    """The balance cache and this process's seen versions, kept on ``app.state``."""

    def __init__(self, cache: BalanceCache) -> None:
        self.cache = cache
        self.seen = SeenVersions(SEEN_VERSIONS_MAX)

    async def cached(self, account_id: uuid.UUID) -> tuple[BalanceSnapshot | None, bool]:
        """The cache entry (None on a miss) and whether Redis answered at all."""
        try:
            return await self.cache.load(account_id), True
        except RedisError as exc:
            log.warning("balance cache unavailable, reading PostgreSQL: %r", exc)
        except (ValueError, TypeError, KeyError) as exc:
            log.error("unreadable balance cache entry for %s: %r", account_id, exc)
            return None, True
        return None, False

    async def remember(self, snapshot: BalanceSnapshot, *, redis_up: bool = True) -> None:
        """Note a version read from PostgreSQL, and bring the cache forward to it."""
        self.seen.observe(snapshot.account_id, snapshot.version)
        if not redis_up:
            return
        try:
            await self.cache.store([snapshot])
        except RedisError as exc:
            log.warning("balance cache not updated: %r", exc)


async def _balance_reader(request: Request, ctx: Context) -> BalanceReader:
    reader: BalanceReader | None = getattr(request.app.state, "balance_reader", None)
    if reader is None:
        reader = BalanceReader(BalanceCache(ctx.redis, ctx.settings.redis_prefix))
        request.app.state.balance_reader = reader
    return reader


Balances = Annotated[BalanceReader, Depends(_balance_reader)]


# ------------------------------------------------------------------ accounts


@router.post(
    "",
    status_code=201,
    summary="Open an account (teller, admin; a customer for themselves)",
    responses=problem_responses(401, 403, 404, 409),
)
async def open_account(
    body: AccountCreate, user: AccountOpener, ctx: Context, db: Db, response: Response
) -> AccountOut:
    """A new checking or savings account with its IBAN. Staff name the customer; a
    customer opens one for themselves (another customer's id answers 404)."""
    customer_id = body.customer_id
    if user.role == "customer":
        if customer_id is not None and customer_id != user.customer_id:
            raise NotFound(f"no customer {customer_id}")
        customer_id = _owner(user)
    if customer_id is None:
        raise _invalid("body", "customer_id", "tellers and admins name the customer")
    if body.currency not in ctx.settings.currencies:
        held = ", ".join(ctx.settings.currencies)
        raise _invalid("body", "currency", f"the bank holds accounts in {held}")
    try:
        account = await account_store.open_account(
            db, ctx.settings, customer_id=customer_id, account_type=body.type,
            currency=body.currency,
        )  # fmt: skip
    except account_store.CustomerNotFound as exc:
        raise NotFound(str(exc)) from exc
    except account_store.AccountLimitReached as exc:
        raise Conflict(str(exc)) from exc
    response.headers["Location"] = f"/v1/accounts/{account.id}"
    return _account_out(account)


@router.get("", summary="List accounts", responses=problem_responses(401))
async def list_accounts(
    user: AnyUser,
    db: Db,
    customer_id: Annotated[
        uuid.UUID | None, Query(description="Staff: only this customer's accounts.")
    ] = None,
    cursor: Annotated[
        str | None, Query(max_length=200, description="The `next` of the previous page.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_SIZE_MAX)] = 50,
) -> AccountPage:
    """A customer's own accounts, or for staff every account (or one customer's), in
    the order they were opened."""
    owner = _owner(user)
    if owner is not None and customer_id not in (None, owner):
        return AccountPage(items=[], next=None)  # not theirs to see: nothing, not an error
    after = decode_account_cursor(cursor) if cursor else None
    accounts = await account_store.list_accounts(
        db, customer_id=owner or customer_id, after=after, limit=limit + 1
    )
    page = accounts[:limit]
    more = len(accounts) > limit
    return AccountPage(
        items=[_account_out(a) for a in page],
        next=encode_account_cursor(page[-1]) if more else None,
    )


@router.get("/{account_id}", summary="An account", responses=problem_responses(401, 404))
async def get_account(account_id: uuid.UUID, user: AnyUser, db: Db) -> AccountOut:
    return _account_out(await _account_or_404(db, account_id, user))


@router.patch(
    "/{account_id}",
    summary="Freeze, unfreeze or close an account, or set its overdraft limit (admin)",
    responses=problem_responses(401, 403, 404, 409),
)
async def change_account(
    account_id: uuid.UUID, body: AccountChange, admin: AdminUser, db: Db, balances: Balances
) -> AccountOut:
    """Savings accounts have no overdraft (422); a closed account stays closed, an
    account is closed only at a zero balance, and a limit below what the account
    already uses is refused (409). The bank's own accounts are not changed here."""
    current = await account_store.get_account(db, account_id)
    if current is None:
        raise NotFound(f"no account {account_id}")
    limit_minor = None
    if body.overdraft_limit is not None:
        try:
            limit_minor = parse_amount(body.overdraft_limit, current.currency, allow_zero=True)
        except InvalidAmount as exc:
            raise _invalid("body", "overdraft_limit", str(exc)) from exc
    try:
        account = await account_store.change_account(
            db, account_id, status=body.status, overdraft_limit_minor=limit_minor
        )
    except account_store.SavingsHaveNoOverdraft as exc:
        raise _invalid("body", "overdraft_limit", str(exc)) from exc
    except account_store.AccountChangeRefused as exc:
        raise Conflict(str(exc)) from exc
    if account is None:
        raise NotFound(f"no account {account_id}")
    log.info(
        "%s changed account %s: %s", admin.actor, account_id, body.model_dump(exclude_none=True)
    )
    await balances.remember(account.snapshot())
    return _account_out(account)


# ------------------------------------------------------------------ balances


def _balance_out(snapshot: BalanceSnapshot) -> BalanceOut:
    money = snapshot.currency
    return BalanceOut(
        account_id=snapshot.account_id,
        currency=money,
        posted=format_amount(snapshot.posted_minor, money),
        pending=format_amount(snapshot.pending_minor, money),
        available=format_amount(snapshot.available_minor, money),
        pending_debits=format_amount(snapshot.pending_debit_minor, money),
        pending_credits=format_amount(snapshot.pending_credit_minor, money),
        overdraft_limit=format_amount(snapshot.overdraft_limit_minor, money),
        version=snapshot.version,
    )


@router.get(
    "/{account_id}/balance",
    summary="Posted, pending and available balance",
    responses=problem_responses(401, 404),
)
async def balance(
    account_id: uuid.UUID, user: AnyUser, pool: DbPool, balances: Balances, response: Response
) -> BalanceOut:
    """From the cache when it holds the account at a version at least as new as any
    this API process has shown; otherwise from PostgreSQL. The `Bankflow-Balance-Source`
    header says which (`cache` or `ledger`)."""
    owner = _owner(user)
    snapshot, redis_up = await balances.cached(account_id)
    if snapshot is not None and owner is not None and snapshot.customer_id != owner:
        raise NotFound(f"no account {account_id}")
    source = "cache"
    if snapshot is None or snapshot.version < balances.seen.get(account_id):
        source = "ledger"
        async with pool.connection() as db:
            account = await _account_or_404(db, account_id, user)
        snapshot = account.snapshot()
        await balances.remember(snapshot, redis_up=redis_up)
    else:
        balances.seen.observe(account_id, snapshot.version)
    response.headers[BALANCE_SOURCE_HEADER] = source
    return _balance_out(snapshot)


# ------------------------------------------------------------------ history


class HistoryQuery(BaseModel):
    """Filters and paging of an account's history; amounts in the account's currency."""

    model_config = ConfigDict(populate_by_name=True)

    cursor: str | None = Field(default=None, max_length=64, description="`next` of the last page.")
    limit: int = Field(default=50, ge=1, le=PAGE_SIZE_MAX)
    posted_from: datetime | None = Field(
        default=None, alias="from", description="Entries posted at or after (UTC if no zone)."
    )
    posted_to: datetime | None = Field(
        default=None, alias="to", description="Entries posted before (UTC if no zone)."
    )
    # PostgreSQL text cannot hold NUL: refused here as a 422 rather than failing there.
    category: str | None = Field(
        default=None, min_length=1, max_length=CATEGORY_MAX, pattern=NO_NUL
    )
    tag: str | None = Field(default=None, min_length=1, max_length=TAG_LENGTH_MAX, pattern=NO_NUL)
    min_amount: str | None = Field(
        default=None, max_length=20, description="Smallest amount (absolute), e.g. `10.00`."
    )
    max_amount: str | None = Field(default=None, max_length=20, description="Largest amount.")
    direction: Literal["in", "out"] | None = None


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def _amount_filter(text: str | None, field: str, currency: str) -> int | None:
    if text is None:
        return None
    try:
        return parse_amount(text, currency, allow_zero=True)
    except InvalidAmount as exc:
        raise _invalid("query", field, str(exc)) from exc


def _history_filter(query: HistoryQuery, currency: str) -> HistoryFilter:
    try:
        return HistoryFilter(
            posted_from=_utc(query.posted_from),
            posted_to=_utc(query.posted_to),
            category=query.category,
            tag=query.tag,
            min_amount_minor=_amount_filter(query.min_amount, "min_amount", currency),
            max_amount_minor=_amount_filter(query.max_amount, "max_amount", currency),
            direction=query.direction,
        )
    except InvalidHistoryQuery as exc:
        raise _invalid("query", exc.field, exc.reason) from exc


def _entry_out(row: history.HistoryRow, currency: str) -> EntryOut:
    return EntryOut(
        entry_id=row.id,
        transfer_id=row.transfer_id,
        posted_at=row.posted_at,
        direction="in" if row.amount_minor > 0 else "out",
        amount=format_amount(row.amount_minor, currency),
        balance_after=format_amount(row.balance_after_minor, currency),
        currency=currency,
        description=row.description,
        category=row.category,
        tags=row.tags,
        reference=row.reference,
        counterparty_iban=row.counterparty_iban,
    )


@router.get(
    "/{account_id}/transactions",
    summary="History of an account, newest first",
    responses=problem_responses(401, 404),
)
async def transactions(
    account_id: uuid.UUID,
    query: Annotated[HistoryQuery, Query()],
    user: AnyUser,
    db: Db,
    balances: Balances,
) -> EntryPage:
    """Entries newest first, each with the balance after it, a page at a time: pass
    `next` as `cursor` for older ones. A page may be shorter than `limit` while `next`
    is set (each request examines at most a bounded number of entries); the history
    ends when `next` is null."""
    try:
        before = decode_cursor(query.cursor) if query.cursor else None
    except InvalidCursor as exc:
        raise _invalid("query", "cursor", str(exc)) from exc
    async with history.read_snapshot(db):
        account = await _account_or_404(db, account_id, user)
        history_filter = _history_filter(query, account.currency)
        window = window_size(query.limit, history_filter, HISTORY_SCAN_MAX)
        page = await history.history_page(
            db, account_id, history_filter, before=before, window=window, limit=query.limit
        )
    # What this page shows is at most as new as the account row read with it.
    await balances.remember(account.snapshot())
    ids = [row.id for row in page.rows]
    return EntryPage(
        items=[_entry_out(row, account.currency) for row in page.rows[: query.limit]],
        next=next_cursor(ids, query.limit, page.scanned, window, page.oldest_scanned_id),
    )


# ------------------------------------------------------------------ statements


def _statement_out(statement: Statement) -> StatementOut:
    money = statement.currency
    return StatementOut(
        account_id=statement.account_id,
        iban=statement.iban,
        currency=money,
        month=statement.period.month,
        period_start=statement.period.start,
        period_end=statement.period.end,
        complete=statement.complete,
        opening_balance=format_amount(statement.opening_minor, money),
        total_in=format_amount(statement.total_in_minor, money),
        total_out=format_amount(statement.total_out_minor, money),
        closing_balance=format_amount(statement.closing_minor, money),
        entries=[
            StatementEntryOut(
                entry_id=line.entry_id,
                transfer_id=line.transfer_id,
                posted_at=line.posted_at,
                amount=format_amount(line.amount_minor, money),
                balance_after=format_amount(line.balance_after_minor, money),
                description=line.description,
                category=line.category,
                counterparty_iban=line.counterparty_iban,
            )
            for line in statement.lines
        ],
    )


async def _statement(
    db: Any, account_id: uuid.UUID, month: str, user: AuthUser, balances: BalanceReader
) -> Statement:
    now = datetime.now(UTC)
    try:
        period = month_period(month, now)
    except InvalidMonth as exc:
        raise _invalid("path", "month", str(exc)) from exc
    async with history.read_snapshot(db):
        account = await _account_or_404(db, account_id, user)
        month_entries = await history.month_of_entries(
            db, account_id, period, lines_max=STATEMENT_ENTRIES_MAX
        )
    await balances.remember(account.snapshot())
    if len(month_entries.lines) > STATEMENT_ENTRIES_MAX:
        raise StatementTooLarge(
            f"{month} has more than {STATEMENT_ENTRIES_MAX} entries; read them with "
            f"GET /v1/accounts/{account_id}/transactions"
        )
    try:
        return build_statement(
            account_id=account.id,
            iban=account.iban,
            currency=account.currency,
            period=period,
            opening_minor=month_entries.opening_minor,
            lines=month_entries.lines,
            closing_minor=month_entries.closing_minor,
            now=now,
        )
    except StatementDoesNotReconcile as exc:
        log.error("statement withheld: %s", exc)
        raise ApiError(
            "this statement does not add up and was withheld; the bank has been alerted"
        ) from exc


STATEMENT_MEDIA = {
    "content": {
        "application/json": {},
        "text/csv": {"schema": {"type": "string"}},
        "application/pdf": {"schema": {"type": "string", "format": "binary"}},
    }
}


@router.get(
    "/{account_id}/statements/{month}",
    summary="Monthly statement (JSON, CSV or PDF)",
    response_model=StatementOut,
    responses={200: STATEMENT_MEDIA, **problem_responses(401, 404, 500)},
)
async def statement(
    account_id: uuid.UUID,
    month: Annotated[str, Path(max_length=7, description="YYYY-MM", examples=["2026-11"])],
    user: AnyUser,
    pool: DbPool,
    ctx: Context,
    balances: Balances,
    format_: Annotated[Literal["json", "csv", "pdf"], Query(alias="format")] = "json",
) -> Any:
    """Opening balance, every entry of the month (UTC), totals in and out, closing
    balance. Opening balance plus the entries is checked against the closing balance
    before anything is sent."""
    async with pool.connection() as db:
        built = await _statement(db, account_id, month, user, balances)
    name = f"statement-{built.iban}-{built.period.month}"
    if format_ == "csv":
        return Response(
            statement_csv(built),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}.csv"'},
        )
    if format_ == "pdf":
        document = await asyncio.to_thread(
            statement_pdf.statement_pdf,
            built,
            generated_at=datetime.now(UTC),
            bank_code=ctx.settings.iban_bank_code,
        )
        return Response(
            document,
            media_type="application/pdf",
            headers={"Content-Disposition": f'attachment; filename="{name}.pdf"'},
        )
    return _statement_out(built)
