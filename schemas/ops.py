"""API bodies of the ops page's JSON endpoints (``/v1/ops/lag``, ``/v1/ops/throughput``).

The lag part has the shape of ``bankflow lag --json`` (``consumers.lag.lag_document``),
so the page, the CLI and the exporter describe lag alike; the supervisor part is the
state file ``bankflow run all`` writes (``bankflow.services``), as ``bankflow status
--json`` shows it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field


class PartitionLagOut(BaseModel):
    topic: str
    partition: int
    committed_offset: int | None = Field(description="None: the group never committed here.")
    end_offset: int
    lag_messages: int
    lag_seconds: float


class GroupLagOut(BaseModel):
    name: str = Field(
        description="The service: validator, retrier, poster, tracker, dlq-sink, cache."
    )
    group_id: str
    status: str = Field(description="OK, WARN, STALL or STOP (see the README's Consumer lag).")
    lag_messages: int
    lag_seconds: float
    partitions: list[PartitionLagOut]


class LagPoint(BaseModel):
    at: float = Field(description="Unix time of the evaluation, in seconds.")
    lag_messages: dict[str, int] = Field(description="Lag in messages per group name.")


class LagView(BaseModel):
    source: str
    evaluated_at: datetime
    groups: list[GroupLagOut]
    errors: list[str] = Field(description="Groups whose offsets could not be read, and why.")
    history: list[LagPoint]


class StageRate(BaseModel):
    topic: str = Field(description="The logical topic name (without the deployment's prefix).")
    messages_per_s: float
    end_offset: int = Field(description="Summed over the topic's partitions.")


class DeadLetterCounts(BaseModel):
    open: int = Field(description="Dead letters nobody replayed or discarded yet.")
    arriving_per_s: float


class ReviewCounts(BaseModel):
    held: int
    oldest_held_s: float | None = Field(description="How long the oldest held one has waited.")
    arriving_per_s: float


class ThroughputPoint(BaseModel):
    at: float = Field(description="Unix time of the evaluation, in seconds.")
    messages_per_s: dict[str, float] = Field(description="Since the previous evaluation.")
    postings_per_s: float
    dead_letters_open: int
    review_held: int


class SupervisedServiceOut(BaseModel):
    name: str = Field(description="The process: its service's name, or name-N for instance N.")
    service: str
    state: Literal["running", "backoff", "crash-looping", "stopped"] = Field(
        description="backoff: it exited and waits out its restart delay; crash-looping: it "
        "exited 3 times within 2 minutes (running or waiting)."
    )
    pid: int | None = Field(description="None while it waits to be started again.")
    crash_looping: bool
    restarts: int = Field(description="Times it was started again since run all started.")
    last_exit_code: int | None = Field(description="Negative: the signal that ended it.")
    last_start_at: datetime | None
    last_exit_at: datetime | None
    restart_in_s: float | None = Field(description="Left of the restart delay, in backoff.")


class SupervisorOut(BaseModel):
    running: bool = Field(
        description="False once run all stopped or stopped writing its state (died): "
        "the services' states are then the last it knew."
    )
    pid: int
    started_at: datetime
    updated_at: datetime
    metrics_port: int | None
    services: list[SupervisedServiceOut]


class ThroughputView(BaseModel):
    evaluated_at: datetime
    window_s: float = Field(description="Current rates are averaged over this long.")
    stages: list[StageRate]
    postings_per_s: float = Field(description="Transfers posted to the ledger per second.")
    dead_letters: DeadLetterCounts
    review_queue: ReviewCounts
    history: list[ThroughputPoint]
    supervisor: SupervisorOut | None = Field(
        default=None, description="What `bankflow run all` last wrote; None if it never ran here."
    )
