"""The tracker: every transfer's status, from the topics into PostgreSQL.

It reads the requests, the validator's decisions and the ledger's events and keeps
``transfer_status`` (one row per transfer, what ``GET /v1/transfers/{id}`` answers)
with its history; held transfers also enter ``review_queue``. Statuses only move
forward (``transfer_status_rank`` in the database), so the order in which the topics
are read does not matter, and every write is idempotent: the tracker is
at-least-once, its Kafka offsets committed by the stage runtime after the database
transaction (``AfterEffect``).

The ledger is the truth. Its outcomes (posted, failed) rank above a refusal, so a
transfer id that was rejected (by the rules or a reviewer) and also posted, through a
copy, shows ``posted``; nothing replaces posted or failed. An outcome event is
recorded as the ``transfers`` table has it, where the ledger has the transfer. A
transfer already in the ledger is never queued for review, and a held row whose
transfer reaches the ledger is closed as ``superseded``.

Every ``REVIEW_TIMEOUT_CHECK_S`` it also rejects held transfers that no reviewer
decided within ``review_timeout_s``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import psycopg
from confluent_kafka import Message
from pydantic import ValidationError

from bankflow.bootstrap import db_connect
from bankflow.failures import PoisonMessage
from bankflow.metrics import TrackerMetrics, registered
from bankflow.observability import connection_alive
from bankflow.review import SUPERSEDE_HELD_SQL, expire_reviews
from bankflow.settings import Settings
from bankflow.streaming import AfterEffect, Batch, Output, Stage, StageRunner, serve
from bankflow.streaming.kafka import stage_consumer
from bankflow.streaming.stage import dead_letter_output
from schemas.errors import describe
from schemas.topics import (
    TRANSFERS_ACCEPTED,
    TRANSFERS_FAILED,
    TRANSFERS_POSTED,
    TRANSFERS_REJECTED,
    TRANSFERS_REQUESTED,
    TRANSFERS_REVIEW,
)
from schemas.transfers import AcceptedTransfer, RejectedTransfer, TransferEvent, TransferRequest

log = logging.getLogger("bankflow.tracker")

BATCH_MAX = 2000
BATCH_WAIT_S = 0.1
#: How often held transfers are checked against the review timeout (and counted for the
#: review-queue gauge).
REVIEW_TIMEOUT_CHECK_S = 5.0
HELD_COUNT_SQL = "select count(*) from review_queue where status = 'held'"

#: Topics whose own stage (the validator, the poster) dead-letters what it cannot read;
#: on the others the tracker is the reader that does.
READ_BY_OTHER_STAGES = frozenset({TRANSFERS_REQUESTED, TRANSFERS_ACCEPTED})

TRACKED = (
    TRANSFERS_REQUESTED, TRANSFERS_ACCEPTED, TRANSFERS_REVIEW, TRANSFERS_REJECTED,
    TRANSFERS_POSTED, TRANSFERS_FAILED,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    transfer_id: Any
    status: str
    at: datetime
    source: str | None
    requested_by: str | None
    debit_account: str
    credit_account: str
    amount_minor: int
    currency: str
    description: str
    category: str | None
    tags: list[str]
    reasons: list[str]
    ruleset_version: str | None
    risk_score: int | None
    requested_at: datetime

    def row(self) -> tuple[Any, ...]:
        return (
            self.transfer_id, self.source, self.requested_by, self.debit_account,
            self.credit_account, self.amount_minor, self.currency, self.description,
            self.category, self.tags, self.status, self.reasons, self.ruleset_version,
            self.risk_score, self.requested_at,
        )  # fmt: skip


UPSERT_SQL = """
insert into transfer_status (transfer_id, source, requested_by, debit_account, credit_account,
    amount_minor, currency, description, category, tags, status, reasons, ruleset_version,
    risk_score, requested_at)
values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
on conflict (transfer_id) do update set
    status = case when transfer_status_rank(excluded.status)
                       > transfer_status_rank(transfer_status.status)
                  then excluded.status else transfer_status.status end,
    reasons = case when transfer_status_rank(excluded.status)
                        > transfer_status_rank(transfer_status.status)
                   then excluded.reasons else transfer_status.reasons end,
    ruleset_version = coalesce(excluded.ruleset_version, transfer_status.ruleset_version),
    risk_score = coalesce(excluded.risk_score, transfer_status.risk_score),
    source = coalesce(transfer_status.source, excluded.source),
    requested_by = coalesce(transfer_status.requested_by, excluded.requested_by),
    updated_at = now()
