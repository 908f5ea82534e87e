"""Structured logs: one JSON object per line, with the transfer and correlation ids, redacted.

``configure`` (called by ``bankflow.runtime.configure_logging`` in every service's
``run()``) puts one handler on the root logger that writes either JSON lines or
text, and a ``Redact`` filter on every root handler. A JSON line looks like::

    {"time":"2026-11-25T14:09:03.123Z","level":"INFO","logger":"bankflow.validator",
     "message":"transfer rejected: unknown_account","service":"validator",
     "correlation_id":"4f0c...","transfer_id":"8d1e...","trace_id":"0af7...",
     "outcome":"rejected","reasons":["unknown_account"]}

``time``, ``level``, ``logger``, ``message`` and ``service`` are always there; the
context fields (``correlation_id``, ``transfer_id``, ``trace_id``, ``user_id``) when
the code that logs is working for one request or one transfer (``bound``); then
whatever the call passed as ``extra``; ``exception`` holds a traceback.

Context lives in a ``ContextVar``: ``bound(...)`` opens a scope for one HTTP
request or one message and closes it after; ``annotate(...)`` adds a field to the
scope already open (the user id found by authentication, the transfer id the
intake derived), so the request's final log line carries it too.

Redaction happens before any handler formats a record, on the message, the
arguments, the extra fields and the traceback, and on context fields when they are
bound; see ``redact_text``.
Nothing here reads settings or the environment.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import sys
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any, Final, Literal

import orjson

from schemas.headers import CORRELATION_ID, TRACEPARENT

LogFormat = Literal["json", "text"]

# ------------------------------------------------------------------ context

#: The fields of the request or message being worked on. ``None`` outside any scope.
_context: ContextVar[dict[str, str] | None] = ContextVar("bankflow_log_context", default=None)
#: The ``traceparent`` to send on with what this request produces (W3C trace context).
_traceparent: ContextVar[str | None] = ContextVar("bankflow_traceparent", default=None)
#: The service name every line carries; ``bankflow run NAME`` sets it.
_service = "bankflow"


def set_service(name: str) -> None:
    global _service  # noqa: PLW0603 - one process runs one service; set once at start
    _service = name


def service() -> str:
    return _service


@contextlib.contextmanager
def bound(**fields: object) -> Iterator[None]:
    """Every line logged inside the block (in this task or thread) carries ``fields``.

    Fields whose value is None are left out; the enclosing scope's fields stay unless
    overridden. The scope is a fresh dict, so ``annotate`` inside it never reaches
    an enclosing scope or another request.
    """
    outer = _context.get() or {}
    token = _context.set({**outer, **_strings(fields)})
    try:
        yield
    finally:
        _context.reset(token)


def annotate(**fields: object) -> None:
    """Add fields to the scope ``bound`` opened; outside any scope, nothing happens."""
    current = _context.get()
    if current is not None:
        current.update(_strings(fields))


def context() -> dict[str, str]:
    """A copy of the current scope's fields."""
    return dict(_context.get() or {})


def _strings(fields: Mapping[str, object]) -> dict[str, str]:
    """Fields as text, redacted once here rather than on every line that carries them
    (a client chooses its correlation id)."""
    return {k: redact_value(str(v), k) for k, v in fields.items() if v is not None}


# ------------------------------------------------------- W3C trace context

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def parse_traceparent(value: str | None) -> tuple[str, str, str] | None:
    """``(trace_id, parent_id, flags)`` of a version-00 ``traceparent``, or None if invalid.

    All-zero trace and parent ids are invalid (W3C Trace Context, section 3.2.2).
    """
    match = _TRACEPARENT.match((value or "").strip())
    if match is None:
        return None
    trace_id, parent_id, flags = match.groups()
    if trace_id == "0" * 32 or parent_id == "0" * 16:
        return None
    return trace_id, parent_id, flags


def child_traceparent(incoming: str | None) -> str:
    """The ``traceparent`` this service sends on: the caller's trace with a span of ours.

    Without a valid incoming one, a new trace starts (sampled flag off: we record
    ids in logs, not spans).
    """
    parsed = parse_traceparent(incoming)
    trace_id, flags = (parsed[0], parsed[2]) if parsed else (secrets.token_hex(16), "00")
    return f"00-{trace_id}-{secrets.token_hex(8)}-{flags}"


