"""``bankflow bench poster``: the poster's rate next to bare set-based SQL, in one run.

Three measurements on the same machine, in a throw-away schema and topic prefix:

- ``baseline_tps``: the same ledger writes (transfers, entries, balances, outbox,
  in batches of the poster's size) done by bare set-based SQL, with every row
  computed in advance: the floor cost of the database work.
- ``poster_tps``: N accepted transfers among many accounts, through Kafka and the
  poster (decode, lock, posting rules, one transaction per batch).
- ``hot_tps``: the same, but every transfer debits one hot account.

The figures are ``ratio`` = poster / baseline and ``hot_ratio`` = hot / poster.
"""

from __future__ import annotations

import gc
import random
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg

from bankflow.bootstrap import db_connect, kafka_producer
from bankflow.domain.posting import AccountState, AccountStatus, AccountType, post_batch
from bankflow.domain.posting import TransferInstruction as Instruction
from bankflow.ledger.accounts import create_customer, find_internal_account, open_account
from bankflow.ledger.store import ConsumedTransfer, Topics, prepare, write_prepared
from bankflow.settings import Settings
from bankflow.signing import Keyring
from bench.common import clean_up, throwaway
from consumers.poster import build as build_poster
from consumers.poster import tune_gc
from schemas.topics import TRANSFERS_ACCEPTED
from schemas.transfers import AcceptedTransfer, TransferSource

#: Accounts the uniform workload spreads over: enough that batches rarely share one.
ACCOUNTS = 1000
#: Every account is funded with this much, far more than it will spend.
FUNDING_MINOR = 10**12


def run_bench(
    settings: Settings, transfers: int, echo: Callable[[str], None], rounds: int = 3
) -> dict[str, Any]:
    """Interleaved rounds of the three measurements; the figures are their medians.

    Two cores run Kafka, PostgreSQL and the Python side together, and one run swings
    by 10 % either way with checkpoints and autovacuum; medians of interleaved rounds
    keep that noise out of the ratios.
    """
    bench = throwaway(settings, (TRANSFERS_ACCEPTED,))
    tune_gc()  # as `bankflow run poster` does; the baseline runs under it too
    measured: list[dict[str, float]] = []
    try:
        with db_connect(bench, autocommit=True) as conn:
            accounts = _funded_accounts(conn, bench, echo)
            for number in range(1, rounds + 1):
                measured.append(_round(conn, bench, accounts, transfers))
                echo(
                    f"round {number}/{rounds}: "
                    + ", ".join(f"{k} {v:,.0f}/s" for k, v in measured[-1].items())
                )
    finally:
        clean_up(bench, (TRANSFERS_ACCEPTED,))
    baseline, uniform, hot = (
        statistics.median(r[k] for r in measured) for k in ("baseline", "poster", "hot")
    )
    return {
        "transfers": transfers,
        "rounds": rounds,
        "batch_max": settings.poster_batch_max,
        "partitions": settings.topic_partitions,
        "baseline_tps": round(baseline),
        "poster_tps": round(uniform),
        "hot_tps": round(hot),
        "ratio": round(uniform / baseline, 3),
        "hot_ratio": round(hot / uniform, 3),
        "per_round": [{k: round(v) for k, v in r.items()} for r in measured],
    }


def _round(
    conn: psycopg.Connection[Any], settings: Settings, accounts: list[uuid.UUID], transfers: int
) -> dict[str, float]:
    baseline = _bare_sql_tps(conn, settings, accounts, transfers)
    _settle(conn)
    uniform = _poster_tps(conn, settings, _uniform(accounts, transfers))
    _settle(conn)
    hot = _poster_tps(conn, settings, _hot(accounts, transfers))
    _settle(conn)
    return {"baseline": baseline, "poster": uniform, "hot": hot}


def _funded_accounts(
    conn: psycopg.Connection[Any], settings: Settings, echo: Callable[[str], None]
) -> list[uuid.UUID]:
    echo(f"opening and funding {ACCOUNTS} accounts (through the poster) ...")
    with conn.transaction():
        customer = create_customer(conn, "Bench Customer")
        ids = [
            open_account(
                conn, settings, customer_id=customer, account_type="checking", currency="EUR"
            ).id
            for _ in range(ACCOUNTS)
        ]
    cash = find_internal_account(conn, "cash", "EUR")
    if cash is None:
        raise RuntimeError("the bench schema has no EUR cash account")
    _poster_tps(conn, settings, [_accepted(cash.id, a, FUNDING_MINOR) for a in ids])
    return ids


