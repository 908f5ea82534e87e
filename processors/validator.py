"""The validator: ``transfers.requested`` to accepted / rejected, in Kafka transactions.

Per batch, one Kafka transaction holds every output (``transfers.accepted``,
``transfers.rejected``, ``transfers.dlq``) and the input offsets
(``send_offsets_to_transaction``), so a ``read_committed`` reader sees each
request's decision exactly once: an aborted batch is invisible and redone.

Abortable errors abort the transaction and rewind the consumer to the committed
offsets; fatal ones (this producer was fenced) rebuild the producer. A database
outage while loading accounts aborts and retries with backoff.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from pydantic import ValidationError

from bankflow.bootstrap import db_connect, kafka_consumer, kafka_producer
from bankflow.domain.iban import account_reference_key
from bankflow.domain.posting import AccountStatus, AccountType
from bankflow.runtime import (
    configure_logging,
    next_offsets,
    on_stop_signal,
    run_until_stopped,
)
from bankflow.settings import Settings
from processors.validation import AccountFacts, validate
from schemas import headers as h
from schemas.errors import describe
from schemas.topics import (
    TRANSFERS_ACCEPTED,
    TRANSFERS_DLQ,
    TRANSFERS_REJECTED,
    TRANSFERS_REQUESTED,
)
from schemas.transfers import RejectedTransfer, TransferRequest

log = logging.getLogger("bankflow.validator")

#: A transaction the broker has not seen finish within this long is aborted by it, so
#: a validator killed mid-batch blocks read_committed readers for at most this long
#: (a restarted instance with the same transactional id aborts it at once).
TRANSACTION_TIMEOUT_MS = 10_000
TXN_TIMEOUT_S = 30


class Validator:
    def __init__(
        self, settings: Settings, consumer: Consumer, conn: psycopg.Connection[Any]
    ) -> None:
        self.settings = settings
        self.consumer = consumer
        self.conn = conn
        self.producer = self._new_producer()
        self.topics = {
            "accepted": settings.topic(TRANSFERS_ACCEPTED),
            "rejected": settings.topic(TRANSFERS_REJECTED),
            "dlq": settings.topic(TRANSFERS_DLQ),
        }
        self.stopping = False
        self.decisions: dict[str, int] = {"accepted": 0, "rejected": 0, "dead_letters": 0}

    def _new_producer(self) -> Producer:
        producer = kafka_producer(
            self.settings,
            transactional_id=f"{self.settings.topic_prefix}bankflow-validator-"
            f"{self.settings.instance_id}",
            **{
                "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
                "delivery.timeout.ms": TRANSACTION_TIMEOUT_MS,
            },
        )
        producer.init_transactions(TXN_TIMEOUT_S)
        return producer

    def subscribe(self) -> None:
        self.consumer.subscribe([self.settings.topic(TRANSFERS_REQUESTED)])

    def run(self) -> None:
        self.subscribe()
        run_until_stopped(self.poll_and_decide, lambda: self.stopping, self._reconnect, log)

    def _reconnect(self) -> None:
        self.conn.close()
        self.conn = db_connect(
            self.settings, application_name="bankflow-validator", autocommit=True
        )

    def poll_and_decide(self) -> int:
        messages = [
            m for m in self.consumer.consume(
                self.settings.validator_batch_max, self.settings.validator_batch_wait_ms / 1000)
            if _usable(m)
        ]  # fmt: skip
        if not messages:
            return 0
        self.producer.begin_transaction()
        try:
            self._decide(messages)
            self.producer.send_offsets_to_transaction(
                next_offsets(messages), self.consumer.consumer_group_metadata(), TXN_TIMEOUT_S
            )
            self.producer.commit_transaction(TXN_TIMEOUT_S)
        except KafkaException as exc:
            self._recover(exc.args[0])
            return 0
        except psycopg.OperationalError:
            self.producer.abort_transaction(TXN_TIMEOUT_S)
            self._rewind()
            raise
        return len(messages)

    def _decide(self, messages: Sequence[Message]) -> None:
        requests: list[tuple[Message, TransferRequest]] = []
        for m in messages:
            try:
                requests.append((m, TransferRequest.model_validate_json(m.value() or b"")))
            except ValidationError as exc:
                self._dead_letter(m, "PoisonMessage", describe(exc))
        accounts = self._load_accounts([r for _, r in requests])
        for m, request in requests:
            decision = validate(request, accounts)
            if decision.accepted is not None:
                self.producer.produce(
                    self.topics["accepted"], key=str(decision.accepted.debit_account_id).encode(),
                    value=decision.accepted.model_dump_json().encode(), headers=m.headers(),
                )  # fmt: skip
                self.decisions["accepted"] += 1
            else:
                rejected = RejectedTransfer(
                    **request.model_dump(), reasons=[r.value for r in decision.reasons]
                )
                self.producer.produce(
                    self.topics["rejected"],
                    key=m.key(),
                    value=rejected.model_dump_json().encode(),
                    headers=m.headers(),
                )
                self.decisions["rejected"] += 1

    def _load_accounts(self, requests: Sequence[TransferRequest]) -> dict[str, AccountFacts]:
        keys = {
            account_reference_key(ref)
            for r in requests
            for ref in (r.debit_account, r.credit_account)
        }
        ids = [k for k in keys if _is_uuid(k)]
        ibans = [k for k in keys if not _is_uuid(k)]
        rows = self.conn.execute(
            "select id, iban, customer_id, type, currency, status from accounts "
            "where id = any(%s::uuid[]) or iban = any(%s::text[])",
            (ids, ibans),
        ).fetchall()
        facts: dict[str, AccountFacts] = {}
        for row in rows:
            account = AccountFacts(
                row[0], row[1], row[2], AccountType(row[3]), row[4], AccountStatus(row[5])
            )
            facts[str(account.id)] = facts[account.iban] = account
        return facts

    def _dead_letter(self, message: Message, error_class: str, reason: str) -> None:
        now = datetime.now(UTC).isoformat()
        headers = [
            (h.ORIGINAL_TOPIC, str(message.topic())),
            (h.ORIGINAL_PARTITION, str(message.partition())),
            (h.ORIGINAL_OFFSET, str(message.offset())), (h.ATTEMPT, "1"),
            (h.ERROR_CLASS, error_class), (h.ERROR_MESSAGE, reason[:1000]),
            (h.FIRST_FAILURE_AT, now),
        ]  # fmt: skip
        self.producer.produce(
            self.topics["dlq"],
            key=message.key(),
            value=message.value(),
            headers=[(k, v.encode()) for k, v in headers],
        )
        self.decisions["dead_letters"] += 1

    def _recover(self, error: KafkaError) -> None:
        if error.txn_requires_abort():
            log.warning("transaction aborted (%s); redoing the batch", error)
            self.producer.abort_transaction(TXN_TIMEOUT_S)
            self._rewind()
        elif error.fatal():
            log.error("producer fenced or failed (%s); rebuilding it", error)
            self._rewind()
            self.producer = self._new_producer()
        else:
            raise KafkaException(error)

    def _rewind(self) -> None:
        """Seek every assigned partition back to its committed offset."""
        assignment = self.consumer.assignment()
        if not assignment:
            return
        for tp in self.consumer.committed(assignment, timeout=TXN_TIMEOUT_S):
            position = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            self.consumer.seek(TopicPartition(tp.topic, tp.partition, position))


def _usable(message: Message) -> bool:
    error = message.error()
    if error is not None and error.code() != KafkaError._PARTITION_EOF:
        log.error("consumer error: %s", error)
    return error is None


def _is_uuid(text: str) -> bool:
    return len(text) == 36 and text.count("-") == 4


def build(settings: Settings) -> Validator:
    consumer = kafka_consumer(
        settings, group_id=settings.validator_group, **{"session.timeout.ms": 10_000}
    )
    conn = db_connect(settings, application_name="bankflow-validator", autocommit=True)
    return Validator(settings, consumer, conn)


def run(settings: Settings) -> None:
    """``bankflow run validator``: decide until SIGTERM or SIGINT."""
    configure_logging()
    validator = build(settings)
    on_stop_signal(lambda: setattr(validator, "stopping", True))
    try:
        validator.run()
    finally:
        validator.consumer.close()
        validator.conn.close()
        log.info("validator stopped: %s", validator.decisions)
