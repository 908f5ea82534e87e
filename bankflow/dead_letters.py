"""The dead_letters table: storing what reached transfers.dlq, listing it, resolving it.

A replay re-enters through validation: whatever topic a letter came from, what is
sent is the transfer request it holds (or the request an accepted transfer was made
from), to ``transfers.requested``, where the validator decides and scores it again.
Nothing a replay sends goes straight to the poster.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import psycopg
from confluent_kafka import KafkaError, Message, Producer
from psycopg.rows import class_row
from psycopg.types.json import Jsonb
from pydantic import ValidationError

from bankflow.errors import BankflowError
from bankflow.failures import FAILURE_HEADERS, HeaderList
from schemas import headers as h
from schemas.errors import describe
from schemas.topics import (
    TRANSFERS_ACCEPTED,
    TRANSFERS_REQUESTED,
    TRANSFERS_REVIEW,
    retry_topic,
)
from schemas.transfers import AcceptedTransfer, TransferRequest

COLUMNS = (
    "id, original_topic, original_partition, original_offset, key, payload, headers, "
    "error_class, reason, attempts, first_failure_at, last_failure_at, status"
)


class DeadLetterNotFound(BankflowError):
    """No dead letter has that id (or it is not open)."""


class DeadLetterNotOpen(DeadLetterNotFound):
    """The dead letter was replayed or discarded already: one action per letter wins."""

    def __init__(self, dead_letter_id: int, status: str) -> None:
        super().__init__(f"dead letter {dead_letter_id} is {status} already")
        self.dead_letter_id = dead_letter_id
        self.status = status


class NotReplayable(BankflowError):
    """A dead letter that holds no transfer request: replaying it could only send the
    validator something no client asked for. It stays open for an operator to discard."""


class ReplayNotAcknowledged(BankflowError):
    """The broker did not acknowledge a replayed request; the letter stays open."""

    transient = True


class InvalidActor(BankflowError):
    """Who replays or discards a dead letter must be named, as plain short text."""


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
    conn: psycopg.Connection[Any],
    status: str = "open",
    reason: str | None = None,
    limit: int | None = None,
) -> list[DeadLetter]:
    cursor = conn.cursor(row_factory=class_row(DeadLetter))
    return cursor.execute(
        f"select {COLUMNS} from dead_letters where status = %s "  # noqa: S608
        "and (%s::text is null or reason ilike '%%' || %s || '%%') order by id limit %s",
        (status, reason, reason, limit),
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

    ``replay`` claims a letter, publishes it and marks it replayed in one transaction:
    a ``discard`` of the same letter meanwhile waits for the lock and then finds it
    replayed (and the other way round), so exactly one of them wins. A letter that is
    no longer open raises ``DeadLetterNotOpen`` with what became of it.
    """
    cursor = conn.cursor(row_factory=class_row(DeadLetter))
    found = cursor.execute(
        f"select {COLUMNS} from dead_letters where id = %s and status = 'open' "  # noqa: S608
        "for update",
        (dead_letter_id,),
    ).fetchone()
    if found is None:
        raise DeadLetterNotOpen(dead_letter_id, get(conn, dead_letter_id).status)
    return found


def resolve(
    conn: psycopg.Connection[Any], dead_letter_id: int, action: str, actor: str, note: str | None
) -> None:
    """Mark an open dead letter replayed or discarded, and record who did it and why.

    The update claims the row: of a replay and a discard at once, the second waits for
    the first and then finds no open letter (``DeadLetterNotOpen``).
    """
    status = "replayed" if action == "replay" else "discarded"
    actor = checked_actor(actor)
    with conn.transaction():
        row = conn.execute(
            "update dead_letters set status = %s where id = %s and status = 'open' returning id",
            (status, dead_letter_id),
        ).fetchone()
        if row is None:
            raise DeadLetterNotOpen(dead_letter_id, get(conn, dead_letter_id).status)
        conn.execute(
            "insert into dead_letter_actions (dead_letter_id, action, actor, note) "
            "values (%s, %s, %s, %s)",
            (dead_letter_id, action, actor, note),
        )


