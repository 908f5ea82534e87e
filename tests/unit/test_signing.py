"""Signed stage messages: what a signature covers, who may sign what, rotation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bankflow.errors import ConfigurationError
from bankflow.signing import (
    Keyring,
    canonical,
    ensure_keys,
    retire_key,
    signers_for,
    write_new_key,
)
from schemas import headers as h

ACCEPTED = "transfers.accepted"


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    path = tmp_path / "keys" / "signing.json"
    ensure_keys(path)
    return path


def test_the_key_file_is_private_and_holds_a_key_per_signer(keys: Path) -> None:
    assert keys.stat().st_mode & 0o077 == 0
    document = json.loads(keys.read_text())
    assert set(document["active"]) == {"validator", "review"}
    assert ensure_keys(keys) == []  # a second run keeps the keys it found


def test_a_signed_message_verifies_and_any_change_to_it_does_not(keys: Path) -> None:
    ring = Keyring.load(keys)
    headers = [(h.CORRELATION_ID, b"c-1"), ("traceparent", b"00-aa")]
    signed = ring.sign("validator", ACCEPTED, b"k", b"v", headers)
    assert ring.problem(ACCEPTED, b"k", b"v", signed) is None
    assert ring.problem(ACCEPTED, b"k", b"v", dict(signed)) is None  # headers as a dict
    changed = {
        "value": (ACCEPTED, b"k", b"w", signed),
        "key": (ACCEPTED, b"x", b"v", signed),
        "topic": ("transfers.retry.5s", b"k", b"v", signed),
        "a bankflow header": (
            ACCEPTED, b"k", b"v", [(n, b"c-2" if n == h.CORRELATION_ID else v) for n, v in signed]
        ),
        "an added bankflow header": (ACCEPTED, b"k", b"v", [*signed, (h.ATTEMPT, b"9")]),
        "no key": (ACCEPTED, None, b"v", signed),
    }  # fmt: skip
    for what, message in changed.items():
        assert ring.problem(*message) is not None, what
    # Headers outside bankflow's (tracing, which infrastructure may rewrite) are not covered.
    traced = [(n, b"00-bb" if n == "traceparent" else v) for n, v in signed]
    assert ring.problem(ACCEPTED, b"k", b"v", traced) is None


def test_absent_and_empty_are_different_messages() -> None:
    assert canonical(ACCEPTED, None, b"v", []) != canonical(ACCEPTED, b"", b"v", [])
    assert canonical(ACCEPTED, b"ab", b"c", []) != canonical(ACCEPTED, b"a", b"bc", [])


def test_a_signer_may_sign_only_its_topics(keys: Path) -> None:
    ring = Keyring.load(keys)
    retry = "transfers.retry.1m"
    by_review = ring.sign("review", retry, b"k", b"v", None)
    assert "'review' may not sign" in (ring.problem(retry, b"k", b"v", by_review) or "")
    assert ring.problem(retry, b"k", b"v", ring.sign("validator", retry, b"k", b"v", None)) is None
    assert ring.problem(ACCEPTED, b"k", b"v", ring.sign("review", ACCEPTED, b"k", b"v", [])) is None
    assert signers_for("transfers.requested") is None
    assert ring.problem("transfers.requested", b"k", b"v", []) is None  # not a signed topic


def test_a_signature_already_on_the_message_is_replaced_not_kept(keys: Path) -> None:
    ring = Keyring.load(keys)
    forged = [(h.KEY_ID, b"someone"), (h.SIGNATURE, b"AAAA")]
    signed = ring.sign("validator", ACCEPTED, b"k", b"v", forged)
    assert [n for n, _ in signed].count(h.SIGNATURE) == 1
    assert ring.problem(ACCEPTED, b"k", b"v", signed) is None


def test_rotation_keeps_old_signatures_valid_until_the_old_key_is_retired(keys: Path) -> None:
    ring = Keyring.load(keys)
    old_id = ring.active["validator"]
    old = ring.sign("validator", ACCEPTED, b"k", b"v", None)
    new_id = write_new_key(keys, "validator")
    rotated = Keyring.load(keys)
    assert rotated.active["validator"] == new_id != old_id
    new = rotated.sign("validator", ACCEPTED, b"k", b"v", None)
    assert dict(new)[h.KEY_ID] == new_id.encode()
    assert rotated.problem(ACCEPTED, b"k", b"v", old) is None
    # A verifier that loaded the file before the rotation learns the new key on sight.
    assert ring.problem(ACCEPTED, b"k", b"v", new) is None
    with pytest.raises(ConfigurationError, match="is active"):
        retire_key(keys, new_id)
    retire_key(keys, old_id)
    assert "unknown key id" in (Keyring.load(keys).problem(ACCEPTED, b"k", b"v", old) or "")
    # A running verifier stops trusting the retired key too, without a restart: it looks
    # at the file every STAT_EVERY_S and reads it again when it changed.
    assert rotated.refresh(now=True) is True
    assert "unknown key id" in (rotated.problem(ACCEPTED, b"k", b"v", old) or "")
    assert rotated.refresh(now=True) is False  # unchanged since: not read again


def test_a_signer_without_a_key_is_a_clear_configuration_error(tmp_path: Path) -> None:
    path = tmp_path / "signing.json"
    write_new_key(path, "review")
    with pytest.raises(ConfigurationError, match="no active signing key for 'validator'"):
        Keyring.load(path).signing_key("validator")
    path.write_text('{"keys": {"k": {"signer": "validator", "secret": "c2hvcnQ="}}}')
    with pytest.raises(ConfigurationError, match="shorter than 32 bytes"):
        Keyring.load(path)
    with pytest.raises(ConfigurationError, match="unknown signer"):
        write_new_key(path, "mallory")
