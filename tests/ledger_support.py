"""Helpers for ledger tests: accounts, workloads with known outcomes, posters, snapshots.

Workloads are built so that no outcome depends on how partitions interleave:
a spender's debits never exceed its opening balance (credits only add to it),
and a "broke" account has no money and never receives any, so its transfers fail
with insufficient funds whatever the order. That lets a test compute the exact
expected ledger in advance and compare the real one to it.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bankflow.bootstrap import kafka_producer
from bankflow.ledger.accounts import create_customer, find_internal_account, open_account
from bankflow.settings import Settings
from schemas.topics import TRANSFERS_ACCEPTED
from schemas.transfers import AcceptedTransfer, TransferSource
from tests.conftest import TESTS_DIR

EUR = "EUR"
#: The services whose metrics port ``settings_env`` sets to 0 (the lag exporter's is apart).
METRICS_PORT_NAMES = (
    "API", "VALIDATOR", "RETRIER", "POSTER", "RELAY", "INBOX_WATCHER", "DLQ_SINK", "TRACKER",
    "CACHE", "SUPERVISOR",
)  # fmt: skip


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that makes a ``bankflow`` subprocess use exactly these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BANKFLOW_")}
    env.update(
        {
            "BANKFLOW_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "BANKFLOW_DATABASE_URL": settings.database_url,
            "BANKFLOW_REDIS_URL": settings.redis_url,
            "BANKFLOW_SIGNING_KEYS_FILE": str(settings.signing_keys_path),
            "BANKFLOW_TOPIC_PREFIX": settings.topic_prefix,
            "BANKFLOW_TOPIC_PARTITIONS": str(settings.topic_partitions),
            "BANKFLOW_DB_SCHEMA": settings.db_schema,
            "BANKFLOW_REDIS_PREFIX": settings.redis_prefix,
            "BANKFLOW_POSTER_GROUP": settings.poster_group,
            "BANKFLOW_VALIDATOR_GROUP": settings.validator_group,
            "BANKFLOW_RETRIER_GROUP": settings.retrier_group,
            "BANKFLOW_TRACKER_GROUP": settings.tracker_group,
            "BANKFLOW_RETRY_TIERS": json.dumps(settings.retry_tiers),
            "BANKFLOW_REVIEW_TIMEOUT_S": str(settings.review_timeout_s),
            "BANKFLOW_FRAUD_RULES": str(settings.fraud_rules),
            "BANKFLOW_VALIDATOR_BATCH_MAX": str(settings.validator_batch_max),
            "BANKFLOW_INSTANCE_ID": settings.instance_id,
            "BANKFLOW_INBOX": str(settings.inbox),
            "BANKFLOW_POSTER_BATCH_MAX": str(settings.poster_batch_max),
            "BANKFLOW_POSTER_BATCH_WAIT_MS": str(settings.poster_batch_wait_ms),
            # Every service serves metrics on a port of its own; 0 binds a free one, so
            # tests running side by side (and two posters in one test) never collide.
            # A test that scrapes a service passes its port in ``extra``.
            **{f"BANKFLOW_{name}_METRICS_PORT": "0" for name in METRICS_PORT_NAMES},
        }
    )
    env["PYTHONUNBUFFERED"] = "1"  # logs reach their files as they happen
    env.update(extra)
    return env


def run_cli(
    settings: Settings, *args: str, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    """``bankflow ARGS`` as a process with exactly these settings; never raises on exit code."""
    return subprocess.run(
        [sys.executable, "-m", "bankflow.cli", *args],
        env=settings_env(settings),
        cwd=TESTS_DIR.parent,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def start_service(
    settings: Settings, name: str, log: Path | None = None, **extra: str
) -> subprocess.Popen[bytes]:
    """``bankflow run NAME`` as a process of its own; its output goes to ``log``."""
    with log.open("ab") if log else open(os.devnull, "wb") as out:  # noqa: PTH123
        return subprocess.Popen(
            [sys.executable, "-m", "bankflow.cli", "run", name],
            env=settings_env(settings, **extra),
            cwd=TESTS_DIR.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def stop_service(process: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def accepted(
    debit: uuid.UUID, credit: uuid.UUID, amount_minor: int, currency: str = EUR
) -> AcceptedTransfer:
    return AcceptedTransfer(
        transfer_id=uuid.uuid4(),
        source=TransferSource.API,
        debit_account_id=debit,
        credit_account_id=credit,
        amount_minor=amount_minor,
        currency=currency,
    )


def produce_accepted(
    settings: Settings,
    transfers: list[AcceptedTransfer],
    raw: list[tuple[bytes, bytes]] = (),
    partition: int | None = None,
) -> None:
    """Put transfers (and raw key/value pairs, for poison) on transfers.accepted, acknowledged.

    ``partition`` pins every message to one partition (default: keyed by debit account).
    """
    producer = kafka_producer(settings)
    topic = settings.topic(TRANSFERS_ACCEPTED)
    pin = {} if partition is None else {"partition": partition}
    pairs = [(str(t.debit_account_id).encode(), t.model_dump_json().encode()) for t in transfers]
    for key, value in [*pairs, *raw]:
        # Signed as the validator signs them: the poster books nothing else.
        headers = signed(settings, TRANSFERS_ACCEPTED, key, value)
        producer.produce(topic, key=key, value=value, headers=headers, **pin)
        producer.poll(0)
    assert producer.flush(60) == 0, "the broker did not acknowledge every test message"


def signed(
    settings: Settings,
    topic: str,
    key: bytes | None,
    value: bytes | None,
    headers: list[tuple[str, Any]] | None = None,
    *,
    signer: str = "validator",
) -> list[tuple[str, Any]]:
    """``headers`` signed by ``signer`` for the logical ``topic`` (``bankflow.signing``)."""
    from bankflow.signing import Keyring

    keyring = Keyring.load(settings.signing_keys_path)
    return keyring.sign(signer, topic, key, value, headers)


def wait_for(
    condition: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.2
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def transfer_count(conn: Any) -> int:
    return int(conn.execute("select count(*) from transfers").fetchone()[0])


def drain_in_process(settings: Settings, expected_transfers: int, timeout_s: float = 120) -> Any:
    """Run a poster in this process until the ledger holds ``expected_transfers``."""
    from consumers.poster import build

    runner = build(settings)
    poster = runner.stage
    runner.subscribe()
    try:
        deadline = time.monotonic() + timeout_s
        while transfer_count(poster.conn) < expected_transfers:
            assert time.monotonic() < deadline, (
                f"poster stalled at {transfer_count(poster.conn)} of {expected_transfers}"
            )
            runner.step()
        return poster.stats
    finally:
        runner.close()


@dataclass
class Workload:
    """Accounts, funding, transfers and the ledger they must produce."""

    accounts: list[uuid.UUID]
    cash: uuid.UUID
    funding: list[AcceptedTransfer]
    transfers: list[AcceptedTransfer]
    expected_status: dict[uuid.UUID, str] = field(default_factory=dict)
    expected_balances: dict[uuid.UUID, int] = field(default_factory=dict)

    @property
    def all_transfers(self) -> list[AcceptedTransfer]:
        return self.funding + self.transfers

    def merged_with(self, other: Workload, cash_opening_minor: int) -> Workload:
        """Two workloads over disjoint customer accounts that share the cash account."""
        balances = {**self.expected_balances, **other.expected_balances}
        balances[self.cash] = (
            self.expected_balances[self.cash]
            + other.expected_balances[other.cash]
            - cash_opening_minor
        )
        return Workload(
            self.accounts + other.accounts,
            self.cash,
            self.funding + other.funding,
            self.transfers + other.transfers,
            {**self.expected_status, **other.expected_status},
            balances,
        )


def open_test_accounts(conn: Any, settings: Settings, count: int) -> list[uuid.UUID]:
    customer = create_customer(conn, "Test Customer")
    return [
        open_account(conn, settings, customer_id=customer, account_type="checking", currency=EUR).id
        for _ in range(count)
    ]


def build_workload(
    conn: Any,
    settings: Settings,
    *,
    accounts: int,
    transfers: int,
    broke: int = 10,
    hot_share: float = 1 / 3,
    seed: int = 7,
    hot_debits_only: bool = False,
) -> Workload:
    """A workload whose every outcome is known in advance (see the module docstring)."""
    rng = random.Random(seed)
    ids = open_test_accounts(conn, settings, accounts)
    cash_account = find_internal_account(conn, "cash", EUR)
    assert cash_account is not None
    hot, broke_ids, spenders = ids[0], ids[1 : 1 + broke], ids[1 + broke :]
    ghost = uuid.uuid4()  # an account that does not exist
    work: list[AcceptedTransfer] = []
    status: dict[uuid.UUID, str] = {}
    for i in range(transfers):
        amount = rng.randint(1, 5_000)
        if rng.random() < hot_share:
            other = rng.choice(spenders)
            debit, credit = (hot, other) if hot_debits_only or i % 2 == 0 else (other, hot)
            t = accepted(debit, credit, amount)
        elif i % 50 == 7:
            t = accepted(rng.choice(broke_ids), rng.choice(spenders), amount)  # always fails
        elif i % 97 == 11:
            t = accepted(rng.choice(spenders), ghost, amount)  # unknown account
        else:
            debit, credit = rng.sample(spenders, 2)
            t = accepted(debit, credit, amount)
        work.append(t)
        failing = t.debit_account_id in broke_ids or t.credit_account_id == ghost
        status[t.transfer_id] = "failed" if failing else "posted"
    # Fund every account with exactly what it will spend, so no debit depends on a credit.
    spend: dict[uuid.UUID, int] = dict.fromkeys(ids, 0)
    for t in work:
        if status[t.transfer_id] == "posted":
            spend[t.debit_account_id] += t.amount_minor
    funding = [
        accepted(cash_account.id, account, amount)
        for account, amount in spend.items()
        if amount > 0
    ]
    balances = dict.fromkeys(ids, 0)
    balances[cash_account.id] = cash_account.balance_minor
    for t in funding + work:
        status.setdefault(t.transfer_id, "posted")
        if status[t.transfer_id] == "posted":
            balances[t.debit_account_id] -= t.amount_minor
            balances[t.credit_account_id] += t.amount_minor
    return Workload(ids, cash_account.id, funding, work, status, balances)


def ledger_snapshot(conn: Any) -> dict[str, Any]:
    """Everything that must be identical between two runs that posted the same work."""
    transfers = {
        row[0]: (row[1], row[2]) for row in conn.execute("select id, status, reason from transfers")
    }
    balances = {row[0]: row[1] for row in conn.execute("select id, balance_minor from accounts")}
    entries = conn.execute(
        "select count(*), coalesce(sum(abs(amount_minor)), 0) from entries"
    ).fetchone()
    outbox = conn.execute("select count(*) from outbox").fetchone()[0]
    return {
        "transfers": transfers,
        "balances": balances,
        "entries": tuple(entries),
        "outbox": outbox,
    }


def assert_ledger_matches(conn: Any, settings: Settings, work: Workload) -> None:
    """The ledger holds exactly the expected outcomes and balances, and verify passes."""
    from bankflow.ledger.verify import verify

    snapshot = ledger_snapshot(conn)
    statuses = {tid: status for tid, (status, _reason) in snapshot["transfers"].items()}
    assert statuses == work.expected_status
    for account, balance in work.expected_balances.items():
        assert snapshot["balances"][account] == balance, f"balance of {account}"
    failed = [r for r in verify(conn, settings) if not r.ok]
    assert failed == [], failed
