"""Review queue details and the ledger as the truth for statuses (placeholder: filled in by the work on issue 12).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("select 1")


def downgrade() -> None:
    op.execute("select 1")
