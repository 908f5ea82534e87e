"""API users and their refresh tokens.

``users`` are the people who sign in to the API: customers (linked to their row in
``customers``) and staff. Personal data stays in as few places as the GDPR erasure
will have to visit: a user's email lives here only (``customers.email`` stays empty
for people who registered through the API); a customer's name lives in
``customers.full_name``, a staff member's in ``users.full_name``.

``refresh_tokens`` records every refresh token issued, by ``jti``. Tokens issued
from one login form a family: each works once (``used_at``), and presenting a used
one again revokes the whole family (``revoked_at``), as does a logout.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UPGRADE = """
create table users (
    id             uuid primary key,
    -- Stored lower-cased and trimmed: the sign-in name, compared exactly.
    email          text not null unique
                       check (email = lower(btrim(email)) and length(email) between 3 and 254),
    password_hash  text not null,
    role           text not null
                       check (role in ('customer', 'teller', 'reviewer', 'auditor', 'admin')),
    customer_id    uuid unique references customers (id),
    full_name      text check (length(full_name) between 1 and 200),
    failed_logins  integer not null default 0 check (failed_logins >= 0),
    locked_until   timestamptz,
    disabled       boolean not null default false,
    created_at     timestamptz not null default now(),
    -- A customer acts for exactly one customer row; staff act for none (a member of
    -- staff who also banks here has a customer user of their own).
    constraint customers_have_a_customer check ((role = 'customer') = (customer_id is not null)),
    -- A customer's name is kept in customers.full_name only.
    constraint one_place_for_a_name check (customer_id is null or full_name is null)
);

create table refresh_tokens (
    jti         uuid primary key,
    family_id   uuid not null,
    user_id     uuid not null references users (id) on delete cascade,
    issued_at   timestamptz not null default now(),
    expires_at  timestamptz not null,
    used_at     timestamptz,
    revoked_at  timestamptz,
    check (expires_at > issued_at)
);
-- Revoking a family (reuse, logout) and checking whether one is revoked.
create index refresh_tokens_by_family on refresh_tokens (family_id);
-- Revoking every live family of a user (role change).
create index refresh_tokens_live_by_user on refresh_tokens (user_id) where revoked_at is null;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute("drop table refresh_tokens; drop table users;")
