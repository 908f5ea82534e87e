"""The fraud state in a real Redis agrees with the model in ``processors.fraud``."""

from __future__ import annotations

import random

from processors.fraud import DAY_MS, AccountState, Activity, record
from processors.fraud_state import FraudState

T0 = 1_800_000_000_000


def random_batches(rng: random.Random, count: int) -> list[list[Activity]]:
    made = [
        Activity(
            T0 + rng.randint(-3 * DAY_MS, 0),
            f"{n:08d}-{rng.randrange(10**6):06d}",
            rng.randint(1, 10**7),
            rng.choice(["a", "b", "c"]),
        )
        for n in range(count)
    ]
    return [made[i : i + 25] for i in range(0, count, 25)]


def test_redis_state_matches_the_model_and_ignores_replays(settings, redis_client) -> None:
    rng = random.Random(5)
    state = FraudState(redis_client, settings.redis_prefix)
    model = AccountState()
    retention, history_max = DAY_MS, 20
    batches = random_batches(rng, 200)
    for batch in batches + [rng.sample(b, len(b)) for b in batches[:3]]:  # then replays
        paid = [a for a in batch if a.amount_minor % 2 == 0]
        state.record({"acct": batch}, {"acct": paid}, retention, history_max)
        record(model, batch, paid, retention, history_max)

    loaded = state.load({"acct": ["a", "b", "c", "never-paid"]})["acct"]
    assert loaded.activity == model.activity
    assert loaded.beneficiaries == model.beneficiaries
    assert "never-paid" not in loaded.beneficiaries
    # Accounts do not see each other's state; the keys expire.
    assert state.load({"other": ["a"]})["other"].activity == {}
    assert redis_client.pttl(f"{settings.redis_prefix}fraud:activity:acct") > 0
