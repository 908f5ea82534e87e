"""The OpenAPI document, completed with what FastAPI does not derive on its own.

- ``x-roles`` (the roles that may call) or ``x-public: true`` on every operation,
  read from the route's ``RequireRole`` / ``Public`` declaration;
- error answers as ``application/problem+json``, and 422 as ``ValidationProblem``
  (the shape ``api.problems`` really sends) instead of FastAPI's default.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api.deps import iter_routes, route_access
from schemas.auth import ROLES
from schemas.problems import PROBLEM_MEDIA_TYPE, ValidationProblem

REF_TEMPLATE = "#/components/schemas/{model}"
#: FastAPI's own 422 models, replaced by ValidationProblem.
FASTAPI_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")


def openapi_builder(app: FastAPI) -> Callable[[], dict[str, Any]]:
    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    description=app.description,
                    routes=app.routes,
                ),
                app,
            )
        return app.openapi_schema

    return build


def complete(schema: dict[str, Any], app: FastAPI) -> dict[str, Any]:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    validation = ValidationProblem.model_json_schema(ref_template=REF_TEMPLATE)
    components.update(validation.pop("$defs", {}))
    components["ValidationProblem"] = validation
    for route in iter_routes(app):
        if not getattr(route, "dependant", None) or not route.include_in_schema:
            continue
        access = route_access(route)
        for method in route.methods:
            operation = schema["paths"].get(route.path_format, {}).get(method.lower())
            if operation is None:
                continue
            if access.public:
                operation["x-public"] = True
            if access.roles is not None:
                operation["x-roles"] = [r for r in ROLES if r in access.roles]
            _problem_media_types(operation)
    for name in FASTAPI_VALIDATION_SCHEMAS:
        components.pop(name, None)
    return schema


def _problem_media_types(operation: dict[str, Any]) -> None:
    for status, response in operation.get("responses", {}).items():
        if not status.isdigit() or int(status) < 400:
            continue
        content = response.setdefault("content", {})
        media = content.pop("application/json", None)
        if status == "422":
            media = {"schema": {"$ref": REF_TEMPLATE.format(model="ValidationProblem")}}
        if media is not None:
            content[PROBLEM_MEDIA_TYPE] = media