#: An actor is a name or an e-mail address, recorded as given (until staff sign-in and
#: the audit log name who acted).
ACTOR_LENGTH_MAX: Final = 128
_ACTOR: Final = re.compile(r"[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?")


def checked_actor(actor: str) -> str:
    """``actor`` if it names someone: printable ASCII, no surrounding blanks, bounded."""
    if len(actor) > ACTOR_LENGTH_MAX or not _ACTOR.fullmatch(actor):
        raise InvalidActor(
            f"--actor must name who acts: 1 to {ACTOR_LENGTH_MAX} printable ASCII characters, "
            "e.g. an e-mail address"
        )
    return actor


# ------------------------------------------------------------------ replay

#: Logical topics whose messages are transfer requests: the validator's input, and the
#: retry tiers, which only ever carry what the validator reads.
_RETRY_TOPIC_PREFIX: Final = retry_topic("x").removesuffix("x")
#: Logical topics whose messages are accepted transfers: the validator's accepted and
#: held outputs (and a reviewer's approval, published to transfers.accepted).
ACCEPTED_TOPICS: Final = frozenset({TRANSFERS_ACCEPTED, TRANSFERS_REVIEW})
#: The signature headers of the stage that produced a message (``bankflow.signing``):
#: they vouched for the original message on its own topic, not for a replay.
SIGNATURE_HEADERS: Final = frozenset({h.SIGNATURE, h.KEY_ID})
#: Headers a replay never carries: the failure history (the replay is a new attempt,
#: judged on its own), signatures, and the event id of the dead-letter event itself.
DROPPED_ON_REPLAY: Final = FAILURE_HEADERS | SIGNATURE_HEADERS | {h.EVENT_ID}
#: How long a replayed request may wait for the broker's acknowledgement.
ACK_TIMEOUT_S: Final = 30


@dataclass(frozen=True)
class Replay:
    """What replaying one dead letter sends to transfers.requested."""

    request: TransferRequest
    headers: HeaderList

    @property
    def key(self) -> bytes:
        """Keyed by debit account, as every producer of transfers.requested keys."""
        return self.request.debit_account.encode()

    @property
    def value(self) -> bytes:
        return self.request.model_dump_json().encode()


def replay_of(letter: DeadLetter, topic_prefix: str) -> Replay:
    """The transfer request ``letter`` replays as, with the headers it keeps.

    Raises ``NotReplayable`` (saying why) for a letter that holds no transfer request.
    """
    request = request_of(letter, topic_prefix)
    return Replay(request, replay_headers(letter.headers, request))


def request_of(letter: DeadLetter, topic_prefix: str) -> TransferRequest:
    """The transfer request a dead letter holds, validated field by field.

    A letter from transfers.accepted or transfers.review holds an accepted transfer,
    which becomes the request it was decided from (same transfer id, accounts by their
    resolved ids, same money, requester and details). A letter from transfers.requested
    or a retry tier holds the request itself. Anything else is not replayable.
    """
    topic = letter.original_topic.removeprefix(topic_prefix)
    if topic in ACCEPTED_TOPICS:
        try:
            accepted = AcceptedTransfer.model_validate_json(letter.payload or b"")
            return TransferRequest.model_validate(_request_fields(accepted))
        except ValidationError as exc:
            raise _not_replayable(letter, f"its payload is not an accepted transfer: "
                                          f"{describe(exc)}") from exc  # fmt: skip
    if topic == TRANSFERS_REQUESTED or topic.startswith(_RETRY_TOPIC_PREFIX):
        try:
            return TransferRequest.model_validate_json(letter.payload or b"")
        except ValidationError as exc:
            raise _not_replayable(letter, f"its payload is not a transfer request: "
                                          f"{describe(exc)}") from exc  # fmt: skip
    raise _not_replayable(
        letter, "only transfer requests and accepted transfers are replayed, and this "
        "topic carries neither",
    )  # fmt: skip


def _request_fields(accepted: AcceptedTransfer) -> dict[str, Any]:
    """The fields of the request an accepted transfer was made from.

    Every field the two models share is taken over (the validator does the same the
    other way round); the accounts are named by the ids the validator resolved, since
    an accepted transfer does not keep the references the request used.
    """
    shared = set(TransferRequest.model_fields) & set(AcceptedTransfer.model_fields)
    return {
        **{name: getattr(accepted, name) for name in shared},
        "debit_account": str(accepted.debit_account_id),
        "credit_account": str(accepted.credit_account_id),
    }


