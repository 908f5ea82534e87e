"""Writing one batch of accepted transfers into the ledger, in one transaction.

In that one PostgreSQL transaction: the stored consumer offsets of the batch's
partitions are locked and checked (the zombie guard), the touched accounts are
locked in id order (no deadlock between poster instances), the posting rules
decide, and transfers, entries, balances, the new offsets and the outbox events
are written with set-based SQL. Either all of it commits or none of it does.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
from psycopg.types.json import Jsonb

from bankflow.domain.posting import (
    AccountState,
    AccountStatus,
    AccountType,
    BatchResult,
    Outcome,
    TransferInstruction,
    post_batch,
    touched_accounts,
)
from bankflow.ledger.errors import OffsetsMoved
from schemas import headers as h
from schemas.transfers import AcceptedTransfer, event_id_for

TopicPartitionKey = tuple[str, int]


@dataclass(frozen=True, slots=True)
class ConsumedTransfer:
    """An accepted transfer with the Kafka position it was read from."""

    transfer: AcceptedTransfer
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that can never be posted, with the reason, bound for the dead-letter topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    error_class: str
    error_message: str


@dataclass(frozen=True, slots=True)
class OffsetRange:
    """Where a partition's stored offset must stand before the batch, and after it."""

    expected: int | None  # None: no offset stored yet for this partition
    next_offset: int


@dataclass(frozen=True, slots=True)
class Topics:
    """Full names (prefix included) of the topics the poster's events go to."""

    posted: str
    failed: str
    dlq: str


@dataclass
class BatchSummary:
    posted: int = 0
    failed: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    failure_reasons: dict[str, int] = field(default_factory=dict)
    #: For the poster's metrics: minor units posted per currency, and when each posted
    #: transfer was requested (its request-to-posted latency ends at the commit).
    posted_minor: dict[str, int] = field(default_factory=dict)
    posted_requested_at: list[datetime] = field(default_factory=list)


def write_batch(  # noqa: PLR0917 - the batch's parts, each named at every call
    conn: psycopg.Connection[Any],
    group_id: str,
    ranges: Mapping[TopicPartitionKey, OffsetRange],
    transfers: Sequence[ConsumedTransfer],
    dead_letters: Sequence[DeadLetter],
    topics: Topics,
) -> BatchSummary:
    """Post ``transfers``, dead-letter ``dead_letters`` and move the offsets, atomically.

    Raises ``OffsetsMoved`` (and writes nothing) when a partition's stored offset is
    not ``expected``: another poster instance has taken the partition over.
    """
    with conn.transaction():
        _check_and_lock_offsets(conn, group_id, ranges)
        fresh, duplicates = _new_transfers(conn, transfers)
        result = _decide(conn, fresh)
        write_prepared(conn, prepare(fresh, result, topics, datetime.now(UTC)))
        _store_offsets(conn, group_id, ranges)
        _insert_dead_letters(conn, [_dead_letter_row(d, topics.dlq) for d in dead_letters])
    return _summarise(fresh, result.outcomes, duplicates, len(dead_letters))


def _check_and_lock_offsets(
    conn: psycopg.Connection[Any], group_id: str, ranges: Mapping[TopicPartitionKey, OffsetRange]
) -> None:
    keys = sorted(ranges)
    rows = conn.execute(
        "select topic, partition, next_offset from consumer_offsets "
        "where group_id = %s and (topic, partition) in "
        "(select * from unnest(%s::text[], %s::int[])) "
        "order by topic, partition for update",
        (group_id, [k[0] for k in keys], [k[1] for k in keys]),
    ).fetchall()
    stored = {(topic, partition): offset for topic, partition, offset in rows}
    moved = [k for k in keys if stored.get(k) != ranges[k].expected]
    if moved:
        raise OffsetsMoved(
            "stored offsets moved for "
            + ", ".join(
                f"{t}[{p}] (expected {ranges[(t, p)].expected}, stored {stored.get((t, p))})"
                for t, p in moved
            )
        )


