"""Idempotency fingerprints and dead-letter actions (placeholder: filled in by the work on issue 12).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("select 1")


def downgrade() -> None:
    op.execute("select 1")
