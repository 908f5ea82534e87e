"""The one table of bankflow's services: what ``bankflow run NAME`` and ``run all`` start.

Each entry says how a service is started (its entry function), which consumer group
it reads as, on which port it serves ``/metrics``, ``/healthz`` and ``/readyz``, which
settings bound its batches and how many instances ``run all`` starts. Everything else
that lists services is held to this table by ``tests/unit/test_registry.py``, in both
directions: the settings' defaults (``bankflow/settings.py``), ``docker-compose.yml``,
Prometheus' scrape jobs (``infra/prometheus/prometheus.yml``) and the lag exporter's
groups (``consumers.lag.monitored_groups``, which takes its group ids from here).

A service's name is its ``bankflow run`` name, its compose service, its Prometheus
job and the ``name`` of its consumer group in ``bankflow lag``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from bankflow.settings import Settings


@dataclass(frozen=True)
class Service:
    """One service of the bank's pipeline."""

    name: str
    #: "module:function"; the function takes the settings and runs until SIGTERM or SIGINT.
    entry: str
    #: The ``Settings`` field holding its metrics port, and that field's default.
    metrics_port_setting: str | None
    metrics_port_default: int | None
    #: Its consumer group: a ``Settings`` field holding the group id, or a fixed name
    #: that gets the deployment's topic prefix; neither for a service without a group.
    group_setting: str | None = None
    group_name: str | None = None
    #: The ``Settings`` fields that bound its batches (size and wait), if it batches.
    batch_settings: tuple[str, ...] = ()
    #: How many processes ``run all`` starts (the ones beyond the first get their own
    #: ``BANKFLOW_INSTANCE_ID`` and a free metrics port).
    instances: int = 1

    def group_id(self, settings: Settings) -> str | None:
        """The consumer group id this service uses with ``settings``."""
        if self.group_setting is not None:
            return str(getattr(settings, self.group_setting))
        if self.group_name is not None:
            return f"{settings.topic_prefix}{self.group_name}"
        return None

    def consumer_group(self, settings: Settings) -> str:
        """``group_id`` for a service that reads Kafka (a KeyError names one that does not)."""
        group = self.group_id(settings)
        if group is None:
            raise KeyError(f"{self.name} has no consumer group in the registry")
        return group

    def metrics_port(self, settings: Settings) -> int | None:
        """The port it serves metrics on with ``settings`` (0: a free one)."""
        if self.metrics_port_setting is None:
            return None
        return int(getattr(settings, self.metrics_port_setting))

    def entry_point(self) -> Callable[[Settings], None]:
        module_name, function = self.entry.split(":")
        entry: Callable[[Settings], None] = getattr(importlib.import_module(module_name), function)
        return entry


SERVICES: tuple[Service, ...] = (
    Service("api", "api.app:serve", "api_metrics_port", 9101),
    Service(
        "validator",
        "processors.validator:run",
        "validator_metrics_port",
        9102,
        group_setting="validator_group",
        batch_settings=("validator_batch_max", "validator_batch_wait_ms"),
    ),
    Service(
        "retrier",
        "processors.retrier:run",
        "retrier_metrics_port",
        9103,
        group_setting="retrier_group",
    ),
    Service(
        "poster",
        "consumers.poster:run",
        "poster_metrics_port",
        9104,
        group_setting="poster_group",
        batch_settings=("poster_batch_max", "poster_batch_wait_ms"),
    ),
    Service(
        "relay",
        "consumers.relay:run",
        "relay_metrics_port",
        9105,
        batch_settings=("relay_batch_max", "relay_idle_poll_ms"),
    ),
    Service("inbox-watcher", "producers.ingest.watcher:run", "inbox_watcher_metrics_port", 9106),
    Service(
        "dlq-sink",
        "consumers.dlq_sink:run",
        "dlq_sink_metrics_port",
        9107,
        group_name="bankflow-dlq-sink",
    ),
    Service("lag-exporter", "consumers.lag_exporter:run", "lag_exporter_port", 9108),
    Service(
        "tracker",
        "consumers.tracker:run",
        "tracker_metrics_port",
        9109,
        group_setting="tracker_group",
    ),
    # The balance cache agent (consumers/cache.py), a stage like the others.
    Service(
        "cache", "consumers.cache:run", "cache_metrics_port", 9110, group_name="bankflow-cache"
    ),
)

#: Not a service of the bank: ``run all --demo`` adds it to feed demo traffic.
DEMO = Service("demo", "producers.demo:run", None, None)

#: ``run all``'s supervisor serves its own metrics on this setting's port (not a service).
SUPERVISOR_METRICS_PORT_SETTING = "supervisor_metrics_port"
SUPERVISOR_METRICS_PORT_DEFAULT = 9111

BY_NAME: dict[str, Service] = {s.name: s for s in (*SERVICES, DEMO)}
NAMES: tuple[str, ...] = tuple(s.name for s in SERVICES)


def service(name: str) -> Service:
    """The service (or the demo feed) called ``name``; KeyError for an unknown name."""
    return BY_NAME[name]
