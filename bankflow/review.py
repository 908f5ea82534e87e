"""The fraud review queue: deciding a held transfer exactly once.

A decision is one PostgreSQL transaction: the held row is moved to its final status
only if it is still held (so two reviewers, or a reviewer and the timeout, cannot
both decide), and the message that carries the decision is written to the outbox in
the same transaction; the relay publishes it. An approval publishes the accepted
transfer as the validator wrote it to ``transfers.accepted`` (the poster dedupes on
the transfer id), a rejection a ``RejectedTransfer`` to ``transfers.rejected``.

The ledger is the truth: a held transfer that is already in ``transfers`` (a copy of
it was posted, or failed) is never decided. The decision's transaction first marks
such a row ``superseded``, and the claim refuses a transfer in the ledger; the
tracker supersedes held rows too as the ledger's events arrive. A reviewer racing a
posting that commits between the two reads can still record a decision, but nothing
moves twice: the poster books a transfer id once, and the tracker ranks the ledger's
outcome above any rejection.

The SQL and the event building are shared by the API (async) and the tracker's
review timeout (sync); each runs them on its own kind of connection.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg.types.json import Jsonb

from bankflow.errors import BankflowError
from bankflow.settings import Settings
from bankflow.signing import Keyring
from schemas.headers import EVENT_ID
from schemas.topics import TRANSFERS_ACCEPTED, TRANSFERS_REJECTED
from schemas.transfers import AcceptedTransfer, RejectedTransfer, event_id_for

Decision = Literal["approved", "rejected", "timed_out"]

#: The reason code of a transfer no reviewer decided in time.
REVIEW_TIMEOUT = "review_timeout"
REVIEW_REJECTED = "review_rejected"

CLAIM_SQL = (
    "update review_queue set status = %(status)s, decided_by = %(actor)s, "
    "decided_at = now(), note = %(note)s "
    "where transfer_id = %(transfer_id)s and status = 'held' "
    "and not exists (select 1 from transfers t where t.id = %(transfer_id)s) returning payload"
)
#: Held rows whose transfer is in the ledger, closed so that nobody can decide them.
SUPERSEDE_HELD_SQL = (
    "update review_queue r set status = 'superseded', decided_by = 'system:ledger', "
    "decided_at = now(), note = 'in the ledger as ' || t.status "
    "from transfers t where t.id = r.transfer_id and r.status = 'held'"
)
#: Run before ``CLAIM_SQL`` in the same transaction, so the claim (and any later one)
#: of a transfer in the ledger answers "not held".
SUPERSEDE_ONE_SQL = SUPERSEDE_HELD_SQL + " and r.transfer_id = %(transfer_id)s"
EXPIRED_SQL = (
    "select transfer_id from review_queue where status = 'held' "
    "and held_at < now() - make_interval(secs => %s) order by held_at limit %s"
)
#: A reviewer's decision becomes the transfer's decision (``validator_decisions``): a
#: copy or a replay of the transfer is answered with it, not with the hold.
DECISION_SQL = (
    "update validator_decisions set topic = %s, value = %s "
    "where transfer_id = %s and topic = 'transfers.review'"
)
OUTBOX_SQL = (
    "insert into outbox (event_id, topic, key, payload, headers, transfer_id) "
    "values (%s, %s, %s, %s, %s, %s) on conflict (event_id) do nothing"
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
    #: Extra headers for the relay to publish (an approval's signature), as text.
    headers: dict[str, str] | None = None

    def decision_params(self) -> tuple[Any, ...]:
        """``DECISION_SQL``'s parameters: the decision as the validator stores one."""
        logical = (
            TRANSFERS_ACCEPTED if self.topic.endswith(TRANSFERS_ACCEPTED) else (TRANSFERS_REJECTED)
        )
        return (logical, self.payload, self.transfer_id)

    def params(self) -> tuple[Any, ...]:
        headers = Jsonb(self.headers) if self.headers else None
        return (self.event_id, self.topic, self.key, self.payload, headers, self.transfer_id)


def approval_signature(
    settings: Settings, event_id: uuid.UUID, key: bytes, payload: bytes
) -> dict[str, str]:
    """The review signer's signature of an approval as the relay will publish it (with its
    event id header): the poster books an accepted transfer only when it is signed."""
    keyring = _keyrings.get(settings.signing_keys_path)
    if keyring is None:
        keyring = _keyrings[settings.signing_keys_path] = Keyring.load(settings.signing_keys_path)
    headers = keyring.sign(
        "review", TRANSFERS_ACCEPTED, key, payload, [(EVENT_ID, str(event_id).encode())]
    )
    return {
        name: value.decode() if isinstance(value, bytes) else str(value)
        for name, value in headers
        if name != EVENT_ID and value is not None
    }


#: The key file read once per process and path (approvals are rare; rotation restarts).
_keyrings: dict[Path, Keyring] = {}


def decision_event(
    settings: Settings, payload: bytes, decision: Decision, actor: str
) -> OutboxEvent:
    """The message that carries a review decision, bound for the outbox."""
    held = AcceptedTransfer.model_validate_json(payload)
    key = str(held.debit_account_id).encode()
    event_id = event_id_for(held.transfer_id, f"review.{decision}")
    if decision == "approved":
        return OutboxEvent(
            event_id, settings.topic(TRANSFERS_ACCEPTED), key, payload, held.transfer_id,
            approval_signature(settings, event_id, key, payload),
        )  # fmt: skip
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
    """Decide one held transfer (its own transaction); ``ReviewNotHeld`` if it is not held
    (unknown, decided, or in the ledger: then it is closed as superseded)."""
    event = None
    with conn.transaction():
        conn.execute(SUPERSEDE_ONE_SQL, {"transfer_id": transfer_id})
        row = conn.execute(
            CLAIM_SQL,
            {"status": decision, "actor": actor, "note": note, "transfer_id": transfer_id},
        ).fetchone()
        if row is not None:
            event = decision_event(settings, bytes(row[0]), decision, actor)
            conn.execute(OUTBOX_SQL, event.params())
            conn.execute(DECISION_SQL, event.decision_params())
    if event is None:
        raise ReviewNotHeld(f"transfer {transfer_id} is not held for review")
    return event


#: Timed-out reviews rejected per round; the rest wait for the next round.
EXPIRE_BATCH_MAX = 500


def supersede_held(conn: psycopg.Connection[Any]) -> int:
    """Close every held row whose transfer is in the ledger; how many were closed."""
    return conn.execute(SUPERSEDE_HELD_SQL).rowcount


def expire_reviews(conn: psycopg.Connection[Any], settings: Settings) -> int:
    """Reject every held transfer older than ``review_timeout_s`` (reason review_timeout).

    Held transfers already in the ledger are superseded first, never timed out.
    """
    supersede_held(conn)
    expired = conn.execute(EXPIRED_SQL, (settings.review_timeout_s, EXPIRE_BATCH_MAX)).fetchall()
    done = 0
    for (transfer_id,) in expired:
        try:
            decide(conn, settings, transfer_id, decision="timed_out", actor="system:review-timeout")
            done += 1
        except ReviewNotHeld:
            continue  # a reviewer decided it in the meantime, or it reached the ledger
    return done
