"""Fraud rules, the decision policy and the state model: plain values, no I/O."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bankflow.settings import PROJECT_ROOT
from processors.fraud import (
    DAY_MS,
    AccountState,
    Activity,
    Candidate,
    Profile,
    load_ruleset,
    record,
    score,
)

RULES = load_ruleset(PROJECT_ROOT / "infra" / "fraud_rules.yaml")
T0 = 1_800_000_000_000  # some time in 2027, in ms
OURS = "DE02999900000000000001"


def candidate(
    amount: int = 10_000,
    *,
    at: int = T0,
    credit: str = "friend",
    iban: str | None = OURS,
    customer: bool = True,
    tid: str = "t-new",
) -> Candidate:
    return Candidate(Activity(at, tid, amount, credit), "EUR", iban, customer)


def past(*amounts: int, start: int = T0 - DAY_MS * 2, step: int = 3_600_000) -> tuple:
    return tuple(
        Activity(start + n * step, f"t{n:04d}", amount, "friend")
        for n, amount in enumerate(amounts)
    )


def profile(recent: tuple = (), beneficiaries: dict | None = None) -> Profile:
    return Profile(recent, {"friend": T0 - DAY_MS * 30} if beneficiaries is None else beneficiaries)


def reasons(c: Candidate, p: Profile) -> list[str]:
    return score(c, p, RULES).reasons


def test_an_ordinary_transfer_is_accepted_with_the_rule_set_version() -> None:
    verdict = score(candidate(), profile(past(9_000, 11_000, 10_000)), RULES)
    assert (verdict.outcome, verdict.score, verdict.hits) == ("accepted", 0, ())
    assert verdict.ruleset_version == RULES.version


def test_velocity_counts_transfers_in_the_last_minute() -> None:
    five = past(100, 100, 100, 100, 100, start=T0 - 50_000, step=5_000)
    assert reasons(candidate(), profile(five)) == ["velocity_count_1m"]
    four = five[1:]
    assert reasons(candidate(), profile(four)) == []
    # The same five, but more than a minute ago, no longer count for the minute window.
    older = past(100, 100, 100, 100, 100, start=T0 - 200_000, step=5_000)
    assert reasons(candidate(), profile(older)) == []


def test_velocity_sums_amounts_per_window() -> None:
    recent = past(300_000, start=T0 - 1_000)
    assert reasons(candidate(amount=200_001), profile(recent)) == ["velocity_amount_1m"]
    assert reasons(candidate(amount=200_000), profile(recent)) == []
    # One large amount alone is not velocity.
    assert reasons(candidate(amount=600_000), profile()) == []


def test_an_amount_far_above_the_usual_one_is_held_for_review() -> None:
    usual = past(5_000, 6_000, 5_500, 7_000, 6_500)
    verdict = score(candidate(amount=75_000), profile(usual), RULES)
    assert verdict.reasons == ["amount_far_above_usual"]
    # 40 points alone stay below review; with a new beneficiary it reaches review.
    assert verdict.outcome == "accepted"
    held = score(candidate(amount=250_000, credit="stranger"), profile(usual), RULES)
    assert held.outcome == "review"
    assert set(held.reasons) == {"amount_far_above_usual", "new_beneficiary_large_amount"}
    # Too little history says nothing about what is usual.
    assert reasons(candidate(amount=75_000), profile(usual[:4])) == []


def test_a_new_beneficiary_matters_only_for_large_amounts() -> None:
    assert reasons(candidate(amount=199_999, credit="stranger"), profile()) == []
    assert reasons(candidate(amount=200_000, credit="stranger"), profile()) == [
        "new_beneficiary_large_amount"
    ]
    assert reasons(candidate(amount=200_000, credit="friend"), profile()) == []


def test_blocklisted_ibans_and_countries_are_rejected_for_every_requester() -> None:
    blocked = score(candidate(iban="DE89370400440532013000", customer=False), profile(), RULES)
    assert (blocked.outcome, blocked.reasons) == ("rejected", ["blocklisted_iban"])
    by_country = score(candidate(iban="IR062960000000100324200001"), profile(), RULES)
    assert (by_country.outcome, by_country.reasons) == ("rejected", ["blocklisted_country"])


def test_structuring_needs_several_amounts_just_under_the_threshold_within_a_day() -> None:
    just_under = past(950_000, 990_000, start=T0 - 10 * 3_600_000)
    verdict = score(candidate(amount=999_999), profile(just_under), RULES)
    assert verdict.outcome == "review" and "structuring" in verdict.reasons
    # Two days ago does not count, nor does an amount below the band.
    old = past(950_000, 990_000, start=T0 - 3 * DAY_MS)
    assert "structuring" not in reasons(candidate(amount=999_999), profile(old))
    assert "structuring" not in reasons(candidate(amount=800_000), profile(just_under))


def test_a_dormant_account_waking_up_with_a_sizeable_amount() -> None:
    long_ago = past(50_000, 60_000, start=T0 - 200 * DAY_MS)
    assert reasons(candidate(amount=100_000), profile(long_ago)) == ["dormant_account_activity"]
    assert reasons(candidate(amount=99_999), profile(long_ago)) == []
    assert reasons(candidate(amount=100_000), profile(past(50_000))) == []


def test_behavioural_rules_screen_customers_only_by_default() -> None:
    five = past(100, 100, 100, 100, 100, start=T0 - 50_000, step=5_000)
    assert reasons(candidate(customer=False), profile(five)) == []
    everyone = RULES.model_copy(update={"behavioural_scope": "all"})
    assert score(candidate(customer=False), profile(five), everyone).reasons == [
        "velocity_count_1m"
    ]


def test_the_policy_thresholds_decide_between_accept_review_and_reject() -> None:
    five = past(100, 100, 100, 100, 100, start=T0 - 50_000, step=5_000)  # 50 points
    assert score(candidate(), profile(five), RULES).outcome == "review"
    strict = RULES.model_copy(
        update={"policy": RULES.policy.model_copy(update={"review_at": 10, "reject_at": 50})}
    )
    assert score(candidate(), profile(five), strict).outcome == "rejected"


def test_a_broken_rule_file_is_refused_naming_the_field(tmp_path: Path) -> None:
    text = (PROJECT_ROOT / "infra" / "fraud_rules.yaml").read_text()
    broken = tmp_path / "rules.yaml"
    broken.write_text(text.replace("review_at: 50", "review_at: many"))
    with pytest.raises(ValueError, match="review_at"):
        load_ruleset(broken)
    inverted = tmp_path / "inverted.yaml"
    inverted.write_text(text.replace("reject_at: 100", "reject_at: 10"))
    with pytest.raises(ValueError, match="reject_at must not be below"):
        load_ruleset(inverted)


def test_a_transfer_sees_only_what_came_strictly_before_it() -> None:
    state = AccountState()
    first, second = Activity(T0, "a", 100, "x"), Activity(T0 + 1, "b", 200, "y")
    record(state, [first, second], [first], RULES.retention_ms, RULES.history_max)
    assert state.profile_before(first).recent == ()
    assert state.profile_before(second).recent == (first,)
    assert state.profile_before(second).beneficiaries == {"x": T0}
    # Redone after the state already holds it, a transfer still does not see itself.
    assert state.profile_before(second).recent == (first,)


def test_pruning_keeps_the_last_day_and_at_least_the_newest_history() -> None:
    state = AccountState()
    old = [Activity(T0 - 10 * DAY_MS + n, f"old{n:03d}", 1, "x") for n in range(60)]
    new = [Activity(T0 + n, f"new{n:03d}", 1, "x") for n in range(10)]
    record(state, old + new, [], RULES.retention_ms, history_max=50)
    assert len(state.activity) == 50
    assert all(f"new{n:03d}" in state.activity for n in range(10))
    record(state, [Activity(T0 + 100 + n, f"more{n:03d}", 1, "x") for n in range(60)], [],
           RULES.retention_ms, history_max=50)  # fmt: skip
    assert not any(key.startswith("old") for key in state.activity)
    assert len(state.activity) == 70  # everything within the day stays


activities = st.lists(
    st.builds(
        Activity,
        at_ms=st.integers(T0 - 3 * DAY_MS, T0),
        transfer_id=st.uuids().map(str),
        amount_minor=st.integers(1, 10**9),
        credit_account=st.sampled_from(["a", "b", "c", "d"]),
    ),
    max_size=80,
    unique_by=lambda a: a.transfer_id,
)


@settings(max_examples=200, deadline=None)
@given(batch=activities, data=st.data())
def test_replaying_or_reordering_a_batch_leaves_the_state_unchanged(batch, data) -> None:
    paid = [a for a in batch if a.amount_minor % 3 == 0]
    history_max = data.draw(st.integers(1, 60))
    state = AccountState()
    record(state, batch, paid, RULES.retention_ms, history_max)
    once = copy.deepcopy((state.activity, state.beneficiaries))

    replay = data.draw(
        st.permutations(batch + data.draw(st.lists(st.sampled_from(batch or [None]))))
    )
    replay = [a for a in replay if a is not None]
    chunks = data.draw(st.integers(1, 5))
    for n in range(chunks):  # the replay may arrive in several batches
        part = replay[n::chunks]
        record(state, part, [a for a in part if a in paid], RULES.retention_ms, history_max)
    assert (state.activity, state.beneficiaries) == once


@settings(max_examples=100, deadline=None)
@given(batch=activities, data=st.data())
def test_the_state_depends_only_on_the_set_of_transfers(batch, data) -> None:
    history_max = data.draw(st.integers(1, 60))
    in_order, shuffled = AccountState(), AccountState()
    record(in_order, batch, batch, RULES.retention_ms, history_max)
    for a in data.draw(st.permutations(batch)):
        record(shuffled, [a], [a], RULES.retention_ms, history_max)
    assert in_order.activity == shuffled.activity
    assert in_order.beneficiaries == shuffled.beneficiaries
