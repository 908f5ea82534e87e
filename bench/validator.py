"""``bankflow bench validator``: decisions per second next to a bare transactional loop.

Two measurements over the same requests on ``transfers.requested``, in a throw-away
schema, topic prefix and Redis prefix, interleaved over rounds (medians reported):

- ``baseline_per_s``: a bare consume-transform-produce loop with Kafka transactions
  and the validator's batch size: consume a batch, produce each message unchanged,
  send the offsets, commit. No decoding, no rules, no database, no Redis: the floor
  cost of exactly-once on this broker.
- ``validator_per_s``: the validator itself (decode, accounts from PostgreSQL,
  validation, daily limits and every fraud rule against Redis state, outputs and
  offsets in one transaction per batch). The requests are customer-initiated, so
  every behavioural rule runs; their times spread over the last day across the
  accounts, as a real day's traffic would.

``ratio`` = validator / baseline.
"""

from __future__ import annotations

import random
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from bankflow.bootstrap import db_connect, kafka_consumer, kafka_producer, redis_client
from bankflow.ledger.accounts import create_customer, open_account
from bankflow.settings import Settings
from bankflow.streaming.kafka import next_offsets
from bench.common import clean_up, throwaway
from processors.validator import build as build_validator
from schemas.topics import (
    TRANSFERS_ACCEPTED,
    TRANSFERS_DLQ,
    TRANSFERS_REJECTED,
    TRANSFERS_REQUESTED,
    TRANSFERS_REVIEW,
    retry_topic,
)
from schemas.transfers import TransferRequest, TransferSource

#: Customers and their accounts: a request names two accounts of the same customer
#: (owner checks pass) or another customer's as credit.
CUSTOMERS = 200
ACCOUNTS_PER_CUSTOMER = 5
BASELINE_OUTPUT = "bench.baseline"
TXN_TIMEOUT_S = 30


def run_bench(
    settings: Settings, requests: int, echo: Callable[[str], None], rounds: int = 3
) -> dict[str, Any]:
    topics = (
        TRANSFERS_REQUESTED, TRANSFERS_ACCEPTED, TRANSFERS_REJECTED, TRANSFERS_REVIEW,
        TRANSFERS_DLQ, BASELINE_OUTPUT, *(retry_topic(t) for t in settings.retry_tiers),
    )  # fmt: skip
    bench = throwaway(settings, topics, redis_prefix=f"bench-{uuid.uuid4().hex[:8]}:")
    measured: list[dict[str, float]] = []
    outcomes: dict[str, int] = {}
    try:
        echo(f"opening {CUSTOMERS * ACCOUNTS_PER_CUSTOMER} accounts, producing {requests:,} ...")
        _produce(bench, _requests(bench, requests))
        # The broker's first transactional run over fresh segments is several times
        # slower than the next ones (measured: 29k/s, then 102k/s): warm it up unmeasured.
        _baseline_per_s(bench, requests, "warm-up")
        for number in range(1, rounds + 1):
            baseline = _baseline_per_s(bench, requests, f"base-{number}")
            validator, outcomes = _validator_per_s(bench, requests, f"val-{number}")
            measured.append({"baseline": baseline, "validator": validator})
            echo(f"round {number}/{rounds}: baseline {baseline:,.0f}/s, "
                 f"validator {validator:,.0f}/s")  # fmt: skip
    finally:
        clean_up(bench, topics)
        _drop_redis_keys(redis_client(bench), bench.redis_prefix)
    baseline, validator = (
        statistics.median(r[k] for r in measured) for k in ("baseline", "validator")
    )
    return {
        "requests": requests,
        "rounds": rounds,
        "batch_max": settings.validator_batch_max,
        "partitions": settings.topic_partitions,
        "baseline_per_s": round(baseline),
        "validator_per_s": round(validator),
        "ratio": round(validator / baseline, 3),
        "outcomes_last_round": outcomes,
        "per_round": [{k: round(v) for k, v in r.items()} for r in measured],
    }


