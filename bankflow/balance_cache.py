"""The Redis balance cache: one entry per account that only ever moves forward.

An entry is a hash ``{version, snapshot}`` under ``<prefix>balance:<account id>``,
where ``snapshot`` is the account's ``BalanceSnapshot`` as JSON and ``version`` the
version of its ``accounts`` row. Every writer (the cache agent after a posted
event, the API after reading PostgreSQL) stores through one Lua script that
replaces the entry only with a higher version, in one atomic step on the Redis
server: events that arrive twice, late or out of order, and a slow reader racing
the agent, can never put an older balance back.

Entries expire after ``ENTRY_TTL_S`` so idle accounts do not fill Redis; a missing
entry is read from PostgreSQL, which is never older than any entry.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from typing import Final

import orjson
import redis.asyncio

from bankflow.domain.balances import BalanceSnapshot

#: A day: an account active every day stays cached, one idle longer is read afresh.
ENTRY_TTL_S: Final = 24 * 3600
#: How long a processed event id is remembered. Redeliveries (a crash or rebalance of
#: the agent) come within minutes; one later than this costs a PostgreSQL read and
#: changes nothing, because storing is by version.
SEEN_EVENT_TTL_S: Final = 3600

#: KEYS[1] the entry; ARGV[1] the version, ARGV[2] the snapshot, ARGV[3] the TTL in seconds.
#: Returns 1 when stored, 0 when the entry already held this version or a newer one.
STORE_IF_NEWER: Final = """
local current = redis.call('HGET', KEYS[1], 'version')
if current and tonumber(current) >= tonumber(ARGV[1]) then
    return 0
end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'snapshot', ARGV[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
"""


def entry_key(prefix: str, account_id: uuid.UUID) -> str:
    return f"{prefix}balance:{account_id}"


def seen_key(prefix: str, event_id: uuid.UUID) -> str:
    return f"{prefix}balance:seen-event:{event_id}"


def encode(snapshot: BalanceSnapshot) -> bytes:
    return orjson.dumps(asdict(snapshot))


def decode(data: bytes | str) -> BalanceSnapshot:
    fields = orjson.loads(data)
    fields["account_id"] = uuid.UUID(fields["account_id"])
    fields["customer_id"] = uuid.UUID(fields["customer_id"])
    return BalanceSnapshot(**fields)


class BalanceCache:
    """Reads and version-guarded writes of balance entries, on an asyncio Redis client."""

    def __init__(self, client: redis.asyncio.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._store_script = client.register_script(STORE_IF_NEWER)

    async def load(self, account_id: uuid.UUID) -> BalanceSnapshot | None:
        data = await self.client.hget(entry_key(self.prefix, account_id), "snapshot")
        return None if data is None else decode(data)

    async def store(self, snapshots: Sequence[BalanceSnapshot]) -> list[bool]:
        """Store each snapshot unless its entry is as new already; True where stored."""
        if not snapshots:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            for snapshot in snapshots:
                await self._store_script(
                    keys=[entry_key(self.prefix, snapshot.account_id)],
                    args=[snapshot.version, encode(snapshot), ENTRY_TTL_S],
                    client=pipe,
                )
            results = await pipe.execute()
        return [bool(result) for result in results]

    async def unseen(self, event_ids: Sequence[uuid.UUID]) -> list[bool]:
        """For each event id, whether it was not processed yet (within ``SEEN_EVENT_TTL_S``)."""
        if not event_ids:
            return []
        found = await self.client.mget([seen_key(self.prefix, e) for e in event_ids])
        return [value is None for value in found]

    async def mark_seen(self, event_ids: Iterable[uuid.UUID]) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for event_id in event_ids:
                pipe.set(seen_key(self.prefix, event_id), b"1", ex=SEEN_EVENT_TTL_S)
            await pipe.execute()
