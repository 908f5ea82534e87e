"""Errors of the ledger's storage."""

from __future__ import annotations

from bankflow.errors import BankflowError


class LedgerError(BankflowError):
    """Root of the ledger's storage errors."""


class AccountNotFound(LedgerError):
    """No account has the id or IBAN asked for."""


class InvalidAccountRequest(LedgerError):
    """An account cannot be opened as asked (type, currency, overdraft or IBAN)."""


class OffsetsMoved(LedgerError):
    """The stored offsets of a partition are not where this poster started its batch.

    Another poster instance owns the partition now (a rebalance while this one was
    paused): the batch is rolled back and the partition re-read from the stored offset.
    """

    transient = True
