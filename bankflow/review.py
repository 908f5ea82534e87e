"""The fraud review queue: deciding a held transfer exactly once.

A decision is one PostgreSQL transaction: the held row is moved to its final status
only if it is still held (so two reviewers, or a reviewer and the timeout, cannot
both decide), and the message that carries the decision is written to the outbox in
the same transaction; the relay publishes it. An approval publishes the accepted
transfer as the validator wrote it to ``transfers.accepted`` (the poster dedupes on
the transfer id), a rejection a ``RejectedTransfer`` to ``transfers.rejected``.

The SQL and the event building are shared by the API (async) and the tracker's
review timeout (sync); each runs them on its own kind of connection.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import psycopg

from bankflow.errors import BankflowError
from bankflow.settings import Settings
from schemas.topics import TRANSFERS_ACCEPTED, TRANSFERS_REJECTED
from schemas.transfers import AcceptedTransfer, RejectedTransfer, event_id_for

Decision = Literal["approved", "rejected", "timed_out"]

#: The reason code of a transfer no reviewer decided in time.
REVIEW_TIMEOUT = "review_timeout"
REVIEW_REJECTED = "review_rejected"

CLAIM_SQL = (
    "update review_queue set status = %(status)s, decided_by = %(actor)s, "
    "decided_at = now(), note = %(note)s "
    "where transfer_id = %(transfer_id)s and status = 'held' returning payload"
)
EXPIRED_SQL = (
    "select transfer_id from review_queue where status = 'held' "
    "and held_at < now() - make_interval(secs => %s) order by held_at limit %s"
)
OUTBOX_SQL = (
    "insert into outbox (event_id, topic, key, payload, headers, transfer_id) "
    "values (%s, %s, %s, %s, null, %s) on conflict (event_id) do nothing"
)


class ReviewNotHeld(BankflowError):
    """No held transfer has that id: unknown, or already decided."""


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    event_id: uuid.UUID
    topic: str
    key: bytes
    payload: bytes
    transfer_id: uuid.UUID

    def params(self) -> tuple[Any, ...]:
        return (self.event_id, self.topic, self.key, self.payload, self.transfer_id)


def decision_event(
    settings: Settings, payload: bytes, decision: Decision, actor: str
) -> OutboxEvent:
    """The message that carries a review decision, bound for the outbox."""
    held = AcceptedTransfer.model_validate_json(payload)
    key = str(held.debit_account_id).encode()
    event_id = event_id_for(held.transfer_id, f"review.{decision}")
    if decision == "approved":
        return OutboxEvent(
            event_id, settings.topic(TRANSFERS_ACCEPTED), key, payload, held.transfer_id
        )
    rejected = RejectedTransfer(
        **held.model_dump(exclude={"debit_account_id", "credit_account_id"}),
        debit_account=str(held.debit_account_id),
        credit_account=str(held.credit_account_id),
        reasons=[REVIEW_TIMEOUT if decision == "timed_out" else REVIEW_REJECTED],
        decided_at=datetime.now(UTC),
        decided_by=actor,
    )
    return OutboxEvent(
        event_id,
        settings.topic(TRANSFERS_REJECTED),
        key,
        rejected.model_dump_json().encode(),
        held.transfer_id,
    )


def decide(
    conn: psycopg.Connection[Any],
    settings: Settings,
    transfer_id: uuid.UUID,
    *,
    decision: Decision,
    actor: str,
    note: str | None = None,
) -> OutboxEvent:
    """Decide one held transfer (its own transaction); ``ReviewNotHeld`` if it is not held."""
    with conn.transaction():
        row = conn.execute(
            CLAIM_SQL,
            {"status": decision, "actor": actor, "note": note, "transfer_id": transfer_id},
        ).fetchone()
        if row is None:
            raise ReviewNotHeld(f"transfer {transfer_id} is not held for review")
        event = decision_event(settings, bytes(row[0]), decision, actor)
        conn.execute(OUTBOX_SQL, event.params())
    return event


#: Timed-out reviews rejected per round; the rest wait for the next round.
EXPIRE_BATCH_MAX = 500


def expire_reviews(conn: psycopg.Connection[Any], settings: Settings) -> int:
    """Reject every held transfer older than ``review_timeout_s`` (reason review_timeout)."""
    expired = conn.execute(EXPIRED_SQL, (settings.review_timeout_s, EXPIRE_BATCH_MAX)).fetchall()
    done = 0
    for (transfer_id,) in expired:
        try:
            decide(conn, settings, transfer_id, decision="timed_out", actor="system:review-timeout")
            done += 1
        except ReviewNotHeld:
            continue  # a reviewer decided it in the meantime
    return done
