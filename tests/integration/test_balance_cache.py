"""``bankflow run cache``: the agent keeps Redis balances at the ledger's version.

The agent runs as a process against the real broker; events reach ``transfers.posted``
through the real relay, and again duplicated and reversed (as a relay crash or a
replay would deliver them), spread over the topic's partitions.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from pathlib import Path
from typing import Any

import pytest

from bankflow.balance_cache import BalanceCache, entry_key, seen_key
from bankflow.bootstrap import kafka_producer, redis_async
from bankflow.domain.balances import BalanceSnapshot
from bankflow.observability import probe
from bankflow.settings import Settings
from consumers.relay import relay_once
from schemas.topics import TRANSFERS_POSTED
from tests.ledger_support import (
    accepted,
    drain_in_process,
    open_test_accounts,
    produce_accepted,
    start_service,
    stop_service,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)

#: The agent joins its group and caches a batch within seconds; bounded for a busy CI.
AGENT_WAIT_S = 60


def free_port() -> int:
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        port: int = probe_socket.getsockname()[1]
        return port


def ledger_versions(db: Any, accounts: list[uuid.UUID]) -> dict[uuid.UUID, tuple[int, int]]:
    rows = db.execute(
        "select id, balance_minor, version from accounts where id = any(%s)", (accounts,)
    )
    return {row[0]: (row[1], row[2]) for row in rows}


def cached_versions(redis_client: Any, settings: Settings, accounts: list[uuid.UUID]) -> dict:
    import json

    result = {}
    for account in accounts:
        data = redis_client.hget(entry_key(settings.redis_prefix, account), "snapshot")
        if data is not None:
            snapshot = json.loads(data)
            result[account] = (snapshot["posted_minor"], snapshot["version"])
    return result


def publish(settings: Settings, db: Any, *, again_reversed: bool) -> None:
    """The relay publishes the outbox; optionally every event once more, newest first."""
    producer = kafka_producer(settings)
    while relay_once(db, producer, batch_max=1000):
        pass
    if again_reversed:
        payloads = [bytes(r[0]) for r in db.execute("select payload from outbox order by id desc")]
        for i, payload in enumerate(payloads):
            producer.produce(
                settings.topic(TRANSFERS_POSTED),
                value=payload,
                partition=i % settings.topic_partitions,
            )
        assert producer.flush(30) == 0


def test_the_agent_keeps_balances_at_the_ledgers_version(
    settings: Settings, topics: Any, db: Any, redis_client: Any, tmp_path: Path
) -> None:
    topics()
    a, b = open_test_accounts(db, settings, 2)
    cash = db.execute(
        "select id from accounts where type = 'cash' and currency = 'EUR'"
    ).fetchone()[0]
    accounts = [a, b, cash]
    first = [accepted(cash, a, 10_000), accepted(a, b, 1_500), accepted(a, b, 250)]
    produce_accepted(settings, first, partition=0)
    drain_in_process(settings, len(first))
    publish(settings, db, again_reversed=True)

    log = tmp_path / "cache.log"
    port = free_port()
    agent = start_service(settings, "cache", log=log, BANKFLOW_CACHE_METRICS_PORT=str(port))
    try:
        wait_for(
            lambda: (
                cached_versions(redis_client, settings, accounts) == ledger_versions(db, accounts)
            ),
            AGENT_WAIT_S,
            f"the agent to cache the first batch (its log: {log})",
        )
        assert agent.poll() is None, log.read_text()
        assert probe("127.0.0.1", port) == {"healthz": True, "readyz": True}
        second = [accepted(b, a, 700), accepted(a, b, 3)]
        produce_accepted(settings, second, partition=0)
        drain_in_process(settings, len(first) + len(second))
        publish(settings, db, again_reversed=False)
        wait_for(
            lambda: (
                cached_versions(redis_client, settings, accounts) == ledger_versions(db, accounts)
            ),
            30,
            "the agent to cache the second batch",
        )
        assert cached_versions(redis_client, settings, [a])[a][0] == 10_000 - 1_500 - 250 + 700 - 3
        event_ids = [r[0] for r in db.execute("select event_id from outbox")]
        assert all(redis_client.exists(seen_key(settings.redis_prefix, e)) for e in event_ids)
    finally:
        stop_service(agent)
    assert agent.returncode == 0, log.read_text()


def test_an_entry_is_replaced_only_by_a_higher_version(
    settings: Settings, redis_client: Any
) -> None:
    account = uuid.uuid4()

    def snapshot(version: int, posted_minor: int) -> BalanceSnapshot:
        return BalanceSnapshot(
            account, uuid.uuid4(), "checking", "EUR", "active", posted_minor, 0, 0, 0, version
        )

    async def scenario() -> list[Any]:
        client = redis_async(settings)
        cache = BalanceCache(client, settings.redis_prefix)
        try:
            return [
                await cache.store([snapshot(5, 500)]),
                await cache.store([snapshot(4, 400), snapshot(5, 999)]),  # older, same: refused
                await cache.store([snapshot(6, 600)]),
                (await cache.load(account)),
            ]
        finally:
            await client.aclose()

    results = asyncio.run(scenario())
    assert results[:3] == [[True], [False, False], [True]]
    assert (results[3].version, results[3].posted_minor) == (6, 600)
    assert redis_client.ttl(entry_key(settings.redis_prefix, account)) > 0
