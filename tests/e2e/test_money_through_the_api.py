"""Issue 4's end-to-end acceptance: every service a process, the API reached over HTTP.

Two customers register and sign in, a teller (created with ``bankflow users create``)
opens their accounts and pays cash in, customer A sends money to B through the API;
the transfer shows ``posted``, both balances and both histories are right, and
``bankflow verify`` passes.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import httpx
import pytest

from bankflow.settings import Settings
from tests.ledger_support import run_cli, start_service, stop_service, wait_for

pytestmark = pytest.mark.timeout(300)
WORKERS = ("validator", "tracker", "poster", "relay", "cache")
PASSWORD = "correct-horse-battery-9"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_two_customers_a_teller_and_a_transfer_over_http(
    settings: Settings, topics, db, redis_client, tmp_path: Path
) -> None:
    topics()
    port = free_port()
    env = {"BANKFLOW_API_PORT": str(port), "BANKFLOW_PASSWORD_HASH_PROFILE": "test",
           "BANKFLOW_API_METRICS_PORT": "0"}  # fmt: skip
    processes = [
        start_service(settings, name, log=tmp_path / f"{name}.log", **env)
        for name in (*WORKERS, "api")
    ]
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(f"{base}/healthz"), 60, "the API to listen")
        created = run_cli(settings, "users", "create", "--email", "teller@bank.example",
                          "--role", "teller", "--password", PASSWORD, "--full-name", "Tess",
                          "--json")  # fmt: skip
        assert created.returncode == 0, created.stderr
        with httpx.Client(base_url=base, timeout=30) as http:
            ann, ann_customer = _customer(http, "ann@example.com")
            bob, bob_customer = _customer(http, "bob@example.com")
            teller = _sign_in(http, "teller@bank.example")
            a = _open(http, teller, ann_customer)
            b = _open(http, teller, bob_customer)

            cash = http.post(
                "/v1/deposits",
                headers={**teller, "Idempotency-Key": "d-1", "Prefer": "wait=10"},
                json={"account_id": a, "amount": "300.00", "currency": "EUR"},
            )
            assert (cash.status_code, cash.json()["status"]) == (200, "posted"), cash.text

            sent = http.post(
                "/v1/transfers", headers={**ann, "Idempotency-Key": "rent-11", "Prefer": "wait=10"},
                json={"debit_account": a, "credit_account": b, "amount": "120.50",
                      "currency": "EUR", "description": "November rent", "category": "housing"},
            )  # fmt: skip
            assert (sent.status_code, sent.json()["status"]) == (200, "posted"), sent.text
            transfer = http.get(f"/v1/transfers/{sent.json()['id']}", headers=ann).json()
            assert transfer["status"] == "posted" and transfer["amount"] == "120.50"
            assert http.get(f"/v1/transfers/{sent.json()['id']}", headers=bob).status_code == 404

            wait_for(lambda: _posted(http, ann, a) == "179.50", 30, "A's balance")
            assert _posted(http, bob, b) == "120.50"
            ann_history = _history(http, ann, a)
            assert [(e["amount"], e["balance_after"]) for e in ann_history] == [
                ("-120.50", "179.50"),
                ("300.00", "300.00"),
            ]
            bob_history = _history(http, bob, b)
            assert [(e["amount"], e["balance_after"], e["direction"]) for e in bob_history] == [
                ("120.50", "120.50", "in")
            ]
            assert http.get(f"/v1/accounts/{a}/balance", headers=bob).status_code == 404
    finally:
        for process in processes:
            stop_service(process)
    verified = run_cli(settings, "verify")
    assert verified.returncode == 0, verified.stdout


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _customer(http: httpx.Client, email: str) -> tuple[dict[str, str], str]:
    registered = http.post(
        "/v1/auth/register", json={"email": email, "password": PASSWORD, "full_name": "Cust"}
    )
    assert registered.status_code == 201, registered.text
    return _sign_in(http, email), registered.json()["customer_id"]


def _sign_in(http: httpx.Client, email: str) -> dict[str, str]:
    token = http.post("/v1/auth/token", data={"username": email, "password": PASSWORD})
    assert token.status_code == 200, token.text
    return {"Authorization": f"Bearer {token.json()['access_token']}"}


def _open(http: httpx.Client, teller: dict[str, str], customer: str) -> str:
    opened = http.post(
        "/v1/accounts",
        headers=teller,
        json={"customer_id": customer, "type": "checking", "currency": "EUR"},
    )
    assert opened.status_code == 201, opened.text
    account: str = opened.json()["id"]
    return account


def _posted(http: httpx.Client, auth: dict[str, str], account: str) -> Any:
    return http.get(f"/v1/accounts/{account}/balance", headers=auth).json().get("posted")


def _history(http: httpx.Client, auth: dict[str, str], account: str) -> list[dict[str, Any]]:
    page = http.get(f"/v1/accounts/{account}/transactions", headers=auth)
    assert page.status_code == 200, page.text
    items: list[dict[str, Any]] = page.json()["items"]
    return items
