"""``bankflow run lag-exporter``: consumer lag of every group of ours, as Prometheus metrics.

Every ``lag_poll_interval_s`` it reads the groups' offsets (``consumers.lag``),
evaluates lag and statuses (``bankflow.domain.lag``) and sets the gauges below,
served with ``/healthz`` and ``/readyz`` on ``lag_exporter_port``. The metrics
always show the last evaluation that read a group; ``/readyz`` answers 503 while
the last evaluation failed (Kafka or PostgreSQL did not answer) or is overdue.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Gauge
from prometheus_client.parser import text_string_to_metric_families

from bankflow.domain.lag import GroupLag, LagStatus
from bankflow.observability import serve_metrics
from bankflow.runtime import configure_logging, on_stop_signal
from bankflow.settings import Settings
from consumers.lag import LagMonitor, build_monitor, monitored_groups

log = logging.getLogger("bankflow.lag_exporter")

LAG_MESSAGES = "bankflow_consumer_lag_messages"
LAG_SECONDS = "bankflow_consumer_lag_seconds"
COMMITTED_OFFSET = "bankflow_consumer_committed_offset"
END_OFFSET = "bankflow_topic_end_offset"
GROUP_STATUS = "bankflow_consumer_group_status"

#: The exporter is ready while its last good evaluation is at most this many
#: intervals old: one slow evaluation is not an outage, three in a row are.
READY_INTERVALS_MAX = 3
#: ``bankflow lag`` waits this long for the exporter before measuring by itself.
SCRAPE_TIMEOUT_S = 2.0


class LagMetrics:
    """The exporter's gauges; label values are bounded (groups, topics, partitions)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        partition_labels = ["group", "topic", "partition"]
        self.lag_messages = Gauge(
            LAG_MESSAGES,
            "Messages a consumer group has yet to read, per partition "
            "(transaction markers excluded).",
            partition_labels,
            registry=registry,
        )
        self.lag_seconds = Gauge(
            LAG_SECONDS,
            "How long ago the group's offset was the partition's head (estimated).",
            partition_labels,
            registry=registry,
        )
        self.committed_offset = Gauge(
            COMMITTED_OFFSET,
            "The group's committed offset (the poster's: stored in PostgreSQL).",
            partition_labels,
            registry=registry,
        )
        self.end_offset = Gauge(
            END_OFFSET,
            "The partition's high watermark.",
            ["topic", "partition"],
            registry=registry,
        )
        self.group_status = Gauge(
            GROUP_STATUS,
            "1 for the group's current status (OK, WARN, STALL, STOP), 0 for the others.",
            ["group", "status"],
            registry=registry,
        )
        self._series: set[tuple[str, str, str]] = set()

    def update(self, groups: Sequence[GroupLag]) -> None:
        series: set[tuple[str, str, str]] = set()
        for group in groups:
            for status in LagStatus:
                self.group_status.labels(group.group_id, status.value).set(
                    1 if status == group.status else 0
                )
            for p in group.partitions:
                labels = (group.group_id, p.topic, str(p.partition))
                series.add(labels)
                self.lag_messages.labels(*labels).set(p.lag_messages)
                self.lag_seconds.labels(*labels).set(p.lag_seconds)
                self.end_offset.labels(p.topic, str(p.partition)).set(p.end_offset)
                if p.committed_offset is None:
                    self._remove(self.committed_offset, labels)
                else:
                    self.committed_offset.labels(*labels).set(p.committed_offset)
        # A partition a group read before but no longer reads (a topic recreated with
        # fewer partitions) must not keep reporting its last value.
        observed = {g.group_id for g in groups}
        for labels in {s for s in self._series - series if s[0] in observed}:
            for gauge in (self.lag_messages, self.lag_seconds, self.committed_offset):
                self._remove(gauge, labels)
        self._series = {s for s in self._series if s[0] not in observed} | series

    @staticmethod
    def _remove(gauge: Gauge, labels: tuple[str, ...]) -> None:
        with contextlib.suppress(KeyError):
            gauge.remove(*labels)


