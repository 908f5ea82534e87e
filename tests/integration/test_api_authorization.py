"""Issue 4's authorization acceptance, over every route of the app (enumerated, not listed).

A customer (Bob) calls every route:

- a route no customer may call answers 403;
- a route a customer may call that takes an id in its path, given an id of another
  customer's (Ann's) resource, answers 404, exactly as for an id that does not exist;

and afterwards nothing in the database has changed.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from api.deps import iter_routes, route_access
from bankflow.ledger.accounts import open_account
from bankflow.settings import Settings
from tests.integration.test_api_auth import (
    TestClient,
    bearer,
    create_app,
    problem,
    register,
    tokens_for,
)

pytestmark = pytest.mark.timeout(120)

#: What each path parameter is filled with: Ann's resources, or harmless values.
PARAMETERS = {"month": "2026-11", "name": "ops.js"}
TABLES = (
    "accounts", "customers", "users", "transfer_status", "review_queue", "outbox", "batches",
)  # fmt: skip


def snapshot(db: Any) -> dict[str, list[Any]]:
    return {
        table: db.execute(f"select * from {table} order by 1").fetchall()  # noqa: S608
        for table in TABLES
    }


def test_another_customers_ids_answer_404_and_staff_routes_403(
    settings: Settings, db: Any, redis_client: Any
) -> None:
    settings = settings.model_copy(update={"password_hash_profile": "test"})
    app = create_app(settings)
    with TestClient(app) as client:
        ann = register(client, "ann@example.com")
        register(client, "bob@example.com")
        bob = bearer(tokens_for(client, "bob@example.com"))
        account = open_account(db, settings, customer_id=uuid.UUID(ann["customer_id"]),
                               account_type="checking", currency="EUR").id  # fmt: skip
        transfer = uuid.uuid4()
        db.execute(
            "insert into transfer_status (transfer_id, source, requested_by, debit_account, "
            "credit_account, amount_minor, currency, status, requested_at) values "
            "(%s, 'api', %s, %s, %s, 100, 'EUR', 'requested', %s)",
            (transfer, f"customer:{ann['customer_id']}", str(account), str(account),
             datetime.now(UTC)),
        )  # fmt: skip
        batch = uuid.uuid4()
        db.execute(
            "insert into batches (id, submitted_by, submitter_role, customer_id, channel, format,"
            " digest, status) values (%s, %s, 'customer', %s, 'api', 'pain001', %s, 'ingested')",
            (batch, ann["id"], ann["customer_id"], "0" * 64),
        )
        ids = {"account_id": str(account), "transfer_id": str(transfer), "user_id": ann["id"],
               "batch_id": str(batch)}  # fmt: skip
        before = snapshot(db)

        forbidden, hidden = [], []
        for route in iter_routes(app):
            access = route_access(route) if getattr(route, "dependant", None) else None
            if access is None or access.public:
                continue
            names = re.findall(r"{(\w+)}", route.path_format)
            path = route.path_format.format(**{n: ids.get(n, PARAMETERS.get(n)) for n in names})
            staff_only = "customer" not in (access.roles or ())
            if not staff_only and not names:
                continue  # the customer's own collection or session: nothing of Ann's
            for method in sorted(route.methods - {"HEAD"}):
                answer = client.request(method, path, headers=bob, json={})
                if staff_only:
                    problem(answer, 403, "forbidden")
                    forbidden.append(f"{method} {route.path_format}")
                else:
                    problem(answer, 404, "not-found")
                    hidden.append(f"{method} {route.path_format}")
        assert snapshot(db) == before  # nothing changed

    # The enumeration reached the routes that matter (a renamed route cannot slip out).
    assert {"GET /v1/accounts/{account_id}", "GET /v1/accounts/{account_id}/balance",
            "GET /v1/accounts/{account_id}/transactions",
            "GET /v1/accounts/{account_id}/statements/{month}",
            "GET /v1/transfers/{transfer_id}"} <= set(hidden)  # fmt: skip
    assert {"GET /v1/users", "PATCH /v1/users/{user_id}", "GET /v1/review",
            "POST /v1/review/{transfer_id}/approve", "POST /v1/deposits",
            "PATCH /v1/accounts/{account_id}"} <= set(forbidden)  # fmt: skip