"""
HISTORY_SQL = (
    "insert into transfer_status_history (transfer_id, status, reasons, at) "
    "values (%s, %s, %s, %s) on conflict do nothing"
)
#: A held transfer is queued only if the ledger does not have it yet; one that reaches
#: the ledger later is superseded when its event arrives (``SUPERSEDE_SQL``).
REVIEW_SQL = (
    "insert into review_queue (transfer_id, payload, debit_account_id, credit_account_id, "
    "amount_minor, currency, risk_score, reasons, ruleset_version) "
    "select %(id)s::uuid, %(payload)s::bytea, %(debit)s::uuid, %(credit)s::uuid, "
    "%(amount)s::bigint, %(currency)s, %(score)s::integer, %(reasons)s::text[], %(ruleset)s "
    "where not exists (select 1 from transfers t where t.id = %(id)s) "
    "on conflict (transfer_id) do nothing"
)
SUPERSEDE_SQL = SUPERSEDE_HELD_SQL + " and r.transfer_id = any(%s)"
#: What the ledger says about the transfers of a batch's outcome events.
LEDGER_SQL = "select id, status, reason from transfers where id = any(%s)"
OUTCOMES = frozenset({"posted", "failed"})


def status_update(topic: str, value: bytes, written_at: datetime) -> StatusUpdate:
    """What one message says about its transfer (``ValidationError`` if it is not valid).

    ``written_at`` (the message's timestamp) dates a decision whose message carries no
    time of its own: the validator's accepted and held transfers.
    """
    if topic == TRANSFERS_REQUESTED:
        r = TransferRequest.model_validate_json(value)
        return _update(r, "requested", r.requested_at, r.debit_account, r.credit_account)
    if topic in (TRANSFERS_ACCEPTED, TRANSFERS_REVIEW):
        a = AcceptedTransfer.model_validate_json(value)
        status = "review" if topic == TRANSFERS_REVIEW else "accepted"
        return _update(
            a, status, written_at, str(a.debit_account_id), str(a.credit_account_id),
            reasons=a.risk_reasons, ruleset_version=a.ruleset_version, risk_score=a.risk_score,
        )  # fmt: skip
    if topic == TRANSFERS_REJECTED:
        j = RejectedTransfer.model_validate_json(value)
        return _update(
            j, "rejected", j.decided_at, j.debit_account, j.credit_account, reasons=j.reasons,
            ruleset_version=j.ruleset_version, risk_score=j.risk_score or None,
        )  # fmt: skip
    e = TransferEvent.model_validate_json(value)
    return StatusUpdate(
        e.transfer_id, e.status, e.occurred_at, None, None, str(e.debit_account_id),
        str(e.credit_account_id), e.amount_minor, e.currency, "", None, [],
        [e.reason] if e.reason else [], None, None, e.requested_at,
    )  # fmt: skip


def _update(
    message: Any,
    status: str,
    at: datetime,
    debit: str,
    credit: str,
    *,
    reasons: Sequence[str] = (),
    ruleset_version: str | None = None,
    risk_score: int | None = None,
) -> StatusUpdate:
    return StatusUpdate(
        message.transfer_id, status, at, message.source.value, message.requested_by, debit,
        credit, message.amount_minor, message.currency, message.description, message.category,
        list(message.tags), list(reasons), ruleset_version, risk_score, message.requested_at,
    )  # fmt: skip


class Tracker(Stage):
    name = "tracker"
    commit = AfterEffect()
    #: An accepted transfer nobody allowed signed is not shown as accepted (the poster
    #: dead-letters it; the tracker's dead letter names the same position, stored once).
    verifies = True
    batch_max = BATCH_MAX
    batch_wait_s = BATCH_WAIT_S

    def __init__(self, settings: Settings, conn: psycopg.Connection[Any]) -> None:
        self.settings = settings
        self.conn = conn
        self.logical = {settings.topic(t): t for t in TRACKED}
        self.seen: Counter[str] = Counter()
        self.next_expiry_check = 0.0
        self.metrics = registered(TrackerMetrics)

    def topics(self) -> list[str]:
        return list(TRACKED)

    def ready(self) -> bool:
        return connection_alive(self.conn)

    def reconnect(self) -> None:
        self.conn.close()
        self.conn = _connect(self.settings)

    def close(self) -> None:
        self.conn.close()
        log.info("tracker saw: %s", dict(self.seen))

    def process(self, batch: Batch) -> list[Output]:
        """Statuses in one transaction; what the tracker alone reads and cannot decode goes
        to the dead-letter topic (the runtime produces it before committing offsets)."""
        return self.write(batch.messages)

    def tick(self) -> None:
        """Every ``REVIEW_TIMEOUT_CHECK_S``: reject held transfers past their review time."""
        if time.monotonic() < self.next_expiry_check:
            return
        expired = expire_reviews(self.conn, self.settings)
        if expired:
            log.info("%d held transfer(s) rejected: review_timeout", expired)
        held = self.conn.execute(HELD_COUNT_SQL).fetchone()
        self.metrics.review_held.set(held[0] if held else 0)
        self.next_expiry_check = time.monotonic() + REVIEW_TIMEOUT_CHECK_S

    def write(self, messages: Sequence[Message]) -> list[Output]:
        """One database transaction for the batch's statuses, history and held transfers;
        the dead letters of messages only the tracker reads and cannot decode."""
        updates, held, dead = [], [], []
        for m in messages:
            logical = self.logical[str(m.topic())]
            try:
                update = status_update(logical, m.value() or b"", _written_at(m))
            except ValidationError as exc:
                if logical in READ_BY_OTHER_STAGES:
                    # Not ours to judge: the stage that reads this topic dead-letters it.
                    log.warning("unreadable message on %s: %s", m.topic(), exc.errors()[:1])
                else:
                    dead.append(dead_letter_output(m, PoisonMessage(describe(exc))))
                continue
            updates.append(update)
            self.seen[update.status] += 1
            if update.status == "review":
                held.append((m.value() or b"", update))
        with self.conn.transaction(), self.conn.cursor() as cursor:
            updates = self.as_in_ledger(cursor, updates)
            # Rows in id order: two trackers never wait on each other in opposite orders.
            updates.sort(key=lambda u: (str(u.transfer_id), u.status))
            cursor.executemany(UPSERT_SQL, [u.row() for u in updates])
            cursor.executemany(
                HISTORY_SQL, [(u.transfer_id, u.status, u.reasons, u.at) for u in updates]
            )
            cursor.executemany(REVIEW_SQL, [_review_row(payload, u) for payload, u in held])
            outcomes = sorted({u.transfer_id for u in updates if u.status in OUTCOMES}, key=str)
            if outcomes:
                cursor.execute(SUPERSEDE_SQL, (outcomes,))
        for status, count in Counter(u.status for u in updates).items():
            self.metrics.updates.labels(status).inc(count)
        return dead

    @staticmethod
    def as_in_ledger(
        cursor: psycopg.Cursor[Any], updates: list[StatusUpdate]
    ) -> list[StatusUpdate]:
        """Outcome updates as the ledger has them: its status and reason, not the event's."""
        ids = list({u.transfer_id for u in updates if u.status in OUTCOMES})
        if not ids:
            return updates
        ledger = {
            row[0]: row[1:]
            for row in cursor.execute(LEDGER_SQL, (ids,)).fetchall()
            if row[1] in OUTCOMES  # a two-phase transfer's pending or voided is not a status here
        }
        return [
            _as_in_ledger(u, *ledger[u.transfer_id])
            if u.status in OUTCOMES and u.transfer_id in ledger
            else u
            for u in updates
        ]


def _as_in_ledger(update: StatusUpdate, status: str, reason: str | None) -> StatusUpdate:
    if status == update.status:
        return update
    log.warning("event says %s for %s, the ledger %s", update.status, update.transfer_id, status)
    return replace(update, status=status, reasons=[reason] if reason else [])


def _review_row(payload: bytes, u: StatusUpdate) -> dict[str, Any]:
    return {
        "id": u.transfer_id, "payload": payload, "debit": u.debit_account,
        "credit": u.credit_account, "amount": u.amount_minor, "currency": u.currency,
        "score": u.risk_score or 0, "reasons": u.reasons, "ruleset": u.ruleset_version or "unknown",
    }  # fmt: skip


def _written_at(message: Message) -> datetime:
    _kind, ms = message.timestamp()
    return datetime.fromtimestamp(ms / 1000, UTC) if ms and ms > 0 else datetime.now(UTC)


def _connect(settings: Settings) -> psycopg.Connection[Any]:
    # Autocommit: each batch is one explicit transaction, and nothing is left open between.
    return db_connect(settings, application_name="bankflow-tracker", autocommit=True)


def build(settings: Settings) -> StageRunner[Tracker]:
    """The composition root: the tracker's consumer and database connection."""
    consumer = stage_consumer(
        settings, group_id=settings.tracker_group, **{"session.timeout.ms": 10_000}
    )
    return StageRunner(settings, Tracker(settings, _connect(settings)), consumer)


def run(settings: Settings) -> None:
    """``bankflow run tracker``: keep transfer statuses and the review queue current."""
    serve(settings, "tracker", lambda: build(settings), settings.tracker_metrics_port)
