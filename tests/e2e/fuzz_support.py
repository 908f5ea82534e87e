"""Hypothesis strategies and a running pipeline for issue 11's end-to-end fuzz test.

The strategies produce what a careless or hostile producer could put on a topic: a
valid message of the topic's model with one field replaced by an arbitrary JSON value
(huge integers, nested objects, wrong types, NUL and other control characters, lone
surrogates as JSON escapes or as invalid UTF-8, empty values), the field removed, or an
unknown one added; whole random documents; raw bytes; and arbitrary headers, the retry
and dead-letter headers of ``schemas.headers`` among them with garbage values.

Values that could name a real account only ever name the fuzz test's own unfunded
accounts, so no fuzzed message can move money: only the control transfers may.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from bankflow.domain.money import AMOUNT_MINOR_MAX
from bankflow.settings import Settings
from schemas import headers as h
from tests.ledger_support import start_service, stop_service

#: Every header bankflow reads or writes.
KNOWN_HEADERS = (
    h.EVENT_ID, h.CORRELATION_ID, h.TRACEPARENT, h.ORIGINAL_TOPIC, h.ORIGINAL_PARTITION,
    h.ORIGINAL_OFFSET, h.ATTEMPT, h.ERROR_CLASS, h.ERROR_MESSAGE, h.FIRST_FAILURE_AT,
    h.NOT_BEFORE,
)  # fmt: skip
#: A Kafka topic name: what the retrier may produce to. Anything else is refused by the
#: client, so a fuzzed origin is either clearly invalid or under the test's own prefix.
TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")

# ------------------------------------------------------------------ scalars

BIG_INTS = (
    0, -1, 1, 2**31 - 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30,
    10**400, AMOUNT_MINOR_MAX, AMOUNT_MINOR_MAX + 1,
)  # fmt: skip
ints = st.one_of(st.integers(), st.sampled_from(BIG_INTS), st.integers(-(2**256), 2**256))
#: Strings a parser may take for something else.
SPECIAL_STRINGS = (
    "", " ", "\x00", "\x00abc", "a\x00", "\t", "\n", "\r\n", "\x1b[31m", "\x7f", "\u2028",
    "\ufeff", "\uffff", "null", "true", "0", "-1", "1e309", "NaN", "Infinity", "0x10", "{}",
    "[]", "'", '"', "\\", "%s", "%(x)s", "{0}", "'; drop table accounts; --", "../../etc",
    "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz", "00000000-0000-0000-0000-000000000000",
    "ffffffff-ffff-ffff-ffff-ffffffffffff", "----------------------------------00",
    "DE00000000000000000000", "DE89370400440532013000", "XX00ABCDEFGHIJKLMNOP",
    "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "2024-01-01T00:00:00",
    "2024-02-30T00:00:00Z", "2024-01-01", "9999-12-31T23:59:59+00:00", "-1-01-01",
    "\udc80", "\ud800", "é" * 80, "x" * 600,
)  # fmt: skip
HEX = "0123456789abcdefABCDEF"
uuid_shaped = st.builds(
    "-".join,
    st.tuples(
        *(st.text(alphabet=HEX + "zZg_ .é", min_size=n, max_size=n) for n in (8, 4, 4, 4, 12))
    ),
)
iban_shaped = st.builds(
    lambda cc, digits, rest: cc + digits + rest,
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcz", min_size=2, max_size=2),
    st.text(alphabet="0123456789", min_size=2, max_size=2),
    st.text(alphabet="0123456789ABCDEFXYZ ", min_size=11, max_size=32),
)
datetime_text = st.one_of(
    st.datetimes(timezones=st.none() | st.timezones()).map(lambda d: d.isoformat()),
    st.datetimes().map(lambda d: d.isoformat()),
    st.sampled_from([s for s in SPECIAL_STRINGS if s[:1].isdigit() or s.startswith("-")]),
    st.builds(
        lambda y, m, d, off: f"{y:04d}-{m:02d}-{d:02d}T00:00:00{off}",
        st.integers(0, 9999),
        st.integers(0, 13),
        st.integers(0, 32),
        st.sampled_from(["", "Z", "+14:00", "-14:00", "+23:59", "+99:99"]),
    ),
)
#: Unicode including surrogates, control characters and NUL.
any_text = st.text(alphabet=st.characters(codec=None, categories=None), max_size=40)
strings = st.one_of(
    st.text(max_size=40),
    any_text,
    st.sampled_from(SPECIAL_STRINGS),
    uuid_shaped,
    iban_shaped,
    datetime_text,
    ints.map(str),
)

json_scalars = st.one_of(
    st.none(), st.booleans(), ints, st.floats(allow_nan=True, allow_infinity=True), strings
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(strings, children, max_size=4)
    ),
    max_leaves=10,
)


def encode_json(document: Any, ascii_only: bool) -> bytes:
    """JSON bytes; lone surrogates become ``\\udXXX`` escapes or invalid UTF-8 bytes."""
    text = json.dumps(document, ensure_ascii=ascii_only, allow_nan=True)
    return text.encode("utf-8", "surrogatepass")


def text_bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


# ------------------------------------------------------------------ messages


@dataclass(frozen=True)
class Fuzzed:
    """One message to produce: a logical topic, key, value and headers."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    how: str  # what was done to the valid message, for the failure report

    def as_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "key": _show(self.key),
            "value": _show(self.value),
            "headers": [(n, _show(v)) for n, v in self.headers],
            "how": self.how,
        }