def _new_transfers(
    conn: psycopg.Connection[Any], transfers: Sequence[ConsumedTransfer]
) -> tuple[list[ConsumedTransfer], int]:
    """The transfers not yet in the ledger, each once, in consumption order."""
    ids = [c.transfer.transfer_id for c in transfers]
    seen = {row[0] for row in conn.execute("select id from transfers where id = any(%s)", (ids,))}
    fresh = []
    for consumed in transfers:
        if consumed.transfer.transfer_id not in seen:
            seen.add(consumed.transfer.transfer_id)
            fresh.append(consumed)
    return fresh, len(transfers) - len(fresh)


def _decide(conn: psycopg.Connection[Any], fresh: Sequence[ConsumedTransfer]) -> BatchResult:
    instructions = [
        TransferInstruction(
            c.transfer.transfer_id,
            c.transfer.debit_account_id,
            c.transfer.credit_account_id,
            c.transfer.amount_minor,
            c.transfer.currency,
        )
        for c in fresh
    ]
    ids = sorted(touched_accounts(instructions))
    # Locked in id order: two posters touching the same accounts queue, never deadlock.
    rows = conn.execute(
        "select id, type, currency, status, balance_minor, overdraft_limit_minor "
        "from accounts where id = any(%s) order by id for update",
        (ids,),
    ).fetchall()
    accounts = {
        row[0]: AccountState(
            row[0], AccountType(row[1]), row[2], AccountStatus(row[3]), row[4], row[5]
        )
        for row in rows
    }
    return post_batch(accounts, instructions)


# Column types for binary COPY. char(3) takes text's binary form, so currency is "text".
TRANSFER_COLUMNS = (
    ("id", "uuid"), ("source", "text"), ("debit_account_id", "uuid"),
    ("credit_account_id", "uuid"), ("amount_minor", "int8"), ("currency", "text"),
    ("status", "text"), ("reason", "text"), ("category", "text"), ("tags", "text[]"),
    ("description", "text"), ("reference", "text"), ("requested_by", "text"),
    ("correlation_id", "text"), ("requested_at", "timestamptz"), ("posted_at", "timestamptz"),
    ("kafka_topic", "text"), ("kafka_partition", "int4"), ("kafka_offset", "int8"),
)  # fmt: skip
ENTRY_COLUMNS = (
    ("transfer_id", "uuid"), ("account_id", "uuid"), ("amount_minor", "int8"),
    ("balance_after_minor", "int8"), ("posted_at", "timestamptz"),
)  # fmt: skip
OUTBOX_COLUMNS = (
    ("event_id", "uuid"), ("topic", "text"), ("key", "bytea"), ("payload", "bytea"),
    ("headers", "jsonb"), ("transfer_id", "uuid"),
)  # fmt: skip


def _copy_rows(
    conn: psycopg.Connection[Any],
    table: str,
    columns: tuple[tuple[str, str], ...],
    rows: Iterable[tuple[Any, ...]],
) -> None:
    """COPY rows in PostgreSQL's binary format: the fastest way in, typed in C."""
    names = ", ".join(name for name, _ in columns)
    with conn.cursor().copy(f"copy {table} ({names}) from stdin (format binary)") as copy:
        copy.set_types([type_name for _, type_name in columns])
        for row in rows:
            copy.write_row(row)


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    """Every row one batch writes, computed before the database is touched."""

    transfers: list[tuple[Any, ...]]
    entries: list[tuple[Any, ...]]
    balances: dict[uuid.UUID, int]
    events: list[OutboxRow]


def prepare(
    fresh: Sequence[ConsumedTransfer], result: BatchResult, topics: Topics, now: datetime
) -> PreparedBatch:
    transfers = [
        (t.transfer_id, t.source.value, t.debit_account_id, t.credit_account_id, t.amount_minor,
         t.currency, outcome.status, outcome.reason.value if outcome.reason else None,
         t.category, t.tags, t.description, t.reference, t.requested_by, t.correlation_id,
         t.requested_at, now if outcome.status == "posted" else None,
         c.topic, c.partition, c.offset)
        for c, outcome in zip(fresh, result.outcomes, strict=True)
        for t in (c.transfer,)
    ]  # fmt: skip
    entries = [
        (e.transfer_id, e.account_id, e.amount_minor, e.balance_after_minor, now)
        for outcome in result.outcomes
        for e in outcome.entries
    ]
    return PreparedBatch(
        transfers, entries, result.balances, _events(fresh, result.outcomes, topics, now)
    )


