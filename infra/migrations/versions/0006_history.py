"""Entries by account and time: statements and the history's from/to filters.

``entries_history`` (0002) serves a page of an account's history by entry id, at a
cost independent of the account's size. A month (a statement) or a time filter
needs the account's entries by ``posted_at``; without this index those reads walk
the account's history back from the newest entry, a million index tuples for an
old month of a busy account. Key only, no included columns: the reads that use it
join ``transfers`` anyway, and a narrow index costs the poster's writes less.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("create index entries_by_time on entries (account_id, posted_at, id)")


def downgrade() -> None:
    op.execute("drop index entries_by_time")
