"""The inbox watcher under faults: SIGKILLed in the middle of a 100,000-line file, then
restarted; and fed files it cannot ingest, which must not stop it."""

from __future__ import annotations

import json
import random
import re
import signal
import urllib.request
from pathlib import Path

import pytest

from bankflow.ledger.accounts import create_customer, find_internal_account, open_account
from bankflow.settings import Settings
from schemas.topics import TRANSFERS_REQUESTED
from tests.integration.test_ingest import SAMPLES, customer_user, requested
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
    customer_user(db, customer, "big@example.com")
    folder = settings.inbox / "big@example.com"  # the submitter's folder
    folder.mkdir()
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
    staging.replace(folder / "payments.csv")
    checkpoint = folder / ".payments.csv.progress"

    logs = tmp_path
    validator = start_service(settings, "validator", log=logs / "validator.log")
    poster = start_service(settings, "poster", log=logs / "poster.log")
    watcher = start_service(settings, "inbox-watcher", log=logs / "watcher-1.log")
    try:
        wait_for(checkpoint.exists, 120, "the watcher to checkpoint a chunk", interval_s=0.05)
        watcher.send_signal(signal.SIGKILL)
        watcher.wait(10)
        assert (folder / "payments.csv").exists(), "the file finished before the kill"
        watcher = start_service(settings, "inbox-watcher", log=logs / "watcher-2.log")
        wait_for(
            (folder / "done" / "payments.csv").exists,
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
    report = (folder / "done" / "payments.csv.report.json").read_text()
    assert '"resumed_from_line": 0' not in report  # the second watcher resumed mid-file
    assert not checkpoint.exists()


def _drop(inbox: Path, name: str, data: bytes) -> None:
    """Write under a name the watcher ignores, then rename: the file appears whole."""
    staging = inbox / f"{name}.part"
    staging.write_bytes(data)
    staging.replace(inbox / name)


def _ready(log: Path) -> bool:
    """Whether the watcher serves /readyz with 200 (its metrics port is in its log)."""
    found = re.search(r"metrics on [^:\s]+:(\d+)", log.read_text(errors="replace"))
    if found is None:
        return False
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{found.group(1)}/readyz", timeout=2
        ) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def _report(inbox: Path, folder: str, name: str) -> dict:
    return json.loads((inbox / folder / f"{name}.report.json").read_text())


@pytest.mark.timeout(240)
def test_files_that_cannot_be_ingested_fail_with_their_reason_and_the_watcher_goes_on(
    settings: Settings, topics, db, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"inbox": tmp_path / "inbox"})
    settings.inbox.mkdir()
    inbox = settings.inbox / "payer@example.com"  # the submitter's folder
    inbox.mkdir()
    topics(TRANSFERS_REQUESTED)
    customer = create_customer(db, "Payer")
    customer_user(db, customer, "payer@example.com")
    payer = open_account(
        db, settings, customer_id=customer, account_type="checking", currency="EUR"
    )
    payee = open_account(
        db, settings, customer_id=create_customer(db, "Payee"), account_type="checking",
        currency="EUR",
    )  # fmt: skip
    header = b"debit_account,credit_account,amount,currency\n"
    line = f"{payer.id},{payee.iban},{{}},EUR\n"
    sample = (SAMPLES / "pain.001.001.03.xml").read_bytes()
    start, end = sample.index(b"<GrpHdr>"), sample.index(b"</GrpHdr>") + len(b"</GrpHdr>")
    bad_files = {
        "no-group-header.xml": (sample[:start] + sample[end:], "no group header (GrpHdr)"),
        "not-a-number.csv": (
            header + line.format("twelve euros").encode(),
            "amount 'twelve euros' is not a plain decimal",
        ),
        "huge-amount.csv": (
            header + line.format("9" * 5_000).encode(),
            "amount: longer than 32 characters",
        ),
    }

    log = tmp_path / "watcher.log"
    watcher = start_service(settings, "inbox-watcher", log=log)
    try:
        wait_for(lambda: _ready(log) or watcher.poll() is not None, 60, "the watcher to be ready")
        assert watcher.poll() is None, log.read_text()
        for name, (data, _) in bad_files.items():
            _drop(inbox, name, data)
        for name, (_, reason) in bad_files.items():
            wait_for(
                lambda name=name: (
                    (inbox / "failed" / f"{name}.report.json").exists()
                    or watcher.poll() is not None
                ),
                60,
                f"{name} to be filed as failed",
            )
            assert watcher.poll() is None, f"the watcher exited on {name}: {log.read_text()}"
            report = _report(inbox, "failed", name)
            assert reason in report["refused"], report
            assert report["requests_produced"] == 0
            assert (inbox / "failed" / name).exists() and not (inbox / name).exists()

        _drop(
            inbox, "good.csv", header + line.format("1.00").encode() + line.format("2.50").encode()
        )
        wait_for(
            lambda: (
                (inbox / "done" / "good.csv.report.json").exists() or watcher.poll() is not None
            ),
            60,
            "the good file to be ingested",
        )
        assert watcher.poll() is None, log.read_text()  # the same process all along
        good = _report(inbox, "done", "good.csv")
        assert good["refused"] is None and good["errors"] == [], good
        assert good["requests_produced"] == 2
    finally:
        stop_service(watcher)
    assert sorted(r.amount_minor for r in requested(settings, 2)) == [100, 250]


@pytest.mark.timeout(120)
def test_a_file_met_by_an_unreachable_database_stays_in_the_inbox_for_later(
    settings: Settings, topics, tmp_path: Path
) -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    settings = settings.model_copy(
        update={
            "inbox": tmp_path / "inbox",
            "database_url": f"postgresql://bankflow:bankflow@127.0.0.1:{closed_port}/bankflow",
        }
    )
    settings.inbox.mkdir()
    inbox = settings.inbox / "ann@example.com"  # a submitter's folder: the user is looked up
    inbox.mkdir()
    topics(TRANSFERS_REQUESTED)
    log = tmp_path / "watcher.log"
    watcher = start_service(settings, "inbox-watcher", log=log)
    try:
        wait_for(lambda: _ready(log) or watcher.poll() is not None, 60, "the watcher to be ready")
        _drop(inbox, "later.csv", b"debit_account,credit_account,amount,currency\n")
        # Synchronise on the watcher's own account of its tries: the first, and one after
        # its back-off, which shows it neither gave up on the file nor stopped.
        wait_for(
            lambda: (
                log.read_text(errors="replace").count("trying it again") >= 2
                or watcher.poll() is not None
            ),
            60,
            "two tries of the file",
        )
        assert watcher.poll() is None, log.read_text()
        assert (inbox / "later.csv").exists()
        assert not (inbox / "failed").exists() and not (inbox / "done").exists()
    finally:
        stop_service(watcher)
