"""``bankflow bench e2e``: posted transfers per second and request-to-posted latency.

The whole pipeline runs as it does in production: the validator, retrier, poster,
relay and tracker as ``bankflow run NAME`` processes, in a throw-away schema, topic
prefix and Redis prefix. The bench opens ``accounts`` customer accounts (one customer
each), funds them from the bank's cash account through the running poster, then
produces transfer requests to ``transfers.requested`` as customers would send them:
as fast as it can (``rate=None``) or at a fixed rate, by the clock. A share of them
debit a few hot accounts, the ledger's worst case (their rows are locked by every
batch that touches them).

Figures, from the ledger itself (``transfers.requested_at`` and ``posted_at``):

- ``posted_tps``: postings per second over the middle 80 % of postings (warm-up and
  tail left out);
- ``latency_ms_p50`` / ``p99`` / ``max``: from the request's ``requested_at`` (set when
  the bench produced it) to its ``posted_at``, over the middle 80 % of the requests by
  request time (``latency_ms_max_all`` over all of them); ``validator_ms_*`` and
  ``poster_ms_*`` split it at the validator's stored decision;
- ``lost``: requests with neither a ledger row nor a terminal status; ``duplicated``:
  transfers with more than one posting. Both must be 0;
- ``cpu_s_*``: CPU seconds of each service, server and the machine during the run.

Two baselines on the same servers, after the services stopped:

- ``kafka_baseline_tps``: a bare idempotent producer and a bare read_committed
  consumer moving as many messages of the same size through a topic of the same
  partitions at once; the slower of the two rates;
- ``sql_baseline_tps``: the poster's ledger writes by bare set-based SQL in the
  poster's batch size (``bench.poster``'s baseline).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bankflow.bootstrap import db_connect, kafka_consumer, kafka_producer, redis_client
from bankflow.ledger.accounts import create_customer, find_internal_account, open_account
from bankflow.observability import probe
from bankflow.settings import PROJECT_ROOT, Settings
from bankflow.signing import Keyring
from bench.common import clean_up, throwaway
from bench.poster import _bare_sql_tps
from bench.validator import _drop_redis_keys
from schemas.topics import TRANSFERS_ACCEPTED, TRANSFERS_REQUESTED
from schemas.transfers import AcceptedTransfer, TransferRequest, TransferSource

#: The services a transfer passes through (the retrier and the tracker run as they
#: would in production: the tracker writes every transfer's status).
SERVICES = ("validator", "retrier", "poster", "relay", "tracker")
#: The hot accounts that ``hot_share`` of the transfers debit.
HOT_ACCOUNTS = 4
#: Every account gets this much: far more than it will send in any run.
FUNDING_MINOR = 10**10
#: Transfer amounts stay below every fraud rule's amount threshold (the smallest is
#: 50,000) and keep a hot account far under its daily limit (10,000,000.00).
AMOUNT_MAX_MINOR = 1_000
#: Services start in a few seconds; one that is not ready after this is broken.
READY_TIMEOUT_S = 90
#: How often progress is read from the ledger.
POLL_INTERVAL_S = 0.5
#: A fixed rate is paced in batches this far apart: small enough that requests leave
#: evenly, large enough that the pacing loop costs nothing.
PACE_INTERVAL_S = 0.01
#: The run ends when nothing more got posted for this long (a stuck pipeline) ...
STALL_TIMEOUT_S = 60
#: ... and in any case after this long past the last request produced.
DRAIN_TIMEOUT_S = 600
#: Steady state: the middle share of postings; the first and last 10 % are warm-up
#: (group joins, first batches) and tail (the last, partly filled batches).
STEADY_SHARE = 0.8
BASELINE_TOPIC = "bench.e2e-baseline"
#: Waits of 0.1 s for room in a full producer queue: a minute, far past a healthy broker.
QUEUE_FULL_WAITS = 600
TERMINAL_STATUSES = ["rejected", "posted", "failed"]
STAGE_KEYS = ("validator_ms_p50", "validator_ms_p99", "poster_ms_p50", "poster_ms_p99")


@dataclass(frozen=True)
class Options:
    transfers: int
    accounts: int = 200
    hot_share: float = 0.2
    #: Requests per second; None: as fast as the producer goes.
    rate_per_s: float | None = None


@dataclass(frozen=True)
class Planned:
    transfer_id: uuid.UUID
    debit: uuid.UUID
    credit: uuid.UUID
    amount_minor: int


# ------------------------------------------------------------- pure helpers


def parse_rate(text: str) -> float | None:
    """``max`` (None) or a positive number of requests per second."""
    if text.strip().lower() == "max":
        return None
    rate = float(text)
    if not math.isfinite(rate) or rate <= 0:
        raise ValueError(f"the rate must be positive or 'max', not {text!r}")
    return rate


def percentile(values: Sequence[float], share: float) -> float:
    """The nearest-rank percentile (``share`` in 0..1) of ``values``; 0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(share * len(ordered)))
    return float(ordered[rank - 1])


