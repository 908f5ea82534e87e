"""Persistent halts: recorded in PostgreSQL, cleared only by an operator.

``bankflow halt list`` shows them, ``bankflow halt clear STAGE --note TEXT`` clears
one; a halted stage notices within ``HALT_CHECK_S`` and resumes from its stored
position.

A halt covers a whole stage (``poster``) or one partition of it, named
``STAGE:TOPIC:PARTITION`` with the logical topic (``poster:transfers.accepted:2``):
a gap in that partition's log halts it and leaves the others running.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import class_row

from bankflow.errors import BankflowError

#: How often a running stage looks for a halt set or cleared elsewhere (another
#: instance halted, an operator cleared): one indexed lookup, so cheap.
HALT_CHECK_S = 5.0


class NoHalt(BankflowError):
    """The stage is not halted (nothing to clear)."""


@dataclass(frozen=True)
class Halt:
    id: int
    stage: str
    reason: str
    halted_at: datetime
    cleared_at: datetime | None
    cleared_by: str | None
    note: str | None

    def as_dict(self) -> dict[str, Any]:
        document = dict(self.__dict__)
        for name in ("halted_at", "cleared_at"):
            value = document[name]
            document[name] = value.isoformat() if value else None
        return document


_COLUMNS = "id, stage, reason, halted_at, cleared_at, cleared_by, note"


def record(conn: psycopg.Connection[Any], stage: str, reason: str) -> None:
    """Halt ``stage``; a stage already halted keeps its first reason."""
    conn.execute(
        "insert into stage_halts (stage, reason) values (%s, %s) "
        "on conflict (stage) where cleared_at is null do nothing",
        (stage, reason),
    )


def active(conn: psycopg.Connection[Any], stage: str) -> Halt | None:
    cursor = conn.cursor(row_factory=class_row(Halt))
    return cursor.execute(
        f"select {_COLUMNS} from stage_halts where stage = %s and cleared_at is null",  # noqa: S608
        (stage,),
    ).fetchone()


def listing(conn: psycopg.Connection[Any], include_cleared: bool = False) -> list[Halt]:
    cursor = conn.cursor(row_factory=class_row(Halt))
    return cursor.execute(
        f"select {_COLUMNS} from stage_halts "  # noqa: S608
        "where %s or cleared_at is null order by id",
        (include_cleared,),
    ).fetchall()


def clear(conn: psycopg.Connection[Any], stage: str, actor: str, note: str) -> Halt:
    """Clear the open halt of ``stage``; raises ``NoHalt`` when there is none."""
    cursor = conn.cursor(row_factory=class_row(Halt))
    cleared = cursor.execute(
        f"update stage_halts set cleared_at = now(), cleared_by = %s, note = %s "  # noqa: S608
        f"where stage = %s and cleared_at is null returning {_COLUMNS}",
        (actor, note, stage),
    ).fetchone()
    if cleared is None:
        raise NoHalt(f"{stage} is not halted")
    return cleared


def partition_scope(stage: str, topic: str, partition: int) -> str:
    """The name a partition's halt is kept under (``topic`` logical, without prefix)."""
    return f"{stage}:{topic}:{partition}"


def parse_partition_scope(scope: str) -> tuple[str, str, int] | None:
    """Stage, logical topic and partition of a partition's halt; None for a stage's."""
    stage, _, rest = scope.partition(":")
    topic, _, number = rest.rpartition(":")
    if not stage or not topic or not number.isdigit():
        return None
    return stage, topic, int(number)


def open_scopes(conn: psycopg.Connection[Any], stage: str) -> set[str]:
    """The names of the open partition halts of ``stage``."""
    rows = conn.execute(
        "select stage from stage_halts where stage like %s and cleared_at is null",
        (f"{stage}:%",),
    ).fetchall()
    return {r[0] for r in rows}


class Halts:
    """A stage's view of its halt, over the stage's own connection (a callable, since the
    stage reopens its connection after an outage)."""

    def __init__(self, stage: str, connection: Any) -> None:
        self.stage = stage
        self._connection = connection

    def active(self) -> Halt | None:
        return active(self._connection(), self.stage)

    def record(self, reason: str) -> None:
        record(self._connection(), self.stage, reason)

    def record_partition(self, topic: str, partition: int, reason: str) -> None:
        record(self._connection(), partition_scope(self.stage, topic, partition), reason)

    def open_partitions(self) -> set[tuple[str, int]]:
        """(logical topic, partition) of every open partition halt of the stage."""
        found = set()
        for scope in open_scopes(self._connection(), self.stage):
            parsed = parse_partition_scope(scope)
            if parsed is not None:
                found.add((parsed[1], parsed[2]))
        return found
