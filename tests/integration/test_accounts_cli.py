"""`bankflow accounts ...` and `bankflow deposit` against the real stack."""

from __future__ import annotations

import json
import subprocess

from confluent_kafka import TopicPartition
from schwifty import IBAN

from bankflow.bootstrap import kafka_consumer
from bankflow.settings import Settings
from schemas.topics import TRANSFERS_REQUESTED
from schemas.transfers import TransferRequest
from tests.ledger_support import run_cli


def bankflow(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(settings, *args)


def test_open_list_and_show_accounts(settings: Settings, db) -> None:
    created = bankflow(
        settings,
        "accounts",
        "create",
        "--customer-name",
        "Ada Lovelace",
        "--type",
        "checking",
        "--currency",
        "EUR",
        "--overdraft",
        "250.00",
        "--json",
    )
    assert created.returncode == 0, created.stderr
    account = json.loads(created.stdout)
    assert {"id", "iban", "type", "currency", "status"} <= set(account)
    assert IBAN(account["iban"]).country_code == settings.iban_country
    assert account["overdraft_limit_minor"] == 25_000

    savings = bankflow(
        settings,
        "accounts",
        "create",
        "--customer",
        account["customer_id"],
        "--type",
        "savings",
        "--currency",
        "EUR",
        "--iban",
        "DE89 3704 0044 0532 0130 00",
        "--json",
    )
    assert savings.returncode == 0, savings.stderr
    assert json.loads(savings.stdout)["iban"] == "DE89370400440532013000"

    listed = json.loads(
        bankflow(
            settings, "accounts", "list", "--customer", account["customer_id"], "--json"
        ).stdout
    )
    assert [a["type"] for a in listed] == ["checking", "savings"]
    by_iban = json.loads(
        bankflow(settings, "accounts", "show", "DE89370400440532013000", "--json").stdout
    )
    assert by_iban["type"] == "savings"


def test_bad_account_requests_get_one_clear_line(settings: Settings, db) -> None:
    cases = [
        (["--type", "savings", "--overdraft", "10.00"], "savings accounts have no overdraft"),
        (["--type", "brokerage"], "type 'brokerage' is not one of"),
        (["--currency", "XYZ"], "'XYZ' is not supported"),
        (["--iban", "DE89370400440532013001"], "is not a valid IBAN"),
    ]
    for options, message in cases:
        result = bankflow(settings, "accounts", "create", "--customer-name", "X", *options)
        assert result.returncode == 1, (options, result.stderr)
        assert message in result.stderr, (options, result.stderr)
        assert "Traceback" not in result.stderr
    missing = bankflow(settings, "accounts", "show", "DE02120300000000202051")
    assert missing.returncode == 1 and "no account" in missing.stderr


def test_a_deposit_is_a_request_from_the_cash_account_on_the_requested_topic(
    settings: Settings, topics, db
) -> None:
    topics(TRANSFERS_REQUESTED)
    account = json.loads(
        bankflow(settings, "accounts", "create", "--customer-name", "Bob", "--json").stdout
    )
    result = bankflow(
        settings,
        "deposit",
        account["iban"],
        "120.50",
        "EUR",
        "--idempotency-key",
        "till-7-receipt-1",
    )
    assert result.returncode == 0, result.stderr

    consumer = kafka_consumer(settings, group_id=f"{settings.topic_prefix}check")
    topic = settings.topic(TRANSFERS_REQUESTED)
    consumer.assign([TopicPartition(topic, p, 0) for p in range(settings.topic_partitions)])
    try:
        messages = [
            m for _ in range(20) for m in consumer.consume(10, timeout=0.5) if m.error() is None
        ]
    finally:
        consumer.close()
    (message,) = messages
    request = TransferRequest.model_validate_json(message.value())
    cash = db.execute("select id from accounts where type = 'cash' and currency = 'EUR'").fetchone()
    assert request.debit_account == str(cash[0])
    assert request.credit_account == account["id"]
    assert (request.amount_minor, request.currency) == (12_050, "EUR")

    bad = bankflow(settings, "deposit", account["iban"], "1.005", "EUR")
    assert bad.returncode == 1 and "3 decimal places; EUR has 2" in bad.stderr
