"""The inbox watcher SIGKILLed in the middle of a 100,000-line file, then restarted."""

from __future__ import annotations

import random
import signal
from pathlib import Path

import pytest

from bankflow.ledger.accounts import create_customer, find_internal_account, open_account
from bankflow.settings import Settings
from tests.integration.test_validator import produce_requests, run_validator_until, transfer_request
from tests.ledger_support import (
    drain_in_process,
    start_service,
    stop_service,
    transfer_count,
    wait_for,
)

pytestmark = pytest.mark.timeout(600)
LINES = 100_000


def test_a_watcher_killed_mid_file_resumes_and_every_line_posts_once(
    settings: Settings, topics, db, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"inbox": tmp_path / "inbox"})
    settings.inbox.mkdir()
    topics()
    customer = create_customer(db, "Big Payer")
    payer = open_account(
        db, settings, customer_id=customer, account_type="checking", currency="EUR"
    )
    payees = [
        open_account(
            db,
            settings,
            customer_id=create_customer(db, f"Payee {i}"),
            account_type="checking",
            currency="EUR",
        ).iban
        for i in range(20)
    ]
    cash = find_internal_account(db, "cash", "EUR")
    produce_requests(settings, [transfer_request(cash.id, payer.id, LINES * 100)])
    run_validator_until(settings, 1)
    drain_in_process(settings, 1)

    rng = random.Random(9)
    staging = tmp_path / "payments.csv.part"  # written under a name the watcher ignores
    with staging.open("w") as out:
        out.write(
            "debit_account,credit_account,amount,currency,description,category,tags,reference\n"
        )
        for n in range(LINES):
            out.write(
                f"{payer.iban},{rng.choice(payees)},{rng.randint(1, 99) / 100:.2f},EUR,"
                f"line {n},,,\n"
            )
    staging.replace(settings.inbox / "payments.csv")
    checkpoint = settings.inbox / ".payments.csv.progress"

    logs = tmp_path
    validator = start_service(settings, "validator", log=logs / "validator.log")
    poster = start_service(settings, "poster", log=logs / "poster.log")
    watcher = start_service(settings, "inbox-watcher", log=logs / "watcher-1.log")
    try:
        wait_for(checkpoint.exists, 120, "the watcher to checkpoint a chunk", interval_s=0.05)
        watcher.send_signal(signal.SIGKILL)
        watcher.wait(10)
        assert (settings.inbox / "payments.csv").exists(), "the file finished before the kill"
        watcher = start_service(settings, "inbox-watcher", log=logs / "watcher-2.log")
        wait_for(
            (settings.inbox / "done" / "payments.csv").exists,
            240,
            "the restarted watcher to finish the file",
        )
        wait_for(lambda: transfer_count(db) >= LINES + 1, 300, "every line to be posted")
    finally:
        for process in (watcher, validator, poster):
            stop_service(process)
    assert transfer_count(db) == LINES + 1
    posted = db.execute("select count(*) from transfers where status = 'posted'").fetchone()[0]
    assert posted == LINES + 1
    report = (settings.inbox / "done" / "payments.csv.report.json").read_text()
    assert '"resumed_from_line": 0' not in report  # the second watcher resumed mid-file
    assert not checkpoint.exists()
