"""Issue 11's acceptance: fuzz every input of every stage, and the pipeline goes on.

Every stage runs as its own process. Each batch of examples puts arbitrary messages
(see ``fuzz_support``) on every topic a stage reads, sends arbitrary strings in every
field of every API body, and ingests batch files with arbitrary strings in every
column. After each batch, control transfers sent the normal way (one on
``transfers.requested``, one per partition through the first retry tier) must be
posted, tracked and cached within a bound, a control dead letter stored, every stage
must still be the process that was started, ``bankflow verify`` must pass, and the
customers' money must be exactly what the control transfers put there: no fuzzed
message moved any.

Failing examples are kept as regression tests in ``test_fuzz_regressions.py``. A
failing batch writes its messages to ``batch-<n>-kafka.jsonl`` in the test's tmp dir.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import time
import urllib.parse
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import httpx
import pytest
from confluent_kafka import KafkaException
from hypothesis import HealthCheck, Phase, given, seed
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from bankflow.bootstrap import kafka_producer
from bankflow.ledger.accounts import create_customer, find_internal_account, open_account
from bankflow.settings import Settings
from bankflow.signing import signers_for
from producers.ingest.run import ingest
from producers.ingest.submitters import customer_submitter
from schemas import headers as h
from schemas.topics import (
    TRANSFERS_ACCEPTED,
    TRANSFERS_DLQ,
    TRANSFERS_FAILED,
    TRANSFERS_POSTED,
    TRANSFERS_REJECTED,
    TRANSFERS_REQUESTED,
    TRANSFERS_REVIEW,
    retry_topic,
)
from schemas.transfers import (
    AcceptedTransfer,
    RejectedTransfer,
    TransferEvent,
    TransferRequest,
    TransferSource,
    event_id_for,
)
from tests.e2e.fuzz_support import (
    Fuzzed,
    FuzzTargets,
    Pipeline,
    dead_letter_headers,
    encode_json,
    free_port,
    json_values,
    retry_headers,
    strings,
    text_bytes,
)
from tests.ledger_support import run_cli, signed

pytestmark = pytest.mark.timeout(420)

#: Short tiers, so a control sent through the first tier comes back within a second.
TIERS = {"t1": 1, "t2": 2}
STAGES = ("validator", "retrier", "poster", "relay", "tracker", "dlq-sink", "cache", "api")
#: The topics each stage reads (the relay reads the outbox, the API only HTTP).
READS = {
    "validator": (TRANSFERS_REQUESTED,),
    "retrier": tuple(retry_topic(t) for t in TIERS),
    "poster": (TRANSFERS_ACCEPTED,),
    "tracker": (TRANSFERS_REQUESTED, TRANSFERS_ACCEPTED, TRANSFERS_REVIEW, TRANSFERS_REJECTED,
                TRANSFERS_POSTED, TRANSFERS_FAILED),
    "dlq-sink": (TRANSFERS_DLQ,),
    "cache": (TRANSFERS_POSTED,),
}  # fmt: skip
#: Batches and examples per batch: about two and a half minutes on two cores.
BATCHES = 4
KAFKA_EXAMPLES = 400
API_EXAMPLES = 150
LINE_EXAMPLES = 40
#: How long the control transfers of a batch may take end to end.
CONTROL_TIMEOUT_S = 30
PASSWORD = "correct-horse-battery-9"
EUR = "EUR"


def fuzz_settings(max_examples: int, batch: int) -> Callable[[Any], Any]:
    """Deterministic generation, no example database, no shrinking (the stages keep state)."""

    def decorate(test: Any) -> Any:
        configured = hypothesis_settings(
            max_examples=max_examples,
            deadline=None,
            database=None,
            derandomize=False,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )(test)
        return seed(1100 + batch)(configured)

    return decorate


@dataclass
class World:
    """The accounts, users and clients the fuzz test works with."""

    settings: Settings
    db: Any
    targets: FuzzTargets
    cash: uuid.UUID
    control: uuid.UUID  # the only customer account money may reach
    base_url: str
    auth: dict[str, dict[str, str]] = field(default_factory=dict)
    api_accounts: dict[str, str] = field(default_factory=dict)
    control_ids: list[uuid.UUID] = field(default_factory=list)
    control_minor: int = 0
    reported: set[str] = field(default_factory=set)  # dead stages whose log was reported


def test_fuzzed_inputs_never_kill_a_stage_nor_move_money(
    settings: Settings, topics, db, redis_client, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"retry_tiers": TIERS})
    topics(*settings.all_topics())
    world = _world(settings, db)
    api_port = free_port()
    pipeline = Pipeline(
        settings,
        tmp_path,
        env={
            "BANKFLOW_API_PORT": str(api_port),
            "BANKFLOW_PASSWORD_HASH_PROFILE": "test",
            "BANKFLOW_LOGIN_DELAY_BASE_MS": "0",
            "BANKFLOW_LOGIN_DELAY_MAX_MS": "0",
            "BANKFLOW_API_RATE_PER_USER_PER_MIN": "1000000",
            "BANKFLOW_API_RATE_PER_ADDRESS_PER_MIN": "1000000",
        },
    )
    world.base_url = f"http://127.0.0.1:{api_port}"
    pipeline.start(STAGES)
    try:
        pipeline.wait_ready(120)
        failures: list[str] = []
        with httpx.Client(base_url=world.base_url, timeout=30) as http:
            _api_users(world, http)
            # Every batch runs even after one failed, so that one run shows every stage
            # that dies (a dead stage stays dead) and every other failure.
            for batch in range(BATCHES):
                produced = _fuzz_kafka(world, batch)
                failures += _fuzz_api(world, http, batch)
                failures += _fuzz_batch_lines(world, tmp_path, batch)
                _record(tmp_path / f"batch-{batch}-kafka.jsonl", produced)
                failures += _check_controls(world, pipeline, redis_client, batch, produced)
        assert failures == [], "\n\n".join(failures)
    finally:
        pipeline.stop()


# ------------------------------------------------------------------ set-up


def _world(settings: Settings, db: Any) -> World:
    target_customer = create_customer(db, "Fuzz Target")
    debit, credit = (
        open_account(db, settings, customer_id=target_customer, account_type="checking",
                     currency=EUR)
        for _ in range(2)
    )  # fmt: skip
    control_customer = create_customer(db, "Fuzz Control")
    control = open_account(
        db, settings, customer_id=control_customer, account_type="checking", currency=EUR
    )
    cash = find_internal_account(db, "cash", EUR)
    assert cash is not None
    # The target customer's user submits the batch files (``bankflow ingest --submitted-by``).
    db.execute(
        "insert into users (id, email, password_hash, role, customer_id)"
        " values (%s, %s, 'not-a-hash', 'customer', %s)",
        (uuid.uuid4(), BATCH_SUBMITTER, target_customer),
    )
    targets = FuzzTargets(settings, debit.id, credit.id, target_customer, debit.iban)
    return World(settings, db, targets, cash.id, control.id, "")


def _api_users(world: World, http: httpx.Client) -> None:
    """Staff from the CLI, a customer who registers, and the accounts the API fuzz uses."""
    for role in ("teller", "admin", "reviewer"):
        email = f"{role}@fuzz.example"
        made = run_cli(world.settings, "users", "create", "--email", email, "--role", role,
                       "--password", PASSWORD, "--full-name", role, "--json")  # fmt: skip
        assert made.returncode == 0, made.stderr
        world.auth[role] = _sign_in(http, f"{role}@fuzz.example")
    registered = http.post(
        "/v1/auth/register",
        json={"email": "cust@fuzz.example", "password": PASSWORD, "full_name": "Cust"},
    )
    assert registered.status_code == 201, registered.text
    customer = registered.json()["customer_id"]
    world.auth["customer"] = _sign_in(http, "cust@fuzz.example")
    for name in ("own", "closed", "patched"):
        opened = http.post(
            "/v1/accounts",
            headers=world.auth["teller"],
            json={"customer_id": customer, "type": "checking", "currency": EUR},
        )
        assert opened.status_code == 201, opened.text
        world.api_accounts[name] = opened.json()["id"]
    world.api_accounts["customer"] = customer
    # Deposits are fuzzed into a closed account: a fuzzed deposit that is valid is refused.
    closed = http.patch(
        f"/v1/accounts/{world.api_accounts['closed']}",
        headers=world.auth["admin"],
        json={"status": "closed"},
    )
    assert closed.status_code == 200, closed.text


def _sign_in(http: httpx.Client, email: str) -> dict[str, str]:
    token = http.post("/v1/auth/token", data={"username": email, "password": PASSWORD})
    assert token.status_code == 200, token.text
    return {"Authorization": f"Bearer {token.json()['access_token']}"}


# ------------------------------------------------------------------ Kafka


def _bases(world: World) -> list[tuple[str, dict[str, Any], list[tuple[str, bytes]]]]:
    """A valid message of each input topic's model, over the unfunded accounts only."""
    t, s = world.targets, world.settings
    request = TransferRequest(
        transfer_id=uuid.uuid4(), source=TransferSource.API, debit_account=str(t.debit),
        credit_account=str(t.credit), amount_minor=100, currency=EUR, description="fuzz",
        category="fuzz", tags=["a"], reference="r", requested_by=f"customer:{t.customer}",
        correlation_id="c",
    )  # fmt: skip
    accepted = AcceptedTransfer(
        **request.model_dump(exclude={"debit_account", "credit_account"}),
        debit_account_id=t.debit, credit_account_id=t.credit, ruleset_version="v1",
        risk_score=10, risk_reasons=["new_beneficiary"],
    )  # fmt: skip
    rejected = RejectedTransfer(**request.model_dump(), reasons=["unknown_account"])
    now = datetime.now(UTC)
    event = TransferEvent(
        event_id=event_id_for(request.transfer_id, "transfer.posted"),
        event_type="transfer.posted", transfer_id=request.transfer_id, status="posted",
        debit_account_id=t.debit, credit_account_id=t.credit, amount_minor=100, currency=EUR,
        debit_balance_after_minor=0, credit_balance_after_minor=0, occurred_at=now,
        requested_at=now, correlation_id="c",
    )  # fmt: skip
    failed = event.model_copy(
        update={"event_type": "transfer.failed", "status": "failed", "reason": "insufficient"}
    )
    dump = lambda m: m.model_dump(mode="json")  # noqa: E731
    tiers = [
        (retry_topic(tier), dump(request), retry_headers(s, TRANSFERS_REQUESTED, n + 1))
        for n, tier in enumerate(TIERS)
    ]
    return [
        (TRANSFERS_REQUESTED, dump(request), []),
        *tiers,
        (TRANSFERS_ACCEPTED, dump(accepted), []),
        (TRANSFERS_REVIEW, dump(accepted), []),
        (TRANSFERS_REJECTED, dump(rejected), []),
        (TRANSFERS_POSTED, dump(event), [(h.EVENT_ID, str(event.event_id).encode())]),
        (TRANSFERS_FAILED, dump(failed), [(h.EVENT_ID, str(event.event_id).encode())]),
        (TRANSFERS_DLQ, dump(request),
         dead_letter_headers(s.topic(TRANSFERS_REQUESTED), 10**6)),
    ]  # fmt: skip


