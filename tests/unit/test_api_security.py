"""Tokens (RFC 8725 checks), password rules, hashing and lockout decisions: no I/O."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from argon2 import PasswordHasher, Type
from pydantic import ValidationError

from api import tokens
from api.errors import InvalidToken
from bankflow.identity.passwords import password_hasher, verify_password
from bankflow.identity.policy import (
    LockoutPolicy,
    begin_attempt,
    common_passwords,
    login_delay_s,
    password_problem,
)
from bankflow.settings import Settings

SECRET = b"unit-test-secret-of-at-least-32-bytes!!"
CONFIG = tokens.TokenConfig(
    secret=SECRET, issuer="bankflow", audience="bankflow-api", access_ttl_s=900, refresh_ttl_s=3600
)
NOW = 1_900_000_000  # a fixed "now" far in the future, so nothing here expires by itself
USER = uuid.UUID("11111111-1111-4111-8111-111111111111")
FAMILY = uuid.UUID("22222222-2222-4222-8222-222222222222")
CUSTOMER = uuid.UUID("33333333-3333-4333-8333-333333333333")
#: The kind of key an attacker would use for key confusion: an RSA public key, as PEM.
PUBLIC_KEY_PEM = (
    "-----BEGIN PUBLIC KEY-----\n"
    "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAu1SU1LfVLPHCozMxH2Mo\n"
    "-----END PUBLIC KEY-----\n"
)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade(header: dict[str, Any], payload: dict[str, Any], key: bytes | None = None) -> str:
    """A JWT put together by hand, signed with HMAC-SHA256 over ``key`` (or unsigned)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    if key is None:
        return signing_input + "."
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def access_payload(**changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "iss": "bankflow",
        "aud": "bankflow-api",
        "sub": str(USER),
        "iat": NOW - 10,
        "exp": NOW + 600,
        "jti": str(uuid.uuid4()),
        "typ": "access",
        "fid": str(FAMILY),
        "role": "customer",
        "cid": str(CUSTOMER),
    }
    payload.update(changes)
    return {k: v for k, v in payload.items() if v is not None}


@pytest.fixture(autouse=True)
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """pyjwt reads the clock for exp and iat: pin it to NOW."""
    monkeypatch.setattr(jwt.api_jwt, "datetime", _FrozenDatetime)


class _FrozenDatetime(datetime):
    @classmethod
    def now(cls, tz: Any = None) -> _FrozenDatetime:
        return cls.fromtimestamp(NOW, tz or UTC)


# ------------------------------------------------------------------ tokens


def test_an_access_token_round_trips_with_its_claims() -> None:
    token, issued = tokens.issue(
        CONFIG, "access", user_id=USER, family_id=FAMILY, now=NOW, role="teller"
    )
    claims = tokens.decode(CONFIG, token, "access")
    assert claims == issued
    assert (claims.user_id, claims.role, claims.family_id) == (USER, "teller", FAMILY)
    assert claims.expires_at == NOW + 900
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "at+jwt"}


def test_a_refresh_token_round_trips_and_carries_no_role() -> None:
    token, issued = tokens.issue(CONFIG, "refresh", user_id=USER, family_id=FAMILY, now=NOW)
    claims = tokens.decode(CONFIG, token, "refresh")
    assert claims == issued
    assert claims.role is None and claims.expires_at == NOW + 3600


def test_a_refresh_token_is_not_an_access_token_nor_the_other_way_round() -> None:
    refresh, _ = tokens.issue(CONFIG, "refresh", user_id=USER, family_id=FAMILY, now=NOW)
    access, _ = tokens.issue(
        CONFIG, "access", user_id=USER, family_id=FAMILY, now=NOW, role="admin"
    )
    with pytest.raises(InvalidToken, match="not an access token"):
        tokens.decode(CONFIG, refresh, "access")
    with pytest.raises(InvalidToken, match="not a refresh token"):
        tokens.decode(CONFIG, access, "refresh")


def test_the_typ_claim_must_agree_with_the_typ_header() -> None:
    forged = handmade({"alg": "HS256", "typ": "at+jwt"}, access_payload(typ="refresh"), SECRET)
    with pytest.raises(InvalidToken, match="not an access token"):
        tokens.decode(CONFIG, forged, "access")
    untyped = handmade({"alg": "HS256", "typ": "JWT"}, access_payload(), SECRET)
    with pytest.raises(InvalidToken, match="not an access token"):
        tokens.decode(CONFIG, untyped, "access")


