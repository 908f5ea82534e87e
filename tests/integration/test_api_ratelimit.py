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
