"""Rate limits per address and per user, counted in the real Redis."""

from __future__ import annotations

import time
from typing import Any

import pytest

from bankflow.settings import Settings
from tests.integration.test_api_auth import (
    TestClient,
    bearer,
    create_app,
    problem,
    register,
    tokens_for,
)

pytestmark = pytest.mark.timeout(60)


def fresh_window() -> None:
    """Start well inside a one-minute window, so the counts are not reset halfway."""
    if time.time() % 60 > 50:
        time.sleep(61 - time.time() % 60)


def test_a_user_over_the_limit_gets_429_with_retry_after(
    settings: Settings, db: Any, redis_client: Any
) -> None:
    limited = settings.model_copy(
        update={"password_hash_profile": "test", "api_rate_per_user_per_min": 3}
    )
    with TestClient(create_app(limited)) as client:
        register(client, "ann@example.com")
        ann = bearer(tokens_for(client, "ann@example.com"))
        register(client, "bob@example.com")
        bob = bearer(tokens_for(client, "bob@example.com"))
        fresh_window()
        for _ in range(3):
            assert client.get("/v1/users/me", headers=ann).status_code == 200
        refused = client.get("/v1/users/me", headers=ann)
        problem(refused, 429, "too-many-requests")
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert client.get("/v1/users/me", headers=bob).status_code == 200  # others go on


def test_an_address_over_the_limit_gets_429_but_probes_still_answer(
    settings: Settings, db: Any, redis_client: Any
) -> None:
    limited = settings.model_copy(
        update={"password_hash_profile": "test", "api_rate_per_address_per_min": 5}
    )
    with TestClient(create_app(limited)) as client:
        fresh_window()
        for _ in range(5):
            assert client.get("/v1/users/me").status_code == 401
        refused = client.get("/v1/users/me")
        problem(refused, 429, "too-many-requests")
        assert "Retry-After" in refused.headers
        assert client.get("/healthz").status_code == 200


def test_signed_in_requests_count_against_their_address_too(
    settings: Settings, db: Any, redis_client: Any
) -> None:
    """The address is counted with the user in one round trip; a bearer header that no
    route checks (a public route, a token that does not decode) is counted afterwards."""
    limited = settings.model_copy(
        update={"password_hash_profile": "test", "api_rate_per_address_per_min": 6}
    )
    with TestClient(create_app(limited)) as client:
        fresh_window()
        register(client, "ann@example.com")  # 1
        ann = bearer(tokens_for(client, "ann@example.com"))  # 2
        assert client.get("/v1/users/me", headers=ann).status_code == 200  # 3
        assert (
            client.get("/v1/users/me", headers={"Authorization": "Bearer junk"}).status_code == 401
        )  # 4
        assert client.get("/healthz", headers=ann).status_code == 200  # exempt
        assert (
            client.post("/v1/auth/refresh", json={"refresh_token": "x"}, headers=ann).status_code
            == 401
        )  # 5: public route, bearer ignored
        assert client.get("/v1/users/me", headers=ann).status_code == 200  # 6
        refused = client.get("/v1/users/me", headers=ann)  # 7
        body = problem(refused, 429, "too-many-requests")
        assert "address" in body["detail"]