def steady_rate_per_s(times_s: Sequence[float], share: float = STEADY_SHARE) -> float:
    """Events per second over the middle ``share`` of ``times_s`` (sorted or not).

    0 when there are too few events, or they all happened at once, to tell a rate.
    """
    ordered = sorted(times_s)
    skip = round(len(ordered) * (1 - share) / 2)
    first, last = skip, len(ordered) - 1 - skip
    if last <= first or ordered[last] <= ordered[first]:
        return 0.0
    return (last - first) / (ordered[last] - ordered[first])


def steady_middle(
    by_time: Sequence[tuple[float, float]], share: float = STEADY_SHARE
) -> list[float]:
    """The values of the middle ``share`` of ``(time, value)`` pairs, in time order.

    Latencies are steady-state figures like the rate: the first requests wait for the
    stages' first batches (measured: up to 0.6 s in the first second at 500/s, under
    0.2 s after it), the last ones for partly filled batches.
    """
    ordered = sorted(by_time)
    skip = round(len(ordered) * (1 - share) / 2)
    return [value for _, value in ordered[skip : len(ordered) - skip]]


def plan_transfers(
    accounts: Sequence[uuid.UUID], count: int, hot_share: float, seed: int = 7
) -> list[Planned]:
    """``count`` transfers among ``accounts``; ``hot_share`` of them debit a hot one."""
    rng = random.Random(seed)
    hot = list(accounts[: min(HOT_ACCOUNTS, len(accounts))])
    planned = []
    for _ in range(count):
        debit = rng.choice(hot) if rng.random() < hot_share else rng.choice(accounts)
        credit = rng.choice(accounts)
        while credit == debit:
            credit = rng.choice(accounts)
        planned.append(
            Planned(uuid.UUID(int=rng.getrandbits(128), version=4), debit, credit,
                    rng.randint(1, AMOUNT_MAX_MINOR))
        )  # fmt: skip
    return planned


