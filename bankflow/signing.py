"""Signed stage messages: only the stage allowed to authorise a payment can produce one.

A message that moves money (an accepted transfer, a message on a retry topic) carries
an HMAC-SHA256 over its logical topic, key, value and bankflow headers, and the id of
the key that made it (``schemas.headers.SIGNATURE``, ``KEY_ID``). Each signer (the
validator, the review approvals) has keys of its own; ``SIGNERS`` says which signers a
topic accepts, so a key that leaked from one signer cannot forge another's messages on
a topic that signer does not write.

The key file is JSON, kept out of the repository (``bankflow stack up`` writes a
development one into ``.local/keys/signing.json``, mode 0600)::

    {"keys": {"validator-20261202T1500Z": {"signer": "validator", "secret": "<base64>"}},
     "active": {"validator": "validator-20261202T1500Z"}}

Rotation adds a key and makes it the signer's active one; the old key still verifies
until it is retired, so messages in flight stay valid. A verifier reads the file again
whenever it changed (looked at on every unknown key id, and at least every
``STAT_EVERY_S`` otherwise), so verifiers learn new keys, and stop trusting retired
ones, without a restart; signers take their new active key when restarted.

Written with the standard library's ``hmac``: the cryptography is one call; what no
library offers is the canonical form of a Kafka message, which is below.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import struct
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bankflow.errors import ConfigurationError
from bankflow.failures import HeaderList, Headers, PoisonMessage
from schemas import headers as h
from schemas.topics import TRANSFERS_ACCEPTED, TRANSFERS_REVIEW

#: Who may sign each topic (logical names). Retry topics are matched by prefix. A held
#: transfer is signed too: a reviewer's approval publishes it as the validator wrote it.
SIGNERS: Mapping[str, frozenset[str]] = {
    TRANSFERS_ACCEPTED: frozenset({"validator", "review"}),
    TRANSFERS_REVIEW: frozenset({"validator"}),
}
RETRY_TOPIC_PREFIX = "transfers.retry."
RETRY_SIGNERS = frozenset({"validator"})
#: Every signer bankflow has; ``bankflow stack up`` makes a key for each.
ALL_SIGNERS = ("validator", "review")

#: A key is 32 random bytes (the HMAC-SHA256 block's natural size).
KEY_BYTES = 32
#: How often a verifier looks whether the key file changed (a retired key stops
#: verifying within this long); an unknown key id makes it look at once.
STAT_EVERY_S = 1.0
#: Versions the canonical form, so it can change without ambiguity.
_DOMAIN = b"bankflow-stage-message-v1"


class Unauthenticated(PoisonMessage):
    """A message on a signed topic without a valid signature of an allowed signer."""


def signers_for(topic: str) -> frozenset[str] | None:
    """The signers ``topic`` (logical) accepts; None when the topic is not signed."""
    if topic.startswith(RETRY_TOPIC_PREFIX):
        return RETRY_SIGNERS
    return SIGNERS.get(topic)


def canonical(
    topic: str, key: bytes | None, value: bytes | None, headers: Iterable[tuple[str, object]]
) -> bytes:
    """The bytes a signature covers: each part length-prefixed, so no two messages share
    them. Headers: the bankflow ones (``bankflow-*``), the last value of a repeated name
    winning (as ``header_map`` reads them), sorted by name; the signature's own headers
    are left out. Absent (None) and empty are told apart."""
    chosen: dict[str, bytes | None] = {}
    for name, raw in headers:
        if name.startswith("bankflow-") and name not in (h.SIGNATURE, h.KEY_ID):
            chosen[name] = _as_bytes(raw)
    parts: list[bytes | None] = [_DOMAIN, topic.encode(), key, value]
    for name in sorted(chosen):
        parts += [name.encode(), chosen[name]]
    out = bytearray()
    for part in parts:
        out += b"\xff\xff\xff\xff" if part is None else struct.pack(">I", len(part)) + part
    return bytes(out)


@dataclass(frozen=True, slots=True)
class SigningKey:
    key_id: str
    signer: str
    secret: bytes

    def mac(self, data: bytes) -> str:
        digest = hmac.new(self.secret, data, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")


class Keyring:
    """The keys one process may sign and verify with, read from the key file."""

    def __init__(
        self,
        keys: Mapping[str, SigningKey],
        active: Mapping[str, str],
        path: Path | None = None,
    ) -> None:
        self.keys = dict(keys)
        self.active = dict(active)
        self.path = path
        self._next_stat = time.monotonic() + STAT_EVERY_S
        self._stamp = _stamp(path) if path is not None else None
        self._lock = threading.Lock()

    # -- files ------------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path) -> Keyring:
        keys, active = _read(path)
        return cls(keys, active, path)

    def refresh(self, *, now: bool = False) -> bool:
        """Read the file again if it changed since it was read (looked at once every
        ``STAT_EVERY_S``, or ``now``); whether the keys changed."""
        if self.path is None:
            return False
        with self._lock:
            moment = time.monotonic()
            if not now and moment < self._next_stat:
                return False
            self._next_stat = moment + STAT_EVERY_S
            stamp = _stamp(self.path)
            if stamp == self._stamp:
                return False
            try:
                self.keys, self.active = _read(self.path)
            except ConfigurationError:
                return False  # keep the keys we have; the file is being rewritten
            self._stamp = stamp
            return True

    # -- signing ----------------------------------------------------------------------

    def signing_key(self, signer: str) -> SigningKey:
        key_id = self.active.get(signer)
        key = self.keys.get(key_id or "")
        if key is None or key.signer != signer:
            where = self.path or "the key file"
            raise ConfigurationError(
                f"no active signing key for {signer!r} in {where}: run `bankflow stack up` "
                f"(development) or `bankflow keys rotate-signing {signer}`"
            )
        return key

    def sign(
        self,
        signer: str,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers | None,
    ) -> HeaderList:
        """``headers`` with this signer's signature of the message (any signature the
        headers already carried is replaced)."""
        signing = self.signing_key(signer)
        kept: HeaderList = [
            (name, _as_bytes(raw))
            for name, raw in _pairs(headers)
            if name not in (h.SIGNATURE, h.KEY_ID)
        ]
        mac = signing.mac(canonical(topic, key, value, kept))
        return [*kept, (h.KEY_ID, signing.key_id.encode()), (h.SIGNATURE, mac.encode())]

    # -- verifying --------------------------------------------------------------------

    def problem(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers | None,
    ) -> str | None:
        """Why the message on ``topic`` (logical) is not authentic; None when it is (or
        when the topic is not a signed one)."""
        allowed = signers_for(topic)
        if allowed is None:
            return None
        self.refresh()
        pairs = _pairs(headers)
        found: dict[str, bytes | None] = {}
        for name, raw in pairs:
            if name in (h.SIGNATURE, h.KEY_ID):
                found[name] = _as_bytes(raw)
        key_id = (found.get(h.KEY_ID) or b"").decode(errors="replace")
        signature = found.get(h.SIGNATURE) or b""
        if not key_id or not signature:
            return f"unauthenticated: no signature on {topic}"
        signing = self.keys.get(key_id)
        if signing is None and self.refresh(now=True):
            signing = self.keys.get(key_id)
        if signing is None:
            return f"unauthenticated: unknown key id {key_id[:64]!r}"
        if signing.signer not in allowed:
            return (
                f"unauthenticated: {signing.signer!r} may not sign {topic} "
                f"(allowed: {', '.join(sorted(allowed))})"
            )
        expected = signing.mac(canonical(topic, key, value, pairs))
        if not hmac.compare_digest(expected.encode(), signature):
            return f"unauthenticated: the signature does not match (key {key_id})"
        return None


# -- the key file -------------------------------------------------------------------------


def new_key_id(signer: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return f"{signer}-{stamp}-{secrets.token_hex(3)}"


def write_new_key(path: Path, signer: str) -> str:
    """Add a fresh key for ``signer`` to the key file (made if missing) and make it the
    signer's active key; the older keys stay, to verify what is in flight."""
    if signer not in ALL_SIGNERS:
        raise ConfigurationError(f"unknown signer {signer!r}; signers: {', '.join(ALL_SIGNERS)}")
    document = _document(path) if path.exists() else {"keys": {}, "active": {}}
    key_id = new_key_id(signer)
    secret = base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()
    document["keys"][key_id] = {
        "signer": signer,
        "secret": secret,
        "created_at": datetime.now(UTC).isoformat(),
    }
    document["active"][signer] = key_id
    _write(path, document)
    return key_id


