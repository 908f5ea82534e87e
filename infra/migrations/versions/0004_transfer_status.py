"""Transfer status and the fraud review queue.

``transfer_status`` is what the API answers ``GET /v1/transfers/{id}`` from: one row
per request, moved forward by the tracker as outcomes arrive on the topics, with
its history beside it. ``review_queue`` holds the transfers the fraud rules sent to
review until a reviewer (or the review timeout) decides.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UPGRADE = """
create table transfer_status (
    transfer_id      uuid primary key,
    -- Unknown until a message that carries it arrives (a ledger event may come first).
    source           text,
    requested_by     text,
    debit_account    text not null,
    credit_account   text not null,
    amount_minor     bigint not null check (amount_minor > 0),
    currency         char(3) not null,
    description      text not null default '',
    category         text,
    tags             text[] not null default '{}',
    status           text not null check (status in
                         ('requested', 'review', 'accepted', 'rejected', 'posted', 'failed')),
    reasons          text[] not null default '{}',
    ruleset_version  text,
    risk_score       integer,
    requested_at     timestamptz not null,
    updated_at       timestamptz not null default now()
);
-- ``GET /v1/transfers``: a requester's transfers, newest first.
create index transfer_status_by_requester
    on transfer_status (requested_by, requested_at desc, transfer_id desc);

-- Statuses only move forward, whatever order the tracker sees the topics in:
-- requested < review < accepted < a terminal status.
create function transfer_status_rank(status text) returns integer
    language sql immutable strict
    return case status when 'requested' then 0 when 'review' then 1 when 'accepted' then 2
                       else 3 end;

-- Each status a transfer reached, once (the tracker may see an outcome twice).
create table transfer_status_history (
    transfer_id  uuid not null references transfer_status (transfer_id),
    status       text not null,
    reasons      text[] not null default '{}',
    at           timestamptz not null,
    primary key (transfer_id, status)
);

create table review_queue (
    transfer_id      uuid primary key,
    -- The accepted transfer as the validator wrote it: approving publishes it as is.
    payload          bytea not null,
    debit_account_id uuid not null,
    amount_minor     bigint not null check (amount_minor > 0),
    currency         char(3) not null,
    risk_score       integer not null,
    reasons          text[] not null,
    ruleset_version  text not null,
    held_at          timestamptz not null default now(),
    status           text not null default 'held'
                         check (status in ('held', 'approved', 'rejected', 'timed_out')),
    decided_by       text,
    decided_at       timestamptz,
    note             text,
    constraint decided_rows_say_who check ((status = 'held') = (decided_at is null))
);
create index review_queue_held on review_queue (held_at) where status = 'held';
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute("drop table review_queue; drop table transfer_status_history;")
    op.execute("drop table transfer_status; drop function transfer_status_rank(text);")
