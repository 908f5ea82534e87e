"""schemathesis against the app's own OpenAPI document: every operation, authenticated.

Bodies, parameters and headers are generated from the schema, valid ones and
invalid ones (schemathesis's positive and negative modes).
Whatever arrives, the API must answer without a 5xx, and every answer must match
what the document says it returns (status-specific schema, problem documents for
errors). The app runs in process with its real PostgreSQL, Redis and Kafka.

Each case carries a freshly minted admin token of its own family, so an operation
that signs out (``/v1/auth/logout``) cannot disturb the next case.
"""

from __future__ import annotations

import itertools
import time
import uuid
import warnings
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, response_schema_conformance

from api import tokens
from api.app import create_app
from bankflow.settings import Settings
from tests.integration.test_api_auth import create_staff

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.timeout(300)
EXAMPLES_PER_OPERATION = 12


@pytest.fixture
def fuzz_settings(settings: Settings, topics, db, redis_client) -> Settings:
    topics()
    return settings.model_copy(
        update={
            "password_hash_profile": "test",
            "api_rate_per_user_per_min": 10**9,
            "api_rate_per_address_per_min": 10**9,
        }
    )


@pytest.fixture
def admin_token(fuzz_settings: Settings, monkeypatch: Any) -> Any:
    admin = create_staff(fuzz_settings, "admin@bank.example", "admin", monkeypatch)
    config = tokens.TokenConfig.from_settings(fuzz_settings)

    def mint() -> str:
        token, _ = tokens.issue(
            config, "access", user_id=uuid.UUID(admin["id"]), family_id=uuid.uuid4(),
            now=int(time.time()), role="admin",
        )  # fmt: skip
        return token

    return mint


def test_no_operation_answers_5xx_or_breaks_its_schema(
    fuzz_settings: Settings, admin_token: Any
) -> None:
    app = create_app(fuzz_settings)
    failures: dict[str, str] = {}
    seen: list[str] = []
    with TestClient(app):  # runs the lifespan: pool, Redis, producer
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 10  # the document lists the API, not a stub
        for operation, mode in itertools.product(operations, GenerationMode):
            call = _fuzz(operation.as_strategy(mode), operation.label, admin_token, seen)
            try:
                call()
            except Unsatisfiable:
                # Nothing of the operation can be made invalid (no parameters, no body).
                assert mode is GenerationMode.NEGATIVE, operation.label
            except Exception as exc:  # noqa: BLE001 - collect every operation's failure
                failures[f"{operation.label} ({mode.value})"] = str(exc)[:2000]
    assert len(set(seen)) == len(operations)  # every operation was called
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())


def _fuzz(strategy: Any, label: str, admin_token: Any, seen: list[str]) -> Any:
    """A hypothesis test calling one operation with cases drawn from ``strategy``."""

    @given(case=strategy)
    @hypothesis_settings(
        max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    def call(case: Any) -> None:
        headers = dict(case.headers or {})
        headers.setdefault("Authorization", f"Bearer {admin_token()}")
        seen.append(label)
        case.call_and_validate(
            headers=headers, checks=[not_a_server_error, response_schema_conformance]
        )

    return call
