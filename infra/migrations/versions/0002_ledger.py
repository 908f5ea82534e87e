"""Ledger: customers, accounts, transfers, entries, consumer offsets, outbox.

The constraints here are the last line of defence behind the posting rules:
unique transfer ids, positive amounts, the overdraft floor, and entries of every
transfer summing to zero.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UPGRADE = """
create table customers (
    id          uuid primary key,
    kind        text not null default 'person' check (kind in ('person', 'business', 'bank')),
    full_name   text not null check (length(full_name) between 1 and 200),
    email       text unique,
    created_at  timestamptz not null default now()
);

-- Account numbers for generated IBANs; never reused, even after a rollback.
create sequence account_number_seq;

create table accounts (
    id                     uuid primary key,
    customer_id            uuid not null references customers (id),
    iban                   text not null unique check (iban ~ '^[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}$'),
    type                   text not null check (type in
                               ('checking', 'savings', 'cash', 'settlement', 'fees', 'suspense')),
    currency               char(3) not null check (currency ~ '^[A-Z]{3}$'),
    status                 text not null default 'active'
                               check (status in ('active', 'frozen', 'closed')),
    balance_minor          bigint not null default 0,
    pending_debit_minor    bigint not null default 0 check (pending_debit_minor >= 0),
    pending_credit_minor   bigint not null default 0 check (pending_credit_minor >= 0),
    overdraft_limit_minor  bigint not null default 0 check (overdraft_limit_minor >= 0),
    version                bigint not null default 0,
    created_at             timestamptz not null default now(),
    updated_at             timestamptz not null default now(),
    -- The bank's own accounts balance the customers' and have no floor.
    constraint balance_above_overdraft_floor check (
        type in ('cash', 'settlement', 'fees', 'suspense')
        or balance_minor - pending_debit_minor >= -overdraft_limit_minor
    ),
    constraint savings_have_no_overdraft check (type <> 'savings' or overdraft_limit_minor = 0)
);
create index accounts_by_customer on accounts (customer_id);
-- One bank-owned account of each internal type per currency.
create unique index one_internal_account_per_currency on accounts (type, currency)
    where type in ('cash', 'settlement', 'fees', 'suspense');

create table transfers (
    id                 uuid primary key,
    source             text not null check (source in ('api', 'batch', 'external')),
    -- No foreign keys: a transfer naming an unknown account is recorded as failed.
    debit_account_id   uuid not null,
    credit_account_id  uuid not null,
    amount_minor       bigint not null check (amount_minor > 0),
    currency           char(3) not null,
    status             text not null check (status in ('pending', 'posted', 'failed', 'voided')),
    reason             text,
    category           text,
    tags               text[] not null default '{}',
    description        text not null default '',
    reference          text,
    requested_by       text,
    correlation_id     text,
    requested_at       timestamptz not null,
    created_at         timestamptz not null default now(),
    posted_at          timestamptz,
    kafka_topic        text,
    kafka_partition    integer,
    kafka_offset       bigint,
    constraint failed_transfers_say_why check ((status = 'failed') = (reason is not null))
);

create table entries (
    id                   bigint generated always as identity primary key,
    transfer_id          uuid not null references transfers (id),
    account_id           uuid not null references accounts (id),
    amount_minor         bigint not null check (amount_minor <> 0),
    balance_after_minor  bigint not null,
    posted_at            timestamptz not null default now()
);
-- History of an account, newest first, paged by the entry id as cursor: index-only.
create index entries_history on entries (account_id, id desc)
    include (transfer_id, amount_minor, balance_after_minor, posted_at);
create index entries_by_transfer on entries (transfer_id) include (amount_minor);

-- Entries of a transfer sum to zero. A statement-level trigger over the new rows
-- (both legs are written in one statement) checks every transfer the statement
-- touched, counting legs written before it too.
create function entries_balance_per_transfer() returns trigger
language plpgsql as $$
declare
    unbalanced uuid;
begin
    select e.transfer_id into unbalanced
    from entries e
    where e.transfer_id in (select distinct transfer_id from new_entries)
    group by e.transfer_id
    having sum(e.amount_minor) <> 0
    limit 1;
    if unbalanced is not null then
        raise exception 'entries of transfer % do not sum to zero', unbalanced
            using errcode = 'check_violation';
    end if;
    return null;
end $$;

create trigger entries_sum_to_zero
    after insert on entries
    referencing new table as new_entries
    for each statement execute function entries_balance_per_transfer();

-- The ledger is append-only: entries are never changed or removed.
create function entries_are_immutable() returns trigger
language plpgsql as $$
begin
    raise exception 'ledger entries are append-only (% refused)', tg_op
        using errcode = 'insufficient_privilege';
end $$;

create trigger entries_append_only
    before update or delete on entries
    for each statement execute function entries_are_immutable();

-- Where each consumer group stands, stored with the effects of what it consumed.
create table consumer_offsets (
    group_id     text not null,
    topic        text not null,
    partition    integer not null,
    next_offset  bigint not null check (next_offset >= 0),
    updated_at   timestamptz not null default now(),
    primary key (group_id, topic, partition)
);

-- Events for the outside world, written in the transaction that caused them and
-- published by the relay. Payloads are bytes: a dead letter keeps what arrived.
create table outbox (
    id           bigint generated always as identity primary key,
    event_id     uuid not null unique,
    topic        text not null,
    key          bytea,
    payload      bytea,
    -- Extra Kafka headers; the relay always adds bankflow-event-id from event_id.
    headers      jsonb,
    transfer_id  uuid,
    created_at   timestamptz not null default now(),
    sent_at      timestamptz
);
create index outbox_by_transfer on outbox (transfer_id) where transfer_id is not null;
create index outbox_unsent on outbox (id) where sent_at is null;
"""

DOWNGRADE = """
drop table outbox;
drop table consumer_offsets;
drop table entries;
drop function entries_are_immutable;
drop function entries_balance_per_transfer;
drop table transfers;
drop table accounts;
drop sequence account_number_seq;
drop table customers;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
