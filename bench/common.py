"""What every benchmark shares: a throw-away schema and topic prefix, and removing them."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from bankflow.bootstrap import kafka_admin
from bankflow.settings import Settings
from infra.db import migrate
from infra.topics import create_topics


def throwaway(settings: Settings, topics: tuple[str, ...], **extra: Any) -> Settings:
    """Settings for a schema and topics of the benchmark's own, created and migrated."""
    tag = uuid.uuid4().hex[:8]
    bench = settings.model_copy(update={
        "topic_prefix": f"bench-{tag}.", "db_schema": f"bench_{tag}",
        "poster_group": f"bench-{tag}-poster", **extra,
    })  # fmt: skip
    migrate(bench)
    create_topics(bench, topics)
    return bench


def clean_up(settings: Settings, topics: tuple[str, ...]) -> None:
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute(f'drop schema if exists "{settings.db_schema}" cascade')
    admin = kafka_admin(settings)  # keep it alive until the futures resolve
    for future in admin.delete_topics([settings.topic(t) for t in topics]).values():
        future.result(timeout=120)
