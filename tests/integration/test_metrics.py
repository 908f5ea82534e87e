"""Issue 7's metrics acceptance: every service, run as a process, exports its metrics.

Traffic touches every path once: a deposit (accepted, posted), a small payment
(posted), a first large payment to a new beneficiary (held for review), a payment to
an unknown account (rejected), a poison message (dead letter), an unfunded transfer
straight onto transfers.accepted (a failed posting), a batch file in the inbox, a
payment from an account whose fraud state in Redis is unreadable (a transient failure:
the retry tier, back through the retrier, then the dead-letter topic), and two API
calls. Then every service's ``/metrics`` must show non-zero values where it passed,
and every ``/readyz`` and ``bankflow status`` must say ready.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bankflow.ledger.accounts import find_internal_account
from bankflow.settings import Settings
from tests.conftest import TESTS_DIR
from tests.integration.test_lag_exporter import EXPORTER_ENV, free_port
from tests.integration.test_review_flow import request, statuses, strict_rules
from tests.integration.test_validator import produce_requests
from tests.ledger_support import (
    accepted,
    open_test_accounts,
    produce_accepted,
    settings_env,
    start_service,
    stop_service,
    wait_for,
)

pytestmark = pytest.mark.timeout(300)

SERVICES = (
    "api", "validator", "retrier", "poster", "relay", "tracker", "dlq-sink", "inbox-watcher",
    "lag-exporter",
)  # fmt: skip
#: One short retry tier: a transient failure comes back after a second, then dies.
TIERS = {"t1": 1}

Samples = list[tuple[str, dict[str, str], float]]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(v for n, lb, v in samples if n == name and labels.items() <= lb.items())


def answers(port: int, path: str) -> int:
    """The HTTP status ``path`` answers with on a loopback port (0: no answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def expectations(settings: Settings) -> dict[str, list[tuple[str, dict[str, str]]]]:
    """Per service, the series that traffic must have made non-zero."""
    return {
        "api": [
            ("bankflow_api_requests_total", {"route": "/healthz", "status": "200"}),
            ("bankflow_api_requests_total", {"route": "/v1/transfers", "status": "401"}),
            ("bankflow_api_request_duration_seconds_count", {"route": "/healthz"}),
        ],
        "validator": [
            ("bankflow_validator_decisions_total", {"outcome": "accepted"}),
            ("bankflow_validator_decisions_total", {"outcome": "review"}),
            ("bankflow_validator_decisions_total", {"reason": "unknown_account"}),
            ("bankflow_validator_decisions_total", {"outcome": "retry"}),
            ("bankflow_validator_decisions_total", {"reason": "PoisonMessage"}),
            ("bankflow_validator_decisions_total", {"reason": "DependencyUnavailable"}),
            ("bankflow_retries_scheduled_total", {"stage": "validator", "tier": "t1"}),
        ],
        "retrier": [("bankflow_retrier_messages_total", {"tier": "t1", "outcome": "returned"})],
        "poster": [
            ("bankflow_poster_transfers_total", {"outcome": "posted"}),
            ("bankflow_poster_transfers_total", {"reason": "insufficient_funds"}),
            ("bankflow_poster_posted_amount_minor_total", {"currency": "EUR"}),
            ("bankflow_transfer_request_to_posted_seconds_count", {}),
            ("bankflow_transfer_request_to_posted_seconds_sum", {}),
            ("bankflow_poster_batch_messages_sum", {}),
            ("bankflow_poster_commit_duration_seconds_count", {}),
        ],
        "relay": [
            ("bankflow_relay_published_events_total", {"topic": "transfers.posted"}),
            ("bankflow_relay_published_events_total", {"topic": "transfers.failed"}),
        ],
        "tracker": [
            ("bankflow_tracker_status_updates_total", {"status": "requested"}),
            ("bankflow_tracker_status_updates_total", {"status": "posted"}),
            ("bankflow_review_queue_held_transfers", {}),
        ],
        "dlq-sink": [
            ("bankflow_dead_letters_stored_total", {"original_topic": "transfers.requested"}),
            ("bankflow_dead_letters_stored_total", {"error_class": "DependencyUnavailable"}),
            ("bankflow_dead_letters_open_messages", {}),
        ],
        "inbox-watcher": [
            ("bankflow_ingest_files_total", {"outcome": "done"}),
            ("bankflow_ingest_requests_total", {}),
        ],
        "lag-exporter": [
            ("bankflow_consumer_committed_offset", {"group": settings.validator_group}),
        ],
    }


def missing(ports: dict[str, int], wanted: dict[str, list[tuple[str, dict[str, str]]]]) -> list:
    """The expected series that are still zero (or whose service does not answer)."""
    left = []
    for service, series in wanted.items():
        try:
            samples = scrape(ports[service])
        except OSError:
            left.append((service, "no answer"))
            continue
        left += [(service, n, lb) for n, lb in series if value(samples, n, **lb) <= 0]
    return left


def test_every_service_exports_its_metrics_after_traffic(
    settings: Settings, topics, db, redis_client, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    settings = settings.model_copy(
        update={"retry_tiers": TIERS, "fraud_rules": strict_rules(tmp_path), "inbox": inbox}
    )
    topics(*settings.all_topics())
    a, b, c, x, broke = open_test_accounts(db, settings, 5)
    (customer,) = db.execute("select customer_id from accounts where id = %s", (a,)).fetchone()
    cash = find_internal_account(db, "cash", "EUR")
    assert cash is not None
    me = f"customer:{customer}"
    db.execute(
        "insert into users (id, email, password_hash, role, customer_id) "
        "values (%s, 'payer@example.com', 'not-a-hash', 'customer', %s)",
        (uuid.uuid4(), customer),
    )
    deposit, small, held = (
        request(cash.id, a, 100_000, "teller:test"), request(a, b, 500, me),
        request(a, c, 5_000, me),
    )  # fmt: skip
    unknown = request(a, uuid.uuid4(), 100, me)

    ports = {name: free_port() for name in SERVICES}
    env = {f"BANKFLOW_{n.replace('-', '_').upper()}_METRICS_PORT": str(p) for n, p in ports.items()}
    env["BANKFLOW_LAG_EXPORTER_PORT"] = env.pop("BANKFLOW_LAG_EXPORTER_METRICS_PORT")
    env["BANKFLOW_API_PORT"] = str(free_port())
    env.update(EXPORTER_ENV)
    processes = [
        start_service(settings, name, log=tmp_path / f"{name}.log", **env) for name in SERVICES
    ]
    try:
        produce_requests(settings, [deposit])
        wait_for(lambda: statuses(db, deposit) == ["posted"], 90, "the deposit posted")
        produce_requests(settings, [small, held, unknown], raw=[b"not json"])
        produce_accepted(settings, [accepted(broke, b, 100)])
        # A file is taken from its submitter's folder of the inbox (docs/batches.md).
        folder = inbox / "payer@example.com"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "pay.csv").write_text(
            "debit_account,credit_account,amount,currency,description,category,tags,reference\n"
            f"{a},{b},1.00,EUR,rent,,,\n"
        )
        wait_for(
            lambda: (
                statuses(db, deposit, small, held, unknown)
                == ["posted", "posted", "review", "rejected"]
            ),
            120,
            "the first requests decided",
        )
        wait_for((folder / "done" / "pay.csv").exists, 60, "the batch file ingested")
        # Last and alone, so that no other request shares its screening: Redis cannot
        # read this account's fraud state (a key of the wrong type), a transient failure.
        redis_client.set(f"{settings.redis_prefix}fraud:activity:{x}", "not a sorted set")
        produce_requests(settings, [request(x, b, 100, me)])
        api = int(env["BANKFLOW_API_PORT"])
        wait_for(lambda: answers(api, "/healthz") == 200, 60, "the API")
        assert answers(api, "/v1/transfers") == 401

        wanted = expectations(settings)
        wait_for(lambda: not missing(ports, wanted), 120, "every metric non-zero", 1.0)
        for name, port in ports.items():
            assert answers(port, "/healthz") == 200, name

        def unready() -> list[str]:
            return [n for n, p in ports.items() if answers(p, "/readyz") != 200]

        try:
            wait_for(lambda: not unready(), 30, "every service ready")
        except AssertionError:
            raise AssertionError(f"not ready: {unready()}") from None
        check_status_command(settings, env, ports)
    except AssertionError:
        for name in SERVICES:
            log = tmp_path / f"{name}.log"
            sys.stderr.write(f"--- {name}\n{log.read_text()[-3000:] if log.exists() else ''}\n")
        raise
    finally:
        for process in processes:
            stop_service(process)


def check_status_command(settings: Settings, env: dict[str, str], ports: dict[str, int]) -> None:
    """``bankflow status --json`` sees every running service up and ready, and the stack."""
    done = subprocess.run(
        [sys.executable, "-m", "bankflow.cli", "status", "--json"],
        env=settings_env(settings, **env),
        cwd=TESTS_DIR.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    document: dict[str, Any] = json.loads(done.stdout)
    found: dict[str, dict[str, Any]] = {s["name"]: s for s in document["services"]}
    # Only the services this test runs: others (a cache, say) may be listed down.
    assert [n for n in ports if found[n]["state"] != "up" or not found[n]["ready"]] == []
    assert {s["name"]: s["state"] for s in document["servers"]} == {
        "kafka": "up",
        "postgres": "up",
        "redis": "up",
    }
