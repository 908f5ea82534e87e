"""Authentication and roles through the real app, in process, on a real PostgreSQL and Redis.

Each test gets its own schema and Redis key prefix (``settings``, ``db``); the app runs
its lifespan (pool, Redis client) inside ``TestClient``. Passwords are hashed with the
cheapest argon2id profile, so a sign-in costs microseconds, not 50 ms.
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from typer.testing import CliRunner

from api import sessions
from api.app import create_app
from bankflow.settings import Settings
from schemas.problems import PROBLEM_MEDIA_TYPE

with warnings.catch_warnings():  # starlette's notice about httpx2 is not ours to act on
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.timeout(60)

PASSWORD = "plum-orbit-lantern-42"


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
    assert body["status"] == status and body["title"] and body["detail"]
    return body


def register(client: TestClient, email: str, password: str = PASSWORD) -> dict[str, Any]:
    response = client.post(
        "/v1/auth/register", json={"email": email, "password": password, "full_name": "Ada"}
    )
    assert response.status_code == 201, response.text
    user: dict[str, Any] = response.json()
    return user


def sign_in(client: TestClient, email: str, password: str = PASSWORD) -> Any:
    return client.post("/v1/auth/token", data={"username": email, "password": password})


def tokens_for(client: TestClient, email: str, password: str = PASSWORD) -> dict[str, Any]:
    response = sign_in(client, email, password)
    assert response.status_code == 200, response.text
    pair: dict[str, Any] = response.json()
    return pair


def bearer(pair: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {pair['access_token']}"}


def refresh(client: TestClient, pair: dict[str, Any]) -> Any:
    return client.post("/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})


def create_staff(settings: Settings, email: str, role: str, monkeypatch: Any) -> dict[str, Any]:
    """``bankflow users create`` in process (the password comes from the prompt, twice)."""
    import json

    import bankflow.cli

    monkeypatch.setattr(bankflow.cli, "get_settings", lambda: settings)
    result = CliRunner().invoke(
        bankflow.cli.app,
        ["users", "create", "--email", email, "--role", role, "--full-name", "Staff", "--json"],
        input=f"{PASSWORD}\n{PASSWORD}\n",
    )
    assert result.exit_code == 0, result.output
    created: dict[str, Any] = json.loads(result.stdout[result.stdout.index("{") :])
    return created


# ---------------------------------------------------------------- the flow


def test_register_sign_in_refresh_and_logout(
    client: TestClient, db: Any, redis_client: Any
) -> None:
    user = register(client, " Ada@Example.COM ")
    assert (user["email"], user["role"], user["full_name"]) == (
        "ada@example.com",
        "customer",
        "Ada",
    )
    # The name lives in customers, the email in users only (one place each for erasure).
    assert db.execute(
        "select c.full_name, c.email, u.full_name from users u join customers c"
        " on c.id = u.customer_id where u.id = %s",
        (user["id"],),
    ).fetchone() == ("Ada", None, None)
    problem(
        client.post(
            "/v1/auth/register",
            json={"email": "ADA@example.com", "password": PASSWORD, "full_name": "Ada II"},
        ),
        409,
        "email-taken",
    )

    response = sign_in(client, "ada@example.com")
    assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
    first = response.json()
    assert first["token_type"] == "bearer" and first["expires_in"] == 900
    me = client.get("/v1/users/me", headers=bearer(first)).json()
    assert (me["id"], me["customer_id"]) == (user["id"], user["customer_id"])

    response = refresh(client, first)
    assert response.status_code == 200, response.text
    second = response.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert client.get("/v1/users/me", headers=bearer(second)).status_code == 200

    assert client.post("/v1/auth/logout", headers=bearer(second)).status_code == 204
    problem(client.get("/v1/users/me", headers=bearer(second)), 401, "unauthorized")
    # Every token of the sign-in ends with the logout: the earlier access token too.
    problem(client.get("/v1/users/me", headers=bearer(first)), 401, "unauthorized")
    problem(refresh(client, second), 401, "invalid-token")
    (revoked,) = db.execute(
        "select count(*) filter (where revoked_at is not null) = count(*) from refresh_tokens"
    ).fetchone()
    assert revoked
    # A new sign-in is a new family, untouched by the old one's logout.
    assert client.get(
        "/v1/users/me", headers=bearer(tokens_for(client, "ada@example.com"))
    ).is_success


def test_a_refresh_token_used_twice_revokes_its_whole_family(client: TestClient, db: Any) -> None:
    register(client, "bo@example.com")
    first = tokens_for(client, "bo@example.com")
    elsewhere = tokens_for(client, "bo@example.com")  # another device: another family
    second = refresh(client, first).json()
    third = refresh(client, second).json()

    body = problem(refresh(client, first), 401, "invalid-token")
    assert "used before" in body["detail"]
    problem(refresh(client, third), 401, "invalid-token")
    for pair in (first, second, third):
        problem(client.get("/v1/users/me", headers=bearer(pair)), 401, "unauthorized")
    assert client.get("/v1/users/me", headers=bearer(elsewhere)).status_code == 200
    families = db.execute(
        "select family_id, bool_and(revoked_at is not null) from refresh_tokens group by 1"
    ).fetchall()
    assert sorted(revoked for _, revoked in families) == [False, True]


def test_a_revoked_token_stays_revoked_while_redis_is_down(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    import redis.asyncio
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    from api.context import REDIS_TIMEOUT_S
    from bankflow.identity import store

    register(client, "cy@example.com")
    pair = tokens_for(client, "cy@example.com")
    assert client.post("/v1/auth/logout", headers=bearer(pair)).status_code == 204
    live = tokens_for(client, "cy@example.com")

    # Redis down for the app: its client points at a port bound here but not listening,
    # so every command (the rate-limit-and-revocation round trip, then the fallback's own
    # MGET) is refused at once, whichever method the code path uses. No retries: the
    # app's client retries a refused connection for about 4 s per command, which would
    # only make this test slow, not different.
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead_port = closed.getsockname()[1]
    context = client.app.state.context  # type: ignore[attr-defined]
    dead_redis = redis.asyncio.Redis(
        host="127.0.0.1",
        port=dead_port,
        socket_timeout=REDIS_TIMEOUT_S,
        socket_connect_timeout=REDIS_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),
    )
    monkeypatch.setattr(context, "redis", dead_redis)
    # Spy on the PostgreSQL fallback: the answers below must come from it.
    answers: list[bool] = []
    family_revoked = store.family_revoked

    async def spy(conn: Any, family_id: uuid.UUID) -> bool:
        answer = await family_revoked(conn, family_id)
        answers.append(answer)
        return answer

    monkeypatch.setattr(store, "family_revoked", spy)
    try:
        # The check falls back to PostgreSQL: the logged-out family is still refused ...
        problem(client.get("/v1/users/me", headers=bearer(pair)), 401, "unauthorized")
        assert answers == [True]
        # ... and a live one still works.
        assert client.get("/v1/users/me", headers=bearer(live)).status_code == 200
        assert answers == [True, False]
    finally:
        closed.close()


# ------------------------------------------------------------------ lockout


def test_ten_failures_lock_an_account_and_an_unknown_email_alike(
    client: TestClient, db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    waited: list[float] = []

    async def record(seconds: float) -> None:
        waited.append(seconds)

    monkeypatch.setattr(sessions, "pause", record)
    user = register(client, "di@example.com")
    answers = {}
    for email in ("di@example.com", "nobody@example.com"):
        waited.clear()
        for _ in range(10):
            problem(sign_in(client, email, "wrong-password-123"), 401, "invalid-credentials")
        # Slowed after three failures, doubling from 0.5 s up to the 8 s bound.
        assert waited == [0, 0, 0, 0.5, 1, 2, 4, 8, 8, 8]
        locked = sign_in(client, email, PASSWORD)  # even the right password
        answers[email] = problem(locked, 423, "account-locked")
        assert 1700 < int(locked.headers["retry-after"]) <= 1800
    # The answers do not tell an account from an unknown email.
    assert answers["di@example.com"] == answers["nobody@example.com"]

    failed_logins, locked_until = db.execute(
        "select failed_logins, locked_until from users where id = %s", (user["id"],)
    ).fetchone()
    assert failed_logins == 10
    assert locked_until - datetime.now(UTC) > timedelta(minutes=29)
    # Once the lock has run out, the right password works and the count starts over.
    db.execute("update users set locked_until = now() - interval '1 second'")
    assert sign_in(client, "di@example.com").status_code == 200
    assert db.execute("select failed_logins, locked_until from users").fetchone() == (0, None)


def test_a_success_clears_earlier_failures(client: TestClient, db: Any) -> None:
    register(client, "ed@example.com")
    for _ in range(2):
        problem(sign_in(client, "ed@example.com", "wrong-password-123"), 401, "invalid-credentials")
    assert db.execute("select failed_logins from users").fetchone() == (2,)
    assert sign_in(client, "ed@example.com").status_code == 200
    assert db.execute("select failed_logins from users").fetchone() == (0,)


# ------------------------------------------------------- errors of requests


def test_an_oversized_body_is_refused_with_413(client: TestClient, api_settings: Settings) -> None:
    big = b'{"email": "' + b"x" * api_settings.api_body_max_bytes + b'"}'
    headers = {"content-type": "application/json"}
    body = problem(
        client.post("/v1/auth/register", content=big, headers=headers), 413, "content-too-large"
    )
    assert str(api_settings.api_body_max_bytes) in body["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: only counting the bytes catches it
        yield big[:1000]
        yield big[1000:]

    problem(
        client.post("/v1/auth/register", content=chunks(), headers=headers),
        413,
        "content-too-large",
    )
    lying = {**headers, "content-length": "100"}  # the header is not trusted alone
    problem(client.post("/v1/auth/register", content=big, headers=lying), 413, "content-too-large")
    # A body under the limit goes through to validation.
    problem(
        client.post("/v1/auth/register", content=big[:5000], headers=headers), 422, "validation"
    )


def test_validation_errors_name_each_field_and_reason(client: TestClient) -> None:
    response = client.post(
        "/v1/auth/register", json={"email": "not-an-email", "password": "tiny-pw", "extra": 1}
    )
    body = problem(response, 422, "validation")
    reasons = {e["field"]: e for e in body["errors"]}
    assert set(reasons) == {"email", "password", "full_name", "extra"}
    assert reasons["password"]["reason"] == "String should have at least 12 characters"
    assert reasons["full_name"]["code"] == "missing"
    assert all(e["location"] == "body" for e in body["errors"])
    assert "tiny-pw" not in response.text  # input values, passwords above all, are not echoed

    weak = client.post(
        "/v1/auth/register",
        json={"email": "fi@example.com", "password": "Password1234", "full_name": "Fi"},
    )
    (error,) = problem(weak, 422, "validation")["errors"]
    assert error["field"] == "password" and "commonly used" in error["reason"]

    bad_json = client.post(
        "/v1/auth/register", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert problem(bad_json, 422, "validation")["errors"][0]["field"] == "body"


# -------------------------------------------------------------------- roles


def test_roles_customers_get_403_on_staff_routes_and_admins_manage_roles(
    client: TestClient, api_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    customer = register(client, "gus@example.com")
    as_customer = bearer(tokens_for(client, "gus@example.com"))
    problem(client.get("/v1/users", headers=as_customer), 403, "forbidden")
    problem(
        client.patch(f"/v1/users/{customer['id']}", json={"role": "admin"}, headers=as_customer),
        403,
        "forbidden",
    )

    admin = create_staff(api_settings, "Root@Example.com", "admin", monkeypatch)
    teller = create_staff(api_settings, "tess@example.com", "teller", monkeypatch)
    assert (admin["email"], admin["customer_id"]) == ("root@example.com", None)
    as_admin = bearer(tokens_for(client, "root@example.com"))
    teller_pair = tokens_for(client, "tess@example.com")
    problem(client.get("/v1/users", headers=bearer(teller_pair)), 403, "forbidden")

    page = client.get("/v1/users", params={"limit": 2}, headers=as_admin).json()
    rest = client.get("/v1/users", params={"after": page["next"]}, headers=as_admin).json()
    emails = [u["email"] for u in page["items"] + rest["items"]]
    assert emails == ["gus@example.com", "root@example.com", "tess@example.com"]
    assert rest["next"] is None
    assert "password_hash" not in str(page)

    changed = client.patch(f"/v1/users/{teller['id']}", json={"role": "reviewer"}, headers=as_admin)
    assert changed.status_code == 200 and changed.json()["role"] == "reviewer"
    # The old tokens (role teller) stop working; the next sign-in carries the new role.
    problem(client.get("/v1/users/me", headers=bearer(teller_pair)), 401, "unauthorized")
    problem(refresh(client, teller_pair), 401, "invalid-token")
    me = client.get("/v1/users/me", headers=bearer(tokens_for(client, "tess@example.com")))
    assert me.json()["role"] == "reviewer"

    for target, role in ((customer["id"], "teller"), (admin["id"], "auditor")):
        problem(
            client.patch(f"/v1/users/{target}", json={"role": role}, headers=as_admin),
            409,
            "conflict",
        )
    problem(
        client.patch(f"/v1/users/{uuid.uuid4()}", json={"role": "auditor"}, headers=as_admin),
        404,
        "not-found",
    )


def test_the_cli_refuses_a_weak_password_and_an_unknown_role(
    api_settings: Settings, db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bankflow.cli

    monkeypatch.setattr(bankflow.cli, "get_settings", lambda: api_settings)
    runner = CliRunner()
    weak = runner.invoke(
        bankflow.cli.app,
        [
            "users",
            "create",
            "--email",
            "a@example.com",
            "--role",
            "admin",
            "--password",
            "password1234",
        ],
    )
    assert weak.exit_code == 2 and "commonly used" in weak.output
    unknown = runner.invoke(
        bankflow.cli.app, ["users", "create", "--email", "a@example.com", "--role", "root"]
    )
    assert unknown.exit_code == 2
    assert db.execute("select count(*) from users").fetchone() == (0,)


def test_a_missing_or_wrong_token_is_a_401_problem_naming_the_scheme(client: TestClient) -> None:
    response = client.get("/v1/users/me")
    problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")
    register(client, "hal@example.com")
    pair = tokens_for(client, "hal@example.com")
    as_refresh = {"Authorization": f"Bearer {pair['refresh_token']}"}
    body = problem(client.get("/v1/users/me", headers=as_refresh), 401, "invalid-token")
    assert "not an access token" in body["detail"]


def test_a_sign_in_with_a_control_character_in_the_email_is_an_unknown_email(
    client: TestClient,
) -> None:
    """Found by schemathesis: a NUL in the username reached PostgreSQL, which refuses it."""
    problem(sign_in(client, "ann\x00@example.com", "whatever-it-is"), 401, "invalid-credentials")
