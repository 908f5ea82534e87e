"""PostgreSQL or Redis stopped for 20 seconds while requests flow: nothing lost, nothing twice.

The validator sends the requests that needed the missing server to the retry tiers
(short ones here, so the test waits seconds rather than minutes) and the retrier
brings them back; the poster waits in place for PostgreSQL, where its offsets live.
Afterwards every request has exactly one outcome, the ledger is exactly as expected,
and nothing reached the dead-letter topic, since no message exhausted its tiers.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import TopicPartition

from bankflow.bootstrap import db_connect, kafka_consumer
from bankflow.settings import Settings
from infra.stack import LocalStack
from schemas.topics import TRANSFERS_DLQ, retry_topic
from schemas.transfers import TransferRequest, TransferSource
from tests.integration.test_validator import produce_requests, run_validator_until
from tests.ledger_support import (
    assert_ledger_matches,
    build_workload,
    drain_in_process,
    start_service,
    stop_service,
    transfer_count,
    wait_for,
)

pytestmark = pytest.mark.timeout(600)
OUTAGE_S = 20
TRANSFERS = 3_000
#: Together 50 s, more than the outage: no request should exhaust its tiers.
TIERS = {"t5s": 5, "t15s": 15, "t30s": 30}


def as_request(transfer) -> TransferRequest:
    return TransferRequest(
        transfer_id=transfer.transfer_id, source=TransferSource.API,
        debit_account=str(transfer.debit_account_id),
        credit_account=str(transfer.credit_account_id), amount_minor=transfer.amount_minor,
        currency=transfer.currency, requested_by="teller:outage-test",
    )  # fmt: skip


def message_count(settings: Settings, *names: str) -> int:
    consumer = kafka_consumer(settings, group_id=f"{settings.topic_prefix}count")
    try:
        return sum(
            high - low
            for name in names
            for p in range(settings.topic_partitions)
            for low, high in [
                consumer.get_watermark_offsets(TopicPartition(settings.topic(name), p), timeout=10)
            ]
        )  # fmt: skip
    finally:
        consumer.close()


def run_outage(
    settings: Settings,
    topics,
    db,
    tmp_path: Path,
    *,
    stop: Callable[[], None],
    start: Callable[[], None],
) -> None:  # fmt: skip
    """Traffic for about 30 s with the outage in the middle; then check every outcome."""
    settings = settings.model_copy(update={"retry_tiers": TIERS})
    topics(*settings.all_topics())
    work = build_workload(db, settings, accounts=60, transfers=TRANSFERS, broke=5, seed=21)
    # Transfers to the unknown account are rejected by the validator, never posted: this
    # test leaves them out and expects the rest exactly.
    known = set(work.accounts)
    work.transfers = [t for t in work.transfers if t.credit_account_id in known]
    work.expected_status = {
        t.transfer_id: work.expected_status[t.transfer_id] for t in work.all_transfers
    }
    produce_requests(settings, [as_request(t) for t in work.funding])
    run_validator_until(settings, len(work.funding))
    drain_in_process(settings, len(work.funding))

    services = [
        start_service(settings, name, log=tmp_path / f"{name}.log")
        for name in ("validator", "retrier", "poster")
    ]

    def trickle() -> None:  # about 30 seconds of traffic, across the outage
        for first in range(0, len(work.transfers), 100):
            produce_requests(settings, [as_request(t) for t in work.transfers[first : first + 100]])
            time.sleep(1)

    producer = threading.Thread(target=trickle)
    producer.start()
    try:
        time.sleep(5)
        stop()
        time.sleep(OUTAGE_S)
        start()
        producer.join(120)
        with db_connect(settings, autocommit=True) as conn:
            wait_for(
                lambda: transfer_count(conn) >= len(work.all_transfers),
                240,
                "every request to reach the ledger after the outage",
            )
    finally:
        producer.join(120)
        for service in services:
            stop_service(service)
    with db_connect(settings, autocommit=True) as conn:
        assert_ledger_matches(conn, settings, work)
    assert message_count(settings, *(retry_topic(t) for t in TIERS)) > 0  # the tiers were used
    assert message_count(settings, TRANSFERS_DLQ) == 0


def test_a_database_outage_goes_through_the_retry_tiers_and_loses_nothing(
    settings: Settings, topics, db, tmp_path: Path
) -> None:
    stack = LocalStack(Settings(), echo=lambda _line: None)
    if stack._postgres_pid() is None:
        pytest.skip("needs the local stack's PostgreSQL, which this test stops and starts")
    try:
        run_outage(
            settings, topics, db, tmp_path, stop=stack._stop_postgres, start=stack._start_postgres
        )
    finally:
        if stack._postgres_pid() is None:
            stack._start_postgres()
    # It was hit: the poster waited PostgreSQL out (the runtime's backoff line).
    assert "poster: dependency unavailable (" in (tmp_path / "poster.log").read_text()


class PrivateRedis:
    """A Redis server of this test's own, so stopping it disturbs no other test."""

    def __init__(self, root: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("needs redis-server")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.command = [binary, "--port", str(self.port), "--bind", "127.0.0.1",
                        "--save", "", "--appendonly", "no", "--dir", str(root)]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise AssertionError("the test's Redis did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


def test_a_redis_outage_goes_through_the_retry_tiers_and_loses_nothing(
    settings: Settings, topics, db, tmp_path: Path
) -> None:
    redis = PrivateRedis(tmp_path)
    redis.start()
    try:
        settings = settings.model_copy(update={"redis_url": redis.url})
        run_outage(settings, topics, db, tmp_path, stop=redis.stop, start=redis.start)
    finally:
        redis.stop()
    assert "Redis" in (tmp_path / "validator.log").read_text()  # the outage did hit it
