"""Turning validation errors into the short "field: reason" text headers and reports carry."""

from __future__ import annotations

from pydantic import ValidationError

#: Kafka headers and report lines stay short; the full error is in the service's log.
DESCRIPTION_LENGTH_MAX = 1000


def describe(exc: ValidationError) -> str:
    """``field: reason`` pairs for every error, e.g. ``amount_minor: Input should be > 0``."""
    parts = [f"{'.'.join(str(x) for x in e['loc']) or 'message'}: {e['msg']}" for e in exc.errors()]
    return "; ".join(parts)[:DESCRIPTION_LENGTH_MAX]
