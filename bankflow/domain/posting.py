"""Posting rules: which accepted transfers the ledger posts, and the entries they make.

Pure functions over plain data. The poster loads the accounts a batch touches
(locked), calls ``post_batch`` and writes what it returns; the database checks
the same rules again as the last line of defence.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Literal
from uuid import UUID


class AccountType(StrEnum):
    CHECKING = "checking"
    SAVINGS = "savings"
    # The bank's own accounts: they balance the customers' and have no floor.
    CASH = "cash"
    SETTLEMENT = "settlement"
    FEES = "fees"
    SUSPENSE = "suspense"


INTERNAL_TYPES: Final = frozenset(
    {AccountType.CASH, AccountType.SETTLEMENT, AccountType.FEES, AccountType.SUSPENSE}
)


class AccountStatus(StrEnum):
    ACTIVE = "active"
    FROZEN = "frozen"
    CLOSED = "closed"


class FailureReason(StrEnum):
    """Why the ledger refused an accepted transfer. Stable codes: clients match on them."""

    UNKNOWN_ACCOUNT = "unknown_account"
    ACCOUNT_CLOSED = "account_closed"
    ACCOUNT_FROZEN = "account_frozen"
    CURRENCY_MISMATCH = "currency_mismatch"
    SAME_ACCOUNT = "same_account"
    INSUFFICIENT_FUNDS = "insufficient_funds"


@dataclass(frozen=True, slots=True)
class AccountState:
    """What the posting rules need to know of one account."""

    id: UUID
    type: AccountType
    currency: str
    status: AccountStatus
    balance_minor: int
    overdraft_limit_minor: int = 0

    @property
    def internal(self) -> bool:
        return self.type in INTERNAL_TYPES


@dataclass(frozen=True, slots=True)
class TransferInstruction:
    """An accepted transfer as the ledger sees it."""

    transfer_id: UUID
    debit_account_id: UUID
    credit_account_id: UUID
    amount_minor: int
    currency: str


@dataclass(frozen=True, slots=True)
class Entry:
    """One side of a posted transfer: a debit is negative, a credit positive."""

    transfer_id: UUID
    account_id: UUID
    amount_minor: int
    balance_after_minor: int


@dataclass(frozen=True, slots=True)
class Outcome:
    transfer_id: UUID
    status: Literal["posted", "failed"]
    reason: FailureReason | None
    entries: tuple[Entry, ...] = ()


@dataclass(frozen=True, slots=True)
class BatchResult:
    outcomes: tuple[Outcome, ...]
    #: The balance of every account the batch changed, after the batch.
    balances: dict[UUID, int]


def refusal(  # noqa: PLR0911 - one return per rule reads as the rule list it is
    transfer: TransferInstruction, debit: AccountState | None, credit: AccountState | None
) -> FailureReason | None:
    """The first rule ``transfer`` breaks against the current account states, if any."""
    if debit is None or credit is None:
        return FailureReason.UNKNOWN_ACCOUNT
    if debit.id == credit.id:
        return FailureReason.SAME_ACCOUNT
    if AccountStatus.CLOSED in (debit.status, credit.status):
        return FailureReason.ACCOUNT_CLOSED
    if AccountStatus.FROZEN in (debit.status, credit.status):
        return FailureReason.ACCOUNT_FROZEN
    if not transfer.currency == debit.currency == credit.currency:
        return FailureReason.CURRENCY_MISMATCH
    if not debit.internal:
        floor = -debit.overdraft_limit_minor
        if debit.balance_minor - transfer.amount_minor < floor:
            return FailureReason.INSUFFICIENT_FUNDS
    return None


def post_batch(
    accounts: Mapping[UUID, AccountState], transfers: Sequence[TransferInstruction]
) -> BatchResult:
    """Decide each transfer in order; a later one sees the effect of the earlier ones.

    ``accounts`` holds the current state of every account the batch names that
    exists; a missing id fails its transfer with ``unknown_account``.
    """
    # Only balances change within a batch; they are tracked apart from the (immutable)
    # account states, which ``refusal`` reads with the current balance swapped in.
    balances = {account_id: a.balance_minor for account_id, a in accounts.items()}
    touched: dict[UUID, None] = {}  # an ordered set
    outcomes: list[Outcome] = []
    for transfer in transfers:
        debit = accounts.get(transfer.debit_account_id)
        credit = accounts.get(transfer.credit_account_id)
        if debit is not None and debit.balance_minor != balances[debit.id]:
            debit = _with_balance(debit, balances[debit.id])
        reason = refusal(transfer, debit, credit)
        if reason is not None or debit is None or credit is None:
            outcomes.append(Outcome(transfer.transfer_id, "failed", reason))
            continue
        debit_after = balances[debit.id] - transfer.amount_minor
        credit_after = balances[credit.id] + transfer.amount_minor
        balances[debit.id] = debit_after
        balances[credit.id] = credit_after
        touched[debit.id] = touched[credit.id] = None
        entries = (
            Entry(transfer.transfer_id, debit.id, -transfer.amount_minor, debit_after),
            Entry(transfer.transfer_id, credit.id, transfer.amount_minor, credit_after),
        )
        outcomes.append(Outcome(transfer.transfer_id, "posted", None, entries))
    return BatchResult(
        tuple(outcomes), {account_id: balances[account_id] for account_id in touched}
    )


def touched_accounts(transfers: Iterable[TransferInstruction]) -> set[UUID]:
    """Every account id a batch names, debit or credit."""
    ids: set[UUID] = set()
    for transfer in transfers:
        ids.add(transfer.debit_account_id)
        ids.add(transfer.credit_account_id)
    return ids


def _with_balance(account: AccountState, balance_minor: int) -> AccountState:
    return AccountState(
        account.id,
        account.type,
        account.currency,
        account.status,
        balance_minor,
        account.overdraft_limit_minor,
    )
