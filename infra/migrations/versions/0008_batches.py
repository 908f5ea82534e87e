"""Batch files with a submitter (placeholder: filled in by the work on issue 12).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("select 1")


def downgrade() -> None:
    op.execute("select 1")