def summarise(
    options: Options,
    pipeline: dict[str, Any],
    kafka: dict[str, float],
    sql_tps: float,
    settings: Settings,
) -> dict[str, Any]:
    """The one JSON object the command prints."""
    posted_tps, kafka_tps = pipeline["posted_tps"], kafka["tps"]
    return {
        "transfers": options.transfers,
        "accounts": options.accounts,
        "hot_share": options.hot_share,
        "rate": "max" if options.rate_per_s is None else options.rate_per_s,
        "partitions": settings.topic_partitions,
        "produced_tps": round(pipeline["produced_tps"]),
        "posted_tps": round(posted_tps),
        "latency_ms_p50": round(pipeline["latency_ms_p50"], 1),
        "latency_ms_p99": round(pipeline["latency_ms_p99"], 1),
        "latency_ms_max": round(pipeline["latency_ms_max"], 1),
        # Warm-up and tail included: the first requests wait for the first batches.
        "latency_ms_max_all": round(pipeline["latency_ms_max_all"], 1),
        # Request to the validator's decision, and decision to posting.
        **{key: round(pipeline[key], 1) for key in STAGE_KEYS if key in pipeline},
        "kafka_baseline_tps": round(kafka_tps),
        "kafka_produce_tps": round(kafka["produce_tps"]),
        "kafka_consume_tps": round(kafka["consume_tps"]),
        "sql_baseline_tps": round(sql_tps),
        "ratio_to_kafka": round(posted_tps / kafka_tps, 3) if kafka_tps else None,
        "ratio_to_sql": round(posted_tps / sql_tps, 3) if sql_tps else None,
        "posted": pipeline["posted"],
        "rejected": pipeline["rejected"],
        "failed": pipeline["failed"],
        "lost": pipeline["lost"],
        "duplicated": pipeline["duplicated"],
        "wall_s": round(pipeline.get("wall_s", 0.0), 1),
        **{key: round(value, 1) for key, value in pipeline.items() if key.startswith("cpu_s_")},
    }


# ------------------------------------------------------------------ the run


def run_bench(settings: Settings, options: Options, echo: Callable[[str], None]) -> dict[str, Any]:
    topics = (*settings.all_topics(), BASELINE_TOPIC)
    work = Path(tempfile.mkdtemp(prefix="bankflow-e2e-"))
    tag = uuid.uuid4().hex[:8]
    bench = throwaway(
        settings, topics, redis_prefix=f"bench-{tag}:", fraud_rules=_bench_rules(settings, work),
        validator_group=f"bench-{tag}-validator", retrier_group=f"bench-{tag}-retrier",
        tracker_group=f"bench-{tag}-tracker",
    )  # fmt: skip
    processes: list[subprocess.Popen[bytes]] = []
    try:
        echo(f"opening {options.accounts} accounts in {bench.db_schema} ...")
        owners = _open_accounts(bench, options.accounts)
        processes = _start_services(bench, work, echo)
        _fund(bench, list(owners), echo)
        pipeline = _run_pipeline(bench, owners, options, processes, echo)
        _stop_all(processes)
        echo("baselines: bare Kafka, bare SQL ...")
        kafka = _kafka_baseline_tps(bench, options.transfers, pipeline["sample"])
        with db_connect(bench, autocommit=True) as conn:
            conn.execute("vacuum analyze")  # the pipeline's rows are not the baseline's cost
            sql_tps = _bare_sql_tps(conn, bench, list(owners), options.transfers)
    finally:
        _stop_all(processes)
        clean_up(bench, topics)
        _drop_redis_keys(redis_client(bench), bench.redis_prefix)
    if pipeline["lost"] or pipeline["duplicated"]:
        echo(f"[red]lost {pipeline['lost']}, duplicated {pipeline['duplicated']}[/red]: "
             f"the services' logs are in {work}")  # fmt: skip
    else:
        shutil.rmtree(work, ignore_errors=True)  # kept on failure: the services' logs
    return summarise(options, pipeline, kafka, sql_tps, settings)


def _bench_rules(settings: Settings, work: Path) -> Path:
    """The configured fraud rules with velocity limits no bench account reaches.

    Every rule still runs (its cost is measured); only the velocity windows would hold
    a hot account's hundreds of transfers a minute for review, which a bank would
    configure for such a customer too.
    """
    rules = yaml.safe_load(settings.fraud_rules.read_text())
    for window in rules.get("velocity", []):
        window["count_max"], window["sum_max_minor"] = 10**9, 10**15
    rules["version"] = f"{rules.get('version', 'rules')}-bench-e2e"
    path = work / "fraud_rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    return path


def _open_accounts(settings: Settings, count: int) -> dict[uuid.UUID, uuid.UUID]:
    """``count`` checking accounts, each of a customer of its own: account -> customer."""
    owners = {}
    with db_connect(settings, autocommit=True) as conn, conn.transaction():
        for n in range(count):
            customer = create_customer(conn, f"E2E Customer {n}")
            account = open_account(
                conn, settings, customer_id=customer, account_type="checking", currency="EUR"
            )
            owners[account.id] = customer
    return owners


