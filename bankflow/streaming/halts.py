"""Persistent halts: recorded in PostgreSQL, cleared only by an operator.

``bankflow halt list`` shows them, ``bankflow halt clear STAGE --note TEXT`` clears
one; a halted stage notices within ``HALT_CHECK_S`` and resumes from its stored
position.
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
