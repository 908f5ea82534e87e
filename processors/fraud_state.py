"""The fraud rules' state per debit account, in Redis, updated idempotently.

Two keys per account:

- ``fraud:activity:<account>``: a sorted set of the account's recent transfers, the
  member ``<transfer id>|<amount>|<credit account>`` and the score the request time
  in milliseconds. Adding a transfer twice adds nothing.
- ``fraud:paid:<account>``: a sorted set of the credit accounts an accepted transfer
  went to, scored by the first time (``ZADD LT`` keeps the minimum).

One Lua script per account adds a batch and prunes, so the pruning rule is applied
atomically and exactly as ``processors.fraud.record`` models it; an integration test
holds the two to each other. Keys expire a year after their last write (dormancy
needs months of memory, not forever).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import redis

from processors.fraud import AccountState, Activity, member, parse_member

#: Keys of an account nobody has paid from for this long are forgotten.
STATE_TTL_MS = 400 * 86_400_000

# KEYS: activity, paid. ARGV: retention_ms, history_max, ttl_ms, n_activity, then
# n_activity (score, member) pairs, then (score, credit account) pairs of payments.
_RECORD = """
local retention, history_max, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local i = 5
for _ = 1, n do
  redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1])
  i = i + 2
end
while i <= #ARGV do
  redis.call('ZADD', KEYS[2], 'LT', ARGV[i], ARGV[i + 1])
  i = i + 2
end
local size = redis.call('ZCARD', KEYS[1])
if size > history_max then
  local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  local old = redis.call('ZCOUNT', KEYS[1], '-inf', '(' .. (tonumber(newest[2]) - retention))
  local drop = math.min(old, size - history_max)
  if drop > 0 then redis.call('ZREMRANGEBYRANK', KEYS[1], 0, drop - 1) end
end
if size > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('PEXPIRE', KEYS[2], ttl) end
return size
"""


class FraudState:
    """Loads and records the state of many accounts per round trip (pipelines)."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._record = client.register_script(_RECORD)

    def _keys(self, account: str) -> tuple[str, str]:
        return (f"{self.prefix}fraud:activity:{account}", f"{self.prefix}fraud:paid:{account}")

    def load(self, wanted: Mapping[str, Iterable[str]]) -> dict[str, AccountState]:
        """The state of each debit account, with the first payment to each named credit."""
        accounts = list(wanted)
        pipe = self.client.pipeline(transaction=False)
        credits = {account: sorted(set(wanted[account])) for account in accounts}
        for account in accounts:
            activity, paid = self._keys(account)
            pipe.zrange(activity, 0, -1, withscores=True)
            pipe.zmscore(paid, credits[account] or ["-"])
        replies = pipe.execute()
        states = {}
        for n, account in enumerate(accounts):
            members: list[tuple[Any, float]] = replies[2 * n]
            scores: list[float | None] = replies[2 * n + 1]
            state = AccountState()
            for raw, score in members:
                past = parse_member(_text(raw), int(score))
                state.activity[past.transfer_id] = past
            for credit, first in zip(credits[account], scores, strict=False):
                if first is not None:
                    state.beneficiaries[credit] = int(first)
            states[account] = state
        return states

    def record(
        self,
        activity: Mapping[str, list[Activity]],
        paid: Mapping[str, list[Activity]],
        retention_ms: int,
        history_max: int,
    ) -> None:
        """Add each account's new activity and payments; safe to repeat."""
        pipe = self.client.pipeline(transaction=False)
        for account in set(activity) | set(paid):
            args: list[Any] = [retention_ms, history_max, STATE_TTL_MS]
            added = activity.get(account, [])
            args.append(len(added))
            for a in added:
                args += [a.at_ms, member(a)]
            for a in paid.get(account, []):
                args += [a.at_ms, a.credit_account]
            self._record(keys=list(self._keys(account)), args=args, client=pipe)
        pipe.execute()


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)