def _fuzz_kafka(world: World, batch: int) -> list[Fuzzed]:
    """Produce a batch of fuzzed messages on every input topic; the ones produced."""
    strategy = st.one_of(
        *(world.targets.messages(topic, base, headers) for topic, base, headers in _bases(world))
    )
    producer = kafka_producer(world.settings)
    produced: list[Fuzzed] = []

    @fuzz_settings(KAFKA_EXAMPLES, batch)
    @given(message=strategy)
    def produce(message: Fuzzed) -> None:
        try:
            producer.produce(
                world.settings.topic(message.topic),
                key=message.key,
                value=message.value,
                headers=_maybe_signed(world.settings, message),
            )
        except (KafkaException, BufferError, TypeError, ValueError):
            return  # the client refuses it: it never reaches a stage
        producer.poll(0)
        produced.append(message)

    produce()
    assert producer.flush(60) == 0, "the broker did not acknowledge every fuzzed message"
    return produced


def _maybe_signed(settings: Settings, message: Fuzzed) -> Any:
    """On a signed topic, two fuzzed messages in three are signed as the validator signs,
    so the garbage reaches the stage's own decoding as from a trusted signer; the third
    tests the signature check. Which ones is a function of the value, so a failing
    example replays the same way."""
    if signers_for(message.topic) is None or zlib.crc32(message.value or b"") % 3 == 0:
        return message.headers
    try:
        return signed(settings, message.topic, message.key, message.value, message.headers)
    except (TypeError, ValueError, AttributeError):
        return message.headers  # headers the client would refuse anyway


