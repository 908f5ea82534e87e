"""Creates and lists the topics named in ``schemas.topics``."""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

from bankflow.bootstrap import kafka_admin
from bankflow.errors import StackError
from bankflow.settings import Settings

#: How long one admin request may take before it is reported as failed.
ADMIN_TIMEOUT_S = 30


@dataclass(frozen=True)
class TopicInfo:
    name: str
    partitions: int | None  # None: the topic does not exist
    created: bool = False


def create_topics(settings: Settings, names: tuple[str, ...] = ()) -> list[TopicInfo]:
    """Create every missing topic (all of them by default); existing ones stay (idempotent)."""
    names = names or settings.all_topics()
    admin = kafka_admin(settings)
    wanted = [settings.topic(name) for name in names]
    futures = admin.create_topics(
        [
            NewTopic(
                topic,
                num_partitions=settings.topic_partitions,
                replication_factor=settings.topic_replication,
                config={"retention.ms": str(settings.topic_retention_ms)},
            )
            for topic in wanted
        ],
        request_timeout=ADMIN_TIMEOUT_S,
    )
    created: set[str] = set()
    for topic, future in futures.items():
        try:
            future.result()
            created.add(topic)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise StackError(f"could not create topic {topic}: {exc.args[0].str()}") from exc
    existing = {t.name: t.partitions for t in list_topics(settings, names)}
    return [TopicInfo(t, existing.get(t), t in created) for t in wanted]


def list_topics(settings: Settings, names: tuple[str, ...] = ()) -> list[TopicInfo]:
    """Each of bankflow's topics with its partition count (None when missing)."""
    names = names or settings.all_topics()
    try:
        metadata = kafka_admin(settings).list_topics(timeout=ADMIN_TIMEOUT_S)
    except KafkaException as exc:
        raise StackError(
            f"Kafka at {settings.kafka_bootstrap} did not answer: {exc}. "
            "Is the stack up? (bankflow stack up)"
        ) from exc
    result = []
    for name in names:
        topic = settings.topic(name)
        meta = metadata.topics.get(topic)
        result.append(TopicInfo(topic, len(meta.partitions) if meta and not meta.error else None))
    return result