def _show(data: bytes | None) -> str | None:
    return None if data is None else repr(data)


def header_values(name: str, safe_topic: Callable[[str], str]) -> st.SearchStrategy[bytes | None]:
    """Garbage for one header, with the values its readers parse in mind."""
    specific: dict[str, st.SearchStrategy[str]] = {
        h.ATTEMPT: st.one_of(ints.map(str), strings),
        h.ORIGINAL_PARTITION: st.one_of(ints.map(str), strings),
        h.ORIGINAL_OFFSET: st.one_of(ints.map(str), strings),
        h.NOT_BEFORE: datetime_text,
        h.FIRST_FAILURE_AT: datetime_text,
        h.ORIGINAL_TOPIC: strings.map(safe_topic),
        h.EVENT_ID: st.one_of(uuid_shaped, strings),
    }
    text = specific.get(name, strings)
    if name == h.ORIGINAL_TOPIC:
        return text.map(text_bytes)  # never raw bytes: those could name any topic
    return st.one_of(st.none(), st.binary(max_size=40), text.map(text_bytes))


def header_lists(safe_topic: Callable[[str], str]) -> st.SearchStrategy[list[tuple[str, Any]]]:
    names = st.one_of(
        st.sampled_from(KNOWN_HEADERS),
        st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=30),
    )
    pair = names.flatmap(lambda n: st.tuples(st.just(n), header_values(n, safe_topic)))
    return st.lists(pair, max_size=6)


def mutated_documents(
    base: dict[str, Any], field_values: dict[str, st.SearchStrategy[Any]]
) -> st.SearchStrategy[tuple[Any, str]]:
    """A valid document with one field replaced, removed or added; or a random one."""
    names = sorted(base)

    def replace(name: str) -> st.SearchStrategy[tuple[Any, str]]:
        specific = field_values.get(name, json_values)
        values = st.one_of(specific, specific, json_values)
        return values.map(lambda v: ({**base, name: v}, f"{name} replaced"))

    replaced = st.sampled_from(names).flatmap(replace)
    return st.one_of(
        replaced,
        replaced,
        replaced,
        st.sampled_from(names).map(
            lambda n: ({k: v for k, v in base.items() if k != n}, f"{n} removed")
        ),
        st.tuples(strings, json_values).map(lambda kv: ({**base, kv[0]: kv[1]}, "field added")),
        json_values.map(lambda d: (d, "random document")),
        st.dictionaries(st.sampled_from(names), json_values, max_size=len(names)).map(
            lambda d: (d, "random fields")
        ),
    )


