"""Stage halts: a stage that stopped on purpose stays stopped until an operator clears it.

The poster halts when the database refuses many messages in a row (a schema or
deployment problem, not bad messages). Kept in a table, the halt survives a
restart: a restarted poster reads it and waits instead of dead-lettering the stream.
One row per halt; the open one (``cleared_at is null``) is unique per stage, and a
cleared row stays as the record of who cleared it and when.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        create table stage_halts (
            id bigint generated always as identity primary key,
            stage text not null,
            reason text not null,
            halted_at timestamptz not null default now(),
            cleared_at timestamptz,
            cleared_by text,
            note text,
            check ((cleared_at is null) = (cleared_by is null))
        )
        """
    )
    op.execute(
        "create unique index stage_halts_open on stage_halts (stage) where cleared_at is null"
    )


def downgrade() -> None:
    op.execute("drop table stage_halts")
