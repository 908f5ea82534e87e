"""One router module per resource; ``ROUTERS`` are mounted under ``/v1`` by ``api.app``.

A new resource adds its module here and its router to ``ROUTERS``.
"""

from __future__ import annotations

from fastapi import APIRouter

from api.routes import accounts, auth, batches, ops, review, transfers, users

ROUTERS: tuple[APIRouter, ...] = (
    auth.router,
    users.router,
    transfers.router,
    batches.router,
    review.router,
    accounts.router,
    ops.router,
)
