"""Errors of the domain rules; each names the rule it protects."""

from __future__ import annotations

from bankflow.errors import BankflowError


class DomainError(BankflowError):
    """A domain rule refused its input. Permanent: trying again will not help."""


class InvalidAmount(DomainError):
    """An amount is not a positive decimal with at most the currency's decimal places."""


class UnsupportedCurrency(DomainError):
    """The currency is not one bankflow holds accounts in."""


class InvalidIban(DomainError):
    """An IBAN's format or check digits are wrong."""


class InvalidAccountReference(DomainError):
    """An account is named by something other than an account id (a UUID) or a valid IBAN."""
