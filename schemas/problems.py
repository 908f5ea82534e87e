"""RFC 9457 problem details: the body of every API error (``application/problem+json``).

``type`` is stable and names the problem (``urn:bankflow:problem:<slug>``); clients
branch on it, never on ``title`` or ``detail``, which are for people.
"""

from __future__ import annotations

from typing import Final

from pydantic import BaseModel, ConfigDict, Field

PROBLEM_MEDIA_TYPE: Final = "application/problem+json"
PROBLEM_TYPE_PREFIX: Final = "urn:bankflow:problem:"


def problem_type(slug: str) -> str:
    return f"{PROBLEM_TYPE_PREFIX}{slug}"


class Problem(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "type": "urn:bankflow:problem:forbidden",
                    "title": "Forbidden",
                    "status": 403,
                    "detail": "This operation needs one of the roles: admin.",
                    "instance": "/v1/users",
                }
            ]
        },
    )

    type: str = Field(description="Stable identifier of the kind of problem.")
    title: str = Field(description="Short summary of the kind of problem.")
    status: int = Field(description="The HTTP status code.")
    detail: str = Field(description="What went wrong with this request, for people.")
    instance: str | None = Field(default=None, description="The path the request was for.")


class FieldError(BaseModel):
    field: str = Field(description="The failing field, dotted for nested ones: `tags.2`.")
    location: str = Field(description="`body`, `query`, `path`, `header` or `cookie`.")
    reason: str
    code: str = Field(description="Machine-readable kind of error, e.g. `string_too_short`.")


class ValidationProblem(Problem):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "urn:bankflow:problem:validation",
                    "title": "Request validation failed",
                    "status": 422,
                    "detail": "1 invalid field: password",
                    "instance": "/v1/auth/register",
                    "errors": [
                        {
                            "field": "password",
                            "location": "body",
                            "reason": "String should have at least 12 characters",
                            "code": "string_too_short",
                        }
                    ],
                }
            ]
        },
    )

    errors: list[FieldError]
