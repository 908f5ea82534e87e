"""Structured logs: redaction rules, the JSON and text formatters, context, trace context.

The formatter and filter tested are the ones ``configure`` installs, writing to a
buffer, so what is checked is what a service would print.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from bankflow import logs
from bankflow.logs import luhn_valid, redact_text, redact_value
from bankflow.settings import Settings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6ImF0K2p3dCJ9."
    "eyJzdWIiOiIxMjM0NTY3ODkwIiwiZXhwIjoxNzMyNTQwMDAwfQ."
    "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)


class Captured:
    def __init__(self, buffer: io.StringIO) -> None:
        self.buffer = buffer

    @property
    def text(self) -> str:
        return self.buffer.getvalue()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text.splitlines()]


@pytest.fixture
def captured() -> Iterator[Captured]:
    """The real handler (JSON formatter and redaction) writing to a buffer."""
    buffer = io.StringIO()
    root = logging.getLogger()
    level = root.level
    handler = logs.configure(fmt="json", level="DEBUG", stream=buffer)
    try:
        yield Captured(buffer)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        logs.set_service("bankflow")


# ------------------------------------------------------------------ redaction


@pytest.mark.parametrize(
    "number",
    ["4111111111111111", "5555555555554444", "378282246310005", "6011111111111117",
     "4000056655665556", "3530111333300000", "4222222222222"],
)  # fmt: skip
def test_luhn_accepts_real_test_card_numbers(number: str) -> None:
    assert luhn_valid(number)
    assert not luhn_valid(number[:-1] + str((int(number[-1]) + 1) % 10))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("paid with 4111111111111111 today", "paid with ****1111 today"),
        ("card 4111 1111 1111 1111, exp 12/29", "card ****1111, exp 12/29"),
        ("card 4111-1111-1111-1111.", "card ****1111."),
        ("amex 3782 822463 10005", "amex ****0005"),
        ("19 digits 4000000000000000006", "19 digits ****0006"),
        ("card 4111 1111 1111 1111 12 29 ok", "card ****1111 12 29 ok"),
        ("two 4111111111111111 5555-5555-5555-4444.", "two ****1111 ****4444."),
        ('{"pan": 4111111111111111}', '{"pan": ****1111}'),
        # Not cards: fails Luhn, too short, part of a longer run, a millisecond timestamp,
        # short groups, digits inside a UUID or a hexadecimal id.
        ("ref 4111111111111112", "ref 4111111111111112"),
        ("offset 411111111111", "offset 411111111111"),
        ("ts 1732540000000", "ts 1732540000000"),
        ("long 41111111111111110000000", "long 41111111111111110000000"),
        ("1 2 3 4 5 6 7 8 9 10 11 12 13 14 15", "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15"),
        ("uuid 12345678-4111-1111-1111-111111111111", "uuid 12345678-4111-1111-1111-111111111111"),
        ("id 4111111111111111ba830dbbf5bf87f2", "id 4111111111111111ba830dbbf5bf87f2"),
    ],
)
def test_card_numbers_keep_only_their_last_four_digits(text: str, expected: str) -> None:
    assert redact_text(text) == expected


def test_tokens_are_masked_wherever_they_appear() -> None:
    assert redact_text(f"token from client: {JWT} end") == "token from client: [JWT] end"
    assert JWT not in redact_text(f"Authorization: Bearer {JWT}")
    assert redact_text("Bearer abcdefghijklmnop then") == "Bearer [REDACTED] then"
    assert redact_text("Basic dXNlcjpwYXNzd29yZA==") == "Basic [REDACTED]"
    assert redact_text("curl -H 'authorization: Token s3cr3t'") == (
        "curl -H 'authorization: [REDACTED]'"
    )
    assert redact_text("postgresql://bankflow:s3cret@db:5432/x") == (
        "postgresql://bankflow:[REDACTED]@db:5432/x"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("password=hunter2 user=7", "password=[REDACTED] user=7"),
        ("password=correct horse battery", "password=[REDACTED]"),
        ("refresh_token=abc&grant_type=refresh", "refresh_token=[REDACTED]&grant_type=refresh"),
        ("access_token: abc, next", "access_token: [REDACTED], next"),
        ("X-Api-Key: zzz", "X-Api-Key: [REDACTED]"),
        ("username=ada%40example.com&password=x", "username=[REDACTED]&password=[REDACTED]"),
        # Look-alikes that are not the key.
        ("refresh_token_ttl_s=900", "refresh_token_ttl_s=900"),
        ("no token (Bearer ...)", "no token (Bearer ...)"),
    ],
)
def test_values_of_sensitive_keys_in_text(text: str, expected: str) -> None:
    assert redact_text(text) == expected


def test_values_of_sensitive_keys_in_json_and_python_literals() -> None:
    body = json.dumps(
        {"email": "ada@example.com", "password": 'p"w d', "full_name": "Ada Lovelace", "n": 1}
    )
    assert json.loads(redact_text(body)) == {
        "email": "[REDACTED]", "password": "[REDACTED]", "full_name": "[REDACTED]", "n": 1,
    }  # fmt: skip
    assert redact_text(str({"refresh_token": JWT, "a": "b"})) == (
        "{'refresh_token': '[REDACTED]', 'a': 'b'}"
    )


def test_emails_in_free_text() -> None:
    assert redact_text("sign-in failed for Ada.L+x@mail.example.co.uk, locked") == (
        "sign-in failed for [EMAIL], locked"
    )


def test_extra_fields_are_redacted_by_key_and_by_content() -> None:
    assert redact_value("x", "password") == "[REDACTED]"
    assert redact_value("Ada", "Full-Name") == "[REDACTED]"
    assert redact_value(4111111111111111, "amount") == "****1111"
    assert redact_value(1234, "amount") == 1234
    assert redact_value({"user": {"email": "a@b.example", "id": 3}, "note": f"t {JWT}"}) == {
        "user": {"email": "[REDACTED]", "id": 3},
        "note": "t [JWT]",
    }
    assert redact_value(["4111 1111 1111 1111", True, None, 1.5]) == ["****1111", True, None, 1.5]


# ------------------------------------------------------------ the formatter


def test_json_lines_carry_the_fields_the_context_and_the_extras(captured: Captured) -> None:
    logs.set_service("validator")
    log = logging.getLogger("bankflow.test")
    with logs.bound(correlation_id="c-1", transfer_id="t-1"):
        log.info("rejected %s", "unknown_account", extra={"reasons": ["unknown_account"]})
        logs.annotate(user_id="u-1")
        log.warning("again")
    log.info("outside")
    first, second, third = captured.events()
    assert set(first) >= {"time", "level", "logger", "message", "service"}
    assert first["time"].endswith("Z") and first["time"][10] == "T"
    assert first["level"] == "INFO" and first["logger"] == "bankflow.test"
    assert first["message"] == "rejected unknown_account"
    assert first["service"] == "validator"
    assert (first["correlation_id"], first["transfer_id"]) == ("c-1", "t-1")
    assert first["reasons"] == ["unknown_account"]
    assert "user_id" not in first and second["user_id"] == "u-1"
    assert "correlation_id" not in third
    assert len(captured.text.splitlines()) == 3  # one event per line


def test_arguments_extras_context_and_tracebacks_are_redacted(captured: Captured) -> None:
    log = logging.getLogger("bankflow.test")
    with logs.bound(correlation_id="password=hunter2"):
        log.info("login %s with %s", "ada@example.com", {"password": "hunter2"})
        log.info("card", extra={"card": "4111 1111 1111 1111", "email": "ada@example.com"})
        try:
            raise ValueError(f"bad token {JWT}")
        except ValueError:
            log.exception("failed")
    text = captured.text
    for secret in ("hunter2", "ada@example.com", "4111 1111 1111 1111", JWT):
        assert secret not in text
    login, card, failed = captured.events()
    assert login["message"] == "login [EMAIL] with {'password': '[REDACTED]'}"
    assert login["correlation_id"] == "password=[REDACTED]"
    assert (card["card"], card["email"]) == ("****1111", "[REDACTED]")
    assert "ValueError: bad token [JWT]" in failed["exception"]


def test_text_format_keeps_fields_on_the_first_line() -> None:
    buffer = io.StringIO()
    root = logging.getLogger()
    handler = logs.configure(fmt="text", level="INFO", stream=buffer)
    try:
        with logs.bound(transfer_id="t-9"):
            logging.getLogger("bankflow.test").info("held for %s", "review", extra={"score": 70})
    finally:
        root.removeHandler(handler)
    line = buffer.getvalue().strip()
    assert line.endswith("held for review transfer_id=t-9 score=70")
    assert " [bankflow] bankflow.test INFO held " in line


def test_configure_twice_keeps_one_handler_and_redacts_every_handler(captured: Captured) -> None:
    other = logging.StreamHandler(io.StringIO())
    root = logging.getLogger()
    root.addHandler(other)
    try:
        handler = logs.configure(fmt="json", level="DEBUG", stream=captured.buffer)
        ours = [h for h in root.handlers if h.get_name() == "bankflow"]
        assert ours == [handler]
        assert any(isinstance(f, logs.Redact) for f in other.filters)
    finally:
        root.removeHandler(other)


def test_settings_choose_text_in_dev_and_json_elsewhere() -> None:
    secret = "x" * 40
    assert Settings(_env_file=None).log_format_chosen == "text"  # type: ignore[call-arg]
    staging = Settings(_env_file=None, env="staging", jwt_secret=secret)  # type: ignore[call-arg]
    assert staging.log_format_chosen == "json"
    chosen = Settings(_env_file=None, log_format="json")  # type: ignore[call-arg]
    assert chosen.log_format_chosen == "json"


# ---------------------------------------------------------- trace context


def test_traceparent_is_parsed_continued_or_started() -> None:
    incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert logs.parse_traceparent(incoming) == (
        "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", "01",
    )  # fmt: skip
    for bad in (None, "", "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                "00-" + "0" * 32 + "-b7ad6b7169203331-01", "00-0AF7-b7-01"):  # fmt: skip
        assert logs.parse_traceparent(bad) is None
    child = logs.parse_traceparent(logs.child_traceparent(incoming))
    assert child is not None
    assert child[0] == "0af7651916cd43dd8448eb211c80319c" and child[1] != "b7ad6b7169203331"
    fresh = logs.parse_traceparent(logs.child_traceparent("garbage"))
    assert fresh is not None and fresh[2] == "00"


# ------------------------------------------------------- the request log


def test_each_request_is_one_line_with_route_status_and_correlation_id(
    captured: Captured,
) -> None:
    from api.app import create_app

    client = TestClient(create_app(Settings(_env_file=None)))  # type: ignore[call-arg]
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    answered = client.get("/healthz", headers={"X-Correlation-ID": "abc-1", "traceparent": trace})
    assert answered.headers["X-Correlation-ID"] == "abc-1"
    generated = client.get("/v1/nothing/4111111111111111/password=hunter2").headers
    assert len(generated["X-Correlation-ID"]) == 32
    lines = [e for e in captured.events() if e["logger"] == "bankflow.api.requests"]
    health, missing = lines
    assert health["level"] == "DEBUG"  # probes are quiet
    assert (health["route"], health["status"], health["method"]) == ("/healthz", 200, "GET")
    assert health["correlation_id"] == "abc-1"
    assert health["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert isinstance(health["duration_ms"], float)
    # A path no route serves is logged, redacted; the generated id is the one answered.
    assert missing["level"] == "INFO" and missing["status"] == 404 and missing["route"] is None
    assert missing["path"] == "/v1/nothing/****1111/password=[REDACTED]"
    assert missing["correlation_id"] == generated["X-Correlation-ID"]
    assert "hunter2" not in captured.text and "4111111111111111" not in captured.text
