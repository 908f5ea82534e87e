"""Every list of services agrees with ``bankflow.registry``, in both directions.

The settings' ports and groups, docker-compose.yml, Prometheus' scrape jobs, the lag
exporter's groups and ``run all`` each name the registry's services, no fewer and no
more. Each check is a function returning what disagrees, so the tests below can also
show that it notices a service missing, or one the registry does not have.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from bankflow import registry
from bankflow.registry import SERVICES, Service
from bankflow.services import chosen
from bankflow.settings import Settings
from consumers.lag import MonitoredGroup, monitored_groups

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS = ROOT / "infra" / "prometheus" / "prometheus.yml"

#: Port settings that belong to no service of the registry.
OTHER_PORT_SETTINGS = frozenset({"api_port", "kafka_port", "kafka_controller_port",
                                 "postgres_port", "redis_port",
                                 registry.SUPERVISOR_METRICS_PORT_SETTING})  # fmt: skip


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def prometheus() -> dict[str, Any]:
    return yaml.safe_load(PROMETHEUS.read_text())


def settings_problems(fields: dict[str, Any], services: tuple[Service, ...]) -> list[str]:
    """Port and group settings against the registry: ``fields`` is name -> default."""
    problems = []
    for s in services:
        for setting in (s.metrics_port_setting, s.group_setting, *s.batch_settings):
            if setting is not None and setting not in fields:
                problems.append(f"{s.name}: no setting {setting}")
        port = s.metrics_port_setting
        if port in fields and fields[port] != s.metrics_port_default:
            problems.append(
                f"{s.name}: {port} defaults to {fields[port]}, not {s.metrics_port_default}"
            )
    ports = {s.metrics_port_setting for s in services}
    groups = {s.group_setting for s in services}
    for name in fields:
        if name.endswith("_port") and name not in ports | OTHER_PORT_SETTINGS:
            problems.append(f"setting {name} is the port of no service in the registry")
        if name.endswith("_group") and name not in groups:
            problems.append(f"setting {name} is the group of no service in the registry")
    return problems


def compose_problems(document: dict[str, Any], services: tuple[Service, ...]) -> list[str]:
    """One compose service per registry entry, named like it, running it, restarted."""
    problems = []
    ran = {
        name: s for name, s in document["services"].items() if s.get("command", [None])[0] == "run"
    }
    known = {s.name: s for s in services}
    for name, spec in ran.items():
        command = spec["command"]
        if name not in known:
            problems.append(f"compose runs {name}, which the registry does not have")
            continue
        if command != ["run", name]:
            problems.append(f"compose service {name} runs {command}")
        env = spec.get("environment", {})
        # Bound to every interface inside the container, or Prometheus cannot reach it.
        if env.get("BANKFLOW_METRICS_HOST") != "0.0.0.0":  # noqa: S104
            problems.append(f"{name}: BANKFLOW_METRICS_HOST is not 0.0.0.0")
        setting = known[name].metrics_port_setting
        port = env.get(f"BANKFLOW_{setting.upper()}") if setting else None
        if port is not None and int(port) != known[name].metrics_port_default:
            problems.append(f"{name}: compose moves its metrics port to {port}")
        if spec.get("restart") not in ("always", "unless-stopped", "on-failure"):
            problems.append(f"{name}: compose does not restart it when it exits")
    problems += [f"compose does not run {n}" for n in known if n not in ran]
    return problems


def prometheus_problems(document: dict[str, Any], services: tuple[Service, ...]) -> list[str]:
    """One scrape job per service with a metrics port, at ``<name>:<default port>``."""
    problems = []
    jobs: dict[str, list[str]] = {}
    for job in document["scrape_configs"]:
        name = job["job_name"]
        if name in jobs:
            problems.append(f"prometheus.yml has job {name} twice")
        jobs[name] = [t for group in job["static_configs"] for t in group["targets"]]
    ported = {s.name: s for s in services if s.metrics_port_default}
    for name, targets in jobs.items():
        if name not in ported:
            problems.append(f"prometheus.yml scrapes {name}, which the registry does not have")
        elif targets != [f"{name}:{ported[name].metrics_port_default}"]:
            problems.append(f"prometheus.yml scrapes {name} at {targets}")
    problems += [f"prometheus.yml does not scrape {n}" for n in ported if n not in jobs]
    return problems


def lag_problems(
    groups: tuple[MonitoredGroup, ...], services: tuple[Service, ...], settings: Settings
) -> list[str]:
    """The lag exporter watches exactly the registry's groups, under their ids."""
    problems = []
    grouped = {s.name: s for s in services if s.group_id(settings) is not None}
    for g in groups:
        if g.name not in grouped:
            problems.append(
                f"the lag exporter watches {g.name}, which has no group in the registry"
            )
        elif g.group_id != grouped[g.name].group_id(settings):
            problems.append(f"the lag exporter reads {g.name} as group {g.group_id}")
    watched = {g.name for g in groups}
    problems += [f"the lag exporter does not watch {n}" for n in grouped if n not in watched]
    return problems


