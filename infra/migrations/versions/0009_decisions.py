"""Decisions made once: the validator's first decision for each transfer id.

A copy of a request (the API's second attempt after a timeout, a replayed dead letter,
a message back from a retry tier) must get the decision the first one got, never a
new one, or a transfer could be rejected by one copy and posted by another. The
validator writes each decision here before it commits the Kafka transaction that
publishes it, and answers a transfer id it finds here with the stored decision: a
batch whose transaction aborts is redone with the decisions it stored, so what Kafka
ends up with is always what this table says.

``value`` is the decision message as published (an accepted, held or rejected
transfer); ``topic`` is its logical topic. Transient outcomes (a retry tier) and
poison are not decisions and are not kept.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        create table validator_decisions (
            transfer_id  uuid primary key,
            topic        text not null check (topic in
                             ('transfers.accepted', 'transfers.review', 'transfers.rejected')),
            key          bytea,
            value        bytea not null,
            decided_at   timestamptz not null default now()
        )
        """
    )


def downgrade() -> None:
    op.execute("drop table validator_decisions")
