"""Where a message that could not be processed goes next: a retry tier or the DLQ.

Pure: the caller passes the message's position and headers, the failure, the tiers
and the time, and produces the answer. Every stage routes failures through here so
that retried and dead messages carry the same headers (DESIGN.md): original topic,
partition and offset, attempt count, error class and message, first-failure time and,
on retry topics, the not-before time the retrier waits for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from bankflow.errors import BankflowError
from schemas import headers as h
from schemas.topics import TRANSFERS_DLQ, retry_topic

#: Kept short: an error message travels in a header of every retried message.
ERROR_MESSAGE_MAX = 1000

#: An attempt count has at most this many digits (tiers are few; this bounds int()).
ATTEMPT_DIGITS_MAX = 6

#: The headers this module owns; they are replaced, never duplicated, on each failure.
FAILURE_HEADERS = frozenset(
    {
        h.ORIGINAL_TOPIC, h.ORIGINAL_PARTITION, h.ORIGINAL_OFFSET, h.ATTEMPT,
        h.ERROR_CLASS, h.ERROR_MESSAGE, h.FIRST_FAILURE_AT, h.NOT_BEFORE,
    }
)  # fmt: skip

#: Kafka headers as confluent-kafka gives them (a list of pairs, or a dict).
Headers = Sequence[tuple[str, bytes | str | None]] | Mapping[str, bytes | str | None]
#: Headers as bankflow produces them.
HeaderList = list[tuple[str, str | bytes | None]]


class PoisonMessage(BankflowError):
    """A message that cannot be decoded or fails its schema: retrying will not help."""


class DependencyUnavailable(BankflowError):
    """A database, Redis or broker is down or too slow: the same message may work later."""

    transient = True


@dataclass(frozen=True, slots=True)
class Route:
    """The logical topic (without prefix) to send the failed message to, and its headers."""

    topic: str
    headers: HeaderList
    attempt: int

    @property
    def dead(self) -> bool:
        return self.topic == TRANSFERS_DLQ


def header_map(headers: Headers | None) -> dict[str, str]:
    """Kafka headers as text, the last value of a repeated name winning."""
    found = {}
    for name, value in _pairs(headers):
        if isinstance(value, bytes):
            found[name] = value.decode(errors="replace")
        elif value is not None:
            found[name] = value
    return found


def route_failure(
    *,
    origin: tuple[str, int, int],
    headers: Headers | None,
    error: BaseException,
    tiers: Mapping[str, int],
    now: datetime,
) -> Route:
    """The next stop of a message that failed at ``origin`` (topic, partition, offset).

    ``origin`` names the topic as the message was read (with any prefix), which is
    where the retrier and ``dlq replay`` send it back; the route's own topic is a
    logical name for ``Settings.topic``.

    A transient error takes the next retry tier, counting the attempts the headers
    already record; after the last tier, or at once for a permanent error, the
    dead-letter topic. The first-failure time survives every hop.
    """
    known = header_map(headers)
    attempt = attempts_recorded(known) + 1
    transient = isinstance(error, BankflowError) and error.transient
    names = list(tiers)
    if transient and attempt <= len(names):
        tier = names[attempt - 1]
        topic = retry_topic(tier)
        not_before: datetime | None = now + timedelta(seconds=tiers[tier])
    else:
        topic, not_before = TRANSFERS_DLQ, None
    message = str(error) or type(error).__name__
    ours = {
        h.ORIGINAL_TOPIC: origin[0],
        h.ORIGINAL_PARTITION: str(origin[1]),
        h.ORIGINAL_OFFSET: str(origin[2]),
        h.ATTEMPT: str(attempt),
        h.ERROR_CLASS: type(error).__name__,
        h.ERROR_MESSAGE: message[:ERROR_MESSAGE_MAX],
        h.FIRST_FAILURE_AT: known.get(h.FIRST_FAILURE_AT) or now.isoformat(),
    }
    if not_before is not None:
        ours[h.NOT_BEFORE] = not_before.isoformat()
    kept = without_failure_headers(headers) or []
    return Route(topic, kept + [(k, v.encode()) for k, v in ours.items()], attempt)


def attempts_recorded(headers: Mapping[str, str]) -> int:
    """The attempts a message's headers record; anyone can write headers, so a value that
    is not a small count is read as none (the message is then judged on its own)."""
    text = headers.get(h.ATTEMPT, "").strip()
    if not text.isascii() or not text.isdigit() or len(text) > ATTEMPT_DIGITS_MAX:
        return 0
    return int(text)


def without_failure_headers(headers: Headers | None) -> HeaderList | None:
    """The headers of a message that finally succeeded, without its failure history."""
    if not headers:
        return None
    return [(name, value) for name, value in _pairs(headers) if name not in FAILURE_HEADERS]


def _pairs(headers: Headers | None) -> Sequence[tuple[str, bytes | str | None]]:
    if headers is None:
        return ()
    return list(headers.items()) if isinstance(headers, Mapping) else headers