def retire_key(path: Path, key_id: str) -> None:
    """Remove a key that is no longer active; messages it signed stop verifying."""
    document = _document(path)
    if key_id not in document["keys"]:
        raise ConfigurationError(f"no key {key_id!r} in {path}")
    if key_id in document["active"].values():
        raise ConfigurationError(f"{key_id} is active: rotate its signer first")
    del document["keys"][key_id]
    _write(path, document)


def ensure_keys(path: Path) -> list[str]:
    """Give every signer without an active key one (``bankflow stack up``)."""
    made = []
    for signer in ALL_SIGNERS:
        active = _document(path)["active"] if path.exists() else {}
        if signer not in active:
            made.append(write_new_key(path, signer))
    return made


def _document(path: Path) -> dict[str, dict[str, object]]:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"signing keys: cannot read {path}: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("keys"), dict):
        raise ConfigurationError(f'signing keys: {path} has no "keys" object')
    document.setdefault("active", {})
    return document


def _read(path: Path) -> tuple[dict[str, SigningKey], dict[str, str]]:
    document = _document(path)
    keys: dict[str, SigningKey] = {}
    for key_id, entry in document["keys"].items():
        try:
            signer = str(entry["signer"])  # type: ignore[index]
            secret = base64.b64decode(str(entry["secret"]), validate=True)  # type: ignore[index]
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigurationError(f"signing keys: key {key_id!r} in {path}: {exc}") from exc
        if len(secret) < KEY_BYTES:
            raise ConfigurationError(
                f"signing keys: key {key_id!r} in {path} is shorter than {KEY_BYTES} bytes"
            )
        keys[key_id] = SigningKey(key_id, signer, secret)
    active = {str(k): str(v) for k, v in dict(document["active"]).items()}
    return keys, active


def _write(path: Path, document: Mapping[str, object]) -> None:
    """Write the key file readable by its owner only, replacing it atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_suffix(".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as stream:
        json.dump(document, stream, indent=2, sort_keys=True)
    temporary.replace(path)


def _stamp(path: Path) -> tuple[int, int] | None:
    """What tells a rewritten key file from the one read: its change time and size."""
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_mtime_ns, status.st_size


def _pairs(headers: Headers | None) -> list[tuple[str, object]]:
    if headers is None:
        return []
    return list(headers.items()) if isinstance(headers, Mapping) else list(headers)


def _as_bytes(raw: object) -> bytes | None:
    if raw is None or isinstance(raw, bytes):
        return raw
    return str(raw).encode()
