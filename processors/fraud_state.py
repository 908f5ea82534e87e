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

# One call per batch, whatever the number of accounts: each command costs the client
# more to pack and parse than Redis takes to run it (measured: a pipeline of two
# commands per account cost the validator a quarter of its time).
#
# KEYS: activity and paid key of each account. ARGV: retention_ms, history_max, ttl_ms,
# then per account: n_activity, n_paid, n_activity (score, member) pairs, n_paid
# (score, credit account) pairs.
_RECORD = """
local retention, history_max, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local i = 4
for k = 1, #KEYS, 2 do
  local activity, paid = KEYS[k], KEYS[k + 1]
  local n_activity, n_paid = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  i = i + 2
  for _ = 1, n_activity do
    redis.call('ZADD', activity, ARGV[i], ARGV[i + 1])
    i = i + 2
  end
  for _ = 1, n_paid do
    redis.call('ZADD', paid, 'LT', ARGV[i], ARGV[i + 1])
    i = i + 2
  end
  local size = redis.call('ZCARD', activity)
  if size > history_max then
    local newest = redis.call('ZRANGE', activity, -1, -1, 'WITHSCORES')
    local old = redis.call('ZCOUNT', activity, '-inf', '(' .. (tonumber(newest[2]) - retention))
    local drop = math.min(old, size - history_max)
    if drop > 0 then redis.call('ZREMRANGEBYRANK', activity, 0, drop - 1) end
  end
  if size > 0 then redis.call('PEXPIRE', activity, ttl) end
  if redis.call('EXISTS', paid) == 1 then redis.call('PEXPIRE', paid, ttl) end
end
return 1
"""

# KEYS as for _RECORD. ARGV: per account, n_credits and the credit accounts asked about.
# Returns per account: the activity as member, score, member, score ...; then the
# first-payment score of each credit asked about (false when never paid).
_LOAD = """
local out, i = {}, 1
for k = 1, #KEYS, 2 do
  local n = tonumber(ARGV[i])
  local scores = {}
  if n > 0 then
    scores = redis.call('ZMSCORE', KEYS[k + 1], unpack(ARGV, i + 1, i + n))
  end
  i = i + 1 + n
  out[#out + 1] = redis.call('ZRANGE', KEYS[k], 0, -1, 'WITHSCORES')
  out[#out + 1] = scores
end
return out
"""


class FraudState:
    """Loads and records the state of all of a batch's accounts in one call each."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._record = client.register_script(_RECORD)
        self._load = client.register_script(_LOAD)

    def _keys(self, account: str) -> tuple[str, str]:
        return (f"{self.prefix}fraud:activity:{account}", f"{self.prefix}fraud:paid:{account}")

    def load(self, wanted: Mapping[str, Iterable[str]]) -> dict[str, AccountState]:
        """The state of each debit account, with the first payment to each named credit."""
        accounts = list(wanted)
        if not accounts:
            return {}
        credits = {account: sorted(set(wanted[account])) for account in accounts}
        keys: list[str] = []
        args: list[Any] = []
        for account in accounts:
            keys += self._keys(account)
            args += [len(credits[account]), *credits[account]]
        replies = self._load(keys=keys, args=args)
        states = {}
        for n, account in enumerate(accounts):
            flat: list[Any] = replies[2 * n]
            scores: list[Any] = replies[2 * n + 1]
            state = AccountState()
            for at in range(0, len(flat), 2):
                past = parse_member(_text(flat[at]), int(flat[at + 1]))
                state.activity[past.transfer_id] = past
            for credit, first in zip(credits[account], scores, strict=False):
                if first:  # Lua turns a missing score into false (None)
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
        accounts = set(activity) | set(paid)
        if not accounts:
            return
        keys: list[str] = []
        args: list[Any] = [retention_ms, history_max, STATE_TTL_MS]
        for account in accounts:
            keys += self._keys(account)
            added, first_paid = activity.get(account, []), paid.get(account, [])
            args += [len(added), len(first_paid)]
            for a in added:
                args += [a.at_ms, member(a)]
            for a in first_paid:
                args += [a.at_ms, a.credit_account]
        self._record(keys=keys, args=args)


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)