def _record(path: Path, produced: list[Fuzzed]) -> None:
    with path.open("w") as out:
        for message in produced:
            out.write(json.dumps(message.as_dict()) + "\n")


# ------------------------------------------------------------------ controls


def _check_controls(
    world: World, pipeline: Pipeline, redis_client: Any, batch: int, produced: list[Fuzzed]
) -> list[str]:
    """Control transfers posted, tracked and cached, a dead letter stored, nobody died,
    ``bankflow verify`` passes, and only the controls moved money; what went wrong."""
    ids = _send_controls(world, batch)
    letter_topic = f"fuzz-control-{batch}"

    def count(sql: str, *args: Any) -> int:
        return int(world.db.execute(sql, args).fetchone()[0])

    def cached() -> bool:
        version = count("select version from accounts where id = %s", world.control)
        entry = redis_client.hget(
            f"{world.settings.redis_prefix}balance:{world.control}", "version"
        )
        return entry is not None and int(entry) == version

    # Each part of the controls, the stages it needs, and whether it is done.
    parts: dict[str, tuple[tuple[str, ...], Callable[[], bool]]] = {
        "posted in the ledger": (("validator", "retrier", "poster"), lambda: count(
            "select count(*) from transfers where id = any(%s) and status = 'posted'", ids
        ) == len(ids)),
        "posted in transfer_status": (("validator", "retrier", "poster", "relay", "tracker"),
            lambda: count("select count(*) from transfer_status where transfer_id = any(%s) "
                          "and status = 'posted'", ids) == len(ids)),
        "balance cached": (("validator", "retrier", "poster", "relay", "cache"), cached),
        "dead letter stored": (("dlq-sink",), lambda: count(
            "select count(*) from dead_letters where original_topic = %s", letter_topic) == 1),
    }  # fmt: skip

    def waiting() -> list[str]:
        """The parts not done yet whose stages are all alive (a dead one is reported)."""
        dead = pipeline.dead()
        return [p for p, (stages, ok) in parts.items() if not set(stages) & set(dead) and not ok()]

    deadline = time.monotonic() + CONTROL_TIMEOUT_S
    while waiting() and time.monotonic() < deadline:
        time.sleep(0.2)
    failures = []
    not_done = [p for p, (_stages, ok) in parts.items() if not ok()]
    if not_done:
        failures.append(_stalled(world, pipeline, batch, produced, not_done))
    verified = run_cli(world.settings, "verify")
    if verified.returncode != 0:
        failures.append(f"batch {batch}: bankflow verify failed:\n{verified.stdout}")
    customers = dict(
        world.db.execute(
            "select id, balance_minor from accounts where type in ('checking', 'savings')"
        ).fetchall()
    )
    moved = {a: b for a, b in customers.items() if b != 0 and a != world.control}
    if moved or customers[world.control] > world.control_minor:
        failures.append(f"batch {batch}: fuzzed messages moved money: {moved}, control "
                        f"{customers[world.control]} of at most {world.control_minor}")  # fmt: skip
    return failures