# ---------------------------------------------------------------- services


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _service_env(settings: Settings, name: str, port: int) -> dict[str, str]:
    """The environment that makes ``bankflow run NAME`` use exactly the bench's settings."""
    env = dict(os.environ)
    env.update({
        "BANKFLOW_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "BANKFLOW_DATABASE_URL": settings.database_url,
        "BANKFLOW_REDIS_URL": settings.redis_url,
        "BANKFLOW_SIGNING_KEYS_FILE": str(settings.signing_keys_path),
        "BANKFLOW_TOPIC_PREFIX": settings.topic_prefix,
        "BANKFLOW_TOPIC_PARTITIONS": str(settings.topic_partitions),
        "BANKFLOW_DB_SCHEMA": settings.db_schema,
        "BANKFLOW_REDIS_PREFIX": settings.redis_prefix,
        "BANKFLOW_POSTER_GROUP": settings.poster_group,
        "BANKFLOW_VALIDATOR_GROUP": settings.validator_group,
        "BANKFLOW_RETRIER_GROUP": settings.retrier_group,
        "BANKFLOW_TRACKER_GROUP": settings.tracker_group,
        "BANKFLOW_FRAUD_RULES": str(settings.fraud_rules),
        "BANKFLOW_METRICS_HOST": "127.0.0.1",
        f"BANKFLOW_{name.upper().replace('-', '_')}_METRICS_PORT": str(port),
        "PYTHONUNBUFFERED": "1",
    })  # fmt: skip
    return env


def _start_services(
    settings: Settings, work: Path, echo: Callable[[str], None]
) -> list[subprocess.Popen[bytes]]:
    """Every service as ``bankflow run NAME``, each ready (``/readyz``) before it returns."""
    processes, ports = [], {}
    for name in SERVICES:
        ports[name] = _free_port()
        with (work / f"{name}.log").open("ab") as log:
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "bankflow.cli", "run", name],
                    env=_service_env(settings, name, ports[name]),
                    cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT,
                )
            )  # fmt: skip
    deadline = time.monotonic() + READY_TIMEOUT_S
    waiting = set(SERVICES)
    while waiting:
        for name, process in zip(SERVICES, processes, strict=True):
            if process.poll() is not None:
                _stop_all(processes)
                raise RuntimeError(f"{name} exited with {process.returncode}: see {work}")
        waiting = {n for n in waiting if not probe("127.0.0.1", ports[n])["readyz"]}
        if waiting and time.monotonic() > deadline:
            _stop_all(processes)
            raise RuntimeError(f"not ready after {READY_TIMEOUT_S} s: {sorted(waiting)} ({work})")
        time.sleep(0.2)
    echo(f"services ready: {', '.join(SERVICES)} (logs in {work})")
    return processes


def _stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


# ---------------------------------------------------------------- pipeline


def _fund(settings: Settings, accounts: list[uuid.UUID], echo: Callable[[str], None]) -> None:
    """Credit every account from the bank's cash account, through the running poster.

    The deposits go to ``transfers.accepted`` signed as the validator signs, as a
    teller's deposit would arrive; they also warm the poster up before the clock runs.
    """
    with db_connect(settings, autocommit=True) as conn:
        cash = find_internal_account(conn, "cash", "EUR")
        if cash is None:
            raise RuntimeError("the bench schema has no EUR cash account")
        before = _count(conn, "select count(*) from transfers")
        producer = kafka_producer(settings)
        keyring = Keyring.load(settings.signing_keys_path)
        topic = settings.topic(TRANSFERS_ACCEPTED)
        for account in accounts:
            deposit = AcceptedTransfer(
                transfer_id=uuid.uuid4(), source=TransferSource.API, debit_account_id=cash.id,
                credit_account_id=account, amount_minor=FUNDING_MINOR, currency="EUR",
            )  # fmt: skip
            key, value = str(cash.id).encode(), deposit.model_dump_json().encode()
            headers = keyring.sign("validator", TRANSFERS_ACCEPTED, key, value, None)
            producer.produce(topic, key=key, value=value, headers=headers)
        if producer.flush(60):
            raise RuntimeError("the broker did not acknowledge the deposits")
        deadline = time.monotonic() + READY_TIMEOUT_S
        while _count(conn, "select count(*) from transfers") < before + len(accounts):
            if time.monotonic() > deadline:
                raise RuntimeError("the poster did not post the deposits")
            time.sleep(POLL_INTERVAL_S)
    echo(f"funded {len(accounts)} accounts through the poster")