def write_prepared(conn: psycopg.Connection[Any], batch: PreparedBatch) -> None:
    """The ledger writes of one batch, set-based: binary COPY and one UPDATE."""
    if batch.transfers:
        _copy_rows(conn, "transfers", TRANSFER_COLUMNS, batch.transfers)
    if batch.entries:
        _copy_rows(conn, "entries", ENTRY_COLUMNS, batch.entries)
    _update_balances(conn, batch.balances)
    # Events of transfers new to the ledger: their ids cannot exist yet, so COPY them.
    if batch.events:
        _copy_rows(conn, "outbox", OUTBOX_COLUMNS, batch.events)


def _update_balances(conn: psycopg.Connection[Any], balances: dict[uuid.UUID, int]) -> None:
    if not balances:
        return
    conn.execute(
        "update accounts a set balance_minor = v.balance, version = a.version + 1, "
        "updated_at = now() "
        "from unnest(%s::uuid[], %s::bigint[]) as v(id, balance) where a.id = v.id",
        (list(balances), list(balances.values())),
    )


def _store_offsets(
    conn: psycopg.Connection[Any], group_id: str, ranges: Mapping[TopicPartitionKey, OffsetRange]
) -> None:
    known = [k for k in sorted(ranges) if ranges[k].expected is not None]
    new = [k for k in sorted(ranges) if ranges[k].expected is None]
    if known:
        conn.execute(
            "update consumer_offsets o set next_offset = v.next_offset, updated_at = now() "
            "from unnest(%s::text[], %s::int[], %s::bigint[]) as v(topic, partition, next_offset) "
            "where o.group_id = %s and o.topic = v.topic and o.partition = v.partition",
            (
                [k[0] for k in known],
                [k[1] for k in known],
                [ranges[k].next_offset for k in known],
                group_id,
            ),
        )
    if new:
        try:
            with conn.transaction():  # a savepoint: a racing first insert is "offsets moved"
                conn.execute(
                    "insert into consumer_offsets (group_id, topic, partition, next_offset) "
                    "select %s, * from unnest(%s::text[], %s::int[], %s::bigint[])",
                    (
                        group_id,
                        [k[0] for k in new],
                        [k[1] for k in new],
                        [ranges[k].next_offset for k in new],
                    ),
                )
        except psycopg.errors.UniqueViolation as exc:
            raise OffsetsMoved(f"another poster stored offsets first for {new}") from exc


OutboxRow = tuple[uuid.UUID, str, bytes | None, bytes | None, Jsonb | None, uuid.UUID | None]


def _events(
    fresh: Sequence[ConsumedTransfer], outcomes: Sequence[Outcome], topics: Topics, now: datetime
) -> list[OutboxRow]:
    """One ``TransferEvent`` per transfer, serialised straight from plain values.

    The poster builds thousands per batch, so it skips pydantic here; the tests
    validate what it writes against ``TransferEvent``, which stays the contract.
    """
    rows: list[OutboxRow] = []
    occurred_at = now.isoformat()
    for consumed, outcome in zip(fresh, outcomes, strict=True):
        t = consumed.transfer
        posted = outcome.status == "posted"
        event_type = "transfer.posted" if posted else "transfer.failed"
        event_id = event_id_for(t.transfer_id, event_type)
        # post_batch writes a posted transfer's entries as (debit, credit).
        debit_after, credit_after = (
            (outcome.entries[0].balance_after_minor, outcome.entries[1].balance_after_minor)
            if posted
            else (None, None)
        )
        payload = orjson.dumps(
            {
                "event_id": event_id,
                "event_type": event_type,
                "transfer_id": t.transfer_id,
                "status": outcome.status,
                "reason": outcome.reason.value if outcome.reason else None,
                "debit_account_id": t.debit_account_id,
                "credit_account_id": t.credit_account_id,
                "amount_minor": t.amount_minor,
                "currency": t.currency,
                "debit_balance_after_minor": debit_after,
                "credit_balance_after_minor": credit_after,
                "occurred_at": occurred_at,
                "requested_at": t.requested_at,
                "correlation_id": t.correlation_id,
            }
        )
        # The relay adds the event-id header from the event_id column; only extra
        # headers are stored.
        headers = (
            Jsonb({h.CORRELATION_ID: t.correlation_id}, dumps=orjson.dumps)
            if t.correlation_id
            else None
        )
        rows.append(
            (
                event_id,
                topics.posted if posted else topics.failed,
                str(t.transfer_id).encode(),
                payload,
                headers,
                t.transfer_id,
            )
        )
    return rows


