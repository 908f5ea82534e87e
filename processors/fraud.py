"""Fraud rules: pure functions that score one transfer against its debit account's past.

Each rule looks at the transfer (a ``Candidate``) and what came strictly before it on
the same debit account (a ``Profile``) and returns hits, each with a score and a
stable reason code. The decision policy adds the scores up and compares them with
two thresholds from the rule set: below ``review_at`` the transfer is accepted, from
``review_at`` it is held for a reviewer, from ``reject_at`` it is rejected.

"Strictly before" is by ``(at_ms, transfer_id)``: a transfer's decision depends only
on transfers ordered before it, never on itself or on later ones, so redoing an
aborted batch (whose state updates already reached Redis) decides exactly as the
first attempt did. ``AccountState`` and ``record`` model the state kept per account
(see ``processors.fraud_state`` for the Redis side, which must agree with them).

The rules and their thresholds live in one versioned file, ``infra/fraud_rules.yaml``;
``load_ruleset`` checks it so that a typo stops the validator at start-up.
"""

from __future__ import annotations

import bisect
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

DAY_MS = 86_400_000


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class VelocityWindow(_Config):
    name: str = Field(pattern=r"^[a-z0-9]+$")
    seconds: int = Field(gt=0, le=86_400)
    count_max: int = Field(ge=1)
    sum_max_minor: int = Field(ge=1)
    score: int = Field(ge=0)


class AmountOutlier(_Config):
    history_min: int = Field(ge=1)
    multiplier: int = Field(ge=2)
    amount_min_minor: int = Field(ge=0)
    score: int = Field(ge=0)


class NewBeneficiary(_Config):
    amount_min_minor: int = Field(ge=0)
    score: int = Field(ge=0)


class Blocklist(_Config):
    ibans: frozenset[str] = frozenset()
    countries: frozenset[str] = frozenset()
    score: int = Field(ge=0)


class Structuring(_Config):
    threshold_minor: int = Field(ge=1)
    margin_percent: int = Field(ge=1, le=50)
    count_min: int = Field(ge=2)
    score: int = Field(ge=0)


class Dormant(_Config):
    idle_days: int = Field(ge=1)
    amount_min_minor: int = Field(ge=0)
    score: int = Field(ge=0)


class Policy(_Config):
    review_at: int = Field(ge=1)
    reject_at: int = Field(ge=1)


class RuleSet(_Config):
    """The rule set as written in ``infra/fraud_rules.yaml``."""

    version: str = Field(min_length=1, max_length=64)
    policy: Policy
    #: Who the behavioural rules screen: customers' own requests through the API (the
    #: channel where account takeover happens; the validator decides what that is) or
    #: every request. The blocklist screens every request.
    behavioural_scope: Literal["customers", "all"] = "customers"
    velocity: tuple[VelocityWindow, ...]
    amount_outlier: AmountOutlier
    new_beneficiary: NewBeneficiary
    blocklist: Blocklist
    structuring: Structuring
    dormant: Dormant
    #: How much activity the state keeps per account: everything of the longest window,
    #: and at least the newest ``history_max`` transfers (usual amounts, dormancy).
    history_max: int = Field(default=50, ge=1, le=1000)

    @property
    def retention_ms(self) -> int:
        return max([DAY_MS, *(w.seconds * 1000 for w in self.velocity)])


def load_ruleset(path: Path) -> RuleSet:
    """Read and check the rule set; a bad file raises with the field that is wrong."""
    ruleset = RuleSet.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    if ruleset.policy.reject_at < ruleset.policy.review_at:
        raise ValueError(f"{path}: policy.reject_at must not be below policy.review_at")
    return ruleset


@dataclass(frozen=True, slots=True, order=True)
class Activity:
    """One transfer in a debit account's past, as the rules see it."""

    at_ms: int
    transfer_id: str
    amount_minor: int
    credit_account: str


@dataclass(frozen=True, slots=True)
class Candidate:
    """The transfer being scored."""

    activity: Activity
    currency: str
    credit_iban: str | None
    customer_initiated: bool


