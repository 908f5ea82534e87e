"""API bodies of authentication and user management, and the role names.

Request and response models are separate from the stored rows: a response never
carries a password hash, a failed-login count or another person's data.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Final, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from schemas.transfers import TEXT_PATTERN

#: Who may do what. ``customer`` sees only their own data; the others are staff.
Role = Literal["customer", "teller", "reviewer", "auditor", "admin"]
ROLES: Final[tuple[Role, ...]] = get_args(Role)
STAFF_ROLES: Final[tuple[Role, ...]] = tuple(r for r in ROLES if r != "customer")

#: RFC 5321 limits a forward path to 256 octets, so an address to 254 characters.
EMAIL_LENGTH_MAX: Final = 254
#: NIST SP 800-63B asks for at least 8; the bank asks for 12 (issue 4).
PASSWORD_LENGTH_MIN: Final = 12
#: Long passphrases are welcome; beyond this a body is not a password.
PASSWORD_LENGTH_MAX: Final = 256
FULL_NAME_MAX: Final = 200
#: Deliberately loose: one @, something before it, a dot after it. Whether an address
#: exists is for a confirmation email to find out, not for a pattern.
EMAIL_PATTERN: Final = r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+\.[^@\s\x00-\x1f\x7f]+$"


def normalize_email(email: str) -> str:
    """The one spelling an email is stored and compared in: trimmed and lower-cased."""
    return email.strip().lower()


# ``strip_whitespace`` and ``to_lower`` are ``normalize_email``.
Email = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True,
        to_lower=True,
        min_length=3,
        max_length=EMAIL_LENGTH_MAX,
        pattern=EMAIL_PATTERN,
    ),
    Field(examples=["ada@example.com"]),
]
#: Plain strings (so length errors read naturally) kept out of every repr and log line.
Password = Annotated[
    str, Field(min_length=PASSWORD_LENGTH_MIN, max_length=PASSWORD_LENGTH_MAX, repr=False)
]
FullName = Annotated[
    str,
    Field(min_length=1, max_length=FULL_NAME_MAX, pattern=TEXT_PATTERN, examples=["Ada Lovelace"]),
]


class RegisterRequest(BaseModel):
    """A person opening their customer login."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "email": "ada@example.com",
                    "password": "plum-orbit-lantern-42",
                    "full_name": "Ada Lovelace",
                }
            ]
        },
    )

    email: Email
    password: Password = Field(
        description=f"At least {PASSWORD_LENGTH_MIN} characters, not a commonly used password."
    )
    full_name: FullName


class TokenForm(BaseModel):
    """The OAuth2 password grant (RFC 6749 section 4.3), sent as a form."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "grant_type": "password",
                    "username": "ada@example.com",
                    "password": "plum-orbit-lantern-42",
                }
            ]
        },
    )

    grant_type: Literal["password"] | None = Field(
        default=None, description='OAuth2 says "password"; may be left out.'
    )
    username: str = Field(
        min_length=1, max_length=EMAIL_LENGTH_MAX, description="The email you registered with."
    )
    password: str = Field(min_length=1, max_length=PASSWORD_LENGTH_MAX, repr=False)
    scope: str = Field(default="", max_length=200, description="Not used; roles decide access.")


class RefreshRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"refresh_token": "eyJhbGciOiJIUzI1NiIs..."}]},
    )

    refresh_token: str = Field(min_length=1, max_length=4096, repr=False)


class TokenResponse(BaseModel):
    """The access token for ``Authorization: Bearer`` and the refresh token to renew it."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "access_token": "eyJhbGciOiJIUzI1NiIsInR5cCI6ImF0K2p3dCJ9...",
                    "token_type": "bearer",
                    "expires_in": 900,
                    "refresh_token": "eyJhbGciOiJIUzI1NiIsInR5cCI6InJ0K2p3dCJ9...",
                }
            ]
        },
    )

    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - RFC 6750's scheme name
    expires_in: int = Field(description="Seconds until the access token expires.")
    refresh_token: str = Field(description="Works once; the answer brings a new one.")


class UserOut(BaseModel):
    """A user as the user themselves or an admin sees them."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "5b0f3c1e-9a2d-4f7e-8c6b-1d2e3f4a5b6c",
                    "email": "ada@example.com",
                    "role": "customer",
                    "customer_id": "0e8f7d6c-5b4a-4392-8170-6f5e4d3c2b1a",
                    "full_name": "Ada Lovelace",
                    "disabled": False,
                    "locked_until": None,
                    "created_at": "2026-11-26T09:30:00Z",
                }
            ]
        },
    )

    id: uuid.UUID
    email: str
    role: Role
    customer_id: uuid.UUID | None = Field(description="Set for customers: whose data they see.")
    full_name: str | None
    disabled: bool
    locked_until: datetime | None = Field(
        description="Set while sign-in is locked after too many failed attempts."
    )
    created_at: datetime


class UserPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"items": [UserOut.model_json_schema()["examples"][0]], "next": None}]
        },
    )

    items: list[UserOut]
    next: str | None = Field(description="Pass as `after` for the next page; null on the last.")


class RoleChange(BaseModel):
    """What an admin may change about a user: their role (among staff roles)."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"role": "reviewer"}]}
    )

    role: Role