def test_a_handmade_token_with_our_secret_is_accepted() -> None:
    """The control for the forgeries below: the hand-made tokens are right but for their flaw."""
    token = handmade({"alg": "HS256", "typ": "at+jwt"}, access_payload(), SECRET)
    assert tokens.decode(CONFIG, token, "access").customer_id == CUSTOMER


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_an_unsigned_token_is_refused(alg: str) -> None:
    unsigned = handmade({"alg": alg, "typ": "at+jwt"}, access_payload())
    with pytest.raises(InvalidToken):
        tokens.decode(CONFIG, unsigned, "access")


def test_an_unsigned_token_made_by_pyjwt_is_refused() -> None:
    unsigned = jwt.encode(access_payload(), None, algorithm="none", headers={"typ": "at+jwt"})
    with pytest.raises(InvalidToken, match="only HS256"):
        tokens.decode(CONFIG, unsigned, "access")


@pytest.mark.parametrize("alg", ["HS384", "HS512", "RS256", "ES256", "PS256", "EdDSA"])
def test_only_hs256_is_on_the_allow_list(alg: str) -> None:
    # Signed correctly with our own secret, but naming another algorithm.
    token = handmade({"alg": alg, "typ": "at+jwt"}, access_payload(), SECRET)
    with pytest.raises(InvalidToken, match="only HS256"):
        tokens.decode(CONFIG, token, "access")


def test_key_confusion_a_token_hmac_signed_with_a_public_key_is_refused() -> None:
    # The classic attack on RS256 verifiers: HMAC-sign with the (public) verification key.
    forged = handmade({"alg": "HS256", "typ": "at+jwt"}, access_payload(), PUBLIC_KEY_PEM.encode())
    with pytest.raises(InvalidToken, match="Signature verification failed"):
        tokens.decode(CONFIG, forged, "access")


def test_a_token_signed_with_another_secret_is_refused() -> None:
    other = tokens.TokenConfig(**{**CONFIG.__dict__, "secret": b"x" * 40})
    token, _ = tokens.issue(other, "access", user_id=USER, family_id=FAMILY, now=NOW, role="admin")
    with pytest.raises(InvalidToken, match="Signature verification failed"):
        tokens.decode(CONFIG, token, "access")


def test_a_tampered_payload_is_refused() -> None:
    token, _ = tokens.issue(
        CONFIG, "access", user_id=USER, family_id=FAMILY, now=NOW, role="customer"
    )
    header, _, signature = token.split(".")
    promoted = b64(json.dumps(access_payload(role="admin")).encode())
    with pytest.raises(InvalidToken):
        tokens.decode(CONFIG, f"{header}.{promoted}.{signature}", "access")


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"iss": "someone-else"}, "issuer"),
        ({"aud": "another-api"}, "Audience doesn't match"),
        # A list naming us and others is refused too (strict audience).
        ({"aud": ["bankflow-api", "another-api"]}, "Invalid claim format"),
        ({"exp": NOW - 60}, "expired"),
        ({"iat": NOW + 600}, "not yet valid"),
        ({"sub": "not-a-uuid"}, "malformed"),
        ({"fid": 7}, "malformed"),
        ({"role": "superuser"}, "role must be one of"),
        ({"role": None}, "role must be one of"),
    ],
)
def test_claims_are_checked(changes: dict[str, Any], reason: str) -> None:
    token = handmade({"alg": "HS256", "typ": "at+jwt"}, access_payload(**changes), SECRET)
    with pytest.raises(InvalidToken, match=reason):
        tokens.decode(CONFIG, token, "access")


@pytest.mark.parametrize("claim", tokens.REQUIRED_CLAIMS)
def test_every_required_claim_must_be_present(claim: str) -> None:
    payload = access_payload()
    del payload[claim]
    token = handmade({"alg": "HS256", "typ": "at+jwt"}, payload, SECRET)
    with pytest.raises(InvalidToken):
        tokens.decode(CONFIG, token, "access")