def _send_controls(world: World, batch: int) -> list[uuid.UUID]:
    """A deposit on transfers.requested and one per partition through the first retry tier."""
    s = world.settings
    producer = kafka_producer(s)
    ids = []
    first_tier = retry_topic(next(iter(TIERS)))
    routes: list[tuple[str, int | None]] = [(TRANSFERS_REQUESTED, None)]
    routes += [(first_tier, p) for p in range(s.topic_partitions)]
    for n, (topic, partition) in enumerate(routes):
        amount = 1000 * (batch + 1) + n
        request = TransferRequest(
            transfer_id=uuid.uuid4(), source=TransferSource.API, debit_account=str(world.cash),
            credit_account=str(world.control), amount_minor=amount, currency=EUR,
            description="fuzz control", category="cash", requested_by="teller:fuzz-control",
        )  # fmt: skip
        key, value = str(world.cash).encode(), request.model_dump_json().encode()
        headers = (
            signed(s, topic, key, value, retry_headers(s, TRANSFERS_REQUESTED))
            if topic == first_tier
            else []
        )
        pin = {} if partition is None else {"partition": partition}
        producer.produce(s.topic(topic), key=key, value=value, headers=headers, **pin)
        ids.append(request.transfer_id)
        world.control_minor += amount
    producer.produce(
        s.topic(TRANSFERS_DLQ),
        key=b"control",
        value=b"control dead letter",
        headers=dead_letter_headers(f"fuzz-control-{batch}", batch),
    )
    assert producer.flush(30) == 0
    world.control_ids += ids
    return ids


