"""Fixtures: a real Kafka, PostgreSQL and Redis for integration tests, isolated per test.

Where the servers come from, in order:

1. the environment: ``BANKFLOW_*`` variables or ``.local/stack.env`` (written by
   ``bankflow stack up``, which ``make test`` runs first);
2. testcontainers, when a Docker engine answers;
3. otherwise integration tests are skipped with a message that says how to start
   the stack, unless ``BANKFLOW_TEST_REQUIRE_STACK=1`` (CI sets it), where they fail:
   a green run must never come from skipped tests.

Each test gets its own topic prefix, database schema and Redis key prefix, so
tests never see each other's data.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bankflow.settings import Settings

TESTS_DIR = Path(__file__).resolve().parent
HOW_TO_START = (
    "no Kafka/PostgreSQL/Redis stack is available: run `make setup` (or `bankflow stack up`), "
    "or start a Docker engine so testcontainers can provide one"
)
#: Partitions per test topic: enough to exercise rebalancing, few enough for two cores.
TEST_TOPIC_PARTITIONS = 3


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything under tests/integration, e2e and chaos needs the servers."""
    for item in items:
        parts = Path(str(item.fspath)).relative_to(TESTS_DIR).parts
        if parts and parts[0] in ("integration", "e2e", "chaos"):
            item.add_marker(pytest.mark.integration)
            if parts[0] != "integration":
                item.add_marker(getattr(pytest.mark, parts[0]))


@dataclass(frozen=True)
class StackEndpoints:
    kafka_bootstrap: str
    database_url: str
    redis_url: str
    source: str


def _answers(address: str) -> bool:
    host, _, port = address.rpartition(":")
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex((host.strip("[]"), int(port))) == 0


def _docker_engine_available() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "info"], capture_output=True, check=False, timeout=20)
    return probe.returncode == 0


def _unavailable(reason: str) -> None:
    if os.environ.get("BANKFLOW_TEST_REQUIRE_STACK") == "1":
        pytest.fail(f"{reason} (BANKFLOW_TEST_REQUIRE_STACK=1)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def stack() -> Iterator[StackEndpoints]:
    """The servers for this test session (see the module docstring for where they come from)."""
    base = Settings()
    env_supplied = "BANKFLOW_KAFKA_BOOTSTRAP" in os.environ or base.stack_env_file.exists()
    if env_supplied:
        kafka_address = base.kafka_bootstrap.split(",")[0]
        if not _answers(kafka_address):
            _unavailable(f"Kafka at {kafka_address} does not answer; {HOW_TO_START}")
        yield StackEndpoints(base.kafka_bootstrap, base.database_url, base.redis_url, "env")
    elif _docker_engine_available():
        with _testcontainers_stack() as endpoints:
            yield endpoints
    else:
        _unavailable(HOW_TO_START)


@contextlib.contextmanager
def _testcontainers_stack() -> Iterator[StackEndpoints]:
    """The same three servers from official images, for machines with a Docker engine."""
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs
    from testcontainers.postgres import PostgresContainer
    from testcontainers.redis import RedisContainer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        kafka_port = sock.getsockname()[1]
    # apache/kafka runs a single KRaft node; its advertised address must be the host's port.
    kafka = (
        DockerContainer("apache/kafka:4.1.1")
        .with_bind_ports(9092, kafka_port)
        .with_env("KAFKA_NODE_ID", "1")
        .with_env("KAFKA_PROCESS_ROLES", "broker,controller")
        .with_env("KAFKA_LISTENERS", "PLAINTEXT://:9092,CONTROLLER://:9093")
        .with_env("KAFKA_ADVERTISED_LISTENERS", f"PLAINTEXT://127.0.0.1:{kafka_port}")
        .with_env("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER")
        .with_env(
            "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
        )
        .with_env("KAFKA_CONTROLLER_QUORUM_VOTERS", "1@localhost:9093")
        .with_env("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
        .with_env("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
        .with_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")
    )
    postgres = PostgresContainer(
        "postgres:15", username="bankflow", password="bankflow", dbname="bankflow", driver=None
    )
    redis_container = RedisContainer("redis:7")
    with kafka, postgres, redis_container:
        wait_for_logs(kafka, "Kafka Server started", timeout=120)
        redis_host = redis_container.get_container_host_ip()
        redis_port = redis_container.get_exposed_port(6379)
        yield StackEndpoints(
            kafka_bootstrap=f"127.0.0.1:{kafka_port}",
            database_url=postgres.get_connection_url(),
            redis_url=f"redis://{redis_host}:{redis_port}/0",
            source="testcontainers",
        )


@pytest.fixture
def test_id() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def signing_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A signing key file of the session's own, with a key for every signer."""
    from bankflow.signing import ensure_keys

    path = tmp_path_factory.mktemp("keys") / "signing.json"
    ensure_keys(path)
    return path


@pytest.fixture
def settings(stack: StackEndpoints, test_id: str, signing_keys: Path) -> Settings:
    """Settings pointing at the stack, with this test's own topic prefix, schema and keys."""
    return Settings(
        signing_keys_file=signing_keys,
        kafka_bootstrap=stack.kafka_bootstrap,
        database_url=stack.database_url,
        redis_url=stack.redis_url,
        topic_prefix=f"test-{test_id}.",
        topic_partitions=TEST_TOPIC_PARTITIONS,
        db_schema=f"test_{test_id}",
        redis_prefix=f"test:{test_id}:",
        poster_group=f"test-{test_id}-poster",
        validator_group=f"test-{test_id}-validator",
        retrier_group=f"test-{test_id}-retrier",
        tracker_group=f"test-{test_id}-tracker",
    )


@pytest.fixture
def topics(settings: Settings) -> Iterator[Callable[..., list[str]]]:
    """Factory: create topics under this test's prefix (all of bankflow's by default).

    ``partitions`` overrides the test settings' partition count for these topics.
    """
    from bankflow.bootstrap import kafka_admin
    from infra.topics import create_topics

    made: list[str] = []

    def make(*names: str, partitions: int | None = None) -> list[str]:
        chosen = settings.model_copy(
            update={"topic_partitions": partitions or settings.topic_partitions}
        )
        infos = create_topics(chosen, names)
        made.extend(info.name for info in infos)
        return [info.name for info in infos]

    yield make
    if made:
        for future in kafka_admin(settings).delete_topics(made, request_timeout=30).values():
            # Bounded: a broker busy deleting must not hold the suite (the topics carry
            # this test's own prefix, so one left behind disturbs no other test).
            with contextlib.suppress(Exception):
                future.result(timeout=60)


@pytest.fixture
def db(settings: Settings) -> Iterator[Any]:
    """A migrated schema of this test's own, dropped afterwards; yields a connection to it."""
    import psycopg

    from bankflow.bootstrap import db_connect
    from infra.db import migrate

    migrate(settings)
    conn = db_connect(settings, autocommit=True)
    yield conn
    conn.close()
    with psycopg.connect(settings.database_url, autocommit=True) as admin:
        admin.execute(f'drop schema if exists "{settings.db_schema}" cascade')


@pytest.fixture
def redis_client(settings: Settings) -> Iterator[Any]:
    """A Redis client; every key under this test's prefix is deleted afterwards."""
    from bankflow.bootstrap import redis_client as make_client

    client = make_client(settings)
    yield client
    keys = list(client.scan_iter(match=f"{settings.redis_prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()