def _not_replayable(letter: DeadLetter, why: str) -> NotReplayable:
    return NotReplayable(
        f"dead letter {letter.id} (from {letter.original_topic}) is not replayable: {why}; "
        "it stays open (discard it if nothing can be done)"
    )


#: The error class of a message that failed its signature check (``bankflow.signing``).
UNAUTHENTICATED: Final = "Unauthenticated"


def check_provenance(
    conn: psycopg.Connection[Any], letter: DeadLetter, request: TransferRequest, topic_prefix: str
) -> None:
    """Refuse to replay what no stage allowed to decide it ever decided.

    A letter that failed its signature check was written by someone who may not write
    its topic: replaying it would turn a forgery into a request. A letter from
    transfers.accepted or transfers.review must be a transfer the validator decided
    (``validator_decisions``); the validator then answers the replay with that decision
    (or the reviewer's), never with what the letter's payload says.
    """
    if letter.error_class == UNAUTHENTICATED:
        raise _not_replayable(
            letter, "it failed its signature check: whoever wrote it may not write "
            f"{letter.original_topic} (docs/runbook.md#unauthenticated-messages)",
        )  # fmt: skip
    if letter.original_topic.removeprefix(topic_prefix) not in ACCEPTED_TOPICS:
        return
    decided = conn.execute(
        "select 1 from validator_decisions where transfer_id = %s", (request.transfer_id,)
    ).fetchone()
    if decided is None:
        raise _not_replayable(
            letter, f"the validator never decided transfer {request.transfer_id}, so no "
            "stage allowed to accept it did",
        )  # fmt: skip


def replay_headers(stored: dict[str, str], request: TransferRequest) -> HeaderList:
    """The letter's original headers (correlation id, trace) without ``DROPPED_ON_REPLAY``.

    A letter stored without a correlation id header (the poster's dead letters carry only
    the failure headers) takes the one its transfer carries, so the replay stays traceable.
    """
    kept: HeaderList = [(name, value.encode()) for name, value in stored.items()
                        if name not in DROPPED_ON_REPLAY]  # fmt: skip
    if h.CORRELATION_ID not in stored and request.correlation_id:
        kept.append((h.CORRELATION_ID, request.correlation_id.encode()))
    return kept


def replay(
    conn: psycopg.Connection[Any],
    producer: Producer,
    dead_letter_id: int,
    *,
    topic: str,
    topic_prefix: str,
    actor: str,
) -> Replay:
    """Send one open dead letter's request to ``topic`` (transfers.requested, prefixed).

    Claimed (row lock), acknowledged by the broker, then marked replayed, in one
    transaction: a concurrent discard waits and then finds it replayed; a crash before
    the commit leaves it open, and replaying it again sends the same transfer id, which
    the validator answers with its first decision. ``NotReplayable`` and a broker that
    does not acknowledge leave the letter open.
    """
    actor = checked_actor(actor)
    with conn.transaction():
        letter = claim(conn, dead_letter_id)
        replayed = replay_of(letter, topic_prefix)
        check_provenance(conn, letter, replayed.request, topic_prefix)
        _send(producer, topic, replayed)
        note = f"sent as transfer request {replayed.request.transfer_id} to {topic}"
        resolve(conn, letter.id, "replay", actor, note)
    return replayed


def _send(producer: Producer, topic: str, replayed: Replay) -> None:
    errors: list[str] = []

    def delivered(error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            errors.append(str(error))

    producer.produce(
        topic, key=replayed.key, value=replayed.value, headers=replayed.headers,
        on_delivery=delivered,
    )  # fmt: skip
    if producer.flush(ACK_TIMEOUT_S) or errors:
        raise ReplayNotAcknowledged(
            f"the broker did not acknowledge the replay of transfer "
            f"{replayed.request.transfer_id}: {errors[:1] or 'timed out'}; the letter stays open"
        )