def _stalled(
    world: World, pipeline: Pipeline, batch: int, produced: list[Fuzzed], not_done: list[str]
) -> str:
    """What a batch whose controls did not go through leaves behind, for the report."""
    dead = pipeline.dead()
    lines = [f"batch {batch}: controls not {', '.join(not_done)} within {CONTROL_TIMEOUT_S} s; "
             f"stages dead (exit code): {dead}"]  # fmt: skip
    for name in sorted(set(dead) - world.reported):
        world.reported.add(name)
        lines.append(f"--- {name} log:\n{pipeline.tail(name, 3000)}")
        suspects = [m.as_dict() for m in produced if m.topic in READS.get(name, ())]
        lines.append(f"{len(suspects)} fuzzed message(s) on its topics; the first three:")
        lines += [json.dumps(m) for m in suspects[:3]]
    if not dead:
        lines += [f"--- {n} log:\n{pipeline.tail(n, 600)}" for n in pipeline.processes]
    lines.append(f"every message of the batch: {pipeline.logs / f'batch-{batch}-kafka.jsonl'}")
    return "\n".join(lines)


# ------------------------------------------------------------------ API


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    who: str | None  # whose token, None for a public route
    body: dict[str, Any]
    form: bool = False
    idempotent: bool = False  # takes an Idempotency-Key


def _endpoints(world: World) -> list[Endpoint]:
    a = world.api_accounts
    money = {"amount": "1.00", "currency": EUR, "description": "fuzz"}
    held = uuid.uuid4()
    return [
        Endpoint("POST", "/v1/auth/register", None,
                 {"email": "new@fuzz.example", "password": PASSWORD, "full_name": "New"}),
        Endpoint("POST", "/v1/auth/token", None,
                 {"grant_type": "password", "username": "nobody@fuzz.example",
                  "password": PASSWORD, "scope": ""}, form=True),
        Endpoint("POST", "/v1/auth/refresh", None, {"refresh_token": "x.y.z"}),
        Endpoint("POST", "/v1/accounts", "teller",
                 {"customer_id": a["customer"], "type": "checking", "currency": EUR}),
        Endpoint("PATCH", f"/v1/accounts/{a['patched']}", "admin",
                 {"status": "frozen", "overdraft_limit": "1.00"}),
        Endpoint("POST", "/v1/transfers", "customer",
                 {"debit_account": a["own"], "credit_account": str(world.targets.credit),
                  "category": "fuzz", "tags": ["a"], **money}, idempotent=True),
        Endpoint("POST", "/v1/deposits", "teller", {"account_id": a["closed"], **money},
                 idempotent=True),
        Endpoint("POST", "/v1/withdrawals", "teller", {"account_id": a["own"], **money},
                 idempotent=True),
        Endpoint("POST", f"/v1/review/{held}/approve", "reviewer", {"note": "ok"}),
        Endpoint("POST", f"/v1/review/{held}/reject", "reviewer", {"note": "no"}),
        Endpoint("GET", "/v1/transfers", "customer", {"cursor": "x", "limit": "10"}),
        Endpoint("GET", "/v1/accounts", "teller", {"cursor": "x", "customer_id": a["customer"]}),
        Endpoint("GET", f"/v1/accounts/{a['own']}/transactions", "customer",
                 {"cursor": "x", "limit": "10", "from": "2020-01-01T00:00:00Z",
                  "min_amount": "1.00", "q": "x"}),
        Endpoint("GET", f"/v1/accounts/{a['own']}/statement", "customer", {"month": "2026-01"}),
    ]  # fmt: skip