def test_a_huge_token_is_refused_unparsed() -> None:
    with pytest.raises(InvalidToken, match="too long"):
        tokens.decode(CONFIG, "a" * (tokens.TOKEN_LENGTH_MAX + 1), "access")


# ---------------------------------------------------------------- passwords


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("short-pw-1", "at least 12 characters"),
        ("Password1234", "most commonly used"),
        ("QWERTYUIOP123", "most commonly used"),
        ("correct horse battery staple", "most commonly used"),
        ("abababababab", "different characters"),
        ("xx-ada.lovelace-xx", "email"),
        ("x" * 257, "at most 256"),
    ],
)
def test_weak_passwords_are_refused_with_a_reason(password: str, reason: str) -> None:
    problem = password_problem(password, "Ada.Lovelace@example.com")
    assert problem is not None and reason in problem


def test_a_good_password_passes() -> None:
    assert password_problem("plum-orbit-lantern-42", "ada@example.com") is None


def test_the_common_password_list_is_loaded_lower_cased() -> None:
    listed = common_passwords()
    assert "password1234" in listed and "123456789012" in listed
    assert all(p == p.lower() and not p.startswith("#") for p in listed)


def test_hashes_verify_only_the_right_password() -> None:
    hasher = password_hasher("test")
    stored = hasher.hash("plum-orbit-lantern-42")
    assert stored.startswith("$argon2id$")
    assert verify_password(hasher, stored, "plum-orbit-lantern-42")
    assert not verify_password(hasher, stored, "plum-orbit-lantern-43")
    assert not verify_password(hasher, "not a hash", "plum-orbit-lantern-42")


def test_production_uses_argon2id_with_the_library_defaults() -> None:
    hasher, library = password_hasher("default"), PasswordHasher()
    assert hasher.type is Type.ID
    assert (hasher.time_cost, hasher.memory_cost, hasher.parallelism) == (
        library.time_cost,
        library.memory_cost,
        library.parallelism,
    )
    # A hash made with the cheap test profile is upgraded on the next sign-in.
    assert hasher.check_needs_rehash(password_hasher("test").hash("plum-orbit-lantern-42"))


# ------------------------------------------------------------------ lockout

POLICY = LockoutPolicy(
    attempts_max=10, lockout_s=1800, slowdown_after=3, delay_base_ms=500, delay_max_ms=8000
)
T0 = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)


def test_attempts_slow_down_after_three_failures_and_the_delay_is_bounded() -> None:
    delays = [login_delay_s(POLICY, failures) for failures in range(12)]
    assert delays == [0, 0, 0, 0.5, 1, 2, 4, 8, 8, 8, 8, 8]
    assert login_delay_s(POLICY, 10_000) == 8


def test_the_tenth_failure_locks_for_thirty_minutes() -> None:
    failures, locked_until = 0, None
    for _ in range(9):
        attempt = begin_attempt(POLICY, failures, locked_until, T0)
        assert attempt.allowed and attempt.locked_until is None
        failures, locked_until = attempt.failures, attempt.locked_until
    tenth = begin_attempt(POLICY, failures, locked_until, T0)
    assert tenth.allowed and tenth.failures == 10
    assert tenth.locked_until == T0 + timedelta(minutes=30)
    eleventh = begin_attempt(POLICY, tenth.failures, tenth.locked_until, T0 + timedelta(minutes=29))
    assert not eleventh.allowed and eleventh.failures == 10


def test_when_the_lock_runs_out_counting_starts_afresh() -> None:
    attempt = begin_attempt(POLICY, 10, T0, T0 + timedelta(seconds=1))
    assert attempt.allowed and attempt.failures == 1 and attempt.delay_s == 0


# ----------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "changes",
    [
        {"login_lockout_attempts": 11},
        {"login_lockout_s": 1799},
        {"access_token_ttl_s": 7200},
        {"env": "prod", "jwt_secret": "p" * 40, "password_hash_profile": "test"},
    ],
)
def test_settings_refuse_weaker_authentication(changes: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Settings(_env_file=None, **changes)  # type: ignore[call-arg]


def test_settings_defaults_follow_pci_dss() -> None:
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (s.login_lockout_attempts, s.login_lockout_s) == (10, 1800)
    assert s.access_token_ttl_s == 900 and s.password_hash_profile == "default"
