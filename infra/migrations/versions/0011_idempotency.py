"""Idempotency keys for good: which request a caller's key was first used for.

The API derives a transfer id from the caller and the ``Idempotency-Key``; Redis
remembers the key's request fingerprint for a day only. Once that record expired,
the same key with another body would get the same transfer id, and the pipeline
would answer it with the first transfer. This table keeps the fingerprint as long
as the transfer exists, so such a request is refused (422) however late it comes.
The key itself is kept only as a SHA-256 digest: it is the client's text.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

UPGRADE = """
create table idempotency_keys (
    -- Whose key: the API's caller (user:<id>) or a tool (cli:deposit).
    scope        text not null check (length(scope) between 1 and 200),
    key_digest   text not null check (key_digest ~ '^[0-9a-f]{64}$'),
    -- SHA-256 of the kind of request and its canonical body.
    fingerprint  text not null check (fingerprint ~ '^[0-9a-f]{64}$'),
    transfer_id  uuid not null unique,
    created_at   timestamptz not null default now(),
    primary key (scope, key_digest)
);
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute("drop table idempotency_keys")