@dataclass(frozen=True, slots=True)
class Profile:
    """A debit account's past strictly before one transfer."""

    recent: tuple[Activity, ...]  # oldest first
    #: Credit accounts an accepted transfer went to before, with the first time.
    beneficiaries: Mapping[str, int]

    def day_total_minor(self, at_ms: int) -> int:
        return sum(a.amount_minor for a in self.recent if a.at_ms > at_ms - DAY_MS)


@dataclass(frozen=True, slots=True)
class Hit:
    rule: str
    reason: str
    score: int


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Literal["accepted", "review", "rejected"]
    score: int
    hits: tuple[Hit, ...]
    ruleset_version: str

    @property
    def reasons(self) -> list[str]:
        return [hit.reason for hit in self.hits]


def score(candidate: Candidate, profile: Profile, ruleset: RuleSet) -> Verdict:
    """Every rule's hits for one transfer, and the policy's decision."""
    hits = list(blocklist(candidate, ruleset.blocklist))
    if candidate.customer_initiated or ruleset.behavioural_scope == "all":
        hits += velocity(candidate, profile, ruleset.velocity)
        hits += amount_outlier(candidate, profile, ruleset.amount_outlier)
        hits += new_beneficiary(candidate, profile, ruleset.new_beneficiary)
        hits += structuring(candidate, profile, ruleset.structuring)
        hits += dormant(candidate, profile, ruleset.dormant)
    total = sum(hit.score for hit in hits)
    outcome: Literal["accepted", "review", "rejected"] = (
        "rejected"
        if total >= ruleset.policy.reject_at
        else "review"
        if total >= ruleset.policy.review_at
        else "accepted"
    )
    return Verdict(outcome, total, tuple(hits), ruleset.version)


def velocity(
    candidate: Candidate, profile: Profile, windows: Iterable[VelocityWindow]
) -> list[Hit]:
    """Too many transfers, or too much money in several, from one account within a window."""
    now, amount = candidate.activity.at_ms, candidate.activity.amount_minor
    hits = []
    for window in windows:
        inside = [a for a in profile.recent if a.at_ms > now - window.seconds * 1000]
        if len(inside) + 1 > window.count_max:
            hits.append(Hit("velocity", f"velocity_count_{window.name}", window.score))
        elif inside and sum(a.amount_minor for a in inside) + amount > window.sum_max_minor:
            # Only with earlier transfers in the window: one large amount alone is the
            # business of the limits and the outlier rule, not of velocity.
            hits.append(Hit("velocity", f"velocity_amount_{window.name}", window.score))
    return hits


def amount_outlier(candidate: Candidate, profile: Profile, rule: AmountOutlier) -> list[Hit]:
    """An amount far above what this account usually sends (the median of its past)."""
    amounts = [a.amount_minor for a in profile.recent]
    amount = candidate.activity.amount_minor
    if len(amounts) < rule.history_min or amount < rule.amount_min_minor:
        return []
    if amount > rule.multiplier * statistics.median_low(amounts):
        return [Hit("amount_outlier", "amount_far_above_usual", rule.score)]
    return []


def new_beneficiary(candidate: Candidate, profile: Profile, rule: NewBeneficiary) -> list[Hit]:
    """A large amount to an account this one has never paid before."""
    credit = candidate.activity.credit_account
    if candidate.activity.amount_minor >= rule.amount_min_minor and credit not in (
        profile.beneficiaries
    ):
        return [Hit("new_beneficiary", "new_beneficiary_large_amount", rule.score)]
    return []


def blocklist(candidate: Candidate, rule: Blocklist) -> list[Hit]:
    """A counterparty IBAN, or its country, on the bank's blocklist."""
    iban = candidate.credit_iban
    if iban is None:
        return []
    if iban in rule.ibans:
        return [Hit("blocklist", "blocklisted_iban", rule.score)]
    if iban[:2] in rule.countries:
        return [Hit("blocklist", "blocklisted_country", rule.score)]
    return []


def structuring(candidate: Candidate, profile: Profile, rule: Structuring) -> list[Hit]:
    """Several amounts within a day just under a reporting threshold (smurfing)."""
    low = rule.threshold_minor * (100 - rule.margin_percent) // 100

    def just_under(amount: int) -> bool:
        return low <= amount < rule.threshold_minor

    if not just_under(candidate.activity.amount_minor):
        return []
    since = candidate.activity.at_ms - DAY_MS
    count = 1 + sum(1 for a in profile.recent if a.at_ms > since and just_under(a.amount_minor))
    return [Hit("structuring", "structuring", rule.score)] if count >= rule.count_min else []


