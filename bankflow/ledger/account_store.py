"""Accounts for the API and the balance cache: open, read, list, change, and balances.

Async (psycopg), like ``bankflow.identity.store``; callers pass a connection in
autocommit mode, and functions that must hold several statements together open
their own transaction. Every change of an ``accounts`` row bumps its ``version``,
which the balance cache relies on to tell a newer snapshot from an older one.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import class_row

from bankflow.domain.balances import BalanceSnapshot
from bankflow.domain.iban import generate_iban
from bankflow.domain.posting import INTERNAL_TYPES
from bankflow.ledger.errors import LedgerError
from bankflow.settings import Settings

Conn = psycopg.AsyncConnection[Any]

COLUMNS = (
    "id, customer_id, iban, type, currency, status, balance_minor, pending_debit_minor, "
    "pending_credit_minor, overdraft_limit_minor, version, created_at, updated_at"
)
#: A customer opens at most this many accounts (closed ones count): enough for any
#: household, and a bound on what one signed-in client can create.
ACCOUNTS_PER_CUSTOMER_MAX = 20


class CustomerNotFound(LedgerError):
    """No customer (person or business) has this id."""


class AccountLimitReached(LedgerError):
    """The customer has opened as many accounts as one customer may."""


class AccountChangeRefused(LedgerError):
    """An admin's change would break a rule of the account (its state, its balance)."""


class SavingsHaveNoOverdraft(AccountChangeRefused):
    """An overdraft limit above zero asked for a savings account."""


@dataclass(frozen=True, slots=True)
class AccountRow:
    id: uuid.UUID
    customer_id: uuid.UUID
    iban: str
    type: str
    currency: str
    status: str
    balance_minor: int
    pending_debit_minor: int
    pending_credit_minor: int
    overdraft_limit_minor: int
    version: int
    created_at: datetime
    updated_at: datetime

    @property
    def internal(self) -> bool:
        return self.type in INTERNAL_TYPES

    def snapshot(self) -> BalanceSnapshot:
        return BalanceSnapshot(
            account_id=self.id,
            customer_id=self.customer_id,
            account_type=self.type,
            currency=self.currency,
            status=self.status,
            posted_minor=self.balance_minor,
            pending_debit_minor=self.pending_debit_minor,
            pending_credit_minor=self.pending_credit_minor,
            overdraft_limit_minor=self.overdraft_limit_minor,
            version=self.version,
        )


async def open_account(
    conn: Conn, settings: Settings, *, customer_id: uuid.UUID, account_type: str, currency: str
) -> AccountRow:
    """A new account with a generated IBAN for a customer (never the bank itself)."""
    async with conn.transaction():
        # Locking the customer row serialises concurrent openings for the limit check.
        cursor = await conn.execute(
            "select kind from customers where id = %s for update", (customer_id,)
        )
        found = await cursor.fetchone()
        if found is None or found[0] == "bank":
            raise CustomerNotFound(f"no customer {customer_id}")
        cursor = await conn.execute(
            "select count(*) from accounts where customer_id = %s", (customer_id,)
        )
        (count,) = await cursor.fetchone() or (0,)
        if count >= ACCOUNTS_PER_CUSTOMER_MAX:
            raise AccountLimitReached(
                f"a customer has at most {ACCOUNTS_PER_CUSTOMER_MAX} accounts"
            )
        cursor = await conn.execute("select nextval('account_number_seq')")
        (number,) = await cursor.fetchone() or (0,)
        iban = generate_iban(settings.iban_country, settings.iban_bank_code, int(number))
        async with conn.cursor(row_factory=class_row(AccountRow)) as cur:
            await cur.execute(
                f"insert into accounts (id, customer_id, iban, type, currency) "
                f"values (%s, %s, %s, %s, %s) returning {COLUMNS}",
                (uuid.uuid4(), customer_id, iban, account_type, currency),
            )
            row = await cur.fetchone()
    if row is None:  # insert ... returning always returns the row
        raise LedgerError("the database returned no account")
    return row