def values_for(
    base: dict[str, Any], field_values: dict[str, st.SearchStrategy[Any]]
) -> st.SearchStrategy[tuple[bytes | None, str]]:
    """Message values: mutated JSON (ASCII or raw UTF-8), raw bytes, invalid UTF-8, None."""
    as_json = st.tuples(mutated_documents(base, field_values), st.booleans()).map(
        lambda t: (encode_json(t[0][0], t[1]), t[0][1])
    )
    return st.one_of(
        as_json,
        as_json,
        as_json,
        st.binary(max_size=200).map(lambda b: (b, "raw bytes")),
        st.sampled_from(sorted(k for k, v in base.items() if isinstance(v, str))).flatmap(
            lambda name: st.binary(min_size=1, max_size=8).map(
                lambda junk: (_with_raw(base, name, junk + b"\xff\xc0\x80"), f"{name} not UTF-8")
            )
        ),
        st.just((None, "no value (tombstone)")),
        st.just((b"", "empty value")),
    )


def _with_raw(base: dict[str, Any], name: str, junk: bytes) -> bytes:
    marker = "@@FUZZ@@"
    return json.dumps({**base, name: marker}).encode().replace(marker.encode(), junk)


@dataclass
class FuzzTargets:
    """What the strategies may name: the test's prefix, topics and unfunded accounts."""

    settings: Settings
    debit: uuid.UUID  # unfunded customer accounts
    credit: uuid.UUID
    customer: uuid.UUID
    debit_iban: str

    def safe_topic(self, text: str) -> str:
        """A fuzzed origin topic the retrier cannot use to reach another test's topics."""
        if TOPIC_NAME.fullmatch(text):
            return f"{self.settings.topic_prefix}nope.{text}"[:249]
        return text

    def account_refs(self) -> st.SearchStrategy[str]:
        ids = [str(self.debit), str(self.credit)]
        known = st.sampled_from(
            [*ids, *(i.upper() for i in ids), f" {ids[0]} ", self.debit_iban,
             self.debit_iban.lower(), " ".join(self.debit_iban[i:i + 4] for i in range(0, 22, 4))]
        )  # fmt: skip
        return st.one_of(known, uuid_shaped, iban_shaped, strings)

    def field_values(self) -> dict[str, st.SearchStrategy[Any]]:
        refs = self.account_refs()
        return {
            "transfer_id": st.one_of(st.uuids().map(str), uuid_shaped),
            "event_id": st.one_of(st.uuids().map(str), uuid_shaped),
            "source": st.sampled_from(["api", "batch", "external", "API", ""]),
            "debit_account": refs,
            "credit_account": refs,
            "debit_account_id": refs,
            "credit_account_id": refs,
            "amount_minor": ints,
            "risk_score": ints,
            "debit_balance_after_minor": ints,
            "credit_balance_after_minor": ints,
            "currency": st.one_of(st.sampled_from(["EUR", "USD", "eur", "XXX", "EURO"]), strings),
            "requested_at": datetime_text,
            "occurred_at": datetime_text,
            "decided_at": datetime_text,
            "requested_by": st.one_of(
                st.just(f"customer:{self.customer}"),
                strings.map(lambda s: f"customer:{s}"),
                st.sampled_from(["teller:x", "customer:", "batch"]),
            ),
            "tags": st.lists(strings, max_size=25),
            "reasons": st.lists(strings, max_size=5),
            "risk_reasons": st.lists(strings, max_size=5),
            "status": st.sampled_from(["posted", "failed", "pending", "voided"]),
            "event_type": st.sampled_from(["transfer.posted", "transfer.failed", "x"]),
        }

    def messages(
        self, topic: str, base: dict[str, Any], base_headers: Sequence[tuple[str, bytes]] = ()
    ) -> st.SearchStrategy[Fuzzed]:
        """Messages for one logical topic, from a valid document of its model."""
        headers = st.one_of(
            st.just(list(base_headers)),
            header_lists(self.safe_topic),
            # The valid headers with one of them given a garbage value.
            (
                st.sampled_from([n for n, _ in base_headers]).flatmap(
                    lambda n: header_values(n, self.safe_topic).map(
                        lambda v: [(k, v if k == n else w) for k, w in base_headers]
                    )
                )
                if base_headers
                else header_lists(self.safe_topic)
            ),
        )
        keys = st.one_of(st.just(str(self.debit).encode()), st.none(), st.binary(max_size=40))
        return st.builds(
            lambda v, k, hs: Fuzzed(topic, k, v[0], hs, v[1]),
            values_for(base, self.field_values()),
            keys,
            headers,
        )