@contextlib.contextmanager
def traced(traceparent: str) -> Iterator[None]:
    """Send ``traceparent`` on from inside the block; log lines carry its trace id."""
    parsed = parse_traceparent(traceparent)
    token = _traceparent.set(traceparent if parsed else None)
    try:
        with bound(trace_id=parsed[0] if parsed else None):
            yield
    finally:
        _traceparent.reset(token)


def traceparent() -> str | None:
    """The ``traceparent`` to put on what the current request produces, if any."""
    return _traceparent.get()


def trace_id_of(traceparent_value: str | None) -> str | None:
    parsed = parse_traceparent(traceparent_value)
    return parsed[0] if parsed else None


# ------------------------------------------------------ Kafka messages


def message_fields(headers: Mapping[str, str], value: bytes | None) -> dict[str, str | None]:
    """The log context of a message about one transfer: ``bound(**message_fields(...))``.

    The correlation id and the trace come from the headers (``schemas.headers``), the
    transfer id from the body when it is a JSON object that names one (a dead letter's
    body may be anything).
    """
    transfer_id = None
    if value and value[:1] == b"{":
        try:
            body = orjson.loads(value)
        except orjson.JSONDecodeError:
            body = None
        if isinstance(body, dict) and body.get("transfer_id") is not None:
            transfer_id = str(body["transfer_id"])
    return {
        "transfer_id": transfer_id,
        "correlation_id": headers.get(CORRELATION_ID) or None,
        "trace_id": trace_id_of(headers.get(TRACEPARENT)),
    }


# ---------------------------------------------------------------- redaction

REDACTED: Final = "[REDACTED]"
#: Keys whose values are secrets or personal data, wherever they appear: as extra
#: fields, JSON or Python-literal keys, ``key=value`` or ``Key: value`` in text.
#: Compared lower-cased with ``-`` read as ``_``.
SECRET_KEYS: Final = frozenset(
    {
        "password", "passwd", "pwd", "new_password", "current_password", "old_password",
        "secret", "client_secret", "jwt_secret", "token", "access_token", "refresh_token",
        "id_token", "api_key", "apikey", "authorization", "proxy_authorization", "cookie",
        "set_cookie", "private_key", "otp", "totp", "pin", "cvv", "cvc",
    }
)  # fmt: skip
PERSONAL_KEYS: Final = frozenset(
    {"email", "username", "full_name", "customer_name", "first_name", "last_name", "phone"}
)
SENSITIVE_KEYS: Final = SECRET_KEYS | PERSONAL_KEYS

_KEY_NAMES = "|".join(
    sorted((k.replace("_", "[-_]?") for k in SENSITIVE_KEYS), key=len, reverse=True)
)
#: ``password=...``, ``"password": "..."``, ``'email': '...'``, ``Authorization: Bearer ...``.
#: An unquoted value runs to the next delimiter or the next ``key=``, so a password
#: or a name with spaces goes whole.
_KEY_VALUE = re.compile(
    rf"""(?ix)
    (?<!\w)(?P<key>["']?(?:{_KEY_NAMES})["']?\s*[:=]\s*)
    (?P<value>
        "(?:[^"\\]|\\.)*"
      | '(?:[^'\\]|\\.)*'
      | (?:(?:bearer|basic|digest|token)\s+)?
        [^\s,;&}}\]"'][^,;&}}\]\n"']*?
        (?=\s+[\w.-]+[=:]|[,;&}}\]\n"']|$)
    )
    """
)
#: Credentials in a URL: ``postgresql://user:secret@host``.
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^:/\s@]*:)[^@\s/]+@")
#: A JWT (RFC 7519): base64url header, payload and signature; the header starts ``{"``.
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
#: Digits in groups separated by single spaces or dashes, not glued to letters (that is
#: how digits sit inside hexadecimal ids and digests, which must stay); a UUID is
#: matched whole first, so the digits inside one are left alone.
_DIGIT_GROUPS = re.compile(
    r"(?P<uuid>\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b)"
    r"|(?<!\w)\d+(?:[ -]\d+)*(?!\w)"
)
_DIGITS = re.compile(r"\d+")
CARD_DIGITS_MIN, CARD_DIGITS_MAX = 13, 19
#: Card numbers are written in groups of 3 or more digits (4-4-4-4, 4-6-5, 4-4-4-4-3);
#: shorter groups beside them are something else (an expiry date, a count).
CARD_GROUP_DIGITS_MIN = 3