def dormant(candidate: Candidate, profile: Profile, rule: Dormant) -> list[Hit]:
    """A sizeable transfer from an account that had been quiet for a long time."""
    if not profile.recent or candidate.activity.amount_minor < rule.amount_min_minor:
        return []
    idle_ms = candidate.activity.at_ms - profile.recent[-1].at_ms
    if idle_ms > rule.idle_days * DAY_MS:
        return [Hit("dormant", "dormant_account_activity", rule.score)]
    return []


@dataclass(slots=True)
class AccountState:
    """What is kept per debit account: recent activity and first payments per beneficiary."""

    activity: dict[str, Activity] = field(default_factory=dict)  # by transfer id
    beneficiaries: dict[str, int] = field(default_factory=dict)  # credit account -> first ms
    _ordered: list[Activity] | None = None  # activity sorted, kept while adding

    def profile_before(self, activity: Activity) -> Profile:
        """The part of the state ordered strictly before ``activity``."""
        if self._ordered is None:
            self._ordered = sorted(self.activity.values())
        end = bisect.bisect_left(
            self._ordered, (activity.at_ms, activity.transfer_id), key=_position
        )
        known = {c: at for c, at in self.beneficiaries.items() if at < activity.at_ms}
        before = tuple(self._ordered[:end])
        if activity.transfer_id in self.activity:
            # An earlier copy of this very transfer (recorded, then retried before it was
            # decided) is not an earlier transfer: it is never counted against itself.
            before = tuple(a for a in before if a.transfer_id != activity.transfer_id)
        return Profile(before, known)

    def add(self, activity: Activity, paid: bool) -> None:
        """Count one scored transfer (and, when accepted, its beneficiary) in memory."""
        if activity.transfer_id not in self.activity:
            self.activity[activity.transfer_id] = activity
            if self._ordered is not None:
                bisect.insort(self._ordered, activity)
        first = self.beneficiaries.get(activity.credit_account)
        if paid and (first is None or activity.at_ms < first):
            self.beneficiaries[activity.credit_account] = activity.at_ms

    def prune(self, retention_ms: int, history_max: int) -> None:
        """Drop activity older than ``retention_ms`` before the newest, keeping the newest
        ``history_max`` entries in any case (the same rule as the Redis script)."""
        ordered = sorted(self.activity.values(), key=member_order)
        if len(ordered) > history_max:
            cutoff = ordered[-1].at_ms - retention_ms
            old = sum(1 for a in ordered if a.at_ms < cutoff)
            for a in ordered[: min(old, len(ordered) - history_max)]:
                del self.activity[a.transfer_id]
            self._ordered = None


def _position(activity: Activity) -> tuple[int, str]:
    return (activity.at_ms, activity.transfer_id)


def record(
    state: AccountState,
    activities: Iterable[Activity],
    paid: Iterable[Activity],
    retention_ms: int,
    history_max: int,
) -> None:
    """Add a batch's transfers (``activities``) and accepted payments (``paid``) to ``state``.

    Idempotent and order-free: the result depends only on the set of everything ever
    recorded, so a replayed or reordered batch leaves the state as it was. Activity
    older than ``retention_ms`` before the newest is dropped unless it is among the
    newest ``history_max`` entries (the same rule as the Redis script).
    """
    for a in activities:
        state.add(a, paid=False)
    for a in paid:
        state.add(a, paid=True)
    state.prune(retention_ms, history_max)


def member(activity: Activity) -> str:
    """The Redis sorted-set member of an activity (its score is ``at_ms``)."""
    return f"{activity.transfer_id}|{activity.amount_minor}|{activity.credit_account}"


def member_order(activity: Activity) -> tuple[int, str]:
    """Redis orders a sorted set by score, then by member bytes; so does the model."""
    return (activity.at_ms, member(activity))


def parse_member(text: str, at_ms: int) -> Activity:
    transfer_id, amount, credit = text.split("|", 2)
    return Activity(at_ms, transfer_id, int(amount), credit)
