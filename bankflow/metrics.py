"""Every service's Prometheus metrics, defined in one place.

Each service has a group of metrics (``ApiMetrics``, ``PosterMetrics``, ...) that it
registers once per process with ``registered(PosterMetrics)`` and serves on its own
port (``bankflow.observability.serve_metrics``). The consumer-lag exporter's gauges
live with it, in ``consumers.lag_exporter``.

Names follow Prometheus' conventions: a ``bankflow_`` prefix, the unit last
(``_seconds``, ``_messages``), ``_total`` on counters. Label values are bounded:
outcomes, reason codes, error class names, retry tiers, logical topic names,
currencies, route templates and HTTP statuses; never an account or transfer id.

``tests/unit/test_dashboards.py`` collects the names from ``METRIC_GROUPS`` and the
lag exporter and fails when a dashboard or alert rule uses a name no service exports.
"""

from __future__ import annotations

import threading
from typing import Any, TypeVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

#: How often a service refreshes a gauge that needs a count query (outbox backlog,
#: review queue, open dead letters): well under Prometheus' usual 15 s scrape interval,
#: and one indexed count every few seconds costs the database nothing.
GAUGE_REFRESH_S = 5.0

#: The label value of a decision or posting that has no reason (accepted, posted).
NO_REASON = "none"

# Request-to-posted latency: milliseconds when the pipeline is idle, a retry tier's
# delay (5 s, 1 min, 10 min) when a dependency failed, hours for a transfer held for
# review; the buckets cover all of them so the p99 stays readable.
LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
# A poster batch holds 1 to BANKFLOW_POSTER_BATCH_MAX (2,000 by default) messages.
BATCH_BUCKETS = (1, 5, 10, 50, 100, 250, 500, 1000, 2000, 5000)
# One batch's PostgreSQL transaction: milliseconds for a few transfers, about a second
# for a full batch of 2,000 on a small machine.
COMMIT_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class ApiMetrics:
    """The HTTP API (``api.metrics.RequestMetrics``): requests by route template."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.requests = Counter(
            "bankflow_api_requests_total",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "bankflow_api_request_duration_seconds",
            "Time from receiving an HTTP request to the end of its answer.",
            ["route", "method"],
            registry=registry,
        )


class ValidatorMetrics:
    """The validator: one decision per request, counted once its transaction committed."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.decisions = Counter(
            "bankflow_validator_decisions_total",
            "Transfer requests decided: outcome accepted, review, rejected, retry or "
            "dead_letter; reason: the first reason code, or the error class.",
            ["outcome", "reason"],
            registry=registry,
        )
        self.retries = Counter(
            "bankflow_retries_scheduled_total",
            "Messages a stage sent to a retry tier after a transient failure.",
            ["stage", "tier"],
            registry=registry,
        )