def luhn_valid(digits: str) -> bool:
    """The Luhn check (ISO/IEC 7812-1) every payment card number passes."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        n = int(char)
        if position % 2 == 1:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def _mask_cards(match: re.Match[str]) -> str:
    """Mask each card number in a run of digit groups, keeping its last four digits.

    A card number is consecutive groups (each of 3 digits or more) holding 13 to 19
    digits in all that pass the Luhn check; the longest such from each start wins. A
    run of 20 digits or more with no separator is not a card number.
    """
    run = match.group(0)
    if match.group("uuid"):
        return run
    groups = list(_DIGITS.finditer(run))
    pieces: list[str] = []
    copied = i = 0
    while i < len(groups):
        card_end = None
        digits = ""
        for j in range(i, len(groups)):
            if j > i and len(groups[j].group()) < CARD_GROUP_DIGITS_MIN:
                break
            digits += groups[j].group()
            if len(digits) > CARD_DIGITS_MAX:
                break
            if len(digits) >= CARD_DIGITS_MIN and luhn_valid(digits):
                card_end, last_four = j, digits[-4:]
        if card_end is None:
            i += 1
            continue
        pieces += [run[copied : groups[i].start()], f"****{last_four}"]
        copied = groups[card_end].end()
        i = card_end + 1
    return "".join(pieces) + run[copied:]


def _mask_value(match: re.Match[str]) -> str:
    value = match.group("value")
    quote = value[0] if value[:1] in ("'", '"') else ""
    return f"{match.group('key')}{quote}{REDACTED}{quote}"


def redact_text(text: str) -> str:
    """``text`` with secrets and personal data masked.

    Values of sensitive keys (``SENSITIVE_KEYS``) become ``[REDACTED]``; credentials
    in URLs too; JWTs become ``[JWT]``; ``Bearer``/``Basic`` credentials
    ``Bearer [REDACTED]``; email addresses ``[EMAIL]``; card numbers (13-19 digits
    passing the Luhn check, with or without spaces or dashes) ``****`` and their last
    four digits. Keys first, so a key's whole value goes, whatever it looks like.
    """
    # Every line of every service comes through here, most with nothing to mask: each
    # rule runs only when the text holds what it needs (a separator, "://", "eyJ", "@",
    # 13 digits), which a C-speed test finds. That keeps a typical line at a few
    # microseconds instead of tens.
    if not text:
        return text
    if "=" in text or ":" in text:
        text = _KEY_VALUE.sub(_mask_value, text)
        if "://" in text:
            text = _URL_CREDENTIALS.sub(rf"\1{REDACTED}@", text)
    if "eyJ" in text:
        text = _JWT.sub("[JWT]", text)
    if _BEARER_HINT.search(text):
        text = _BEARER.sub(rf"\1 {REDACTED}", text)
    if "@" in text:
        text = _EMAIL.sub("[EMAIL]", text)
    if len(text) - len(text.translate(_NO_DIGITS)) >= CARD_DIGITS_MIN:
        text = _DIGIT_GROUPS.sub(_mask_cards, text)
    return text


_BEARER_HINT = re.compile(r"(?i)bearer|basic")
_NO_DIGITS = str.maketrans("", "", "0123456789")


#: Nested values are redacted this deep; deeper ones are replaced whole.
_DEPTH_MAX = 8


def redact_value(value: Any, key: str | None = None, depth: int = 0) -> Any:
    """A copy of ``value`` (an extra field) redacted: sensitive keys whole, text inside."""
    if (key is not None and key.lower().replace("-", "_") in SENSITIVE_KEYS) or (
        depth > _DEPTH_MAX
    ):
        return REDACTED
    if isinstance(value, bool | float) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): redact_value(v, str(k), depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_value(v, None, depth + 1) for v in value]
    if isinstance(value, int) and -(10 ** (CARD_DIGITS_MIN - 1)) < value < 10 ** (
        CARD_DIGITS_MIN - 1
    ):
        return value  # too few digits for a card number
    # Text, and anything else as its text; an int stays one unless it was a card number.
    text = str(value)
    masked = redact_text(text)
    return value if isinstance(value, int) and masked == text else masked


#: Attributes every ``LogRecord`` has; anything else on a record came from ``extra``.
_RECORD_ATTRS: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}
#: What ``Redact`` puts on a record: the context it captured and a done-marker.
_CONTEXT_ATTR: Final = "bankflow_context"
_DONE_ATTR: Final = "bankflow_redacted"
_OWN_ATTRS: Final = frozenset({_CONTEXT_ATTR, _DONE_ATTR})


#: Extra fields libraries add that say nothing new (uvicorn's message with colour codes).
_NOISE_ATTRS: Final = frozenset({"color_message"})


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {
        k: v
        for k, v in vars(record).items()
        if k not in _RECORD_ATTRS
        and k not in _OWN_ATTRS
        and k not in _NOISE_ATTRS
        and not k.startswith("_")
    }


class Redact(logging.Filter):
    """Mask secrets and personal data in a record before any handler formats it.

    It renders the message with its arguments and redacts the result (an argument
    is often where a secret hides), redacts every extra field and the traceback text,
    and captures the context (redacted when it was bound). A record passes once: a
    second handler finds it done.
    """

    _plain = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _DONE_ATTR, False):
            return True
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # arguments that do not fit the message
            message = f"{record.msg} {record.args!r}"
        record.msg, record.args = redact_text(message), None
        for key, value in extra_fields(record).items():
            setattr(record, key, redact_value(value, key))
        setattr(record, _CONTEXT_ATTR, context())  # redacted when it was bound
        if record.exc_info and not record.exc_text:
            record.exc_text = self._plain.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        setattr(record, _DONE_ATTR, True)
        return True


# ---------------------------------------------------------------- formatters


def _time(created: float) -> str:
    stamp = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """Context then extra fields; the context as captured by ``Redact``, else current."""
    captured = getattr(record, _CONTEXT_ATTR, None)
    return {**(captured if captured is not None else context()), **extra_fields(record)}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``message``, ``service``,
    the context fields, the extra fields, then ``exception`` and ``stack`` if any."""

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "time": _time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "service": _service,
        }
        for key, value in _fields(record).items():
            event.setdefault(key, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            event["exception"] = record.exc_text
        if record.stack_info:
            event["stack"] = record.stack_info
        return orjson.dumps(event, default=str).decode()


class TextFormatter(logging.Formatter):
    """``time [service] logger LEVEL message key=value ...``, for a terminal in dev.

    The order after the service is the one bankflow's text logs always had, which
    tests and operators' greps (``" INFO assigned "``) rely on.
    """

    def __init__(self) -> None:
        super().__init__("%(asctime)s [%(service)s] %(name)s %(levelname)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        setattr(record, "service", _service)  # noqa: B010 - LogRecord declares no such field
        try:
            line = super().format(record)
        finally:
            delattr(record, "service")
        fields = " ".join(f"{k}={_text_value(v)}" for k, v in _fields(record).items())
        if not fields:
            return line
        head, newline, rest = line.partition("\n")  # fields on the first line, before a trace
        return f"{head} {fields}{newline}{rest}"


def _text_value(value: Any) -> str:
    return value if isinstance(value, str) and " " not in value else orjson.dumps(value).decode()


# ------------------------------------------------------------------ set-up

_HANDLER_NAME: Final = "bankflow"


def configure(
    *, fmt: LogFormat = "json", level: str = "INFO", stream: IO[str] | None = None
) -> logging.Handler:
    """One handler of ours on the root logger (replacing an earlier one), redacting.

    Every handler already on the root logger gets the ``Redact`` filter too, so
    nothing the process logs leaves it unredacted. Warnings are logged as well.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
        old.close()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    for each in root.handlers:
        if not any(isinstance(f, Redact) for f in each.filters):
            each.addFilter(Redact())
    root.setLevel(level)
    logging.captureWarnings(True)
    return handler
