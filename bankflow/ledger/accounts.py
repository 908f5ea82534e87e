"""Customers and accounts: opening them, and the bank's own internal accounts."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import class_row

from bankflow.domain.errors import UnsupportedCurrency
from bankflow.domain.iban import (
    account_reference_key,
    generate_iban,
    looks_like_iban,
    normalize_iban,
)
from bankflow.domain.money import exponent
from bankflow.domain.posting import INTERNAL_TYPES, AccountType
from bankflow.ledger.errors import AccountNotFound, InvalidAccountRequest
from bankflow.settings import Settings

#: The customer that owns the bank's internal accounts.
BANK_CUSTOMER_ID = uuid.UUID("00000000-0000-0000-0000-00000000b0a1")

ACCOUNT_COLUMNS = (
    "id, customer_id, iban, type, currency, status, balance_minor, pending_debit_minor, "
    "pending_credit_minor, overdraft_limit_minor, version, created_at"
)


@dataclass(frozen=True)
class Account:
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

    def as_dict(self) -> dict[str, Any]:
        return {
            k: str(v) if isinstance(v, uuid.UUID | datetime) else v
            for k, v in self.__dict__.items()
        }


def create_customer(
    conn: psycopg.Connection[Any], full_name: str, *, kind: str = "person", email: str | None = None
) -> uuid.UUID:
    customer_id = uuid.uuid4()
    conn.execute(
        "insert into customers (id, kind, full_name, email) values (%s, %s, %s, %s)",
        (customer_id, kind, full_name, email),
    )
    return customer_id


def open_account(
    conn: psycopg.Connection[Any],
    settings: Settings,
    *,
    customer_id: uuid.UUID,
    account_type: str,
    currency: str,
    iban: str | None = None,
    overdraft_limit_minor: int = 0,
) -> Account:
    """Open an account with a new IBAN, or adopt ``iban`` (e.g. one a batch file names)."""
    _check_request(account_type, currency, overdraft_limit_minor)
    if iban is None:
        (number,) = conn.execute("select nextval('account_number_seq')").fetchone() or (0,)
        iban = generate_iban(settings.iban_country, settings.iban_bank_code, int(number))
    else:
        iban = normalize_iban(iban)
    cursor = conn.cursor(row_factory=class_row(Account))
    try:
        cursor.execute(
            f"insert into accounts (id, customer_id, iban, type, currency, overdraft_limit_minor) "
            f"values (%s, %s, %s, %s, %s, %s) returning {ACCOUNT_COLUMNS}",
            (uuid.uuid4(), customer_id, iban, account_type, currency, overdraft_limit_minor),
        )
    except psycopg.errors.UniqueViolation as exc:
        raise InvalidAccountRequest(f"IBAN {iban} belongs to another account already") from exc
    except psycopg.errors.ForeignKeyViolation as exc:
        raise InvalidAccountRequest(f"customer {customer_id} does not exist") from exc
    account = cursor.fetchone()
    if account is None:  # insert ... returning always returns the row
        raise InvalidAccountRequest("the database returned no account")
    return account


def _check_request(account_type: str, currency: str, overdraft_limit_minor: int) -> None:
    try:
        kind = AccountType(account_type)
    except ValueError:
        known = ", ".join(t.value for t in AccountType)
        raise InvalidAccountRequest(f"type {account_type!r} is not one of {known}") from None
    try:
        exponent(currency)
    except UnsupportedCurrency as exc:
        raise InvalidAccountRequest(str(exc)) from None
    if overdraft_limit_minor < 0:
        raise InvalidAccountRequest("overdraft limit must be zero or more")
    if kind is AccountType.SAVINGS and overdraft_limit_minor:
        raise InvalidAccountRequest("savings accounts have no overdraft")


def ensure_internal_accounts(conn: psycopg.Connection[Any], settings: Settings) -> list[Account]:
    """The bank's cash, settlement, fees and suspense account in each currency (idempotent)."""
    conn.execute(
        "insert into customers (id, kind, full_name) "
        "values (%s, 'bank', 'bankflow (own accounts)') on conflict (id) do nothing",
        (BANK_CUSTOMER_ID,),
    )
    accounts = []
    for currency in settings.currencies:
        for account_type in sorted(INTERNAL_TYPES):
            existing = find_internal_account(conn, account_type, currency)
            accounts.append(
                existing
                or open_account(
                    conn,
                    settings,
                    customer_id=BANK_CUSTOMER_ID,
                    account_type=account_type,
                    currency=currency,
                )
            )
    return accounts


def find_internal_account(
    conn: psycopg.Connection[Any], account_type: str, currency: str
) -> Account | None:
    cursor = conn.cursor(row_factory=class_row(Account))
    return cursor.execute(
        f"select {ACCOUNT_COLUMNS} from accounts where type = %s and currency = %s "
        "and customer_id = %s",
        (account_type, currency, BANK_CUSTOMER_ID),
    ).fetchone()


def get_account(conn: psycopg.Connection[Any], id_or_iban: str | uuid.UUID) -> Account:
    """The account with this id or IBAN; ``AccountNotFound`` otherwise."""
    cursor = conn.cursor(row_factory=class_row(Account))
    key = account_reference_key(str(id_or_iban))
    if looks_like_iban(key):
        row = cursor.execute(
            f"select {ACCOUNT_COLUMNS} from accounts where iban = %s", (key,)
        ).fetchone()
    else:
        try:
            account_id = uuid.UUID(key)
        except ValueError:
            raise AccountNotFound(f"{key!r} is neither an account id nor an IBAN") from None
        row = cursor.execute(
            f"select {ACCOUNT_COLUMNS} from accounts where id = %s", (account_id,)
        ).fetchone()
    if row is None:
        raise AccountNotFound(f"no account {key}")
    return row


def list_accounts(
    conn: psycopg.Connection[Any], customer_id: uuid.UUID | None = None
) -> list[Account]:
    cursor = conn.cursor(row_factory=class_row(Account))
    if customer_id is None:
        return cursor.execute(
            f"select {ACCOUNT_COLUMNS} from accounts order by created_at, id"
        ).fetchall()
    return cursor.execute(
        f"select {ACCOUNT_COLUMNS} from accounts where customer_id = %s order by created_at, id",
        (customer_id,),
    ).fetchall()