class RetrierMetrics:
    """The retrier: messages sent back from a retry tier (or dead-lettered from it)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.messages = Counter(
            "bankflow_retrier_messages_total",
            "Messages the retrier took off a retry tier: outcome returned (to their "
            "original topic) or dead_letter (unusable retry headers).",
            ["tier", "outcome"],
            registry=registry,
        )


class PosterMetrics:
    """The ledger poster: postings, latency from request to posting, batches."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.transfers = Counter(
            "bankflow_poster_transfers_total",
            "Accepted transfers the poster handled: outcome posted, failed (reason: the "
            "posting rule), duplicate (already in the ledger) or dead_letter (error class).",
            ["outcome", "reason"],
            registry=registry,
        )
        self.posted_amount = Counter(
            "bankflow_poster_posted_amount_minor_total",
            "Money posted, in minor units of each currency (cents for EUR).",
            ["currency"],
            registry=registry,
        )
        self.request_to_posted = Histogram(
            "bankflow_transfer_request_to_posted_seconds",
            "Time from a transfer's requested_at to the commit that posted it.",
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.batch_size = Histogram(
            "bankflow_poster_batch_messages",
            "Messages per committed poster batch (one PostgreSQL transaction).",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.commit_duration = Histogram(
            "bankflow_poster_commit_duration_seconds",
            "Duration of a batch's PostgreSQL transaction, from begin to commit.",
            buckets=COMMIT_BUCKETS_S,
            registry=registry,
        )


class RelayMetrics:
    """The outbox relay: events published, and the backlog it has yet to publish."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.published = Counter(
            "bankflow_relay_published_events_total",
            "Outbox events published and acknowledged, by logical topic.",
            ["topic"],
            registry=registry,
        )
        self.unsent = Gauge(
            "bankflow_outbox_unsent_events",
            "Outbox rows not yet published (refreshed by the leading relay).",
            registry=registry,
        )


class TrackerMetrics:
    """The tracker: status updates written, and the review queue's depth."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.updates = Counter(
            "bankflow_tracker_status_updates_total",
            "Transfer status updates written, by the status the message reports.",
            ["status"],
            registry=registry,
        )
        self.review_held = Gauge(
            "bankflow_review_queue_held_transfers",
            "Transfers held for review that no reviewer has decided yet.",
            registry=registry,
        )


class DeadLetterMetrics:
    """The dlq-sink: dead letters stored, and the ones nobody has handled yet."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.stored = Counter(
            "bankflow_dead_letters_stored_total",
            "Messages from transfers.dlq stored in dead_letters, by original (logical) "
            "topic and error class.",
            ["original_topic", "error_class"],
            registry=registry,
        )
        self.open = Gauge(
            "bankflow_dead_letters_open_messages",
            "Dead letters neither replayed nor discarded yet.",
            registry=registry,
        )


class IngestMetrics:
    """The inbox watcher: files taken and the requests they produced."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.files = Counter(
            "bankflow_ingest_files_total",
            "Batch files the inbox watcher finished: outcome done or refused.",
            ["outcome"],
            registry=registry,
        )
        self.requests = Counter(
            "bankflow_ingest_requests_total",
            "Transfer requests produced from batch files.",
            registry=registry,
        )
        self.rejected_lines = Counter(
            "bankflow_ingest_rejected_lines_total",
            "Lines of batch files rejected (bad field, bad line).",
            registry=registry,
        )


class StageMetrics:
    """What the stage runtime (``bankflow.streaming``) counts for every stage it runs."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.poison = Counter(
            "bankflow_stage_poison_messages_total",
            "Messages a stage could not process, sent to the dead-letter store, by error class.",
            ["stage", "error_class"],
            registry=registry,
        )
        self.transient = Counter(
            "bankflow_stage_transient_failures_total",
            "Batches a stage had to redo because a dependency (PostgreSQL, Redis, Kafka) "
            "was unavailable.",
            ["stage", "error_class"],
            registry=registry,
        )
        self.positions_moved = Counter(
            "bankflow_stage_positions_moved_total",
            "Batches rolled back because another instance had moved the stored offsets.",
            ["stage"],
            registry=registry,
        )
        self.unauthenticated = Counter(
            "bankflow_stage_unauthenticated_messages_total",
            "Messages on a signed topic without a valid signature of a signer allowed for "
            "it (forged, or signed with an unknown or retired key), sent to the dead-letter "
            "store instead of being acted on.",
            ["stage", "topic"],
            registry=registry,
        )
        self.partition_halted = Gauge(
            "bankflow_stage_partition_halted",
            "1 while a partition is halted because its records were deleted below the "
            "stage's stored position (a gap), until an operator clears it.",
            ["stage", "topic", "partition"],
            registry=registry,
        )
        self.halted = Gauge(
            "bankflow_stage_halted",
            "1 while a stage is halted until an operator clears it (bankflow halt clear).",
            ["stage"],
            registry=registry,
        )


#: Every group, for the dashboard test and the docs; the lag exporter's are apart.
METRIC_GROUPS: tuple[type[Any], ...] = (
    ApiMetrics,
    ValidatorMetrics,
    RetrierMetrics,
    PosterMetrics,
    RelayMetrics,
    TrackerMetrics,
    DeadLetterMetrics,
    IngestMetrics,
    StageMetrics,
)

MetricGroup = TypeVar("MetricGroup")
_registered: dict[type[Any], Any] = {}
_lock = threading.Lock()


def registered(group: type[MetricGroup]) -> MetricGroup:
    """The process's one instance of ``group`` on the default registry.

    A collector name can be registered only once, and a process may build a service
    more than once (tests, a rebuilt producer), so every caller shares this one.
    """
    with _lock:
        if group not in _registered:
            _registered[group] = group()
        instance: MetricGroup = _registered[group]
        return instance


def logical_topic(topic: str, prefix: str) -> str:
    """A topic's name without the deployment's prefix: the label value dashboards use."""
    return topic.removeprefix(prefix) if prefix else topic
