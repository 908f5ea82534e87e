"""Accounts, balances, history and statements through the real app, in process.

Ledger entries come from the real poster (transfers on ``transfers.accepted``,
drained in process), never from rows written by hand. Each test has its own schema,
topics and Redis key prefix; passwords use the cheapest argon2id profile.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import shutil
import subprocess
import uuid
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from typer.testing import CliRunner

from api.app import create_app
from bankflow.balance_cache import entry_key
from bankflow.domain.history import encode_cursor
from bankflow.ledger.accounts import find_internal_account
from bankflow.settings import Settings
from consumers.cache import CacheUpdater
from schemas.problems import PROBLEM_MEDIA_TYPE
from schemas.transfers import AcceptedTransfer, TransferSource
from tests.ledger_support import drain_in_process, produce_accepted

with warnings.catch_warnings():  # starlette's notice about httpx2 is not ours to act on
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.timeout(90)

PASSWORD = "plum-orbit-lantern-42"
#: Nothing listens here: the API's Redis client fails at once (connection refused).
DEAD_REDIS_URL = "redis://127.0.0.1:1/0"


@pytest.fixture
def api_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"password_hash_profile": "test"})


@pytest.fixture
def client(api_settings: Settings, db: Any, redis_client: Any) -> Iterator[TestClient]:
    with TestClient(create_app(api_settings)) as test_client:
        yield test_client


def problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    body: dict[str, Any] = response.json()
    assert body["type"] == f"urn:bankflow:problem:{slug}", body
    return body


def failing_fields(response: Any) -> set[str]:
    return {e["field"] for e in problem(response, 422, "validation")["errors"]}


def sign_in(client: TestClient, email: str) -> dict[str, str]:
    response = client.post("/v1/auth/token", data={"username": email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def customer(client: TestClient, email: str) -> tuple[dict[str, str], str]:
    """A registered, signed-in customer: their headers and customer id."""
    response = client.post(
        "/v1/auth/register", json={"email": email, "password": PASSWORD, "full_name": "Ada"}
    )
    assert response.status_code == 201, response.text
    return sign_in(client, email), response.json()["customer_id"]


def staff(client: TestClient, settings: Settings, role: str, monkeypatch: Any) -> dict[str, str]:
    """A member of staff made with ``bankflow users create``, signed in."""
    import bankflow.cli

    email = f"{role}@bank.example"
    monkeypatch.setattr(bankflow.cli, "get_settings", lambda: settings)
    result = CliRunner().invoke(
        bankflow.cli.app,
        ["users", "create", "--email", email, "--role", role, "--full-name", "Staff"],
        input=f"{PASSWORD}\n{PASSWORD}\n",
    )
    assert result.exit_code == 0, result.output
    return sign_in(client, email)


def open_account(client: TestClient, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    response = client.post(
        "/v1/accounts", json={"type": "checking", "currency": "EUR", **body}, headers=headers
    )
    assert response.status_code == 201, response.text
    account: dict[str, Any] = response.json()
    assert response.headers["location"] == f"/v1/accounts/{account['id']}"
    return account


def transfer(debit: Any, credit: Any, amount_minor: int, **details: Any) -> AcceptedTransfer:
    return AcceptedTransfer(
        transfer_id=uuid.uuid4(),
        source=TransferSource.API,
        debit_account_id=uuid.UUID(str(debit)),
        credit_account_id=uuid.UUID(str(credit)),
        amount_minor=amount_minor,
        currency="EUR",
        **details,
    )


def post(settings: Settings, db: Any, transfers: list[AcceptedTransfer]) -> None:
    """Post through the real poster; one partition keeps the order they are given in."""
    before = db.execute("select count(*) from transfers").fetchone()[0]
    produce_accepted(settings, transfers, partition=0)
    drain_in_process(settings, before + len(transfers), timeout_s=60)


def cash_id(db: Any) -> uuid.UUID:
    cash = find_internal_account(db, "cash", "EUR")
    assert cash is not None
    return cash.id


@pytest.fixture
def people(client: TestClient, api_settings: Settings, monkeypatch: Any) -> dict[str, Any]:
    a, a_customer = customer(client, "ada@example.com")
    b, b_customer = customer(client, "bob@example.com")
    return {
        "a": a,
        "a_customer": a_customer,
        "b": b,
        "b_customer": b_customer,
        "teller": staff(client, api_settings, "teller", monkeypatch),
        "admin": staff(client, api_settings, "admin", monkeypatch),
    }


# ------------------------------------------------------------------ accounts and authorization


def test_open_list_and_read_accounts_and_another_customers_id_is_404(
    client: TestClient, people: dict[str, Any], db: Any
) -> None:
    a, b, teller = people["a"], people["b"], people["teller"]
    checking = open_account(client, teller, customer_id=people["a_customer"])
    assert (checking["customer_id"], checking["type"], checking["status"]) == (
        people["a_customer"], "checking", "active",
    )  # fmt: skip
    assert checking["iban"].startswith("DE") and checking["overdraft_limit"] == "0.00"
    # A customer opens their own, without naming themselves (or naming themselves).
    savings = open_account(client, a, type="savings")
    open_account(client, a, customer_id=people["a_customer"], currency="USD")
    # ... but never one for someone else: as if that customer did not exist.
    unknown = problem(
        client.post("/v1/accounts", json={"customer_id": people["b_customer"], "type": "checking",
                                          "currency": "EUR"}, headers=a),
        404, "not-found",
    )  # fmt: skip
    assert people["b_customer"] in unknown["detail"]
    assert failing_fields(
        client.post("/v1/accounts", json={"type": "checking", "currency": "EUR"}, headers=teller)
    ) == {"customer_id"}
    assert failing_fields(
        client.post("/v1/accounts", json={"type": "checking", "currency": "JPY"}, headers=a)
    ) == {"currency"}
    assert failing_fields(
        client.post("/v1/accounts", json={"type": "cash", "currency": "EUR"}, headers=a)
    ) == {"type"}

    mine = client.get("/v1/accounts", headers=a).json()
    assert [x["id"] for x in mine["items"]][:2] == [checking["id"], savings["id"]]
    assert mine["next"] is None and len(mine["items"]) == 3
    assert client.get("/v1/accounts", headers=b).json()["items"] == []
    peek = client.get("/v1/accounts", params={"customer_id": people["a_customer"]}, headers=b)
    assert peek.json()["items"] == []
    first = client.get(
        "/v1/accounts", params={"customer_id": people["a_customer"], "limit": 2}, headers=teller
    ).json()
    rest = client.get(
        "/v1/accounts",
        params={"customer_id": people["a_customer"], "cursor": first["next"]},
        headers=teller,
    ).json()
    assert [x["id"] for x in first["items"] + rest["items"]] == [x["id"] for x in mine["items"]]
    assert failing_fields(client.get("/v1/accounts", params={"cursor": "nope"}, headers=a)) == {
        "cursor"
    }

    assert client.get(f"/v1/accounts/{checking['id']}", headers=a).json() == checking
    version = db.execute("select version from accounts where id = %s", (checking["id"],)).fetchone()
    ghost = uuid.uuid4()
    for path in ("", "/balance", "/transactions", "/statements/2026-01"):
        theirs = problem(
            client.get(f"/v1/accounts/{checking['id']}{path}", headers=b), 404, "not-found"
        )
        nothing = problem(client.get(f"/v1/accounts/{ghost}{path}", headers=b), 404, "not-found")
        assert theirs["detail"].replace(checking["id"], str(ghost)) == nothing["detail"]
    # A customer on the admin route: 403, and the account is as it was.
    for who in (a, b, teller):
        problem(
            client.patch(f"/v1/accounts/{checking['id']}", json={"status": "frozen"}, headers=who),
            403, "forbidden",
        )  # fmt: skip
    assert db.execute(
        "select status, version from accounts where id = %s", (checking["id"],)
    ).fetchone() == ("active", version[0])


def test_admins_change_status_and_overdraft_within_the_rules(
    client: TestClient, people: dict[str, Any], db: Any, settings: Settings, topics: Any
) -> None:
    topics()
    a, admin = people["a"], people["admin"]
    checking = open_account(client, a)
    savings = open_account(client, a, type="savings")
    spare = open_account(client, a)
    url = f"/v1/accounts/{checking['id']}"

    assert failing_fields(
        client.patch(
            f"/v1/accounts/{savings['id']}", json={"overdraft_limit": "100.00"}, headers=admin
        )
    ) == {"overdraft_limit"}
    assert (
        client.patch(
            f"/v1/accounts/{savings['id']}", json={"overdraft_limit": "0"}, headers=admin
        ).status_code
        == 200
    )
    assert failing_fields(client.patch(url, json={"overdraft_limit": "1.005"}, headers=admin)) == {
        "overdraft_limit"
    }
    assert failing_fields(client.patch(url, json={"overdraft_limit": 5}, headers=admin)) == {
        "overdraft_limit"
    }
    problem(client.patch(url, json={}, headers=admin), 422, "validation")
    problem(client.patch(f"/v1/accounts/{uuid.uuid4()}", json={"status": "frozen"}, headers=admin),
            404, "not-found")  # fmt: skip
    problem(client.patch(f"/v1/accounts/{cash_id(db)}", json={"status": "frozen"}, headers=admin),
            409, "conflict")  # fmt: skip

    changed = client.patch(url, json={"overdraft_limit": "500.00"}, headers=admin)
    assert changed.status_code == 200 and changed.json()["overdraft_limit"] == "500.00"
    balance = client.get(f"{url}/balance", headers=a).json()
    assert (balance["posted"], balance["available"], balance["overdraft_limit"]) == (
        "0.00", "500.00", "500.00",
    )  # fmt: skip

    # Spend into the overdraft: the limit cannot go below what is used, nor close the account.
    post(settings, db, [transfer(checking["id"], spare["id"], 20_000)])
    problem(client.patch(url, json={"overdraft_limit": "100.00"}, headers=admin), 409, "conflict")
    problem(client.patch(url, json={"status": "closed"}, headers=admin), 409, "conflict")
    frozen = client.patch(url, json={"status": "frozen"}, headers=admin).json()
    assert frozen["status"] == "frozen"
    balance = client.get(f"{url}/balance", headers=a).json()
    assert (balance["posted"], balance["available"]) == ("-200.00", "0.00")

    closed = client.patch(f"/v1/accounts/{savings['id']}", json={"status": "closed"}, headers=admin)
    assert closed.json()["status"] == "closed"
    problem(client.patch(f"/v1/accounts/{savings['id']}", json={"status": "active"}, headers=admin),
            409, "conflict")  # fmt: skip


# ------------------------------------------------------------------ balances


def outbox_events(db: Any) -> list[bytes]:
    return [bytes(r[0]) for r in db.execute("select payload from outbox order by id")]


def test_balances_come_from_the_cache_and_never_go_back(
    *,
    client: TestClient,
    people: dict[str, Any],
    db: Any,
    settings: Settings,
    topics: Any,
    redis_client: Any,
) -> None:
    topics()
    a, b = people["a"], people["b"]
    mine, theirs = open_account(client, a), open_account(client, b)
    url = f"/v1/accounts/{mine['id']}/balance"
    post(
        settings,
        db,
        [transfer(cash_id(db), mine["id"], 10_000), transfer(mine["id"], theirs["id"], 3_000)],
    )

    first = client.get(url, headers=a)
    assert first.headers["bankflow-balance-source"] == "ledger"  # nothing cached yet
    assert {k: first.json()[k] for k in ("posted", "pending", "available", "currency")} == {
        "posted": "70.00", "pending": "0.00", "available": "70.00", "currency": "EUR",
    }  # fmt: skip
    second = client.get(url, headers=a)
    assert second.headers["bankflow-balance-source"] == "cache"
    assert second.json() == first.json()

    # The agent's work, in process: the posted events bring the entry forward.
    post(settings, db, [transfer(mine["id"], theirs["id"], 500)])
    updater = CacheUpdater(settings, client.app.state.context.redis)  # type: ignore[attr-defined]
    events = outbox_events(db)
    assert client.portal.call(updater.apply, events + events[::-1]) >= 2  # type: ignore[union-attr]
    client.portal.call(updater.close)  # type: ignore[union-attr]
    third = client.get(url, headers=a)
    assert third.headers["bankflow-balance-source"] == "cache"
    assert third.json()["posted"] == "65.00" and third.json()["version"] > first.json()["version"]
    # Replayed events (already seen) store nothing.
    replay = CacheUpdater(settings, client.app.state.context.redis)  # type: ignore[attr-defined]
    assert client.portal.call(replay.apply, events) == 0  # type: ignore[union-attr]

    # An entry older than what this API has shown is never served, however it got there.
    key = entry_key(settings.redis_prefix, uuid.UUID(mine["id"]))
    stale = json.loads(redis_client.hget(key, "snapshot"))
    older = json.dumps({**stale, "version": 1, "posted_minor": 999})
    redis_client.hset(key, mapping={"version": 1, "snapshot": older})
    fourth = client.get(url, headers=a)
    assert fourth.headers["bankflow-balance-source"] == "ledger"
    assert fourth.json() == third.json()
    # A customer never reads another's balance from the cache either.
    problem(client.get(url, headers=b), 404, "not-found")


def test_without_redis_balances_and_history_come_from_postgresql(
    *,
    api_settings: Settings,
    people: dict[str, Any],
    client: TestClient,
    db: Any,
    settings: Settings,
    topics: Any,
) -> None:
    topics()
    a = people["a"]
    mine = open_account(client, a)
    post(settings, db, [transfer(cash_id(db), mine["id"], 4_200)])
    dead = api_settings.model_copy(update={"redis_url": DEAD_REDIS_URL})
    with TestClient(create_app(dead)) as offline:
        response = offline.get(f"/v1/accounts/{mine['id']}/balance", headers=a)
        assert response.status_code == 200, response.text
        assert response.headers["bankflow-balance-source"] == "ledger"
        assert (response.json()["posted"], response.json()["available"]) == ("42.00", "42.00")
        history = offline.get(f"/v1/accounts/{mine['id']}/transactions", headers=a)
        assert [e["balance_after"] for e in history.json()["items"]] == ["42.00"]


# ------------------------------------------------------------------ history


def test_history_pages_newest_first_with_filters(
    client: TestClient, people: dict[str, Any], db: Any, settings: Settings, topics: Any
) -> None:
    topics()
    a = people["a"]
    mine, other = open_account(client, a), open_account(client, people["b"])
    cash = cash_id(db)
    work = [transfer(cash, mine["id"], 100_000, description="salary", category="income")]
    for i in range(24):
        work.append(
            transfer(
                mine["id"],
                other["id"],
                100 * (i + 1),
                description=f"shop {i}",
                category="rent" if i % 3 == 0 else "food",
                tags=["weekly"] if i % 4 == 0 else [],
            )
        )
    post(settings, db, work)
    url = f"/v1/accounts/{mine['id']}/transactions"

    items, cursor, pages = [], None, 0
    while pages < 10:  # bounded: 25 entries in pages of 10
        page = client.get(
            url, params={"limit": 10, **({"cursor": cursor} if cursor else {})}, headers=a
        )
        assert page.status_code == 200, page.text
        items += page.json()["items"]
        cursor, pages = page.json()["next"], pages + 1
        if cursor is None:
            break
    assert pages == 3 and len(items) == 25
    ids = [e["entry_id"] for e in items]
    assert ids == sorted(ids, reverse=True)
    assert items[-1]["description"] == "salary" and items[-1]["direction"] == "in"
    balance = client.get(f"/v1/accounts/{mine['id']}/balance", headers=a).json()
    assert items[0]["balance_after"] == balance["posted"]
    for newer, older in itertools.pairwise(items):  # each balance follows from the last
        assert Decimal(newer["balance_after"]) == Decimal(older["balance_after"]) + Decimal(
            newer["amount"]
        )
    assert items[0]["counterparty_iban"] == other["iban"] and items[0]["amount"] == "-24.00"

    def entries(**params: Any) -> list[dict[str, Any]]:
        response = client.get(url, params={"limit": 200, **params}, headers=a)
        assert response.status_code == 200, response.text
        assert response.json()["next"] is None
        return list(response.json()["items"])

    assert len(entries(direction="out")) == 24 and len(entries(direction="in")) == 1
    assert {e["category"] for e in entries(category="rent")} == {"rent"}
    assert len(entries(category="rent")) == 8
    assert len(entries(tag="weekly")) == 6
    assert [e["amount"] for e in entries(min_amount="20", max_amount="22.00")] == [
        "-22.00", "-21.00", "-20.00",
    ]  # fmt: skip
    middle = datetime.fromisoformat(items[12]["posted_at"])
    assert entries(to=(middle + timedelta(seconds=1)).isoformat()) != []
    assert entries(**{"from": (datetime.now(UTC) + timedelta(hours=1)).isoformat()}) == []
    # A page cursor from another account (or made up) only moves the position.
    assert entries(cursor=encode_cursor(1)) == []

    assert failing_fields(client.get(url, params={"cursor": "not-ours"}, headers=a)) == {"cursor"}
    assert failing_fields(client.get(url, params={"limit": 201}, headers=a)) == {"limit"}
    assert failing_fields(client.get(url, params={"min_amount": "ten"}, headers=a)) == {
        "min_amount"
    }
    assert failing_fields(client.get(url, params={"direction": "up"}, headers=a)) == {"direction"}
    assert failing_fields(
        client.get(
            url, params={"from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, headers=a
        )
    ) == {"to"}


# ------------------------------------------------------------------ statements


def test_statements_reconcile_in_json_csv_and_pdf(
    client: TestClient, people: dict[str, Any], db: Any, settings: Settings, topics: Any
) -> None:
    topics()
    a = people["a"]
    mine, other = open_account(client, a), open_account(client, people["b"])
    work = [transfer(cash_id(db), mine["id"], 50_000, description="opening deposit")]
    work += [
        transfer(mine["id"], other["id"], 1_234 + i, description=f"=evil() {i}") for i in range(5)
    ]
    post(settings, db, work)
    month = f"{datetime.now(UTC):%Y-%m}"
    url = f"/v1/accounts/{mine['id']}/statements/{month}"

    statement = client.get(url, headers=a).json()
    assert statement["iban"] == mine["iban"] and not statement["complete"]
    assert Decimal(statement["opening_balance"]) + sum(
        Decimal(e["amount"]) for e in statement["entries"]
    ) == Decimal(statement["closing_balance"])
    assert (statement["total_in"], statement["total_out"]) == ("500.00", "61.80")
    closing = statement["closing_balance"]
    assert closing == client.get(f"/v1/accounts/{mine['id']}/balance", headers=a).json()["posted"]

    as_csv = client.get(url, params={"format": "csv"}, headers=a)
    assert as_csv.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert rows[-1]["kind"] == "closing_balance" and rows[-1]["balance_after"] == closing
    # Descriptions that a spreadsheet would run as formulas are defused.
    assert [r["description"][:2] for r in rows if r["kind"] == "entry"][1:] == ["'="] * 5

    as_pdf = client.get(url, params={"format": "pdf"}, headers=a)
    assert as_pdf.headers["content-type"] == "application/pdf"
    assert shutil.which("pdftotext"), "pdftotext is missing: make setup installs poppler-utils"
    text = subprocess.run(
        ["pdftotext", "-layout", "-", "-"], input=as_pdf.content, capture_output=True, check=True
    ).stdout.decode()
    assert f"Closing balance {closing}" in " ".join(text.split())
    assert "bankflow Bank" in text

    empty = client.get(f"/v1/accounts/{mine['id']}/statements/2025-01", headers=a).json()
    assert (empty["opening_balance"], empty["closing_balance"], empty["entries"]) == (
        "0.00", "0.00", [],
    )  # fmt: skip
    future = datetime.now(UTC) + timedelta(days=40)
    assert failing_fields(client.get(f"/v1/accounts/{mine['id']}/statements/{future:%Y-%m}",
                                     headers=a)) == {"month"}  # fmt: skip
    assert failing_fields(client.get(f"{url}x", headers=a)) == {"month"}
    assert failing_fields(client.get(url, params={"format": "doc"}, headers=a)) == {"format"}