class LagExporter:
    """One evaluation per ``step``; remembers whether the last one succeeded."""

    def __init__(self, monitor: LagMonitor, metrics: LagMetrics, interval_s: float) -> None:
        self.monitor = monitor
        self.metrics = metrics
        self.interval_s = interval_s
        self.last_good_s: float | None = None
        self.failing = False

    def step(self) -> list[GroupLag]:
        try:
            groups = self.monitor.evaluate()
        except Exception:  # one failed evaluation must not end the exporter
            log.exception("evaluating consumer lag failed; trying again next interval")
            self.failing = True
            return []
        self.metrics.update(groups)
        for error in self.monitor.errors:
            log.warning("%s", error)
        self.failing = bool(self.monitor.errors)
        if not self.failing:
            self.last_good_s = time.monotonic()
        return groups

    def ready(self) -> bool:
        if self.failing or self.last_good_s is None:
            return False
        return time.monotonic() - self.last_good_s <= READY_INTERVALS_MAX * self.interval_s


def run(settings: Settings) -> None:
    """Evaluate every interval until SIGTERM or SIGINT; serve the metrics meanwhile."""
    configure_logging()
    exporter = LagExporter(build_monitor(settings), LagMetrics(), settings.lag_poll_interval_s)
    stop = threading.Event()
    on_stop_signal(stop.set)
    server = serve_metrics(settings.lag_exporter_port, exporter.ready, host=settings.metrics_host)
    log.info(
        "lag exporter on %s:%d (/metrics, /healthz, /readyz), every %s s: %s",
        settings.metrics_host,
        server.port,
        settings.lag_poll_interval_s,
        ", ".join(g.group_id for g in monitored_groups(settings)),
    )
    try:
        while not stop.is_set():
            started = time.monotonic()
            exporter.step()
            stop.wait(max(0.0, settings.lag_poll_interval_s - (time.monotonic() - started)))
    finally:
        server.close()
        exporter.monitor.close()
        log.info("lag exporter stopped")


def read_exporter(settings: Settings) -> dict[str, Any] | None:
    """What a running lag exporter reports, as ``lag_document`` does; None without one.

    Only an exporter that reports every group of these settings counts: another
    configuration's exporter on the same port (a test, a tenant) is not ours.
    """
    url = f"http://127.0.0.1:{settings.lag_exporter_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as response:
            text = response.read().decode()
    except OSError:
        return None
    return document_from_metrics(text, settings)


def document_from_metrics(text: str, settings: Settings) -> dict[str, Any] | None:
    """Rebuild the lag document from the exporter's metrics text."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name].append((sample.labels, sample.value))
    statuses = {labels["group"]: labels["status"] for labels, v in samples[GROUP_STATUS] if v == 1}
    groups = monitored_groups(settings)
    if any(g.group_id not in statuses for g in groups):
        return None

    def by_partition(name: str) -> dict[tuple[str, str, str], float]:
        return {(lb["group"], lb["topic"], lb["partition"]): v for lb, v in samples[name]}

    lag, seconds, committed = (
        by_partition(n) for n in (LAG_MESSAGES, LAG_SECONDS, COMMITTED_OFFSET)
    )
    ends = {(lb["topic"], lb["partition"]): v for lb, v in samples[END_OFFSET]}
    documents = []
    for g in groups:
        order = {topic: i for i, (topic, _) in enumerate(g.topics)}
        keys = sorted(
            (k for k in lag if k[0] == g.group_id and k[1] in order),
            key=lambda k: (order[k[1]], int(k[2])),
        )
        partitions: list[dict[str, Any]] = [
            {
                "topic": topic,
                "partition": int(partition),
                "committed_offset": _int_or_none(committed.get(key)),
                "end_offset": _int_or_none(ends.get((topic, partition))),
                "lag_messages": int(lag[key]),
                "lag_seconds": round(seconds.get(key, 0.0), 3),
            }
            for key in keys
            for _, topic, partition in [key]
        ]
        documents.append(
            {
                "name": g.name,
                "group_id": g.group_id,
                "status": statuses[g.group_id],
                "lag_messages": sum(int(p["lag_messages"]) for p in partitions),
                "lag_seconds": max((float(p["lag_seconds"]) for p in partitions), default=0.0),
                "partitions": partitions,
            }
        )
    return {"source": "exporter", "groups": documents}


def _int_or_none(value: float | None) -> int | None:
    return None if value is None else int(value)
