"""API bodies of ``/v1/batches``: a batch file handed in, and what became of its lines.

Views of a batch, separate from its row in ``batches``: a customer sees their own
batches, never who else submitted what.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

BatchStatus = Literal["ingesting", "ingested", "refused"]
BatchFormat = Literal["csv", "jsonl", "pain001"]


class BatchLineError(BaseModel):
    """A line refused before anything of it was sent."""

    line: int = Field(description="The line (CSV, JSON Lines) or transaction (pain.001).")
    field: str
    reason: str
    code: str = Field(description="`not_owner`, or `invalid_<field>`.", examples=["not_owner"])


class BatchAccepted(BaseModel):
    """The answer to ``POST /v1/batches``."""

    id: uuid.UUID
    status: BatchStatus
    format: BatchFormat
    lines_read: int
    requests_produced: int = Field(description="Lines sent as transfer requests this time.")
    lines_rejected: int
    duplicate_of: uuid.UUID | None = Field(
        default=None,
        description="Set when the same file was submitted before: that batch, to which "
        "this answer refers; nothing was sent again.",
    )
    errors: list[BatchLineError] = Field(default_factory=list)


class BatchOut(BaseModel):
    """A batch with the status of each of its lines counted (the ledger's where it has one)."""

    id: uuid.UUID
    status: BatchStatus
    format: BatchFormat
    file_name: str
    channel: Literal["api", "cli", "inbox"]
    on_behalf_of: uuid.UUID | None = Field(
        default=None, description="The customer a member of staff submitted the file for."
    )
    submitted_at: datetime
    refused_reason: str | None = None
    lines_read: int
    requests_produced: int
    lines_rejected: int
    statuses: dict[str, int] = Field(
        description="Lines per status: posted, failed, rejected, review, pending, refused."
    )
    reasons: dict[str, int] = Field(description="Rejections and failures per reason.")
    errors: list[BatchLineError] = Field(
        description="The lines refused at the edge, in file order (at most 1,000)."
    )
