"""The app's shape, without servers: every route declares its roles, the OpenAPI document
has an example for every body, and errors are problem documents.

``create_app`` connects to nothing until its lifespan runs, and these tests never start
it (no ``with TestClient(...)``): they touch only what needs no server.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI

from api.app import create_app
from api.deps import Public, RequireRole, iter_routes, route_access
from bankflow.settings import Settings
from schemas.problems import PROBLEM_MEDIA_TYPE

with warnings.catch_warnings():  # starlette's notice about httpx2 is not ours to act on
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

#: Routes FastAPI adds for the documentation: public by nature, declared here.
DOCUMENTATION_PATHS = {"/openapi.json", "/docs", "/docs/oauth2-redirect"}
#: Mounted folders of files (the ops page's script and style): public, holding no data.
STATIC_MOUNTS = {"/ops/static"}


def undeclared_routes(app: FastAPI) -> list[str]:
    """Routes that declare neither roles nor ``Public``, or both."""
    problems = []
    for route in iter_routes(app):
        if getattr(route, "dependant", None) is None:
            if route.path not in DOCUMENTATION_PATHS | STATIC_MOUNTS:
                problems.append(f"{route.path}: not an API route and not documentation")
            continue
        access = route_access(route)
        if access.public == (access.roles is not None):
            state = "both public and role-guarded" if access.public else "no role declared"
            problems.append(f"{sorted(route.methods)} {route.path_format}: {state}")
        elif access.roles is not None and not access.roles:
            problems.append(f"{route.path_format}: its guards leave no role that may call it")
    return problems


@pytest.fixture(scope="module")
def app() -> FastAPI:
    return create_app(Settings(_env_file=None))  # type: ignore[call-arg]


def test_every_route_declares_its_roles_or_is_public(app: FastAPI) -> None:
    assert undeclared_routes(app) == []
    paths = {r.path_format for r in iter_routes(app) if getattr(r, "dependant", None)}
    assert {"/healthz", "/v1/auth/token", "/v1/users", "/v1/users/{user_id}"} <= paths


def test_the_route_check_catches_an_undeclared_route() -> None:
    app = create_app(Settings(_env_file=None))  # type: ignore[call-arg]
    sneaky = APIRouter(prefix="/v1/sneaky")

    @sneaky.get("")
    async def forgotten() -> dict[str, str]:
        return {}

    @sneaky.get("/both", dependencies=[Public, RequireRole("admin")])
    async def confused() -> dict[str, str]:
        return {}

    @sneaky.get("/nobody", dependencies=[RequireRole("admin"), RequireRole("teller")])
    async def unreachable() -> dict[str, str]:
        return {}

    app.include_router(sneaky)
    assert undeclared_routes(app) == [
        "['GET'] /v1/sneaky: no role declared",
        "['GET'] /v1/sneaky/both: both public and role-guarded",
        "/v1/sneaky/nobody: its guards leave no role that may call it",
    ]


def test_staff_routes_exclude_customers_and_public_routes_are_the_expected_few(
    app: FastAPI,
) -> None:
    access = {
        (method, r.path_format): route_access(r)
        for r in iter_routes(app)
        if getattr(r, "dependant", None)
        for method in r.methods
    }
    public = sorted(path for (_, path), a in access.items() if a.public)
    # The ops page and its files are public and hold no data; its JSON needs staff.
    assert public == [
        "/healthz",
        "/ops",
        "/readyz",
        "/v1/auth/refresh",
        "/v1/auth/register",
        "/v1/auth/token",
    ]
    assert access[("GET", "/v1/users")].roles == {"admin"}
    assert access[("PATCH", "/v1/users/{user_id}")].roles == {"admin"}
    for path in ("/v1/ops/lag", "/v1/ops/throughput"):
        assert access[("GET", path)].roles == {"teller", "reviewer", "auditor", "admin"}


def test_openapi_names_roles_and_has_an_example_for_every_body(app: FastAPI) -> None:
    spec = TestClient(app).get("/openapi.json").json()
    components = spec["components"]["schemas"]
    bodies = 0
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            assert operation.get("x-public") or operation.get("x-roles"), (method, path)
            for media in operation.get("requestBody", {}).get("content", {}).values():
                bodies += 1
                schema = media["schema"]
                if "$ref" in schema:
                    schema = components[schema["$ref"].rsplit("/", 1)[1]]
                assert media.get("example") or media.get("examples") or schema.get("examples"), (
                    f"{method} {path} has a body without an example"
                )
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    assert list(response["content"]) == [PROBLEM_MEDIA_TYPE], (method, path)
    assert bodies >= 4  # register, token, refresh, role change
    assert "HTTPValidationError" not in components
    assert spec["paths"]["/v1/users"]["get"]["x-roles"] == ["admin"]


def problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    body: dict[str, Any] = response.json()
    assert body["type"] == f"urn:bankflow:problem:{slug}" and body["status"] == status
    assert body["title"] and body["detail"]
    return body


def test_the_ops_page_files_carry_its_headers_and_nothing_outside_its_folder(
    app: FastAPI,
) -> None:
    from api.routes.ops import SECURITY_HEADERS

    client = TestClient(app)
    script = client.get("/ops/static/ops.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith(
        "text/javascript"
    )
    assert client.get("/ops/static/ops.css").headers["content-type"].startswith("text/css")
    for name, value in SECURITY_HEADERS.items():
        assert script.headers[name] == value
    again = client.get("/ops/static/ops.js", headers={"If-None-Match": script.headers["etag"]})
    assert again.status_code == 304
    assert again.headers["Content-Security-Policy"] == SECURITY_HEADERS["Content-Security-Policy"]
    problem(client.get("/ops/static/missing.js"), 404, "not-found")
    problem(client.get("/ops/static/"), 404, "not-found")
    problem(client.post("/ops/static/ops.js"), 405, "method-not-allowed")
    for sneaky in (
        "/ops/static/%2e%2e/app.py",
        "/ops/static/..%2fapp.py",
        "/ops/static/%2e%2e/%2e%2e/pyproject.toml",
        "/ops/static/%2e%2e%2f%2e%2e%2fpyproject.toml",
    ):
        answer = client.get(sneaky)
        assert answer.status_code == 404, (sneaky, answer.text[:200])
        assert "create_app" not in answer.text and "[project]" not in answer.text


def test_unknown_routes_and_methods_are_problems(app: FastAPI) -> None:
    client = TestClient(app)
    body = problem(client.get("/v1/nothing-here"), 404, "not-found")
    assert "/v1/nothing-here" in body["detail"]
    problem(client.delete("/healthz"), 405, "method-not-allowed")


def test_an_unexpected_error_is_a_500_problem_without_the_stack(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = create_app(Settings(_env_file=None))  # type: ignore[call-arg]

    @app.get("/boom", dependencies=[Public])
    async def boom() -> None:
        raise RuntimeError("secret internals: table users, line 42")

    with caplog.at_level(logging.ERROR, logger="api.middleware"):
        response = TestClient(app).get("/boom")
    body = problem(response, 500, "internal")
    assert "secret internals" not in response.text and "Traceback" not in response.text
    logged = [r for r in caplog.records if r.exc_info]
    assert logged and "secret internals" in str(logged[0].exc_info[1])  # type: ignore[index]
    assert body["instance"] == "/boom"


def test_the_static_files_are_counted_under_their_mount_not_as_unmatched() -> None:
    from api.metrics import UNMATCHED, RouteTable

    routes = RouteTable(create_app(Settings(_env_file=None)))  # type: ignore[call-arg]
    assert routes.template("/ops/static/ops.js", "GET") == "/ops/static"
    assert routes.template("/no/such/path", "GET") == UNMATCHED
