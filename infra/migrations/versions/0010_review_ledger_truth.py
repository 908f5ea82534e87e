"""The ledger as the truth for statuses, and what a reviewer needs to see.

- ``transfer_status_rank``: the ledger's outcomes (posted, failed) rank above a
  refusal (rejected, by the rules or a reviewer), so a posting of the same
  transfer id replaces a ``rejected`` or ``review`` status, and nothing replaces
  posted or failed. ``transfer_status_history`` keeps every status reached.
- ``review_queue``: the beneficiary's account id, for the reviewer's view; and the
  status ``superseded``, for a held transfer that reached the ledger (through a
  copy) before anyone decided it, so nobody can decide it any more.
- An index for ``bankflow verify``'s check of accepted transfers that never
  reached the ledger (accepted statuses are few and transient).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

UPGRADE = """
create or replace function transfer_status_rank(status text) returns integer
    language sql immutable strict
    return case status when 'requested' then 0 when 'review' then 1 when 'accepted' then 2
                       when 'rejected' then 3 else 4 end;

alter table review_queue add column credit_account_id uuid;
-- Held rows from before this column: the validator's message names the beneficiary.
update review_queue
   set credit_account_id = (convert_from(payload, 'UTF8')::jsonb ->> 'credit_account_id')::uuid;

alter table review_queue drop constraint review_queue_status_check;
alter table review_queue add constraint review_queue_status_check
    check (status in ('held', 'approved', 'rejected', 'timed_out', 'superseded'));

create index transfer_status_accepted on transfer_status (updated_at)
    where status = 'accepted';
"""

DOWNGRADE = """
drop index transfer_status_accepted;
update review_queue set status = 'timed_out' where status = 'superseded';
alter table review_queue drop constraint review_queue_status_check;
alter table review_queue add constraint review_queue_status_check
    check (status in ('held', 'approved', 'rejected', 'timed_out'));
alter table review_queue drop column credit_account_id;
create or replace function transfer_status_rank(status text) returns integer
    language sql immutable strict
    return case status when 'requested' then 0 when 'review' then 1 when 'accepted' then 2
                       else 3 end;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
