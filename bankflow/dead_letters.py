"""The dead_letters table: storing what reached transfers.dlq, listing it, resolving it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from bankflow.errors import BankflowError
from schemas import headers as h

COLUMNS = (
    "id, original_topic, original_partition, original_offset, key, payload, headers, "
    "error_class, reason, attempts, first_failure_at, last_failure_at, status"
)


class DeadLetterNotFound(BankflowError):
    """No dead letter has that id (or it is not open)."""


@dataclass(frozen=True)
class DeadLetter:
    id: int
    original_topic: str
    original_partition: int
    original_offset: int
    key: bytes | None
    payload: bytes | None
    headers: dict[str, str]
    error_class: str
    reason: str
    attempts: int
    first_failure_at: datetime
    last_failure_at: datetime
    status: str

    def as_dict(self, payload: bool = False) -> dict[str, Any]:
        document = {k: v for k, v in self.__dict__.items() if k not in ("key", "payload")}
        document["first_failure_at"] = self.first_failure_at.isoformat()
        document["last_failure_at"] = self.last_failure_at.isoformat()
        if payload:
            document["key"] = self.key.decode(errors="replace") if self.key else None
            document["payload"] = self.payload.decode(errors="replace") if self.payload else None
        return document


def store(
    conn: psycopg.Connection[Any],
    key: bytes | None,
    payload: bytes | None,
    headers: dict[str, str],
    where: tuple[str, int, int],
) -> None:
    """Record one message from the dead-letter topic; a repeat only counts an attempt.

    ``where`` is the message's own place on the dead-letter topic: it stands in for the
    original coordinates when the headers (which anyone who can write to the topic
    writes) do not carry usable ones.
    """
    topic = headers.get(h.ORIGINAL_TOPIC) or where[0]
    partition = _count(headers.get(h.ORIGINAL_PARTITION), PARTITION_DIGITS_MAX)
    offset = _count(headers.get(h.ORIGINAL_OFFSET), OFFSET_DIGITS_MAX)
    if partition is None or offset is None:
        topic, partition, offset = where
    conn.execute(
        "insert into dead_letters (original_topic, original_partition, original_offset, key, "
        "payload, headers, error_class, reason, attempts, first_failure_at) "
        "values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
        # The same message again (a redelivery after a crash, or anyone writing it twice):
        # one more attempt, and a letter already replayed or discarded stays so; it never
        # reopens, so the next `replay --all` cannot send a discarded letter after all.
        "on conflict (original_topic, original_partition, original_offset) do update set "
        "attempts = dead_letters.attempts + 1, last_failure_at = now(), "
        "reason = excluded.reason, error_class = excluded.error_class",
        (
            topic, partition, offset, key, payload, Jsonb(headers),
            headers.get(h.ERROR_CLASS, "unknown"),
            headers.get(h.ERROR_MESSAGE, "no reason given"),
            # Attempts and the first failure as the retry tiers counted them.
            max(1, _count(headers.get(h.ATTEMPT), ATTEMPT_DIGITS_MAX) or 1),
            _time(headers.get(h.FIRST_FAILURE_AT)) or datetime.now(UTC),
        ),
    )  # fmt: skip


#: Bounds of what a header may say about coordinates: a partition number fits an
#: ``int``, an offset a ``bigint``, an attempt count is small.
PARTITION_DIGITS_MAX = 9
OFFSET_DIGITS_MAX = 18
ATTEMPT_DIGITS_MAX = 6


def _count(text: str | None, digits_max: int) -> int | None:
    if not text or not text.isascii() or not text.isdigit() or len(text) > digits_max:
        return None
    return int(text)


def _time(text: str | None) -> datetime | None:
    """An ISO 8601 time with a zone, or None for anything else."""
    try:
        at = datetime.fromisoformat(text) if text else None
    except ValueError:
        return None
    return at if at is not None and at.tzinfo is not None else None


def list_open(
    conn: psycopg.Connection[Any], status: str = "open", reason: str | None = None
) -> list[DeadLetter]:
    cursor = conn.cursor(row_factory=class_row(DeadLetter))
    return cursor.execute(
        f"select {COLUMNS} from dead_letters where status = %s "  # noqa: S608
        "and (%s::text is null or reason ilike '%%' || %s || '%%') order by id",
        (status, reason, reason),
    ).fetchall()


def get(conn: psycopg.Connection[Any], dead_letter_id: int) -> DeadLetter:
    cursor = conn.cursor(row_factory=class_row(DeadLetter))
    found = cursor.execute(
        f"select {COLUMNS} from dead_letters where id = %s",  # noqa: S608
        (dead_letter_id,),
    ).fetchone()
    if found is None:
        raise DeadLetterNotFound(f"no dead letter {dead_letter_id}")
    return found


def claim(conn: psycopg.Connection[Any], dead_letter_id: int) -> DeadLetter:
    """Lock an open dead letter until the caller's transaction ends.

    ``bankflow dlq replay`` claims a letter, publishes it and marks it replayed in one
    transaction: a ``discard`` of the same letter meanwhile waits for the lock and then
    finds it replayed (and the other way round), so exactly one of them wins.
    """
    cursor = conn.cursor(row_factory=class_row(DeadLetter))
    found = cursor.execute(
        f"select {COLUMNS} from dead_letters where id = %s and status = 'open' "  # noqa: S608
        "for update",
        (dead_letter_id,),
    ).fetchone()
    if found is None:
        raise DeadLetterNotFound(f"no open dead letter {dead_letter_id}")
    return found


def resolve(
    conn: psycopg.Connection[Any], dead_letter_id: int, action: str, actor: str, note: str | None
) -> None:
    """Mark an open dead letter replayed or discarded, and record who did it and why."""
    status = "replayed" if action == "replay" else "discarded"
    with conn.transaction():
        row = conn.execute(
            "update dead_letters set status = %s where id = %s and status = 'open' returning id",
            (status, dead_letter_id),
        ).fetchone()
        if row is None:
            raise DeadLetterNotFound(f"no open dead letter {dead_letter_id}")
        conn.execute(
            "insert into dead_letter_actions (dead_letter_id, action, actor, note) "
            "values (%s, %s, %s, %s)",
            (dead_letter_id, action, actor, note),
        )
