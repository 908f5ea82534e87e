"""An account's history, newest first, a page at a time: cursors, filters, where to go on.

Pages are keyed by the entry id (keyset pagination): a page holds entries with ids
below the cursor, newest first, so a page costs the same however deep it is and
entries posted meanwhile never shift it. Each request examines a bounded window of
the account's entries (``scan_max``); with filters that match little, a page may
come back short (even empty) with a cursor to go on from: the end of the history is
when there is no cursor, not when a page is short.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal

from bankflow.domain.errors import DomainError

#: Cursors start with a version, so their format can change without misreading old ones.
CURSOR_VERSION: Final = "e1"
#: Entry ids are PostgreSQL bigints.
ENTRY_ID_MAX: Final = 2**63 - 1
#: Cursors are short; anything longer is not one of ours.
CURSOR_LENGTH_MAX: Final = 64

Direction = Literal["in", "out"]


class InvalidCursor(DomainError):
    """A page cursor that this API did not hand out (or that was altered)."""


class InvalidHistoryQuery(DomainError):
    """Filters that contradict each other (``from`` after ``to``, min above max)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def encode_cursor(entry_id: int) -> str:
    """The opaque cursor for "entries older than ``entry_id``"."""
    if not 0 < entry_id <= ENTRY_ID_MAX:
        raise ValueError(f"entry id {entry_id} is out of range")
    raw = f"{CURSOR_VERSION}:{entry_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The entry id a cursor stands for; ``InvalidCursor`` for anything else."""
    if not cursor or len(cursor) > CURSOR_LENGTH_MAX or not cursor.isascii():
        raise InvalidCursor("not a cursor this API handed out")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidCursor("not a cursor this API handed out") from None
    version, _, number = raw.partition(":")
    if version != CURSOR_VERSION or not number.isdigit() or len(number) > 19:
        raise InvalidCursor("not a cursor this API handed out")
    entry_id = int(number)
    if not 0 < entry_id <= ENTRY_ID_MAX:
        raise InvalidCursor("not a cursor this API handed out")
    return entry_id


@dataclass(frozen=True, slots=True)
class HistoryFilter:
    """What a client narrows the history to; amounts are absolute, in minor units."""

    posted_from: datetime | None = None
    posted_to: datetime | None = None
    category: str | None = None
    tag: str | None = None
    min_amount_minor: int | None = None
    max_amount_minor: int | None = None
    direction: Direction | None = None

    def __post_init__(self) -> None:
        if self.posted_from and self.posted_to and self.posted_from >= self.posted_to:
            raise InvalidHistoryQuery("to", "must be later than from")
        low, high = self.min_amount_minor, self.max_amount_minor
        if low is not None and high is not None and low > high:
            raise InvalidHistoryQuery("max_amount", "must not be below min_amount")

    @property
    def selective(self) -> bool:
        """Whether any filter may drop entries of the window (beyond the time range)."""
        return any(
            value is not None
            for value in (
                self.category,
                self.tag,
                self.min_amount_minor,
                self.max_amount_minor,
                self.direction,
            )
        )


def window_size(limit: int, history_filter: HistoryFilter, scan_max: int) -> int:
    """How many of the account's entries one request examines.

    Without a filter that drops entries, the page plus one (to know whether more
    follow); with one, up to ``scan_max``, which bounds the work of a request whose
    filter matches rarely.
    """
    return max(limit + 1, scan_max) if history_filter.selective else limit + 1


def next_cursor(
    matched_ids: Sequence[int], limit: int, scanned: int, window: int, oldest_scanned_id: int | None
) -> str | None:
    """The cursor of the next page, or None at the end of the history.

    ``matched_ids`` are the ids of the entries that passed the filters, newest first
    (at most ``limit + 1``); ``scanned`` is how many entries the window examined.
    """
    if len(matched_ids) > limit:
        return encode_cursor(matched_ids[limit - 1])
    if scanned >= window and oldest_scanned_id is not None:
        # The window was full: older entries may match; go on below what was examined.
        return encode_cursor(oldest_scanned_id)
    return None
