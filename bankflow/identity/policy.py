"""Sign-in rules as plain functions: which passwords are refused, and failed-login lockout.

No I/O beyond reading the package's list of common passwords once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from importlib import resources

from schemas.auth import PASSWORD_LENGTH_MAX, PASSWORD_LENGTH_MIN, normalize_email

#: A password of fewer distinct characters than this ("aaaaaaaaaaaa", "abababababab")
#: is a pattern, not a secret.
DISTINCT_CHARACTERS_MIN = 5
#: Email local parts shorter than this ("al") occur inside too many good passwords.
EMAIL_PART_LENGTH_MIN = 4


@lru_cache(maxsize=1)
def common_passwords() -> frozenset[str]:
    """The package's list of commonly used passwords, lower-cased."""
    text = resources.files("bankflow.identity").joinpath("common_passwords.txt").read_text("utf-8")
    return frozenset(
        line.strip().lower() for line in text.splitlines() if line.strip() and line[0] != "#"
    )


def password_problem(password: str, email: str | None = None) -> str | None:
    """Why ``password`` is refused, as a reason for the person choosing it; None if it is fine."""
    if len(password) < PASSWORD_LENGTH_MIN:
        return f"must be at least {PASSWORD_LENGTH_MIN} characters long"
    if len(password) > PASSWORD_LENGTH_MAX:
        return f"must be at most {PASSWORD_LENGTH_MAX} characters long"
    lowered = password.lower()
    if lowered in common_passwords() or lowered.strip() in common_passwords():
        return "is one of the most commonly used passwords; choose another"
    if len(set(lowered)) < DISTINCT_CHARACTERS_MIN:
        return f"must use at least {DISTINCT_CHARACTERS_MIN} different characters"
    if email:
        local = normalize_email(email).partition("@")[0]
        if len(local) >= EMAIL_PART_LENGTH_MIN and local in lowered:
            return "must not contain your email address"
    return None


@dataclass(frozen=True)
class LockoutPolicy:
    """How failed logins slow an account down and then lock it (PCI DSS 8.3.4)."""

    attempts_max: int
    lockout_s: int
    slowdown_after: int
    delay_base_ms: int
    delay_max_ms: int


@dataclass(frozen=True)
class Attempt:
    """The decision taken before a password is checked.

    ``failures`` and ``locked_until`` are stored before the check, as if the attempt
    failed; a correct password then resets them. Counting first means concurrent
    guesses cannot slip past the limit between a check and its count.
    """

    allowed: bool
    failures: int
    locked_until: datetime | None
    delay_s: float


def login_delay_s(policy: LockoutPolicy, failures_before: int) -> float:
    """How long an attempt waits: nothing at first, then doubling per failure, bounded."""
    excess = failures_before - policy.slowdown_after
    if excess < 0:
        return 0.0
    # The exponent is capped so the intermediate number stays small; the bound is max.
    delay_ms: int = min(policy.delay_base_ms * 2 ** min(excess, 20), policy.delay_max_ms)
    return delay_ms / 1000


def begin_attempt(
    policy: LockoutPolicy, failures: int, locked_until: datetime | None, now: datetime
) -> Attempt:
    """Decide a sign-in attempt on an account with ``failures`` failed logins so far."""
    if locked_until is not None and locked_until > now:
        return Attempt(allowed=False, failures=failures, locked_until=locked_until, delay_s=0.0)
    if locked_until is not None:
        failures = 0  # the lock ran out: the count starts afresh
    counted = failures + 1
    lock = now + timedelta(seconds=policy.lockout_s) if counted >= policy.attempts_max else None
    return Attempt(
        allowed=True, failures=counted, locked_until=lock, delay_s=login_delay_s(policy, failures)
    )
