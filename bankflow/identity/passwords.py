"""Password hashing with argon2id (argon2-cffi).

Production uses argon2-cffi's defaults (the RFC 9106 low-memory profile: 64 MiB, 3
passes, 4 lanes), which the library raises as hardware gets faster; a stored hash
made with older parameters is replaced after the next successful sign-in.
"""

from __future__ import annotations

from typing import Literal

from argon2 import PasswordHasher, profiles
from argon2.exceptions import InvalidHashError, VerificationError


def password_hasher(profile: Literal["default", "test"] = "default") -> PasswordHasher:
    """The hasher for ``BANKFLOW_PASSWORD_HASH_PROFILE``; "test" is the cheapest argon2id."""
    if profile == "test":
        return PasswordHasher.from_parameters(profiles.CHEAPEST)
    return PasswordHasher()


def verify_password(hasher: PasswordHasher, password_hash: str, password: str) -> bool:
    """True when ``password`` matches; a wrong password and a damaged hash are both False."""
    try:
        return hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False
