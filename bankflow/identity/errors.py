"""Errors of users and sign-in; each names the rule it protects."""

from __future__ import annotations

from bankflow.errors import BankflowError


class IdentityError(BankflowError):
    """Root of the users' and sign-in errors."""


class EmailTaken(IdentityError):
    """Two users never share an email: it is how a person signs in."""


class UserNotFound(IdentityError):
    """The user id names no user."""


class RoleChangeRefused(IdentityError):
    """A customer user stays a customer and staff stay staff (a customer row is theirs)."""


class WeakPassword(IdentityError):
    """The password breaks the password rules (length, commonly used, like the email)."""