# ------------------------------------------------------------------ the real files


def test_the_settings_hold_each_services_port_and_group_and_nothing_else() -> None:
    fields = {name: info.default for name, info in Settings.model_fields.items()}
    assert settings_problems(fields, SERVICES) == []
    defaults = Settings.model_construct()  # the documented defaults, whatever the environment
    for s in SERVICES:
        assert defaults.metrics_port(s.name) == s.metrics_port_default, s.name


def test_compose_runs_every_service_of_the_registry_and_no_other() -> None:
    assert compose_problems(compose(), SERVICES) == []


def test_prometheus_scrapes_every_service_on_its_metrics_port_and_no_other() -> None:
    document = prometheus()
    assert "/etc/prometheus/alerts.yml" in document["rule_files"]
    assert prometheus_problems(document, SERVICES) == []


def test_the_lag_exporter_watches_the_group_of_every_service_that_has_one() -> None:
    settings = Settings.model_construct(topic_prefix="p.", retry_tiers={"1m": 60})
    groups = monitored_groups(settings)
    assert lag_problems(groups, SERVICES, settings) == []
    ids = [s.group_id(settings) for s in SERVICES if s.group_id(settings)]
    assert len(ids) == len(set(ids)), "two services share a consumer group"


def test_the_cache_agent_is_a_service_everywhere() -> None:
    from consumers.cache import group_id

    settings = Settings.model_construct(topic_prefix="p.")
    cache = registry.service("cache")
    assert cache.group_id(settings) == group_id(settings)  # faust's app id
    assert cache.metrics_port_setting == "cache_metrics_port"
    assert "cache" in compose()["services"]
    assert "cache" in {g.name for g in monitored_groups(settings)}


def test_run_all_starts_every_service_unless_told_otherwise() -> None:
    assert chosen() == [s.name for s in SERVICES]
    assert chosen(demo=True) == [*registry.NAMES, "demo"]
    assert chosen(only=["poster", "relay"]) == ["poster", "relay"]
    assert "poster" not in chosen(without=["poster"])
    with pytest.raises(ValueError, match="ghost"):
        chosen(only=["ghost"])


def test_bankflow_run_knows_exactly_the_registrys_services() -> None:
    from bankflow.cli import app

    result = CliRunner().invoke(app, ["run", "ghost"])
    assert result.exit_code == 2
    assert "known: all, " + ", ".join(registry.BY_NAME) in result.output.replace("\n", "")


@pytest.mark.parametrize("spec", [*SERVICES, registry.DEMO], ids=lambda s: s.name)
def test_every_entry_point_resolves(spec: Service) -> None:
    assert callable(spec.entry_point())


# ------------------------------------------------------- the checks notice mistakes


def without_service(name: str) -> tuple[Service, ...]:
    return tuple(s for s in SERVICES if s.name != name)


def test_a_service_missing_from_compose_or_unknown_to_the_registry_is_noticed() -> None:
    document = compose()
    missing = copy.deepcopy(document)
    del missing["services"]["cache"]
    assert compose_problems(missing, SERVICES) == ["compose does not run cache"]
    # The registry without the cache: compose now names a service it does not have.
    assert compose_problems(document, without_service("cache")) == [
        "compose runs cache, which the registry does not have"
    ]


def test_a_service_missing_from_prometheus_or_unknown_to_the_registry_is_noticed() -> None:
    document = prometheus()
    missing = copy.deepcopy(document)
    missing["scrape_configs"] = [j for j in missing["scrape_configs"] if j["job_name"] != "cache"]
    assert prometheus_problems(missing, SERVICES) == ["prometheus.yml does not scrape cache"]
    assert prometheus_problems(document, without_service("cache")) == [
        "prometheus.yml scrapes cache, which the registry does not have"
    ]


def test_a_group_missing_from_the_lag_exporter_or_unknown_to_the_registry_is_noticed() -> None:
    settings = Settings.model_construct(topic_prefix="p.", retry_tiers={"1m": 60})
    groups = monitored_groups(settings)
    fewer = tuple(g for g in groups if g.name != "cache")
    assert lag_problems(fewer, SERVICES, settings) == ["the lag exporter does not watch cache"]
    assert lag_problems(groups, without_service("cache"), settings) == [
        "the lag exporter watches cache, which has no group in the registry"
    ]


def test_a_setting_missing_or_unknown_to_the_registry_is_noticed() -> None:
    fields = {name: info.default for name, info in Settings.model_fields.items()}
    fewer = {k: v for k, v in fields.items() if k != "cache_metrics_port"}
    assert settings_problems(fewer, SERVICES) == ["cache: no setting cache_metrics_port"]
    assert sorted(settings_problems(fields, without_service("tracker"))) == [
        "setting tracker_group is the group of no service in the registry",
        "setting tracker_metrics_port is the port of no service in the registry",
    ]
    moved = {**fields, "poster_metrics_port": 9999}
    assert settings_problems(moved, SERVICES) == [
        "poster: poster_metrics_port defaults to 9999, not 9104"
    ]