def _accepted(debit: uuid.UUID, credit: uuid.UUID, amount: int) -> AcceptedTransfer:
    return AcceptedTransfer(
        transfer_id=uuid.uuid4(),
        source=TransferSource.API,
        debit_account_id=debit,
        credit_account_id=credit,
        amount_minor=amount,
        currency="EUR",
    )


def _uniform(accounts: list[uuid.UUID], count: int, seed: int = 1) -> list[AcceptedTransfer]:
    rng = random.Random(seed)
    pairs = (rng.sample(accounts, 2) for _ in range(count))
    return [_accepted(debit, credit, rng.randint(1, 10_000)) for debit, credit in pairs]


def _hot(accounts: list[uuid.UUID], count: int) -> list[AcceptedTransfer]:
    rng = random.Random(2)
    hot, others = accounts[0], accounts[1:]
    return [_accepted(hot, rng.choice(others), rng.randint(1, 10_000)) for _ in range(count)]


def _poster_tps(
    conn: psycopg.Connection[Any], settings: Settings, transfers: list[AcceptedTransfer]
) -> float:
    """Produce ``transfers`` (untimed), then time the poster from its first batch to the last."""
    tuning: dict[str, Any] = {"linger.ms": 20, "batch.size": 1_000_000}
    producer = kafka_producer(settings, **tuning)
    topic = settings.topic(TRANSFERS_ACCEPTED)
    keyring = Keyring.load(settings.signing_keys_path)
    for t in transfers:
        key, value = str(t.debit_account_id).encode(), t.model_dump_json().encode()
        # Signed as the validator signs: the poster books nothing else.
        headers = keyring.sign("validator", TRANSFERS_ACCEPTED, key, value, None)
        producer.produce(topic, key=key, value=value, headers=headers)
        producer.poll(0)
    if producer.flush(120):
        raise RuntimeError("the broker did not acknowledge the bench's transfers")
    target = _transfer_count(conn) + len(transfers)
    # A poster process holds no workload in memory: drop it, so the garbage collector
    # does not scan 100,000 objects the poster never made.
    transfers.clear()
    gc.collect()
    runner = build_poster(settings)
    stats = runner.stage.stats
    runner.subscribe()
    try:
        while runner.step() == 0:  # joining the group and seeking: not measured
            pass
        started = time.perf_counter()
        first = stats.posted + stats.failed
        while _transfer_count(conn) < target:
            runner.step()
        elapsed = time.perf_counter() - started
        return (stats.posted + stats.failed - first) / elapsed
    finally:
        runner.close()


def _settle(conn: psycopg.Connection[Any]) -> None:
    """Vacuum between measurements, so that autovacuum catching up on the previous
    run's inserts does not compete with the next one for the machine's two cores."""
    conn.execute("vacuum analyze")


def _transfer_count(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("select count(*) from transfers").fetchone()
    return int(row[0]) if row else 0


def _bare_sql_tps(
    conn: psycopg.Connection[Any], settings: Settings, accounts: list[uuid.UUID], count: int
) -> float:
    """The poster's exact writes, every row computed before the clock starts.

    Per batch: lock the touched accounts in id order, binary-COPY the transfers, the
    entries and the events, update the balances, commit. What this leaves out is what
    the poster adds: Kafka, decoding, the posting rules, building the rows, the offsets.
    """
    rows = conn.execute(
        "select id, balance_minor from accounts where id = any(%s)", (accounts,)
    ).fetchall()
    state = {
        r[0]: AccountState(r[0], AccountType.CHECKING, "EUR", AccountStatus.ACTIVE, r[1])
        for r in rows
    }
    topics = Topics("bench.posted", "bench.failed", "bench.dlq")
    now = datetime.now(UTC)
    size = settings.poster_batch_max
    work = _uniform(accounts, count, seed=3)
    batches = []
    for start in range(0, count, size):
        fresh = [
            ConsumedTransfer(t, "bench", 0, start + i)
            for i, t in enumerate(work[start : start + size])
        ]
        result = post_batch(state, [_instruction(c.transfer) for c in fresh])
        state.update(
            {
                a: AccountState(a, AccountType.CHECKING, "EUR", AccountStatus.ACTIVE, b)
                for a, b in result.balances.items()
            }
        )
        batches.append(prepare(fresh, result, topics, now))
    started = time.perf_counter()
    for batch in batches:
        with conn.transaction():
            conn.execute(
                "select id from accounts where id = any(%s) order by id for update",
                (sorted(batch.balances),),
            )
            write_prepared(conn, batch)
    return count / (time.perf_counter() - started)


def _instruction(t: AcceptedTransfer) -> Instruction:
    return Instruction(
        t.transfer_id, t.debit_account_id, t.credit_account_id, t.amount_minor, t.currency
    )