def _requests(settings: Settings, count: int) -> list[TransferRequest]:
    rng = random.Random(11)
    with db_connect(settings, autocommit=True) as conn, conn.transaction():
        customers = []
        for n in range(CUSTOMERS):
            customer = create_customer(conn, f"Bench Customer {n}")
            accounts = [
                open_account(conn, settings, customer_id=customer, account_type="checking",
                             currency="EUR").id
                for _ in range(ACCOUNTS_PER_CUSTOMER)
            ]  # fmt: skip
            customers.append((customer, accounts))
    now = datetime.now(UTC)
    made = []
    for _ in range(count):
        customer, accounts = rng.choice(customers)
        debit = rng.choice(accounts)
        credit = rng.choice(rng.choice(customers)[1] if rng.random() < 0.3 else accounts)
        if credit == debit:
            credit = accounts[(accounts.index(debit) + 1) % len(accounts)]
        made.append(
            TransferRequest(
                transfer_id=uuid.uuid4(),
                source=TransferSource.API,
                debit_account=str(debit),
                credit_account=str(credit),
                amount_minor=rng.randint(100, 50_000),
                currency="EUR",
                requested_by=f"customer:{customer}",
                requested_at=now - timedelta(seconds=rng.uniform(0, 86_000)),
            )
        )
    return made


def _produce(settings: Settings, requests: list[TransferRequest]) -> None:
    tuning: dict[str, Any] = {"linger.ms": 20, "batch.size": 1_000_000}
    producer = kafka_producer(settings, **tuning)
    topic = settings.topic(TRANSFERS_REQUESTED)
    for r in requests:
        producer.produce(topic, key=r.debit_account.encode(), value=r.model_dump_json().encode())
        producer.poll(0)
    if producer.flush(120):
        raise RuntimeError("the broker did not acknowledge the bench's requests")


def _baseline_per_s(settings: Settings, count: int, tag: str) -> float:
    """The bare transactional loop over the same input, with the validator's batch size."""
    consumer = kafka_consumer(settings, group_id=f"{settings.topic_prefix}{tag}")
    producer = kafka_producer(
        settings, transactional_id=f"{settings.topic_prefix}{tag}",
        **{"transaction.timeout.ms": 10_000, "delivery.timeout.ms": 10_000},
    )  # fmt: skip
    producer.init_transactions(TXN_TIMEOUT_S)
    consumer.subscribe([settings.topic(TRANSFERS_REQUESTED)])
    output = settings.topic(BASELINE_OUTPUT)
    done, first, started = 0, 0, 0.0
    try:
        while done < count:
            batch = [
                m for m in consumer.consume(settings.validator_batch_max,
                                            settings.validator_batch_wait_ms / 1000)
                if m.error() is None
            ]  # fmt: skip
            if not batch:
                continue
            producer.begin_transaction()
            for m in batch:
                producer.produce(output, key=m.key(), value=m.value(), headers=m.headers())
            producer.send_offsets_to_transaction(
                next_offsets(batch), consumer.consumer_group_metadata(), TXN_TIMEOUT_S
            )
            producer.commit_transaction(TXN_TIMEOUT_S)
            done += len(batch)
            if not started:  # from the end of the first batch: joining is not measured
                first, started = done, time.perf_counter()
        return (done - first) / (time.perf_counter() - started)
    finally:
        consumer.close()


def _validator_per_s(settings: Settings, count: int, tag: str) -> tuple[float, dict[str, int]]:
    """The validator over the same input, with fraud state of its own (empty at start)."""
    run = settings.model_copy(update={
        "validator_group": f"{settings.topic_prefix}{tag}",
        "instance_id": tag, "redis_prefix": f"{settings.redis_prefix}{tag}:",
    })  # fmt: skip
    runner = build_validator(run)
    validator = runner.stage
    runner.subscribe()
    first, started = 0, 0.0
    try:
        while (done := sum(validator.decisions.values())) < count:
            if runner.step() and not started:
                first, started = sum(validator.decisions.values()), time.perf_counter()
        return (done - first) / (time.perf_counter() - started), dict(validator.decisions)
    finally:
        runner.close()
        _drop_redis_keys(validator.fraud_state.client, run.redis_prefix)
        # Every round decides afresh: the next round's requests would otherwise be copies
        # of transfer ids already decided, answered from the store without the rules.
        with db_connect(run, autocommit=True) as conn:
            conn.execute("delete from validator_decisions")


def _drop_redis_keys(client: redis.Redis, prefix: str) -> None:
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    for start in range(0, len(keys), 1000):
        client.delete(*keys[start : start + 1000])
