"""Dead letters: every message that ended in transfers.dlq, and what staff did about it.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UPGRADE = """
create table dead_letters (
    id                  bigint generated always as identity primary key,
    original_topic      text not null,
    original_partition  integer not null,
    original_offset     bigint not null,
    key                 bytea,
    payload             bytea,
    headers             jsonb not null default '{}',
    error_class         text not null,
    reason              text not null,
    attempts            integer not null default 1 check (attempts >= 1),
    first_failure_at    timestamptz not null default now(),
    last_failure_at     timestamptz not null default now(),
    status              text not null default 'open'
                            check (status in ('open', 'replayed', 'discarded')),
    -- One row per poisoned position: the sink may see the same dead letter twice.
    unique (original_topic, original_partition, original_offset)
);
create index dead_letters_open on dead_letters (id) where status = 'open';

-- What staff did with dead letters, until the tamper-evident audit log exists.
create table dead_letter_actions (
    id              bigint generated always as identity primary key,
    dead_letter_id  bigint not null references dead_letters (id),
    action          text not null check (action in ('replay', 'discard')),
    actor           text not null,
    note            text,
    at              timestamptz not null default now()
);
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute("drop table dead_letter_actions; drop table dead_letters;")