def dead_letter_event_id(topic: str, partition: int, offset: int) -> uuid.UUID:
    """One id per poisoned position: dead-lettering the same message again is a no-op."""
    return event_id_for(
        uuid.uuid5(uuid.NAMESPACE_URL, f"kafka:{topic}:{partition}:{offset}"), "dead_letter"
    )


def _dead_letter_row(letter: DeadLetter, dlq_topic: str) -> OutboxRow:
    now = datetime.now(UTC).isoformat()
    headers = {
        h.EVENT_ID: str(dead_letter_event_id(letter.topic, letter.partition, letter.offset)),
        h.ORIGINAL_TOPIC: letter.topic,
        h.ORIGINAL_PARTITION: str(letter.partition),
        h.ORIGINAL_OFFSET: str(letter.offset),
        h.ATTEMPT: "1",
        h.ERROR_CLASS: letter.error_class,
        h.ERROR_MESSAGE: letter.error_message[:1000],
        h.FIRST_FAILURE_AT: now,
    }
    return (
        dead_letter_event_id(letter.topic, letter.partition, letter.offset),
        dlq_topic,
        letter.key,
        letter.value,
        Jsonb(headers, dumps=orjson.dumps),
        None,
    )


def _insert_dead_letters(conn: psycopg.Connection[Any], rows: list[OutboxRow]) -> None:
    """Dead letters may repeat (a replay from offset 0): the first one of an id stands."""
    for row in rows:
        conn.execute(
            "insert into outbox (event_id, topic, key, payload, headers, transfer_id) "
            "values (%s, %s, %s, %s, %s, %s) on conflict (event_id) do nothing",
            row,
        )


def _summarise(
    fresh: Sequence[ConsumedTransfer],
    outcomes: Sequence[Outcome],
    duplicates: int,
    dead_letters: int,
) -> BatchSummary:
    summary = BatchSummary(duplicates=duplicates, dead_letters=dead_letters)
    for consumed, outcome in zip(fresh, outcomes, strict=True):
        if outcome.status == "posted":
            summary.posted += 1
            t = consumed.transfer
            summary.posted_minor[t.currency] = summary.posted_minor.get(t.currency, 0) + (
                t.amount_minor
            )
            summary.posted_requested_at.append(t.requested_at)
        else:
            summary.failed += 1
            reason = outcome.reason.value if outcome.reason else "unknown"
            summary.failure_reasons[reason] = summary.failure_reasons.get(reason, 0) + 1
    return summary


def load_offsets(
    conn: psycopg.Connection[Any], group_id: str, keys: Sequence[TopicPartitionKey]
) -> dict[TopicPartitionKey, int]:
    """The stored next offset of each partition that has one."""
    rows = conn.execute(
        "select topic, partition, next_offset from consumer_offsets "
        "where group_id = %s and (topic, partition) in "
        "(select * from unnest(%s::text[], %s::int[]))",
        (group_id, [k[0] for k in keys], [k[1] for k in keys]),
    ).fetchall()
    return {(topic, partition): offset for topic, partition, offset in rows}