def _count(conn: Any, sql: str, *params: Any) -> int:
    row = conn.execute(sql, params or None).fetchone()
    return int(row[0]) if row else 0


def _run_pipeline(
    settings: Settings,
    owners: dict[uuid.UUID, uuid.UUID],
    options: Options,
    processes: list[subprocess.Popen[bytes]],
    echo: Callable[[str], None],
) -> dict[str, Any]:
    planned = plan_transfers(list(owners), options.transfers, options.hot_share)
    ids = [p.transfer_id for p in planned]
    with db_connect(settings, autocommit=True) as conn:
        base = _count(conn, "select count(*) from transfers")
        rate = "max" if options.rate_per_s is None else f"{options.rate_per_s:,.0f}/s"
        echo(f"producing {len(planned):,} requests at {rate} ...")
        pids = {name: p.pid for name, p in zip(SERVICES, processes, strict=True)}
        pids["bench"] = os.getpid()  # the producer
        cpu_before = _cpu_snapshot(pids)
        started = time.perf_counter()
        sample = _produce(settings, owners, planned, options.rate_per_s)
        produced_s = time.perf_counter() - started
        _drain(conn, base, len(planned), echo)
        wall_s = time.perf_counter() - started
        # Where the time goes: each service's CPU seconds while the run lasted, next to
        # the bench's and the machine's (PostgreSQL, Kafka and Redis are the rest).
        cpu_after = _cpu_snapshot(pids)
        cpu = {f"cpu_s_{name}": cpu_after[name] - before for name, before in cpu_before.items()}
        return {**_outcome(conn, ids), **cpu, "sample": sample, "wall_s": wall_s,
                "produced_tps": len(planned) / produced_s}  # fmt: skip


def _produce(
    settings: Settings,
    owners: dict[uuid.UUID, uuid.UUID],
    planned: list[Planned],
    rate_per_s: float | None,
) -> bytes:
    """Produce the requests, paced by the clock at a fixed rate; one payload as a sample."""
    # At full speed, larger batches; at a fixed rate, the services' own 5 ms linger.
    tuning: dict[str, Any] = {"linger.ms": 20} if rate_per_s is None else {}
    producer = kafka_producer(settings, **tuning)
    topic = settings.topic(TRANSFERS_REQUESTED)
    started, sent, value = time.perf_counter(), 0, b""
    while sent < len(planned):
        due = (
            len(planned)
            if rate_per_s is None
            else int((time.perf_counter() - started) * rate_per_s) + 1
        )
        for p in planned[sent : min(due, len(planned))]:
            value = TransferRequest(
                transfer_id=p.transfer_id, source=TransferSource.API,
                debit_account=str(p.debit), credit_account=str(p.credit),
                amount_minor=p.amount_minor, currency="EUR",
                requested_by=f"customer:{owners[p.debit]}",
            ).model_dump_json().encode()  # fmt: skip
            _send(producer, topic, str(p.debit).encode(), value)
        sent = max(sent, min(due, len(planned)))
        if sent < len(planned):
            time.sleep(PACE_INTERVAL_S)
    if producer.flush(120):
        raise RuntimeError("the broker did not acknowledge the bench's requests")
    return value


