"""``bankflow bench ingest``: lines per second into Kafka, next to a bare producer.

Both in one run, in a throw-away schema and topic prefix:

- ``ingest_lps``: ``bankflow ingest`` of a generated CSV of N lines: streaming,
  parsing, validating each line, deriving ids, producing with acknowledgements.
- ``baseline_lps``: a bare confluent-kafka producer (the same idempotent settings)
  sending the same request messages, prepared before its clock starts.

``peak_memory_mb`` is the process's peak resident size measured right after the
ingest, before the baseline prepares its messages in memory.
"""

from __future__ import annotations

import random
import resource
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from bankflow.bootstrap import db_connect, kafka_producer
from bankflow.ledger.accounts import create_customer, open_account
from bankflow.settings import Settings
from bench.common import clean_up, throwaway
from producers.ingest.run import ingest
from producers.ingest.submitters import customer_submitter
from schemas.topics import TRANSFERS_REQUESTED
from schemas.transfers import TransferRequest, TransferSource

#: Debit accounts of the file's one customer, and the payees.
PAYERS = 10
PAYEES = 50


def run_bench(settings: Settings, lines: int, echo: Callable[[str], None]) -> dict[str, Any]:
    bench = throwaway(settings, (TRANSFERS_REQUESTED,))
    try:
        with tempfile.TemporaryDirectory() as folder, db_connect(bench, autocommit=True) as conn:
            path = Path(folder) / "bench.csv"
            payers, payees, customer = _accounts(conn, bench)
            echo(f"writing a CSV of {lines:,} lines ...")
            _write_csv(path, lines, payers, payees)
            echo("ingesting it ...")
            started = time.perf_counter()
            # The payers' customer hands the file in (no batch is recorded: the bench
            # measures the ingest itself).
            report = ingest(
                bench, path, submitter=customer_submitter(uuid.uuid4(), "bench", customer)
            )
            ingest_lps = report.requests_produced / (time.perf_counter() - started)
            peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            echo(f"  {ingest_lps:,.0f} lines/s, peak {peak_mb:,.0f} MB")
            echo("bare producer, same messages ...")
            baseline_lps = _bare_producer_lps(bench, lines, payers, payees)
            echo(f"  {baseline_lps:,.0f} messages/s")
    finally:
        clean_up(bench, (TRANSFERS_REQUESTED,))
    return {
        "lines": lines,
        "requests_produced": report.requests_produced,
        "lines_rejected": report.error_count,
        "ingest_lps": round(ingest_lps),
        "baseline_lps": round(baseline_lps),
        "ratio": round(ingest_lps / baseline_lps, 3),
        "peak_memory_mb": round(peak_mb),
    }


def _accounts(
    conn: psycopg.Connection[Any], settings: Settings
) -> tuple[list[str], list[str], uuid.UUID]:
    customer = create_customer(conn, "Bench Payer")
    shop = create_customer(conn, "Bench Payees")
    payers = [
        open_account(
            conn, settings, customer_id=customer, account_type="checking", currency="EUR"
        ).iban
        for _ in range(PAYERS)
    ]
    payees = [
        open_account(conn, settings, customer_id=shop, account_type="checking", currency="EUR").iban
        for _ in range(PAYEES)
    ]
    return payers, payees, customer


def _write_csv(path: Path, lines: int, payers: list[str], payees: list[str]) -> None:
    rng = random.Random(4)
    with path.open("w", encoding="utf-8") as out:
        out.write(
            "debit_account,credit_account,amount,currency,description,category,tags,reference\n"
        )
        for n in range(lines):
            out.write(
                f"{rng.choice(payers)},{rng.choice(payees)},{rng.randint(1, 99999) / 100:.2f}"
                f",EUR,invoice {n},supplies,batch;bench,INV-{n}\n"
            )


def _bare_producer_lps(
    settings: Settings, lines: int, payers: list[str], payees: list[str]
) -> float:
    rng = random.Random(4)
    messages = [
        TransferRequest(
            transfer_id=uuid.uuid4(),
            source=TransferSource.BATCH,
            debit_account=rng.choice(payers),
            credit_account=rng.choice(payees),
            amount_minor=rng.randint(1, 99999),
            currency="EUR",
            description=f"invoice {n}",
            category="supplies",
            tags=["batch", "bench"],
            reference=f"INV-{n}",
        )
        .model_dump_json()
        .encode()
        for n in range(lines)
    ]
    producer = kafka_producer(settings)
    topic = settings.topic(TRANSFERS_REQUESTED)
    started = time.perf_counter()
    for value in messages:
        while True:
            try:
                producer.produce(topic, key=value[:36], value=value)
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                producer.poll(0.05)
        producer.poll(0)
    if producer.flush(120):
        raise RuntimeError("the broker did not acknowledge the baseline's messages")
    return lines / (time.perf_counter() - started)
