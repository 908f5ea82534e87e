"""The one place that builds clients from the settings.

Services and tools ask here for a Kafka producer, consumer or admin client, a
PostgreSQL connection or a Redis client; nothing else constructs one, so every
client carries the same, reviewed configuration.
"""

from __future__ import annotations

from typing import Any

import psycopg
import redis
import redis.asyncio
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from bankflow import logs
from bankflow.settings import Settings


def kafka_client_config(settings: Settings, *, service: str | None = None) -> dict[str, Any]:
    """The librdkafka settings every Kafka client shares: the brokers, TLS and SASL.

    ``service`` picks the SASL principal (``Settings.kafka_sasl_credentials``); it is
    the process's own by default, which ``bankflow run NAME`` sets, while tools run as
    "bankflow" and take the common principal. Holds the SASL password: never log it.
    """
    protocol = settings.kafka_security_protocol
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap,
        "security.protocol": protocol,
    }
    if protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        username, password = settings.kafka_sasl_credentials(service or logs.service())
        config["sasl.mechanism"] = settings.kafka_sasl_mechanism
        config["sasl.username"] = username
        config["sasl.password"] = password.get_secret_value()
    if protocol in ("SSL", "SASL_SSL"):
        for key, path in (
            ("ssl.ca.location", settings.kafka_ssl_ca_location),
            ("ssl.certificate.location", settings.kafka_ssl_certificate_location),
            ("ssl.key.location", settings.kafka_ssl_key_location),
        ):
            if path is not None:
                config[key] = str(path)
        if settings.kafka_ssl_key_password is not None:
            config["ssl.key.password"] = settings.kafka_ssl_key_password.get_secret_value()
    return config


def _client_config(
    settings: Settings, config: dict[str, Any], overrides: dict[str, Any]
) -> dict[str, Any]:
    """The shared settings, then a client's own, then the caller's tuning; tuning may
    not replace where the brokers are or how the client authenticates."""
    common = kafka_client_config(settings)
    clash = sorted(common.keys() & overrides.keys())
    if clash:
        raise ValueError(f"{clash} come from the settings (kafka_client_config), not overrides")
    return {**common, **config, **overrides}


def faust_broker_options(settings: Settings, *, service: str | None = None) -> dict[str, Any]:
    """``faust.App`` keyword arguments for the same brokers, TLS and SASL principal as
    ``kafka_client_config``: ``broker`` and ``broker_credentials``."""
    # Imported here: only faust apps pay for importing faust.
    import faust
    from aiokafka.helpers import create_ssl_context

    protocol = settings.kafka_security_protocol
    brokers = [f"kafka://{host.strip()}" for host in settings.kafka_bootstrap.split(",")]
    ssl_context = None
    if protocol in ("SSL", "SASL_SSL"):
        key_password = settings.kafka_ssl_key_password
        ssl_context = create_ssl_context(
            cafile=settings.kafka_ssl_ca_location,
            certfile=settings.kafka_ssl_certificate_location,
            keyfile=settings.kafka_ssl_key_location,
            password=None if key_password is None else key_password.get_secret_value(),
        )
    credentials: faust.auth.Credentials | None = None
    if protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        username, password = settings.kafka_sasl_credentials(service or logs.service())
        credentials = faust.SASLCredentials(
            username=username,
            password=password.get_secret_value(),
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=ssl_context,
        )
    elif ssl_context is not None:
        credentials = faust.SSLCredentials(ssl_context)
    return {"broker": brokers, "broker_credentials": credentials}


def kafka_admin(settings: Settings, **overrides: Any) -> AdminClient:
    return AdminClient(_client_config(settings, {}, overrides))


def kafka_producer(
    settings: Settings, *, transactional_id: str | None = None, **overrides: Any
) -> Producer:
    """An idempotent producer (acks=all); transactional when given a transactional id."""
    config: dict[str, Any] = {
        "enable.idempotence": True,
        "acks": "all",
        # Bounded: a produce that cannot be delivered within this window is reported, not kept.
        "delivery.timeout.ms": 30_000,
        "linger.ms": 5,
        "compression.type": "lz4",
    }
    if transactional_id is not None:
        config["transactional.id"] = transactional_id
    return Producer(_client_config(settings, config, overrides))


def kafka_consumer(settings: Settings, *, group_id: str, **overrides: Any) -> Consumer:
    """A consumer that never commits on its own and sees only committed transactions."""
    config: dict[str, Any] = {
        "group.id": group_id,
        "isolation.level": "read_committed",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
    }
    return Consumer(_client_config(settings, config, overrides))


def db_connect(
    settings: Settings, *, application_name: str = "bankflow", **kwargs: Any
) -> psycopg.Connection[Any]:
    """A PostgreSQL connection whose search path is the configured schema.

    ``application_name`` shows in ``pg_stat_activity``: services name themselves and
    their pid there, so an operator (or a chaos test) can tell their sessions apart.
    """
    return psycopg.connect(
        settings.database_url,
        options=f"-c search_path={settings.db_schema}",
        application_name=application_name,
        **kwargs,
    )


def db_pool(
    settings: Settings, *, application_name: str, max_size: int = 1, **kwargs: Any
) -> ConnectionPool[psycopg.Connection[Any]]:
    """A pool of autocommit connections whose search path is the configured schema.

    Opened without waiting, so a service starts while PostgreSQL is still coming up; it
    reconnects in the background and drops a connection returned broken, so a service
    that takes a connection per batch never holds a dead one.
    """
    pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
        settings.database_url,
        min_size=1,
        max_size=max_size,
        open=False,
        kwargs={
            "options": f"-c search_path={settings.db_schema}",
            "application_name": application_name,
            "autocommit": True,
            **kwargs,
        },
    )
    pool.open(wait=False)
    return pool


def redis_client(settings: Settings, **kwargs: Any) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, **kwargs)


def db_pool_async(
    settings: Settings,
    *,
    max_size: int,
    application_name: str = "bankflow-api",
    timeout_s: float = 5.0,
) -> AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
    """An async pool of autocommit connections whose search path is the configured schema.

    Returned closed: ``await pool.open()``. Connections are in autocommit mode, so
    several statements that must hold together go in ``async with conn.transaction()``.
    A connection is checked before it is handed out (one round trip), so a PostgreSQL
    restart costs no failed request. Waiting longer than ``timeout_s`` for a free
    connection raises ``PoolTimeout``.
    """
    return AsyncConnectionPool(
        settings.database_url,
        min_size=1,
        max_size=max_size,
        open=False,
        timeout=timeout_s,
        check=AsyncConnectionPool.check_connection,
        kwargs={
            "options": f"-c search_path={settings.db_schema}",
            "application_name": application_name,
            "autocommit": True,
        },
    )


async def db_connect_async(
    settings: Settings, *, application_name: str = "bankflow", **kwargs: Any
) -> psycopg.AsyncConnection[Any]:
    """An async PostgreSQL connection whose search path is the configured schema."""
    return await psycopg.AsyncConnection.connect(
        settings.database_url,
        options=f"-c search_path={settings.db_schema}",
        application_name=application_name,
        **kwargs,
    )


def redis_async(settings: Settings, **kwargs: Any) -> redis.asyncio.Redis:
    """An asyncio Redis client (the API's); ``kwargs`` set timeouts and the like."""
    return redis.asyncio.Redis.from_url(settings.redis_url, **kwargs)