def _send(producer: Any, topic: str, key: bytes, value: bytes) -> None:
    """Produce one message, waiting while the producer's local queue is full (a run of
    more than its 100,000 messages at the maximum rate), for at most a minute."""
    for _ in range(QUEUE_FULL_WAITS):
        try:
            producer.produce(topic, key=key, value=value)
        except BufferError:
            producer.poll(0.1)
        else:
            producer.poll(0)
            return
    raise RuntimeError("the producer's queue stayed full for a minute")


def _drain(conn: Any, base: int, count: int, echo: Callable[[str], None]) -> None:
    """Wait until every request reached the ledger or was rejected, or nothing moves."""
    last, last_change = -1, time.monotonic()
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        done = (
            _count(conn, "select count(*) from transfers")
            - base
            + _count(conn, "select count(*) from transfer_status where status = 'rejected'")
        )
        if done >= count:
            return
        if done != last:
            last, last_change = done, time.monotonic()
        elif time.monotonic() - last_change > STALL_TIMEOUT_S:
            echo(f"[yellow]stalled at {done:,}/{count:,}[/yellow]")
            return
        time.sleep(POLL_INTERVAL_S)
    echo(f"[yellow]drain timed out at {last:,}/{count:,}[/yellow]")


def _outcome(conn: Any, ids: list[uuid.UUID]) -> dict[str, Any]:
    """The figures and checks from the ledger and the status table, for ``ids`` only."""
    rows = conn.execute(
        "select extract(epoch from posted_at)::float8, "
        "extract(epoch from posted_at - requested_at)::float8 * 1000, "
        "extract(epoch from requested_at)::float8 "
        "from transfers where id = any(%s) and status = 'posted'",
        (ids,),
    ).fetchall()
    posted_times = [r[0] for r in rows]
    latencies = steady_middle([(r[2], r[1]) for r in rows])
    lost = _count(
        conn,
        "select count(*) from unnest(%s::uuid[]) as p(id) "
        "where not exists (select 1 from transfers t where t.id = p.id) "
        "and not exists (select 1 from transfer_status s "
        "                 where s.transfer_id = p.id and s.status = any(%s))",
        ids, TERMINAL_STATUSES,
    )  # fmt: skip
    duplicated = _count(
        conn,
        "select count(*) from (select transfer_id from entries where transfer_id = any(%s) "
        "group by transfer_id having count(*) > 2) as twice",
        ids,
    )
    failed = _count(
        conn, "select count(*) from transfers where id = any(%s) and status = 'failed'", ids
    )
    rejected = _count(
        conn,
        "select count(*) from transfer_status where transfer_id = any(%s) and status = 'rejected'",
        ids,
    )
    return {
        **_stage_latencies(conn, ids),
        "posted": len(rows), "failed": failed, "rejected": rejected, "lost": lost,
        "duplicated": duplicated, "posted_tps": steady_rate_per_s(posted_times),
        "latency_ms_p50": percentile(latencies, 0.50),
        "latency_ms_p99": percentile(latencies, 0.99),
        "latency_ms_max": max(latencies, default=0.0),
        "latency_ms_max_all": max((r[1] for r in rows), default=0.0),
    }  # fmt: skip


def _stage_latencies(conn: Any, ids: list[uuid.UUID]) -> dict[str, float]:
    """Where a posted request's time goes: up to the validator's decision, then on to
    its posting (``validator_decisions.decided_at`` is the validator's store
    transaction, just before its Kafka transaction commits)."""
    rows = conn.execute(
        "select extract(epoch from t.requested_at)::float8, "
        "extract(epoch from d.decided_at - t.requested_at)::float8 * 1000, "
        "extract(epoch from t.posted_at - d.decided_at)::float8 * 1000 "
        "from transfers t join validator_decisions d on d.transfer_id = t.id "
        "where t.id = any(%s) and t.status = 'posted'",
        (ids,),
    ).fetchall()
    to_decision = steady_middle([(r[0], r[1]) for r in rows])
    to_posting = steady_middle([(r[0], r[2]) for r in rows])
    return {
        "validator_ms_p50": percentile(to_decision, 0.50),
        "validator_ms_p99": percentile(to_decision, 0.99),
        "poster_ms_p50": percentile(to_posting, 0.50),
        "poster_ms_p99": percentile(to_posting, 0.99),
    }