async def get_account(
    conn: Conn, account_id: uuid.UUID, *, owner: uuid.UUID | None = None
) -> AccountRow | None:
    """The account, or None; with ``owner``, None as well when someone else owns it."""
    async with conn.cursor(row_factory=class_row(AccountRow)) as cur:
        if owner is None:
            await cur.execute(f"select {COLUMNS} from accounts where id = %s", (account_id,))
        else:
            await cur.execute(
                f"select {COLUMNS} from accounts where id = %s and customer_id = %s",
                (account_id, owner),
            )
        return await cur.fetchone()


async def list_accounts(
    conn: Conn,
    *,
    customer_id: uuid.UUID | None,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[AccountRow]:
    """Accounts in opening order (``created_at``, then id), after a position, at most ``limit``."""
    conditions = ["true"]
    params: list[Any] = []
    if customer_id is not None:
        conditions.append("customer_id = %s")
        params.append(customer_id)
    if after is not None:
        conditions.append("(created_at, id) > (%s, %s)")
        params.extend(after)
    params.append(limit)
    async with conn.cursor(row_factory=class_row(AccountRow)) as cur:
        await cur.execute(
            f"select {COLUMNS} from accounts where {' and '.join(conditions)} "
            "order by created_at, id limit %s",
            params,
        )
        return await cur.fetchall()


async def change_account(
    conn: Conn,
    account_id: uuid.UUID,
    *,
    status: str | None,
    overdraft_limit_minor: int | None,
) -> AccountRow | None:
    """An admin's change of status and/or overdraft limit; None for an unknown account.

    Refused (``AccountChangeRefused``): the bank's own accounts; reopening a closed
    account; closing one that still holds or owes money; an overdraft on a savings
    account; a limit below what the account already uses.
    """
    async with conn.transaction(), conn.cursor(row_factory=class_row(AccountRow)) as cur:
        await cur.execute(f"select {COLUMNS} from accounts where id = %s for update", (account_id,))
        current = await cur.fetchone()
        if current is None:
            return None
        _check_change(current, status, overdraft_limit_minor)
        try:
            await cur.execute(
                "update accounts set status = coalesce(%s, status), "
                "overdraft_limit_minor = coalesce(%s, overdraft_limit_minor), "
                "version = version + 1, updated_at = now() "
                f"where id = %s returning {COLUMNS}",
                (status, overdraft_limit_minor, account_id),
            )
        except psycopg.errors.CheckViolation as exc:
            raise AccountChangeRefused(
                "the account already uses more than this overdraft limit; it can be "
                "lowered once the balance is back above the new floor"
            ) from exc
        return await cur.fetchone()


def _check_change(
    current: AccountRow, status: str | None, overdraft_limit_minor: int | None
) -> None:
    if current.internal:
        raise AccountChangeRefused("the bank's own accounts are not changed through the API")
    if current.status == "closed" and status not in (None, "closed"):
        raise AccountChangeRefused("a closed account stays closed; open a new one")
    closing = status == "closed" and current.status != "closed"
    if closing and (
        current.balance_minor or current.pending_debit_minor or current.pending_credit_minor
    ):
        raise AccountChangeRefused(
            "an account is closed only when its balance is zero and nothing is pending"
        )
    if current.type == "savings" and overdraft_limit_minor:
        raise SavingsHaveNoOverdraft("savings accounts have no overdraft")


async def balance_snapshots(conn: Conn, account_ids: Sequence[uuid.UUID]) -> list[BalanceSnapshot]:
    """The current balances of these accounts (unknown ids are left out), one query."""
    async with conn.cursor(row_factory=class_row(AccountRow)) as cur:
        await cur.execute(
            f"select {COLUMNS} from accounts where id = any(%s)", (list(account_ids),)
        )
        return [row.snapshot() for row in await cur.fetchall()]
