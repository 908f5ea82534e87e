"""Batch files with a submitter: ``batches`` and ``batch_lines``.

``batches`` records who handed each file in (``submitted_by``, a user), through which
channel (API, CLI, inbox), for which customer (``customer_id``: the only customer
whose accounts the file's lines may debit; ``on_behalf_of`` is set when a member of
staff submitted for that customer), and what came of it. A byte-identical file from
the same submitter for the same customer is one batch (``batches_one_per_file``): a
second submission is answered as a duplicate of the first. A refused file does not
count, so it may be handed in again once what refused it is put right.

``batch_lines`` holds every transaction of a batch in file order (``ordinal``): the
transfer id it was sent as, or why it was refused at the edge (``field``, ``reason``,
``code``). Statuses are not kept here: they are read from the ledger (``transfers``)
and, for what the ledger does not hold, from ``transfer_status``.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

UPGRADE = """
create table batches (
    id                   uuid primary key,
    submitted_by         uuid not null references users (id),
    -- The role the submitter had when the file was handed in.
    submitter_role       text not null,
    customer_id          uuid not null references customers (id),
    -- Set when a member of staff submitted for a customer (then the customer_id).
    on_behalf_of         uuid references customers (id),
    channel              text not null check (channel in ('api', 'cli', 'inbox')),
    format               text not null check (format in ('csv', 'jsonl', 'pain001')),
    digest               text not null check (digest ~ '^[0-9a-f]{64}$'),
    idempotency_key      text check (length(idempotency_key) between 1 and 128),
    file_name            text not null default '' check (length(file_name) <= 255),
    debtor_account       text,
    -- The pain.001 group header's MsgId, what a pain.002 refers back to.
    original_message_id  text,
    status               text not null default 'ingesting'
                             check (status in ('ingesting', 'ingested', 'refused')),
    refused_reason       text,
    lines_read           integer not null default 0 check (lines_read >= 0),
    requests_produced    integer not null default 0 check (requests_produced >= 0),
    lines_rejected       integer not null default 0 check (lines_rejected >= 0),
    created_at           timestamptz not null default now(),
    updated_at           timestamptz not null default now(),
    constraint staff_act_for_the_batch_customer
        check (on_behalf_of is null or on_behalf_of = customer_id),
    constraint refused_batches_say_why check ((status = 'refused') = (refused_reason is not null))
);
-- One batch per file, submitter, customer and debtor override: a byte-identical file is
-- a duplicate (its transfer ids are derived from the same four).
create unique index batches_one_per_file
    on batches (submitted_by, customer_id, digest, coalesce(debtor_account, ''))
    where status <> 'refused';
-- An Idempotency-Key names one batch of its submitter.
create unique index batches_by_key
    on batches (submitted_by, idempotency_key) where idempotency_key is not null;

create table batch_lines (
    batch_id     uuid not null references batches (id) on delete cascade,
    -- The transaction's place among the file's transactions, from 1.
    ordinal      integer not null check (ordinal > 0),
    -- Where the file says it is (a CSV line, a pain.001 transaction's number).
    line         integer not null,
    -- The transaction's key within the file (``line:12``, ``pmtinf:...``), when read.
    key          text,
    transfer_id  uuid,
    field        text,
    reason       text,
    code         text,
    primary key (batch_id, ordinal),
    constraint sent_or_refused check ((transfer_id is null) = (code is not null))
);
create index batch_lines_by_transfer on batch_lines (transfer_id) where transfer_id is not null;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute("drop table batch_lines; drop table batches;")
