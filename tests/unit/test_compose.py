"""docker-compose.yml stays valid and runs the same stack as `bankflow stack up`.

No Docker engine runs on our CI machines, so this checks the file's structure:
official images, a KRaft Kafka 4 node, healthchecks that gate the services, and
bankflow settings that name the compose services. That compose runs exactly the
services of ``bankflow.registry``, and Prometheus scrapes them, is checked in
tests/unit/test_registry.py.
"""

from __future__ import annotations

from pathlib import Path

import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


def load() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_the_stack_comes_from_official_images() -> None:
    services = load()["services"]
    assert services["kafka"]["image"].startswith("apache/kafka:4.")
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["redis"]["image"].startswith("redis:")


def test_kafka_is_one_kraft_node_with_single_replica_internal_topics() -> None:
    env = load()["services"]["kafka"]["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "1"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"


def test_services_wait_for_healthy_servers_and_point_at_them() -> None:
    services = load()["services"]
    for server in ("kafka", "postgres", "redis"):
        assert "healthcheck" in services[server]
    init = services["init"]
    assert {k: v["condition"] for k, v in init["depends_on"].items()} == {
        "kafka": "service_healthy",
        "postgres": "service_healthy",
        "redis": "service_healthy",
    }
    env = init["environment"]
    assert env["BANKFLOW_KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert "@postgres:5432/" in env["BANKFLOW_DATABASE_URL"]
    assert env["BANKFLOW_REDIS_URL"].startswith("redis://redis:6379")
    assert services["api"]["depends_on"]["init"]["condition"] == "service_completed_successfully"


def test_every_bankflow_command_in_compose_exists() -> None:
    from typer.testing import CliRunner

    from bankflow.cli import app

    runner = CliRunner()
    for name, service in load()["services"].items():
        if "build" in service:
            result = runner.invoke(app, [*service["command"], "--help"])
            assert result.exit_code == 0, f"{name}: bankflow {service['command']}: {result.output}"


def test_prometheus_and_grafana_come_from_official_images_with_our_config() -> None:
    services = load()["services"]
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    assert services["grafana"]["image"].startswith("grafana/grafana:")
    root = COMPOSE.parent
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (root / source).exists(), f"{name} mounts {source}, which is missing"
    mounts = {v.split(":")[1] for v in services["prometheus"]["volumes"]}
    assert {"/etc/prometheus/prometheus.yml", "/etc/prometheus/alerts.yml"} <= mounts
    mounts = {v.split(":")[1] for v in services["grafana"]["volumes"]}
    assert {"/etc/grafana/provisioning", "/var/lib/grafana/dashboards"} <= mounts
