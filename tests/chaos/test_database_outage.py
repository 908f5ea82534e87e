"""PostgreSQL stopped for 20 seconds while requests flow: nothing lost, nothing twice.

The validator and the poster ride out the outage (they back off and reconnect);
afterwards every request has its outcome and the ledger is exactly as expected.
Runs only against the local stack, which this test can stop and start.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from bankflow.bootstrap import db_connect
from bankflow.settings import Settings
from infra.stack import LocalStack
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


def as_request(transfer) -> TransferRequest:
    return TransferRequest(
        transfer_id=transfer.transfer_id, source=TransferSource.API,
        debit_account=str(transfer.debit_account_id),
        credit_account=str(transfer.credit_account_id), amount_minor=transfer.amount_minor,
        currency=transfer.currency, requested_by="teller:outage-test",
    )  # fmt: skip


def test_a_database_outage_loses_and_duplicates_nothing(
    settings: Settings, topics, db, tmp_path: Path
) -> None:
    stack = LocalStack(Settings(), echo=lambda _line: None)
    if stack._postgres_pid() is None:
        pytest.skip("needs the local stack's PostgreSQL, which this test stops and starts")
    topics()
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
        for name in ("validator", "poster")
    ]

    def trickle() -> None:  # about 30 seconds of traffic, across the outage
        for start in range(0, len(work.transfers), 100):
            produce_requests(settings, [as_request(t) for t in work.transfers[start : start + 100]])
            time.sleep(1)

    producer = threading.Thread(target=trickle)
    producer.start()
    try:
        time.sleep(5)
        stack._stop_postgres()
        time.sleep(OUTAGE_S)
        stack._start_postgres()
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
        if stack._postgres_pid() is None:
            stack._start_postgres()
    with db_connect(settings, autocommit=True) as conn:
        assert_ledger_matches(conn, settings, work)
    logs = "".join((tmp_path / f"{n}.log").read_text() for n in ("validator", "poster"))
    assert "database unavailable" in logs  # the outage did hit them
