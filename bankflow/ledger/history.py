"""Reading an account's entries: a page of its history, and a month for a statement.

The page query walks ``entries_history`` (``account_id, id desc``, migration 0002)
from the cursor down, at most a window of entries, so its cost depends on the page
and the window, never on how many entries the account has. Months and time filters
use ``entries_by_time`` (``account_id, posted_at, id``, migration 0006).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import class_row

from bankflow.domain.history import ENTRY_ID_MAX, HistoryFilter
from bankflow.domain.statements import Period, StatementLine

Conn = psycopg.AsyncConnection[Any]

#: The other side of an entry: the credit account of a debit, the debit account of a credit.
_COUNTERPARTY = (
    "left join accounts o on o.id = "
    "case when e.amount_minor < 0 then t.credit_account_id else t.debit_account_id end"
)


@dataclass(frozen=True, slots=True)
class HistoryRow:
    id: int
    transfer_id: uuid.UUID
    amount_minor: int
    balance_after_minor: int
    posted_at: datetime
    description: str
    category: str | None
    tags: list[str]
    reference: str | None
    counterparty_iban: str | None


@dataclass(frozen=True, slots=True)
class HistoryPage:
    #: Entries that passed the filters, newest first, at most ``limit + 1``.
    rows: list[HistoryRow]
    #: How many entries the window examined, and the oldest of them.
    scanned: int
    oldest_scanned_id: int | None


@asynccontextmanager
async def read_snapshot(conn: Conn) -> AsyncIterator[None]:
    """One consistent view for several reads (an account and its entries)."""
    async with conn.transaction():
        await conn.execute("set transaction isolation level repeatable read, read only")
        yield


def _window_conditions(history_filter: HistoryFilter) -> tuple[list[str], dict[str, Any]]:
    conditions = ["account_id = %(account)s", "id < %(before)s"]
    params: dict[str, Any] = {}
    if history_filter.posted_from is not None:
        conditions.append("posted_at >= %(posted_from)s")
        params["posted_from"] = history_filter.posted_from
    if history_filter.posted_to is not None:
        conditions.append("posted_at < %(posted_to)s")
        params["posted_to"] = history_filter.posted_to
    return conditions, params


def _page_conditions(history_filter: HistoryFilter) -> tuple[list[str], dict[str, Any]]:
    conditions = ["true"]
    params: dict[str, Any] = {}
    if history_filter.direction == "in":
        conditions.append("e.amount_minor > 0")
    elif history_filter.direction == "out":
        conditions.append("e.amount_minor < 0")
    if history_filter.min_amount_minor is not None:
        conditions.append("abs(e.amount_minor) >= %(min_amount)s")
        params["min_amount"] = history_filter.min_amount_minor
    if history_filter.max_amount_minor is not None:
        conditions.append("abs(e.amount_minor) <= %(max_amount)s")
        params["max_amount"] = history_filter.max_amount_minor
    if history_filter.category is not None:
        conditions.append("t.category = %(category)s")
        params["category"] = history_filter.category
    if history_filter.tag is not None:
        conditions.append("%(tag)s = any(t.tags)")
        params["tag"] = history_filter.tag
    return conditions, params


def history_sql(history_filter: HistoryFilter) -> tuple[str, dict[str, Any]]:
    """The page query and its filter parameters (the caller adds account, before, window, limit).

    The window (a materialised CTE) is the bounded walk down the account's entries;
    the filters that need the transfer (category, tag) or drop entries apply to it.
    """
    window, window_params = _window_conditions(history_filter)
    page, page_params = _page_conditions(history_filter)
    sql = f"""
        with win as materialized (
            select id, transfer_id, amount_minor, balance_after_minor, posted_at
            from entries
            where {" and ".join(window)}
            order by id desc
            limit %(window)s
        ), scanned as (select count(*) as n, min(id) as oldest from win)
        select s.n, s.oldest, p.*
        from scanned s left join lateral (
            select e.id, e.transfer_id, e.amount_minor, e.balance_after_minor, e.posted_at,
                   t.description, t.category, t.tags, t.reference,
                   o.iban as counterparty_iban
            from win e
            join transfers t on t.id = e.transfer_id
            {_COUNTERPARTY}
            where {" and ".join(page)}
            order by e.id desc
            limit %(limit)s
        ) p on true
    """
    return sql, {**window_params, **page_params}


async def history_page(
    conn: Conn,
    account_id: uuid.UUID,
    history_filter: HistoryFilter,
    *,
    before: int | None,
    window: int,
    limit: int,
) -> HistoryPage:
    """Entries below ``before`` that pass the filters, newest first, at most ``limit + 1``."""
    sql, params = history_sql(history_filter)
    params.update(
        account=account_id,
        before=ENTRY_ID_MAX if before is None else before,
        window=window,
        limit=limit + 1,
    )
    cursor = await conn.execute(sql, params)
    records = await cursor.fetchall()
    scanned, oldest = records[0][0], records[0][1]
    rows = [HistoryRow(*record[2:]) for record in records if record[2] is not None]
    return HistoryPage(rows=rows, scanned=int(scanned), oldest_scanned_id=oldest)


@dataclass(frozen=True, slots=True)
class MonthOfEntries:
    opening_minor: int
    closing_minor: int
    #: The month's entries in ledger order; one more than asked means "too many".
    lines: list[StatementLine]


#: The balance after the account's last entry before an instant (``entries_by_time``).
BALANCE_BEFORE_SQL = (
    "select balance_after_minor from entries where account_id = %s and posted_at < %s "
    "order by posted_at desc, id desc limit 1"
)
#: A month's entries in ledger order, with what a statement line shows.
MONTH_SQL = (
    "select e.id as entry_id, e.posted_at, e.transfer_id, e.amount_minor, "
    "e.balance_after_minor, t.description, t.category, o.iban as counterparty_iban "
    f"from entries e join transfers t on t.id = e.transfer_id {_COUNTERPARTY} "
    "where e.account_id = %s and e.posted_at >= %s and e.posted_at < %s "
    "order by e.id limit %s"
)


async def _balance_before(conn: Conn, account_id: uuid.UUID, instant: datetime) -> int:
    cursor = await conn.execute(BALANCE_BEFORE_SQL, (account_id, instant))
    row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def month_of_entries(
    conn: Conn, account_id: uuid.UUID, period: Period, *, lines_max: int
) -> MonthOfEntries:
    """Opening and closing balances and up to ``lines_max + 1`` entries of the period.

    Call inside ``read_snapshot``, so the three reads see the same ledger.
    """
    opening = await _balance_before(conn, account_id, period.start)
    closing = await _balance_before(conn, account_id, period.end)
    async with conn.cursor(row_factory=class_row(StatementLine)) as cur:
        await cur.execute(MONTH_SQL, (account_id, period.start, period.end, lines_max + 1))
        lines = await cur.fetchall()
    return MonthOfEntries(opening_minor=opening, closing_minor=closing, lines=lines)