# --------------------------------------------------------------- baselines


def _kafka_baseline_tps(settings: Settings, count: int, sample: bytes) -> dict[str, float]:
    """A bare producer and a bare read_committed consumer, both running at once.

    The pair carries what the slower of the two carries: the producer's rate (to the
    last acknowledgement) and the consumer's (from its first batch to the last; the
    first fetch waits out ``fetch.wait.max.ms``, and batches of up to a thousand are too
    coarse for a rate over the middle share) are measured, the baseline is the lower.
    """
    topic = settings.topic(BASELINE_TOPIC)
    consumer = kafka_consumer(settings, group_id=f"{settings.topic_prefix}kafka-baseline")
    consumer.subscribe([topic])
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not consumer.assignment():  # joining the group is not measured
            if time.monotonic() > deadline:
                raise RuntimeError("the baseline consumer got no partitions")
            consumer.poll(0.1)
        keys = [uuid.UUID(int=n).bytes for n in range(1000)]
        producer = kafka_producer(settings)
        produced_s: list[float] = []
        started = time.perf_counter()

        def produce() -> None:
            for n in range(count):
                _send(producer, topic, keys[n % len(keys)], sample)
            producer.flush(120)
            produced_s.append(time.perf_counter() - started)

        thread = threading.Thread(target=produce, daemon=True)
        thread.start()
        read_times: list[float] = []  # seconds since the first produce, one per message
        last_read = time.monotonic()
        while len(read_times) < count and time.monotonic() - last_read < STALL_TIMEOUT_S:
            batch = [m for m in consumer.consume(1000, 0.5) if m.error() is None]
            if batch:
                last_read = time.monotonic()
                read_times.extend([time.perf_counter() - started] * len(batch))
        thread.join(STALL_TIMEOUT_S)
        first = read_times.count(read_times[0]) if read_times else 0
        span_s = read_times[-1] - read_times[0] if read_times else 0.0
        consume_tps = (len(read_times) - first) / span_s if span_s > 0 else 0.0
        produce_tps = count / produced_s[0] if produced_s else 0.0
        return {"produce_tps": produce_tps, "consume_tps": consume_tps,
                "tps": min(produce_tps, consume_tps or produce_tps)}  # fmt: skip
    finally:
        with contextlib.suppress(Exception):
            consumer.close()


# --------------------------------------------------------------- CPU use

#: The servers' processes by their command name, to add up what each server used.
SERVER_COMMANDS = {"postgres": "postgres", "kafka": "java", "redis": "redis-server"}


def _cpu_snapshot(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each service, each server (all its processes; other users
    of the shared servers count too) and the machine."""
    by_server = dict.fromkeys(SERVER_COMMANDS, 0.0)
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            command = (proc / "comm").read_text().strip()
            for server, name in SERVER_COMMANDS.items():
                if command == name:
                    by_server[server] += cpu_seconds(int(proc.name))
    services = {name: cpu_seconds(pid) for name, pid in pids.items()}
    return {**services, **by_server, "machine": cpu_seconds()}


def cpu_seconds(pid: int | None = None) -> float:
    """CPU seconds (user and system) used so far by process ``pid``, or by the whole
    machine when None; 0 where ``/proc`` cannot tell (not Linux, process gone)."""
    ticks_per_s = os.sysconf("SC_CLK_TCK")
    try:
        if pid is None:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
            # user nice system idle iowait irq softirq steal: all but idle and iowait
            busy = [int(v) for i, v in enumerate(fields[:8]) if i not in (3, 4)]
            return sum(busy) / ticks_per_s
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / ticks_per_s  # utime, stime
    except (OSError, ValueError, IndexError):
        return 0.0