def _fuzz_api(world: World, http: httpx.Client, batch: int) -> list[str]:
    """Arbitrary strings (and, in JSON bodies, values of any type) in every field; the
    5xx answers, each with the request that caused it."""
    endpoints = _endpoints(world)
    errors: list[str] = []

    def mutated(endpoint: Endpoint) -> st.SearchStrategy[tuple[Endpoint, str, Any]]:
        names = [*endpoint.body, *(["Idempotency-Key"] if endpoint.idempotent else [])]
        values = strings if endpoint.form or endpoint.method == "GET" else strings | json_values
        return st.tuples(st.just(endpoint), st.sampled_from(names), values)

    strategy = st.sampled_from(endpoints).flatmap(mutated)

    @fuzz_settings(API_EXAMPLES, batch)
    @given(case=strategy, ascii_json=st.booleans())
    def call(case: tuple[Endpoint, str, Any], ascii_json: bool) -> None:
        endpoint, name, value = case
        headers = dict(world.auth[endpoint.who]) if endpoint.who else {}
        body = dict(endpoint.body)
        key: Any = uuid.uuid4().hex
        if name == "Idempotency-Key":
            key = text_bytes(str(value))
        else:
            body[name] = value
        if endpoint.idempotent:
            headers["Idempotency-Key"] = key
        try:
            answer = _send(http, endpoint, body, headers, ascii_json)
        except (httpx.LocalProtocolError, UnicodeEncodeError):
            return  # the HTTP client refuses to send it (a header with a line break)
        if answer.status_code >= 500:
            errors.append(
                f"{endpoint.method} {endpoint.path} {name}={value!r}: "
                f"{answer.status_code} {answer.text[:200]}"
            )

    call()
    return errors


def _send(
    http: httpx.Client, endpoint: Endpoint, body: dict[str, Any], headers: dict[str, Any],
    ascii_json: bool,
) -> httpx.Response:  # fmt: skip
    if endpoint.method == "GET":
        query = urllib.parse.urlencode({k: text_bytes(str(v)) for k, v in body.items()})
        return http.get(f"{endpoint.path}?{query}", headers=headers)
    if endpoint.form:
        content = urllib.parse.urlencode({k: text_bytes(str(v)) for k, v in body.items()})
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        return http.request(endpoint.method, endpoint.path, content=content, headers=headers)
    headers["Content-Type"] = "application/json"
    return http.request(
        endpoint.method, endpoint.path, content=encode_json(body, ascii_json), headers=headers
    )


# ------------------------------------------------------------------ batch lines

#: The email of the target customer's user, who hands in every fuzzed batch file.
BATCH_SUBMITTER = "target@fuzz.example"
LINE_FIELDS = (
    "debit_account", "credit_account", "amount", "currency", "description", "category",
    "tags", "reference",
)  # fmt: skip


