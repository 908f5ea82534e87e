"""The validator: ``transfers.requested`` to accepted / review / rejected, in Kafka transactions.

Per batch it validates every request (``processors.validation``), checks daily
limits and scores it with the fraud rules (``processors.fraud``) against the debit
account's state in Redis, and then one Kafka transaction holds every output
(``transfers.accepted``, ``transfers.review``, ``transfers.rejected``, a retry tier
or ``transfers.dlq``) and the input offsets (``send_offsets_to_transaction``), so a
``read_committed`` reader sees each request's decision exactly once: an aborted
batch is invisible and redone.

The fraud state is written before the transaction commits and is idempotent by
transfer id, so a redone batch counts nothing twice and decides as before.
PostgreSQL or Redis being down is a transient failure: the requests that needed
it go to the next retry tier (the retrier brings them back), the stream goes on.
The loop, the transaction, fencing and poison containment belong to the stage
runtime (``bankflow.streaming``): a request that makes anything here raise goes to
the dead-letter topic with its reason, and the partition flows on.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
import redis
from confluent_kafka import Message
from psycopg_pool import ConnectionPool
from pydantic import ValidationError

from bankflow import logs
from bankflow.bootstrap import db_pool, redis_client
from bankflow.domain.iban import account_reference_key, looks_like_iban
from bankflow.domain.posting import INTERNAL_TYPES, AccountStatus, AccountType
from bankflow.errors import BankflowError
from bankflow.failures import (
    DependencyUnavailable,
    HeaderList,
    PoisonMessage,
    header_map,
    route_failure,
    without_failure_headers,
)
from bankflow.metrics import NO_REASON, ValidatorMetrics, registered
from bankflow.settings import Settings
from bankflow.streaming import Batch, KafkaTransaction, Output, Stage, StageRunner, serve
from bankflow.streaming.kafka import stage_consumer
from processors.fraud import (
    AccountState,
    Activity,
    Candidate,
    RuleSet,
    Verdict,
    load_ruleset,
    score,
)
from processors.fraud_state import FraudState
from processors.validation import (
    AccountFacts,
    daily_limit_reasons,
    is_customer_request,
    validate,
)
from schemas import headers as h
from schemas.errors import describe
from schemas.topics import (
    TRANSFERS_ACCEPTED,
    TRANSFERS_DLQ,
    TRANSFERS_REJECTED,
    TRANSFERS_REQUESTED,
    TRANSFERS_REVIEW,
    retry_topic,
)
from schemas.transfers import (
    AcceptedTransfer,
    RejectedTransfer,
    TransferRequest,
    TransferSource,
)

log = logging.getLogger("bankflow.validator")

#: A dependency that does not answer within this long counts as down for this batch.
DB_CONNECT_TIMEOUT_S = 3
REDIS_TIMEOUT_S = 2


class Validator(Stage):
    name = "validator"
    commit = KafkaTransaction()
    #: Accepted transfers and retried requests leave signed (``bankflow.signing``).
    signer = "validator"

    def __init__(
        self,
        settings: Settings,
        fraud_state: FraudState,
        ruleset: RuleSet,
        pool: ConnectionPool[psycopg.Connection[Any]],
    ) -> None:
        self.settings = settings
        self.fraud_state = fraud_state
        self.ruleset = ruleset
        #: Accounts are read through a pool of one connection, built by ``build``.
        self.pool = pool
        self.batch_max = settings.validator_batch_max
        self.batch_wait_s = settings.validator_batch_wait_ms / 1000
        self.decisions: Counter[str] = Counter()
        self.metrics = registered(ValidatorMetrics)
        self.retry_tiers = {retry_topic(tier): tier for tier in settings.retry_tiers}

    def topics(self) -> list[str]:
        return [TRANSFERS_REQUESTED]

    def process(self, batch: Batch) -> list[Output]:
        """Decide every request of the batch; the runtime commits the outputs with the
        input offsets in one Kafka transaction."""
        return self._decide(batch.messages)

    def committed(self, batch: Batch, outputs: Sequence[Output]) -> None:
        self.decisions.update(o.topic for o in outputs)
        self._count(outputs)
        self._log(outputs)

    def close(self) -> None:
        self.pool.close()
        log.info("validator decisions: %s", dict(self.decisions))

    def _log(self, outputs: Sequence[Output]) -> None:
        """One line per transfer held, rejected or dead-lettered, once its transaction committed.

        Accepted and retried ones are the bulk (retries come in floods during an outage,
        already logged once per batch), so they are logged at DEBUG only.
        """
        verbose = log.isEnabledFor(logging.DEBUG)
        for topic, value, headers in ((o.topic, o.value, o.headers) for o in outputs):
            outcome, reason = self.decision_labels(topic, value, headers)
            level = _LOG_LEVELS.get(outcome, logging.DEBUG)
            if level == logging.DEBUG and not verbose:
                continue
            fields = header_map(headers)
            extra = {"outcome": outcome, "reason": reason}
            if outcome == "dead_letter":
                extra["attempt"] = fields.get(h.ATTEMPT, "")
                extra["error"] = fields.get(h.ERROR_MESSAGE, "")
            with logs.bound(**logs.message_fields(fields, value)):
                log.log(level, "transfer %s: %s", outcome.replace("_", " "), reason, extra=extra)

    def _count(self, outputs: Sequence[Output]) -> None:
        """Decisions by outcome and reason, once their transaction committed."""
        for topic, value, headers in ((o.topic, o.value, o.headers) for o in outputs):
            outcome, reason = self.decision_labels(topic, value, headers)
            self.metrics.decisions.labels(outcome, reason).inc()
            if outcome == "retry":
                self.metrics.retries.labels("validator", self.retry_tiers[topic]).inc()

    def decision_labels(
        self, topic: str, value: bytes | None, headers: HeaderList | None
    ) -> tuple[str, str]:
        """An output's outcome and its reason: the first reason code, or the error class."""
        if topic == TRANSFERS_ACCEPTED:
            return "accepted", NO_REASON
        if topic in (TRANSFERS_REVIEW, TRANSFERS_REJECTED):
            # Rejections and holds are the minority; reading their reasons back from
            # the message keeps the decision code free of metrics.
            body = orjson.loads(value or b"{}")
            reasons = body.get("risk_reasons" if topic == TRANSFERS_REVIEW else "reasons") or []
            outcome = "review" if topic == TRANSFERS_REVIEW else "rejected"
            return outcome, str(reasons[0]) if reasons else NO_REASON
        error_class = header_map(headers).get(h.ERROR_CLASS, "unknown")
        return ("dead_letter" if topic == TRANSFERS_DLQ else "retry"), error_class

    def _decide(self, messages: Sequence[Message]) -> list[Output]:
        """Every output of a batch, in the order of the input.

        Each transfer id is decided once (``validator_decisions``): a request whose id
        was decided before, in an earlier batch or earlier in this one, is answered with
        that decision and never reaches the rules or the fraud state again. Reading
        accounts and decisions (PostgreSQL) and the fraud state (Redis) happens here,
        before the Kafka transaction; a dependency that is down sends the requests that
        need it to the next retry tier instead of stopping the stream.
        """
        outputs: dict[int, Output] = {}
        fresh: list[tuple[int, Message, TransferRequest]] = []
        copies: list[tuple[int, Message, int]] = []  # a later copy and its first's index
        first: dict[uuid.UUID, int] = {}
        for n, m in enumerate(messages):
            try:
                request = TransferRequest.model_validate_json(m.value() or b"")
            except ValidationError as exc:
                outputs[n] = self._failed(m, PoisonMessage(describe(exc)))
                continue
            if request.transfer_id in first:
                copies.append((n, m, first[request.transfer_id]))
            else:
                first[request.transfer_id] = n
                fresh.append((n, m, request))
        try:
            with self.pool.connection(timeout=DB_CONNECT_TIMEOUT_S) as conn:
                known = stored_decisions(conn, [r.transfer_id for _, _, r in fresh])
                undecided = [(n, m, r) for n, m, r in fresh if r.transfer_id not in known]
                accounts = self._load_accounts(conn, [r for _, _, r in undecided])
        except psycopg.OperationalError as exc:  # PoolTimeout too: PostgreSQL is away
            return self._all_retried(messages, outputs, exc)
        for n, m, request in fresh:
            stored = known.get(request.transfer_id)
            if stored is not None:
                outputs[n] = stored.answering(m)
        decided = self._decide_new(undecided, accounts)
        try:
            with self.pool.connection(timeout=DB_CONNECT_TIMEOUT_S) as conn:
                winners = store_decisions(conn, decided, {n: r for n, _, r in undecided})
        except psycopg.OperationalError as exc:
            # Nothing published, nothing stored: the retry brings them back to be decided
            # (the fraud state recorded them by transfer id, so it counts nothing twice).
            return self._all_retried(messages, outputs, exc)
        for n, m, _ in undecided:
            won = winners.get(n)
            outputs[n] = won.answering(m) if won is not None else decided[n]
        for n, m, of in copies:
            answer = outputs[of]
            if answer.topic in DECISION_TOPICS:
                outputs[n] = Output(answer.topic, answer.key, answer.value,
                                    without_failure_headers(m.headers()))  # fmt: skip
            else:  # the first copy was not decided (a retry tier): neither is this one
                outputs[n] = self._failed(
                    m, DependencyUnavailable("an earlier copy in its batch was not decided")
                )
        return [outputs[n] for n in sorted(outputs)]

    def _all_retried(
        self, messages: Sequence[Message], outputs: dict[int, Output], exc: Exception
    ) -> list[Output]:
        """PostgreSQL is away: every request that is not poison to the next retry tier."""
        error = DependencyUnavailable(f"PostgreSQL: {exc}".strip())
        waiting = [n for n in range(len(messages)) if n not in outputs]
        log.warning("%s; %d request(s) to the retry tiers", error, len(waiting))
        outputs.update((n, self._failed(messages[n], error)) for n in waiting)
        return [outputs[n] for n in sorted(outputs)]

    def _decide_new(
        self,
        requests: Sequence[tuple[int, Message, TransferRequest]],
        accounts: Mapping[str, AccountFacts],
    ) -> dict[int, Output]:
        """Validation, limits and fraud rules for requests never decided before."""
        outputs: dict[int, Output] = {}
        passed: list[Screening] = []
        for n, m, request in requests:
            decision = validate(request, accounts)
            if decision.accepted is None:
                outputs[n] = _rejected(m, request, [r.value for r in decision.reasons])
            else:
                debit = accounts[str(decision.accepted.debit_account_id)]
                passed.append(
                    Screening(
                        n, m, request, decision.accepted, debit, accounts,
                        str(decision.accepted.debit_account_id),
                        str(decision.accepted.credit_account_id),
                    )
                )  # fmt: skip
        if passed:
            outputs.update(self._screen(passed))
        return outputs

    def _screen(self, passed: list[Screening]) -> dict[int, Output]:
        """Daily limits and fraud rules, against the debit accounts' state in Redis."""
        screened: list[Screening] = []
        outputs: dict[int, Output] = {}
        for s in passed:
            # The bank's own accounts have no limits and are not customers' behaviour.
            if s.debit.type in INTERNAL_TYPES:
                outputs[s.n] = _accepted_output(s, None)
            else:
                screened.append(s)
        if not screened:
            return outputs
        wanted: dict[str, set[str]] = defaultdict(set)
        for s in screened:
            wanted[s.debit_key].add(s.credit_key)
        try:
            states = self.fraud_state.load(wanted)
            outcomes = screen(screened, states, self.ruleset)
            self.fraud_state.record(
                outcomes.activity, outcomes.paid, self.ruleset.retention_ms,
                self.ruleset.history_max,
            )  # fmt: skip
        except redis.RedisError as exc:
            error = DependencyUnavailable(f"Redis: {exc}".strip())
            log.warning("%s; %d request(s) to the retry tiers", error, len(screened))
            outputs.update((s.n, self._failed(s.message, error)) for s in screened)
            return outputs
        outputs.update(outcomes.outputs)
        return outputs

    def _load_accounts(
        self, conn: psycopg.Connection[Any], requests: Sequence[TransferRequest]
    ) -> dict[str, AccountFacts]:
        keys = {
            account_reference_key(ref)
            for r in requests
            for ref in (r.debit_account, r.credit_account)
        }
        if not keys:
            return {}
        # Anyone can write any text here: only a real UUID is asked for as an id and
        # only what is written as an IBAN as one; anything else matches no account and
        # the request is rejected (unknown_account) rather than refused by PostgreSQL.
        ids = [k for k in keys if _is_uuid(k)]
        ibans = [k for k in keys if not _is_uuid(k) and looks_like_iban(k)]
        if not ids and not ibans:
            return {}
        rows = conn.execute(
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

    def _failed(self, message: Message, error: BankflowError) -> Output:
        route = route_failure(
            origin=(str(message.topic()), message.partition() or 0, message.offset() or 0),
            headers=message.headers(),
            error=error,
            tiers=self.settings.retry_tiers,
            now=datetime.now(UTC),
        )
        return Output(route.topic, message.key(), message.value(), route.headers)


#: The outcomes that are decisions, kept once per transfer id (a retry tier is not one).
DECISION_TOPICS = frozenset({TRANSFERS_ACCEPTED, TRANSFERS_REVIEW, TRANSFERS_REJECTED})


@dataclass(frozen=True, slots=True)
class StoredDecision:
    """A transfer id's first decision, as published (``validator_decisions``)."""

    topic: str
    key: bytes | None
    value: bytes

    def answering(self, message: Message) -> Output:
        """The decision again, for ``message`` (a copy): its own headers, the first's body."""
        return Output(self.topic, self.key, self.value, without_failure_headers(message.headers()))


def stored_decisions(
    conn: psycopg.Connection[Any], transfer_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, StoredDecision]:
    if not transfer_ids:
        return {}
    rows = conn.execute(
        "select transfer_id, topic, key, value from validator_decisions "
        "where transfer_id = any(%s::uuid[])",
        (list(transfer_ids),),
    ).fetchall()
    return {r[0]: StoredDecision(r[1], _bytes(r[2]), bytes(r[3])) for r in rows}


_DECISIONS_TEMP = (
    "create temporary table if not exists new_decisions "
    "(transfer_id uuid, topic text, key bytea, value bytea) on commit delete rows"
)
_DECISIONS_COPY = "copy new_decisions (transfer_id, topic, key, value) from stdin (format binary)"


def store_decisions(
    conn: psycopg.Connection[Any],
    outputs: Mapping[int, Output],
    requests: Mapping[int, TransferRequest],
) -> dict[int, StoredDecision]:
    """Keep the batch's new decisions; where another instance decided the same id first
    (a copy on another partition), its decision wins: returned by the request's index."""
    new = [(n, o) for n, o in outputs.items() if o.topic in DECISION_TOPICS and o.value]
    if not new:
        return {}
    ids = [requests[n].transfer_id for n, _ in new]
    # COPY into a temporary table, then one insert that skips the ids already decided:
    # half the time of an insert from arrays of bytea in ``bench validator`` (12 ms
    # against 26 ms per 1,000 decisions). Rows it could not insert were committed by
    # another instance, whose decisions are then read back.
    with conn.transaction():
        conn.execute(_DECISIONS_TEMP)
        with conn.cursor().copy(_DECISIONS_COPY) as copy:
            copy.set_types(["uuid", "text", "bytea", "bytea"])
            for transfer_id, (_, o) in zip(ids, new, strict=True):
                copy.write_row((transfer_id, o.topic, o.key, o.value))
        inserted = conn.execute(
            "insert into validator_decisions (transfer_id, topic, key, value) "
            "select transfer_id, topic, key, value from new_decisions "
            "on conflict (transfer_id) do nothing returning transfer_id"
        ).fetchall()
    lost = set(ids) - {r[0] for r in inserted}
    winners = stored_decisions(conn, list(lost)) if lost else {}
    return {n: winners[requests[n].transfer_id] for n, _ in new if requests[n].transfer_id in lost}


def _bytes(value: Any) -> bytes | None:
    return None if value is None else bytes(value)


#: How each outcome is logged (``Validator._log``); the others at DEBUG.
_LOG_LEVELS = {"review": logging.INFO, "rejected": logging.INFO, "dead_letter": logging.WARNING}


@dataclass(frozen=True, slots=True, eq=False)
class Screening:
    """A request that passed validation, waiting for limits and fraud rules."""

    n: int
    message: Message
    request: TransferRequest
    accepted: AcceptedTransfer
    debit: AccountFacts
    accounts: Mapping[str, AccountFacts]
    debit_key: str  # the accounts' ids as text, the fraud state's keys
    credit_key: str

    def activity(self) -> Activity:
        return Activity(
            int(self.request.requested_at.timestamp() * 1000),
            str(self.request.transfer_id),
            self.request.amount_minor,
            self.credit_key,
        )


@dataclass(slots=True)
class Screened:
    outputs: dict[int, Output] = field(default_factory=dict)
    activity: dict[str, list[Activity]] = field(default_factory=lambda: defaultdict(list))
    paid: dict[str, list[Activity]] = field(default_factory=lambda: defaultdict(list))


def screen(
    passed: Sequence[Screening], states: Mapping[str, AccountState], ruleset: RuleSet
) -> Screened:
    """Decide each request in request-time order, each seeing only what came before it."""
    result = Screened()
    for s in sorted(passed, key=lambda s: (s.request.requested_at, str(s.request.transfer_id))):
        state = states[s.debit_key]
        activity = s.activity()
        profile = state.profile_before(activity)
        over = daily_limit_reasons(
            s.debit.type,
            s.debit.currency,
            profile.day_total_minor(activity.at_ms),
            activity.amount_minor,
        )
        if over:
            result.outputs[s.n] = _rejected(s.message, s.request, [r.value for r in over])
            continue
        credit = s.accounts[s.credit_key]
        verdict = score(
            Candidate(activity, s.request.currency, credit.iban, _customer_channel(s.request)),
            profile,
            ruleset,
        )
        paid = verdict.outcome == "accepted"
        state.add(activity, paid=paid)
        result.activity[s.debit_key].append(activity)
        if paid:
            result.paid[s.debit_key].append(activity)
        if verdict.outcome == "rejected":
            result.outputs[s.n] = _rejected(s.message, s.request, verdict.reasons, verdict)
        else:
            result.outputs[s.n] = _accepted_output(s, verdict)
    return result


def _customer_channel(request: TransferRequest) -> bool:
    """A customer's own request through the API: what the behavioural rules screen.

    Batch files are authorised by the business customer as a whole (a payroll file
    pays hundreds of new beneficiaries at once by design); staff and the bank's own
    transfers are controlled by their roles.
    """
    return request.source is TransferSource.API and is_customer_request(request)


def _accepted_output(s: Screening, verdict: Verdict | None) -> Output:
    accepted = s.accepted
    topic = TRANSFERS_ACCEPTED
    if verdict is not None:
        accepted = accepted.model_copy(
            update={
                "ruleset_version": verdict.ruleset_version,
                "risk_score": verdict.score,
                "risk_reasons": verdict.reasons,
            }
        )
        topic = TRANSFERS_REVIEW if verdict.outcome == "review" else TRANSFERS_ACCEPTED
    return Output(
        topic,
        s.debit_key.encode(),
        accepted.model_dump_json().encode(),
        without_failure_headers(s.message.headers()),
    )


def _rejected(
    message: Message, request: TransferRequest, reasons: list[str], verdict: Verdict | None = None
) -> Output:
    rejected = RejectedTransfer(
        **request.model_dump(),
        reasons=reasons,
        ruleset_version=verdict.ruleset_version if verdict else None,
        risk_score=verdict.score if verdict else 0,
    )
    return Output(
        TRANSFERS_REJECTED,
        message.key(),
        rejected.model_dump_json().encode(),
        without_failure_headers(message.headers()),
    )


def _is_uuid(text: str) -> bool:
    """Whether ``text`` is an account id as PostgreSQL prints one (lower case, dashed).

    A pattern rather than ``uuid.UUID(text)``: this runs for every account of every
    batch, and parsing cost about 6 % of the validator's time in ``bench validator``.
    """
    return _UUID_TEXT.fullmatch(text) is not None


_UUID_TEXT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def build(settings: Settings) -> StageRunner[Validator]:
    """The composition root: the validator's clients, made once from the settings."""
    ruleset = load_ruleset(settings.fraud_rules)
    log.info("fraud rules %s from %s", ruleset.version, settings.fraud_rules)
    consumer = stage_consumer(
        settings, group_id=settings.validator_group, **{"session.timeout.ms": 10_000}
    )
    client = redis_client(
        settings, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
    )
    pool = db_pool(
        settings, application_name="bankflow-validator", connect_timeout=DB_CONNECT_TIMEOUT_S
    )
    validator = Validator(settings, FraudState(client, settings.redis_prefix), ruleset, pool)
    return StageRunner(settings, validator, consumer)


def run(settings: Settings) -> None:
    """``bankflow run validator``: decide until SIGTERM or SIGINT."""
    serve(settings, "validator", lambda: build(settings), settings.validator_metrics_port)
