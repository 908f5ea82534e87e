"""Demo traffic for ``make run``: a few funded accounts and a steady trickle of transfers.

Everything enters as a transfer request on ``transfers.requested``, like a
client's: opening deposits from the bank's cash account, then transfers between
the demo accounts, some of them too large on purpose (they fail for insufficient
funds). Re-running it reuses the same accounts and does not fund them twice: the
deposits' idempotency keys name the account.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import psycopg

from bankflow.bootstrap import db_connect, kafka_producer
from bankflow.domain.money import format_amount
from bankflow.ledger.accounts import (
    create_customer,
    find_internal_account,
    list_accounts,
    open_account,
)
from bankflow.runtime import configure_logging, on_stop_signal
from bankflow.settings import Settings
from producers.intake import publish_requests
from schemas.topics import TRANSFERS_REQUESTED
from schemas.transfers import TransferRequest, TransferSource, transfer_id_for

log = logging.getLogger("bankflow.demo")

DEMO_EMAIL = "demo@bankflow.invalid"
DEMO_ACCOUNTS = 12
OPENING_DEPOSIT_MINOR = 1_000_000  # 10,000.00 EUR each
#: Requests per second, and how many the demo sends before it stops on its own.
RATE_PER_S = 20
REQUESTS_MAX = 1_000_000
#: One request in this many is far above any balance, so that some transfers fail.
TOO_LARGE_EVERY = 15


def demo_accounts(conn: psycopg.Connection[Any], settings: Settings) -> list[Any]:
    """The demo customer's accounts, opened on first use."""
    row = conn.execute("select id from customers where email = %s", (DEMO_EMAIL,)).fetchone()
    customer = row[0] if row else create_customer(conn, "Demo Customer", email=DEMO_EMAIL)
    accounts = list_accounts(conn, customer)
    for _ in range(DEMO_ACCOUNTS - len(accounts)):
        accounts.append(
            open_account(
                conn, settings, customer_id=customer, account_type="checking", currency="EUR"
            )
        )
    conn.commit()
    return accounts


def request(debit: str, credit: str, amount_minor: int, key: str, what: str) -> TransferRequest:
    return TransferRequest(
        transfer_id=transfer_id_for("demo", key), source=TransferSource.API,
        debit_account=debit, credit_account=credit, amount_minor=amount_minor, currency="EUR",
        description=what, category="demo", requested_by="demo",
    )  # fmt: skip


def run(settings: Settings) -> None:
    """``bankflow run demo``: fund the demo accounts, then send transfers until stopped."""
    configure_logging()
    stopping = False

    def stop() -> None:
        nonlocal stopping
        stopping = True

    on_stop_signal(stop)
    with db_connect(settings) as conn:
        accounts = demo_accounts(conn, settings)
        cash = find_internal_account(conn, "cash", "EUR")
    if cash is None:
        raise RuntimeError("no EUR cash account: run `bankflow migrate` first")
    producer = kafka_producer(settings)
    topic = settings.topic(TRANSFERS_REQUESTED)
    publish_requests(producer, topic, [
        request(str(cash.id), str(a.id), OPENING_DEPOSIT_MINOR, f"open-{a.id}", "opening deposit")
        for a in accounts
    ])  # fmt: skip
    log.info(
        "demo: %d accounts funded with %s EUR each; sending %d transfers a second",
        len(accounts),
        format_amount(OPENING_DEPOSIT_MINOR, "EUR"),
        RATE_PER_S,
    )
    rng = random.Random()  # noqa: S311 - demo traffic, not a secret
    for sent in range(1, REQUESTS_MAX + 1):
        if stopping:
            break
        debit, credit = rng.sample(accounts, 2)
        large = sent % TOO_LARGE_EVERY == 0
        amount = OPENING_DEPOSIT_MINOR * 50 if large else rng.randint(100, 20_000)
        publish_requests(producer, topic, [
            request(str(debit.id), str(credit.id), amount, f"{time.time_ns()}-{sent}",
                    "too large on purpose" if large else "demo transfer")
        ])  # fmt: skip
        if sent % (RATE_PER_S * 10) == 0:
            log.info("demo: %d transfers requested", sent)
        time.sleep(1 / RATE_PER_S)