def retry_headers(settings: Settings, origin: str, attempt: int = 1) -> list[tuple[str, bytes]]:
    """The headers a retried message carries, due now (see ``bankflow.failures``)."""
    now = datetime.now(UTC)
    return [
        (h.ORIGINAL_TOPIC, settings.topic(origin).encode()),
        (h.ORIGINAL_PARTITION, b"0"),
        (h.ORIGINAL_OFFSET, b"0"),
        (h.ATTEMPT, str(attempt).encode()),
        (h.ERROR_CLASS, b"DependencyUnavailable"),
        (h.ERROR_MESSAGE, b"fuzz base"),
        (h.FIRST_FAILURE_AT, (now - timedelta(seconds=5)).isoformat().encode()),
        (h.NOT_BEFORE, (now - timedelta(seconds=1)).isoformat().encode()),
    ]


def dead_letter_headers(origin: str, offset: int) -> list[tuple[str, bytes]]:
    now = datetime.now(UTC).isoformat().encode()
    return [
        (h.ORIGINAL_TOPIC, origin.encode()),
        (h.ORIGINAL_PARTITION, b"0"),
        (h.ORIGINAL_OFFSET, str(offset).encode()),
        (h.ATTEMPT, b"1"),
        (h.ERROR_CLASS, b"PoisonMessage"),
        (h.ERROR_MESSAGE, b"fuzz base"),
        (h.FIRST_FAILURE_AT, now),
    ]


# ------------------------------------------------------------------ processes


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def http_status(url: str) -> int:
    """The HTTP status ``url`` answers with (0: no answer)."""
    try:
        with urllib.request.urlopen(url, timeout=3) as response:  # noqa: S310 - loopback
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


@dataclass
class Pipeline:
    """Every stage as its own process, with the ports its readiness is asked on."""

    settings: Settings
    logs: Path
    env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ready_urls: dict[str, str] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)

    def start(self, names: Sequence[str]) -> None:
        for name in names:
            port = free_port()
            variable = f"BANKFLOW_{name.replace('-', '_').upper()}_METRICS_PORT"
            extra = {**self.env, variable: str(port)}
            if name == "api":
                self.ready_urls[name] = f"http://127.0.0.1:{self.env['BANKFLOW_API_PORT']}/healthz"
            else:
                self.ready_urls[name] = f"http://127.0.0.1:{port}/readyz"
            process = start_service(self.settings, name, log=self.log(name), **extra)
            self.processes[name] = process
            self.pids[name] = process.pid

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        waiting = dict(self.ready_urls)
        while waiting and time.monotonic() < deadline:
            self.assert_alive()
            waiting = {n: u for n, u in waiting.items() if http_status(u) != 200}
            if waiting:
                time.sleep(0.2)
        assert not waiting, f"not ready after {timeout_s} s: {sorted(waiting)}"

    def dead(self) -> dict[str, int]:
        """The stages that exited (name: exit code) or are no longer the process started."""
        found = {}
        for name, process in self.processes.items():
            code = process.poll()
            if code is not None or process.pid != self.pids[name]:
                found[name] = code if code is not None else -999
        return found

    def assert_alive(self) -> None:
        dead = self.dead()
        assert not dead, "stage(s) died: " + "; ".join(
            f"{n} (exit {c}):\n{self.tail(n)}" for n, c in dead.items()
        )

    def tail(self, name: str, chars: int = 2500) -> str:
        path = self.log(name)
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            stop_service(process, timeout_s=20)
