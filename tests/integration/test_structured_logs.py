"""Issue 7's log acceptance: no password, token, card number or personal field in any log line.

The API and the validator run as processes (``bankflow run``) with JSON logs, exactly
as deployed; the test reads their log files. It registers with a password, signs in
(once wrongly), sends a transfer whose description holds a card number and the
password, a request that does not validate with the refresh token in it, and asks
for a path that holds the card number and the access token. Then: every line is a
JSON event of its service, the transfer's correlation id and trace travel from the
HTTP request to the validator's line about it, and none of the secrets is anywhere.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bankflow.ledger.accounts import open_account
from bankflow.settings import Settings
from tests.ledger_support import start_service, stop_service

pytestmark = pytest.mark.timeout(180)

PASSWORD = "Velvet-Orbit-Canal-42"
CARD = "4111 1111 1111 1111"
#: How long a process may take to start answering on two busy cores.
START_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def api_process(settings: Settings, log: Path, **extra: str) -> Iterator[str]:
    """``bankflow run api`` on a free port with JSON logs into ``log``; yields its base URL."""
    port = free_port()
    process = start_service(
        settings, "api", log=log, BANKFLOW_API_PORT=str(port), BANKFLOW_API_METRICS_PORT="0",
        BANKFLOW_LOG_FORMAT="json", BANKFLOW_PASSWORD_HASH_PROFILE="test", **extra,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert process.poll() is None, f"the API exited:\n{log.read_text()[-3000:]}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "the API did not answer /healthz"
            time.sleep(0.2)
        yield base
    finally:
        stop_service(process)


def events(log: Path) -> list[dict[str, Any]]:
    """Every line of a log file as JSON: a line that is not JSON fails the test."""
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def wait_for_event(log: Path, matches: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        found = [e for e in events(log) if matches(e)] if log.exists() else []
        if found:
            return found[0]
        time.sleep(0.3)
    raise AssertionError(f"no such event in {log.name}:\n{log.read_text()[-3000:]}")


def test_no_password_token_card_number_or_personal_field_reaches_the_logs(
    settings: Settings, topics: Any, db: Any, redis_client: Any, tmp_path: Path
) -> None:
    topics()
    api_log, validator_log = tmp_path / "api.log", tmp_path / "validator.log"
    validator = start_service(settings, "validator", log=validator_log, BANKFLOW_LOG_FORMAT="json")
    email = f"ada.{uuid.uuid4().hex[:8]}@example.com"
    correlation_id = f"corr-{uuid.uuid4().hex}"
    trace_id = secrets.token_hex(16)
    try:
        with (
            api_process(settings, api_log) as base,
            httpx.Client(base_url=base, timeout=30) as http,
        ):
            user = http.post("/v1/auth/register", json={
                "email": email, "password": PASSWORD, "full_name": "Ada Lovelace",
            })  # fmt: skip
            assert user.status_code == 201, user.text
            wrong = http.post(
                "/v1/auth/token", data={"username": email, "password": "x" + PASSWORD}
            )
            assert wrong.status_code == 401
            pair = http.post("/v1/auth/token", data={"username": email, "password": PASSWORD})
            assert pair.status_code == 200, pair.text
            tokens = pair.json()
            auth = {"Authorization": f"Bearer {tokens['access_token']}"}
            account = open_account(
                db, settings, customer_id=uuid.UUID(user.json()["customer_id"]),
                account_type="checking", currency="EUR",
            )  # fmt: skip
            sent = http.post(
                "/v1/transfers",
                json={"debit_account": str(account.id), "credit_account": str(uuid.uuid4()),
                      "amount": "1.00", "currency": "EUR",
                      "description": f"card {CARD} pw {PASSWORD}"},
                headers={**auth, "Idempotency-Key": uuid.uuid4().hex,
                         "X-Correlation-ID": correlation_id,
                         "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"},
            )  # fmt: skip
            assert sent.status_code == 202, sent.text
            transfer_id = sent.json()["id"]
            bad = http.post(
                "/v1/auth/refresh", json={"refresh_token": 7, "note": tokens["refresh_token"]}
            )
            assert bad.status_code == 422
            unserved = http.get(f"/v1/cards/{CARD.replace(' ', '')}/{tokens['access_token']}")
            assert unserved.status_code == 404
        rejected = wait_for_event(validator_log, lambda e: e.get("transfer_id") == transfer_id)
    finally:
        stop_service(validator)

    # The validator's line names the transfer with the correlation id and trace of the request.
    assert rejected["message"] == "transfer rejected: unknown_account"
    assert (rejected["level"], rejected["service"]) == ("INFO", "validator")
    assert (rejected["correlation_id"], rejected["trace_id"]) == (correlation_id, trace_id)

    api_events = events(api_log)  # every line is JSON ...
    assert {e["service"] for e in api_events} == {"api"}  # ... of the API, uvicorn's included
    assert all({"time", "level", "logger", "message"} <= set(e) for e in api_events)
    requests = [e for e in api_events if e["logger"] == "bankflow.api.requests"]
    posted = next(r for r in requests if r["route"] == "/v1/transfers")
    assert (posted["method"], posted["status"], posted["correlation_id"]) == (
        "POST", 202, correlation_id,
    )  # fmt: skip
    assert (posted["transfer_id"], posted["trace_id"]) == (transfer_id, trace_id)
    assert posted["user_id"] == user.json()["id"] and posted["duration_ms"] > 0
    # The unserved path is logged, which shows redaction at work in the running process.
    path = next(r["path"] for r in requests if r["status"] == 404)
    assert path == "/v1/cards/****1111/[JWT]"

    logged = api_log.read_text() + validator_log.read_text()
    for secret in (
        PASSWORD,
        tokens["access_token"],
        tokens["refresh_token"],
        CARD,
        CARD.replace(" ", ""),
        email,
        "Ada Lovelace",
    ):
        assert secret not in logged
