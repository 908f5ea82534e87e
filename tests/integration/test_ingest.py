"""`bankflow ingest` against the real stack: files to requests to the ledger, once."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from bankflow.bootstrap import kafka_consumer
from bankflow.ledger.accounts import create_customer, find_internal_account, open_account
from bankflow.settings import Settings
from producers.ingest.run import ingest
from producers.ingest.submitters import Submitter, customer_submitter
from schemas.topics import TRANSFERS_REQUESTED
from schemas.transfers import TransferRequest
from tests.integration.test_validator import produce_requests, run_validator_until, transfer_request
from tests.ledger_support import drain_in_process, run_cli, transfer_count

pytestmark = pytest.mark.timeout(300)
SAMPLES = Path(__file__).resolve().parents[1] / "data" / "iso20022"


def requested(settings: Settings, expected: int) -> list[TransferRequest]:
    consumer = kafka_consumer(settings, group_id=f"{settings.topic_prefix}reader")
    topic = settings.topic(TRANSFERS_REQUESTED)
    consumer.assign([TopicPartition(topic, p, 0) for p in range(settings.topic_partitions)])
    found: list[TransferRequest] = []
    try:
        for _ in range(40):  # bounded: 20 seconds
            batch = consumer.consume(1000, timeout=0.5)
            found += [
                TransferRequest.model_validate_json(m.value()) for m in batch if m.error() is None
            ]
            if len(found) >= expected and not batch:
                break
    finally:
        consumer.close()
    return found


def customer_user(db: Any, customer: uuid.UUID, email: str) -> Submitter:
    """A customer's API user (who submits the customer's files), as a submitter."""
    user_id = uuid.uuid4()
    db.execute(
        "insert into users (id, email, password_hash, role, customer_id)"
        " values (%s, %s, 'not-a-hash', 'customer', %s)",
        (user_id, email, customer),
    )
    return customer_submitter(user_id, email, customer)


def test_each_sample_pain001_becomes_one_request_per_transaction(
    settings: Settings, topics, db
) -> None:
    topics(TRANSFERS_REQUESTED)
    customer = create_customer(db, "Muster AG")
    for iban, currency in (("CH5481230000001998736", "CHF"), ("DE87200500001234567890", "EUR")):
        open_account(
            db,
            settings,
            customer_id=customer,
            account_type="checking",
            currency=currency,
            iban=iban,
        )
    expected = []
    submitter = customer_submitter(uuid.uuid4(), "muster@example.com", customer)
    for sample in sorted(SAMPLES.glob("*.xml")):
        report = ingest(settings, sample, submitter=submitter)
        assert report.refused is None, report.as_dict()
        assert report.format == "pain001"
        # The Swiss sample pays two postal accounts (Othr/Id 01-39139-1, 25-9034-2):
        # neither an account id nor an IBAN, so bad lines naming the creditor account.
        postal = [1, 2] if sample.name.endswith(".ch.02.xml") else []
        assert [(e.line, e.field) for e in report.errors] == [
            (n, "credit_account") for n in postal
        ], report.as_dict()
        expected += [report.requests_produced]
    found = requested(settings, sum(expected))
    assert sorted((r.amount_minor, r.currency) for r in found) == sorted(
        [(342_100, "EUR")] + [(654_314, "EUR"), (11_272, "EUR")] * 4
    )
    assert all(r.source == "batch" and r.requested_by == f"customer:{customer}" for r in found)
    assert len({r.transfer_id for r in found}) == len(found)


def test_a_csv_with_bad_lines_posts_the_good_ones_once_even_ingested_twice(
    settings: Settings, topics, db, tmp_path: Path
) -> None:
    topics()
    customer = create_customer(db, "Jane Doe")
    payer = open_account(
        db, settings, customer_id=customer, account_type="checking", currency="EUR"
    )
    payee = open_account(
        db,
        settings,
        customer_id=create_customer(db, "Shop"),
        account_type="checking",
        currency="EUR",
    )
    cash = find_internal_account(db, "cash", "EUR")
    produce_requests(settings, [transfer_request(cash.id, payer.id, 100_000)])
    run_validator_until(settings, 1)
    drain_in_process(settings, 1)

    csv = tmp_path / "payments.csv"
    csv.write_bytes(
        b"debit_account,credit_account,amount,currency,description,category,tags,reference\n"
        + f"{payer.iban},{payee.iban},12.50,EUR,coffee,food,daily;small,R1\n".encode()
        + f"{payer.id},{payee.iban},12.505,EUR,bad amount,,,\n".encode()
        + f"{payer.id},{payee.iban},10.00,XYZ,unknown currency,,,\n".encode()
        + f"{payer.id},,10.00,EUR,missing credit,,,\n".encode()
        + f"{payer.id},{payee.iban},10.00,EUR,x,y,z,w,too many\n".encode()
        + f"{payer.id},{payee.iban},10.00,EUR,caf".encode()
        + b"\xe9\n"
        + f"{cash.id},{payee.iban},10.00,EUR,bank's own,,,\n".encode()
        + f'{payer.id},{payee.id},"1,000.00",EUR,comma,,,\n'.encode()
        + f"{payer.id},{payee.id},30.00,EUR,rent,,,\n".encode()
    )
    submitter = customer_submitter(uuid.uuid4(), "jane@example.com", customer)
    first = ingest(settings, csv, submitter=submitter)
    second = ingest(settings, csv, submitter=submitter)
    assert first.refused is None
    assert [(e.line, e.field) for e in first.errors] == [
        (3, "amount"),
        (4, "currency"),
        (5, "credit_account"),
        (6, "line"),
        (7, "line"),
        (8, "debit_account"),
        (9, "amount"),
    ]
    assert first.requests_produced == second.requests_produced == 2

    run_validator_until(settings, 4)
    drain_in_process(settings, 3)
    assert transfer_count(db) == 3  # the deposit and the two good lines, once each
    balance = db.execute(
        "select balance_minor from accounts where id = %s", (payee.id,)
    ).fetchone()[0]
    assert balance == 1_250 + 3_000


def test_the_cli_reports_in_json_and_exits_non_zero_for_a_refused_file(
    settings: Settings, topics, db, tmp_path: Path
) -> None:
    import json

    topics(TRANSFERS_REQUESTED)
    bad = tmp_path / "bad-ctrlsum.xml"
    bad.write_bytes(
        (SAMPLES / "pain.001.001.03.ch.02.xml")
        .read_bytes()
        .replace(b"<CtrlSum>15850.00</CtrlSum>", b"<CtrlSum>1.00</CtrlSum>")
    )
    customer_user(db, create_customer(db, "Muster AG"), "muster@example.com")
    result = run_cli(settings, "ingest", str(bad), "--submitted-by", "muster@example.com", "--json")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["requests_produced"] == 0
    assert "CtrlSum of the group header says 1.00" in report["refused"]
    assert requested(settings, 0) == []


def test_wait_follows_every_request_and_writes_a_pain002_report(
    settings: Settings, topics, db, tmp_path: Path
) -> None:
    import json
    import shutil

    from tests.ledger_support import start_service, stop_service

    topics()
    payer = create_customer(db, "Debtor Name")
    customer_user(db, payer, "debtor@example.com")
    debtor = open_account(
        db,
        settings,
        customer_id=payer,
        account_type="checking",
        currency="EUR",
        iban="DE87200500001234567890",
    )
    open_account(
        db,
        settings,
        customer_id=payer,
        account_type="checking",
        currency="CHF",
        iban="CH5481230000001998736",
    )
    for iban in ("DE21500500009876543210", "DE21500500001234567897"):
        open_account(
            db,
            settings,
            customer_id=create_customer(db, "Creditor"),
            account_type="checking",
            currency="EUR",
            iban=iban,
        )
    cash = find_internal_account(db, "cash", "EUR")
    produce_requests(settings, [transfer_request(cash.id, debtor.id, 1_000_000)])
    run_validator_until(settings, 1)  # funded before the file: no outcome depends on order
    drain_in_process(settings, 1)
    files = [tmp_path / "plain.xml", tmp_path / "swiss.xml"]
    shutil.copy(SAMPLES / "pain.001.001.03.xml", files[0])
    shutil.copy(SAMPLES / "pain.001.001.03.ch.02.xml", files[1])

    services = [
        start_service(settings, name, log=tmp_path / f"{name}.log")
        for name in ("validator", "poster")
    ]
    try:
        runs = [
            run_cli(
                settings,
                "ingest",
                str(f),
                "--submitted-by",
                "debtor@example.com",
                "--wait",
                "--json",
                "--wait-timeout",
                "120",
                timeout_s=180,
            )
            for f in files
        ]
        assert all(r.returncode == 0 for r in runs), [r.stderr for r in runs]
        reports = [json.loads(r.stdout) for r in runs]
    finally:
        for service in services:
            stop_service(service)

    assert reports[0]["statuses"] == {"posted": 2}
    # The Swiss file's two postal-account creditors are bad lines at the edge; the
    # third transaction pays an IBAN that is not ours.
    assert [(e["line"], e["field"]) for e in reports[1]["errors"]] == [
        (1, "credit_account"),
        (2, "credit_account"),
    ]
    assert reports[1]["statuses"] == {"rejected": 1}
    assert reports[1]["reasons"] == {"external_not_supported": 1}
    plain = Path(reports[0]["pain002"]).read_text()
    from defusedxml.ElementTree import fromstring

    assert fromstring(plain.encode()).tag.endswith("Document")  # well-formed
    assert "<GrpSts>ACCP</GrpSts>" in plain and plain.count("<TxSts>ACCP</TxSts>") == 2
    assert "<OrgnlEndToEndId>OriginatorID1234</OrgnlEndToEndId>" in plain
    swiss = Path(reports[1]["pain002"]).read_text()
    # Every transaction of the file has its status: the two refused at the edge too.
    assert "<GrpSts>RJCT</GrpSts>" in swiss and swiss.count("<TxSts>RJCT</TxSts>") == 3
    assert "<Prtry>external_not_supported</Prtry>" in swiss
    assert swiss.count("<Prtry>invalid_credit_account</Prtry>") == 2


def test_bad_account_references_are_bad_lines_and_the_good_lines_go_on(
    settings: Settings, topics, db, tmp_path: Path
) -> None:
    topics(TRANSFERS_REQUESTED)
    customer = create_customer(db, "Jane Doe")
    payer = open_account(
        db, settings, customer_id=customer, account_type="checking", currency="EUR"
    )
    payee = open_account(
        db, settings, customer_id=create_customer(db, "Shop"), account_type="checking",
        currency="EUR",
    )  # fmt: skip
    csv = tmp_path / "references.csv"
    csv.write_text(
        "debit_account,credit_account,amount,currency\n"
        f"{payer.id},zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz,1.00,EUR\n"
        f"{payer.id},DE89370400440532013001,1.00,EUR\n"  # wrong check digits
        f"not-an-account,{payee.iban},1.00,EUR\n"
        f"{str(payer.id).upper()},{payee.iban.lower()},2.00,EUR\n"
    )
    submitter = customer_submitter(uuid.uuid4(), "jane@example.com", customer)
    report = ingest(settings, csv, submitter=submitter)
    assert report.refused is None
    assert [(e.line, e.field) for e in report.errors] == [
        (2, "credit_account"),
        (3, "credit_account"),
        (4, "debit_account"),
    ]
    assert report.requests_produced == 1
    (request,) = requested(settings, 1)
    # Handed on in canonical form: the id lower case, the IBAN compact and upper case.
    assert (request.debit_account, request.credit_account) == (str(payer.id), payee.iban)

    refused = ingest(
        settings, csv, debtor_account="zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz", submitter=submitter
    )
    assert refused.refused is not None and refused.refused.startswith("--debtor-account")
    assert refused.requests_produced == 0