def _fuzz_batch_lines(world: World, tmp_path: Path, batch: int) -> list[str]:
    """A file of a good line, a fuzzed one and a good one, in each format; what went wrong."""
    t = world.targets
    good = {"debit_account": t.debit_iban, "credit_account": str(t.credit), "amount": "1.00",
            "currency": EUR, "description": "fuzz", "category": "fuzz", "tags": "a;b",
            "reference": "r"}  # fmt: skip
    failures: list[str] = []
    submitter = customer_submitter(uuid.uuid4(), BATCH_SUBMITTER, t.customer)
    folder = tmp_path / f"lines-{batch}"
    folder.mkdir()
    files = iter(range(10**6))

    @fuzz_settings(LINE_EXAMPLES, batch)
    @given(
        fmt=st.sampled_from(["csv", "jsonl", "pain001"]),
        name=st.sampled_from(LINE_FIELDS),
        value=strings,
        typed=json_values,
        use_typed=st.booleans(),
    )
    def ingest_one(fmt: str, name: str, value: str, typed: Any, use_typed: bool) -> None:
        bad = {**good, name: typed if use_typed and fmt == "jsonl" else value}
        path = folder / f"{next(files)}.{fmt}"
        path.write_bytes(_file(fmt, [good, bad, good]))
        where = f"{fmt} {name}={bad[name]!r}"
        try:
            report = ingest(world.settings, path, fmt, submitter=submitter)  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - what the fuzz test looks for
            failures.append(f"{where}: ingest raised {type(exc).__name__}: {exc}")
            return
        failures.extend(f"{where}: {p}" for p in _line_problems(fmt, report))

    ingest_one()
    # The CLI once per batch, on a file with one fuzzed line of each field (the good
    # line names the batch: the same file twice would be a duplicate, and send nothing).
    path = folder / "all.csv"
    first = {**good, "description": f"fuzz batch {batch}"}
    path.write_bytes(_file("csv", [first, *({**good, n: "\x00\udc80" + n} for n in LINE_FIELDS)]))
    done = run_cli(world.settings, "ingest", str(path), "--submitted-by", BATCH_SUBMITTER, "--json")
    if done.returncode != 0 or json.loads(done.stdout)["requests_produced"] != 1:
        failures.append(f"bankflow ingest: exit {done.returncode} {done.stdout} {done.stderr}")
    return failures


def _line_problems(fmt: str, report: Any) -> list[str]:
    if fmt == "pain001":
        # A changed amount or count may refuse the whole file (totals); that is reported.
        if report.refused or report.requests_produced + report.error_count == 3:
            return []
        return [f"3 transactions, {report.requests_produced} produced, {report.as_dict()}"]
    problems = []
    if report.refused:
        problems.append(f"file refused: {report.refused}")
    if report.requests_produced < 1:
        problems.append(f"the good first line was not produced: {report.as_dict()}")
    first = 2 if fmt == "csv" else 1  # the good line's number (CSV has a header)
    if any(e.line <= first for e in report.errors):
        problems.append(f"the good first line was reported: {report.as_dict()}")
    return problems


def _file(fmt: str, lines: list[dict[str, Any]]) -> bytes:
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(LINE_FIELDS)
        writer.writerows([[str(line[f]) for f in LINE_FIELDS] for line in lines])
        return text_bytes(out.getvalue())
    if fmt == "jsonl":
        return b"".join(encode_json(line, False) + b"\n" for line in lines)
    return _pain001(lines)


def _pain001(lines: list[dict[str, Any]]) -> bytes:
    """A pain.001.001.03 of one payment block, its debtor the first line's debit account."""
    x = lambda v: escape(str(v))  # noqa: E731
    total = 0.0
    transactions = []
    for n, line in enumerate(lines):
        with contextlib.suppress(ValueError):
            total += float(line["amount"])
        transactions.append(
            f"<CdtTrfTxInf><PmtId><EndToEndId>{x(line['reference'])}-{n}</EndToEndId></PmtId>"
            f'<Amt><InstdAmt Ccy="{x(line["currency"])}">{x(line["amount"])}</InstdAmt></Amt>'
            f"<Cdtr><Nm>{x(line['category'])}</Nm></Cdtr>"
            f"<CdtrAcct><Id><IBAN>{x(line['credit_account'])}</IBAN></Id></CdtrAcct>"
            f"<RmtInf><Ustrd>{x(line['description'])}</Ustrd></RmtInf></CdtTrfTxInf>"
        )
    debtor = x(lines[1]["debit_account"])
    document = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<Document xmlns="urn:iso:std:iso:20022:tech:xsd:pain.001.001.03"><CstmrCdtTrfInitn>'
        f"<GrpHdr><MsgId>fuzz</MsgId><NbOfTxs>{len(lines)}</NbOfTxs></GrpHdr>"
        f"<PmtInf><PmtInfId>{x(lines[1]['tags'])}</PmtInfId><PmtMtd>TRF</PmtMtd>"
        f"<NbOfTxs>{len(lines)}</NbOfTxs><CtrlSum>{total:.2f}</CtrlSum>"
        f"<DbtrAcct><Id><IBAN>{debtor}</IBAN></Id></DbtrAcct>"
        + "".join(transactions)
        + "</PmtInf></CstmrCdtTrfInitn></Document>"
    )
    return text_bytes(document)
