"""``bankflow``: the single entry point for every service and tool."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from bankflow.errors import BankflowError
from bankflow.settings import Settings, get_settings

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="bankflow: a bank's transfer pipeline (Kafka in, a ledger out, exactly once).",
)
stack_app = typer.Typer(no_args_is_help=True, help="The local stack: Kafka, PostgreSQL, Redis.")
topics_app = typer.Typer(no_args_is_help=True, help="The Kafka topics named in schemas/topics.py.")
bench_app = typer.Typer(
    no_args_is_help=True, help="Benchmarks: ratios against a same-run baseline."
)
accounts_app = typer.Typer(no_args_is_help=True, help="Customers' and the bank's accounts.")
app.add_typer(stack_app, name="stack")
app.add_typer(topics_app, name="topics")
app.add_typer(accounts_app, name="accounts")
app.add_typer(bench_app, name="bench")
dlq_app = typer.Typer(no_args_is_help=True, help="Dead letters: list, show, replay, discard.")
app.add_typer(dlq_app, name="dlq")
users_app = typer.Typer(no_args_is_help=True, help="API users: customers and staff.")
app.add_typer(users_app, name="users")

console = Console(stderr=True)
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON document for scripts.")]


def _settings() -> Settings:
    try:
        return get_settings()
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from exc


def _print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")


# ------------------------------------------------------------------- stack


@stack_app.command("up")
def stack_up(as_json: JsonFlag = False) -> None:
    """Start Kafka (KRaft), PostgreSQL and Redis on loopback; idempotent."""
    from infra.stack import LocalStack

    stack = LocalStack(_settings(), echo=lambda line: console.print(line, highlight=False))
    statuses = stack.up()
    if as_json:
        _print_json([s.as_dict() for s in statuses])
    else:
        console.print(f"wrote {stack.settings.stack_env_file}")


@stack_app.command("down")
def stack_down(
    purge: Annotated[bool, typer.Option(help="Also delete the servers' data.")] = False,
) -> None:
    """Stop exactly the servers `stack up` started (by pid file)."""
    from infra.stack import LocalStack

    stopped = LocalStack(_settings()).down(purge=purge)
    console.print(
        f"stopped: {', '.join(stopped) or 'nothing was running'}"
        + (" (data purged)" if purge else "")
    )


@stack_app.command("status")
def stack_status(as_json: JsonFlag = False) -> None:
    """Show each server as up or down, with its address and version. Exit 1 if any is down."""
    from infra.stack import LocalStack

    statuses = LocalStack(_settings()).status()
    if as_json:
        _print_json([s.as_dict() for s in statuses])
    else:
        table = Table("server", "state", "address", "version", "started by this stack")
        for column in table.columns:
            column.overflow = "fold"
        for s in statuses:
            colour = "green" if s.state == "up" else "red"
            table.add_row(
                s.name,
                f"[{colour}]{s.state}[/{colour}]",
                s.address,
                s.version or "-",
                f"yes (pid {s.pid})" if s.managed else "no",
            )
        Console().print(table)
    if any(s.state != "up" for s in statuses):
        raise typer.Exit(1)


@app.command("status")
def status(as_json: JsonFlag = False) -> None:
    """Every service (its metrics port's /healthz and /readyz, and what `run all` says
    of it) and every server, at a glance.

    Exit 1 if a service is down, not ready or crash-looping, a stage is halted, or a
    server is down.
    """
    from bankflow.observability import service_statuses
    from bankflow.registry import NAMES
    from bankflow.services import read_state
    from infra.stack import LocalStack

    settings = _settings()
    services = service_statuses(settings, list(NAMES))
    state = read_state(settings)
    running = state is not None and state["supervisor"]["running"]
    supervised = {s["name"]: s for s in state["services"]} if running and state else {}
    for s in services:
        s["supervisor"] = supervised.pop(s["name"], None)
    # Processes run all runs beyond the registry's names: the demo feed, extra instances.
    services += [
        {"name": name, "address": None, "state": "no port", "ready": False, "supervisor": child}
        for name, child in supervised.items()
    ]
    servers = LocalStack(settings).status()
    halted = _halted_stages(settings)
    for s in services:
        s["halted"] = halted.get(s["name"])
    if as_json:
        _print_json(
            {
                "services": services,
                "supervisor": None if state is None else state["supervisor"],
                "servers": [s.as_dict() for s in servers],
                "halted": list(halted.values()),
            }
        )
    else:
        Console().print(_services_table(services, state))
        for halt in halted.values():
            console.print(
                f"[red]{halt['stage']} is halted[/red] since {halt['halted_at']}: "
                f"{halt['reason']}\n  (`bankflow halt clear {halt['stage']} --note ... "
                "--actor WHO` "
                "once the cause is fixed; docs/runbook.md#a-halted-stage)"
            )
        table = Table("server", "state", "address", "version", title="servers")
        for column in table.columns:
            column.overflow = "fold"
        for server in servers:
            colour = "green" if server.state == "up" else "red"
            table.add_row(
                server.name,
                f"[{colour}]{server.state}[/{colour}]",
                server.address,
                server.version or "-",
            )
        Console().print(table)
    healthy = all(
        s["state"] == "up" and s["ready"] for s in services if s["name"] in NAMES
    ) and not any(s["supervisor"] and s["supervisor"]["crash_looping"] for s in services)
    if not healthy or halted or any(s.state != "up" for s in servers):
        raise typer.Exit(1)


def _halted_stages(settings: Settings) -> dict[str, dict[str, Any]]:
    """Open halts by stage; none when PostgreSQL does not answer (the servers table
    shows it down then)."""
    import psycopg

    from bankflow.bootstrap import db_connect
    from bankflow.streaming import halts

    try:
        with db_connect(settings, autocommit=True, connect_timeout=2) as conn:
            return {h.stage: h.as_dict() for h in halts.listing(conn)}
    except psycopg.Error:
        return {}


def _services_table(services: list[dict[str, Any]], state: dict[str, Any] | None) -> Table:
    if state is None:
        caption = "no `bankflow run all` has run here"
    elif state["supervisor"]["running"]:
        caption = f"supervised by `bankflow run all` (pid {state['supervisor']['pid']})"
    else:
        caption = (
            f"`bankflow run all` is not running (last seen {state['supervisor']['updated_at']})"
        )
    table = Table(
        "service", "state", "ready", "metrics address", "run all", "restarts", "last exit",
        title="services", caption=caption,
    )  # fmt: skip
    for column in table.columns:
        column.overflow = "fold"
    colours = {"running": "green", "backoff": "yellow", "crash-looping": "red"}
    for s in services:
        colour = "green" if s["state"] == "up" and s["ready"] else "red"
        ready = ("yes" if s["ready"] else "no") if s["state"] == "up" else "-"
        child = s["supervisor"]
        supervised = ["-", "-", "-"]
        if child is not None:
            tint = colours.get(child["state"], "white")
            waiting = f" ({child['restart_in_s']} s)" if child["restart_in_s"] is not None else ""
            exit_code = child["last_exit_code"]
            supervised = [
                f"[{tint}]{child['state']}[/{tint}]{waiting}",
                str(child["restarts"]),
                "-" if exit_code is None else str(exit_code),
            ]
        table.add_row(
            s["name"], f"[{colour}]{s['state']}[/{colour}]", ready, s["address"] or "-", *supervised
        )
    return table


# -------------------------------------------------------------- migrations


@app.command("migrate")
def migrate(
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
) -> None:
    """Apply the database migrations (Alembic) to the configured schema."""
    from infra.db import current_revision
    from infra.db import migrate as run_migrate

    settings = _settings()
    run_migrate(settings, revision)
    console.print(
        f"database schema {settings.db_schema!r} at revision {current_revision(settings)}"
    )


@app.command("init")
def init() -> None:
    """Migrate the database and create the topics: what a fresh deployment needs once.
    With ``BANKFLOW_ENV=dev`` it also makes development signing keys where none exist;
    elsewhere the key file comes from your secret store (docs/security.md)."""
    migrate()
    topics_create(as_json=False)
    settings = _settings()
    if settings.env == "dev":
        from bankflow.signing import ensure_keys

        for key_id in ensure_keys(settings.signing_keys_path):
            console.print(f"made development signing key {key_id}")


# ------------------------------------------------------------------ topics


@topics_app.command("create")
def topics_create(as_json: JsonFlag = False) -> None:
    """Create every topic with the configured partitions; existing ones are kept."""
    from infra.topics import create_topics

    infos = create_topics(_settings())
    _show_topics(infos, as_json)


@topics_app.command("list")
def topics_list(as_json: JsonFlag = False) -> None:
    """List bankflow's topics with their partition counts. Exit 1 if one is missing."""
    from infra.topics import list_topics

    infos = list_topics(_settings())
    _show_topics(infos, as_json)
    if any(info.partitions is None for info in infos):
        raise typer.Exit(1)


def _show_topics(infos: list[Any], as_json: bool) -> None:
    if as_json:
        _print_json(
            [{"name": i.name, "partitions": i.partitions, "created": i.created} for i in infos]
        )
        return
    table = Table("topic", "partitions", "")
    for info in infos:
        table.add_row(
            info.name,
            str(info.partitions) if info.partitions else "[red]missing[/red]",
            "created" if info.created else "",
        )
    Console().print(table)


# ---------------------------------------------------------------- accounts


@accounts_app.command("create")
def accounts_create(
    account_type: Annotated[
        str, typer.Option("--type", help="checking or savings (or an internal type).")
    ] = "checking",
    currency: Annotated[str, typer.Option(help="ISO 4217 code.")] = "EUR",
    customer: Annotated[str | None, typer.Option(help="An existing customer's id.")] = None,
    customer_name: Annotated[
        str | None, typer.Option(help="Open for a new customer of this name.")
    ] = None,
    iban: Annotated[
        str | None, typer.Option(help="Adopt this IBAN instead of generating one.")
    ] = None,
    overdraft: Annotated[
        str, typer.Option(help="Overdraft limit as a decimal, e.g. 500.00.")
    ] = "0",
    as_json: JsonFlag = False,
) -> None:
    """Open an account (for staff and scripts); prints its id and IBAN."""
    import uuid

    from bankflow.bootstrap import db_connect
    from bankflow.domain.money import parse_amount
    from bankflow.ledger.accounts import create_customer, open_account

    if (customer is None) == (customer_name is None):
        console.print("[red]give exactly one of --customer ID or --customer-name NAME[/red]")
        raise typer.Exit(2)
    settings = _settings()
    overdraft_minor = parse_amount(overdraft, currency, allow_zero=True)
    with db_connect(settings) as conn:
        owner = uuid.UUID(customer) if customer else create_customer(conn, customer_name or "")
        account = open_account(
            conn,
            settings,
            customer_id=owner,
            account_type=account_type,
            currency=currency,
            iban=iban,
            overdraft_limit_minor=overdraft_minor,
        )
    _show_accounts([account], as_json, single=True)


@accounts_app.command("list")
def accounts_list(
    customer: Annotated[str | None, typer.Option(help="Only this customer's accounts.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List accounts with their balances."""
    import uuid

    from bankflow.bootstrap import db_connect
    from bankflow.ledger.accounts import list_accounts

    with db_connect(_settings()) as conn:
        accounts = list_accounts(conn, uuid.UUID(customer) if customer else None)
    _show_accounts(accounts, as_json)


@accounts_app.command("show")
def accounts_show(
    account: Annotated[str, typer.Argument(help="Account id or IBAN.")],
    as_json: JsonFlag = False,
) -> None:
    """Show one account."""
    from bankflow.bootstrap import db_connect
    from bankflow.ledger.accounts import get_account

    with db_connect(_settings()) as conn:
        found = get_account(conn, account)
    _show_accounts([found], as_json, single=True)


def _show_accounts(accounts: list[Any], as_json: bool, single: bool = False) -> None:
    from bankflow.domain.money import format_amount

    if as_json:
        documents = [a.as_dict() for a in accounts]
        _print_json(documents[0] if single else documents)
        return
    table = Table("id", "iban", "type", "currency", "status", "balance")
    for a in accounts:
        table.add_row(
            str(a.id),
            a.iban,
            a.type,
            a.currency,
            a.status,
            format_amount(a.balance_minor, a.currency),
        )
    Console().print(table)


@app.command("deposit")
def deposit(
    account: Annotated[str, typer.Argument(help="Account id or IBAN to credit.")],
    amount: Annotated[str, typer.Argument(help="Decimal amount, e.g. 100.00.")],
    currency: Annotated[str, typer.Argument(help="ISO 4217 code.")],
    idempotency_key: Annotated[
        str | None,
        typer.Option(help="Repeat a deposit safely; one is generated (and printed) if not given."),
    ] = None,
) -> None:
    """A cash deposit: a transfer from the bank's cash account, through the pipeline.

    The idempotency key names the deposit: the same key again is the same deposit (a
    retry), and the same key with another account or amount is refused.
    """
    import uuid

    import orjson

    from bankflow.bootstrap import db_connect, kafka_producer
    from bankflow.domain.money import parse_amount
    from bankflow.idempotency import fingerprint, remember
    from bankflow.ledger.accounts import find_internal_account, get_account
    from producers.intake import publish_requests
    from schemas.topics import TRANSFERS_REQUESTED
    from schemas.transfers import TransferRequest, TransferSource, transfer_id_for

    settings = _settings()
    amount_minor = parse_amount(amount, currency)
    key = idempotency_key or str(uuid.uuid4())
    if idempotency_key is None:
        # Printed before anything is sent: whatever happens next, a retry can reuse it.
        console.print(f"idempotency key {key} (repeat with --idempotency-key {key})",
                      highlight=False, soft_wrap=True)  # fmt: skip
    with db_connect(settings) as conn:
        credit = get_account(conn, account)
        cash = find_internal_account(conn, "cash", currency)
        if cash is None:
            console.print(f"[red]the bank has no cash account in {currency}[/red]")
            raise typer.Exit(1)
        request = TransferRequest(
            transfer_id=transfer_id_for("cli:deposit", key),
            source=TransferSource.API,
            debit_account=str(cash.id),
            credit_account=str(credit.id),
            amount_minor=amount_minor,
            currency=currency,
            description="cash deposit",
            category="cash",
            requested_by="cli:deposit",
        )
        body = {"account": str(credit.id), "amount_minor": amount_minor, "currency": currency}
        print_ = fingerprint("deposit", orjson.dumps(body, option=orjson.OPT_SORT_KEYS))
        remember(conn, "cli:deposit", key, print_, request.transfer_id)
    publish_requests(kafka_producer(settings), settings.topic(TRANSFERS_REQUESTED), [request])
    console.print(f"deposit {request.transfer_id} requested: {amount} {currency} to {credit.iban}")


@app.command("ingest")
def ingest_file(
    path: Annotated[Path, typer.Argument(help="A CSV, JSON Lines or pain.001 file.")],
    submitted_by: Annotated[
        str,
        typer.Option(
            help="The email of the user who hands the file in: a customer, or a teller or "
            "admin with --on-behalf-of. Lines may debit only that customer's accounts."
        ),
    ],
    on_behalf_of: Annotated[
        str | None,
        typer.Option(help="Staff: the customer (email or id) the file is submitted for."),
    ] = None,
    file_format: Annotated[
        str | None,
        typer.Option(
            "--format", help="csv, jsonl or pain001; detected from the content if not given."
        ),
    ] = None,
    debtor_account: Annotated[
        str | None,
        typer.Option(
            help="Debit this account (id or IBAN) instead of the file's debtor; it must be "
            "one the submitter may debit."
        ),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option(
            help="Follow every request to its outcome; for "
            "pain.001 also write a pain.002 status report."
        ),
    ] = False,
    wait_timeout: Annotated[float, typer.Option(help="Seconds --wait waits at most.")] = 600,
    as_json: JsonFlag = False,
) -> None:
    """Turn every transaction of a file into a transfer request; report bad lines.

    The file is recorded as a batch of its submitter; the same file submitted again
    is a duplicate of that batch and sends nothing.
    """
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from producers.ingest.batches import submit_batch
    from producers.ingest.outcomes import decision_positions
    from producers.ingest.run import FORMATS

    if file_format is not None and file_format not in FORMATS:
        console.print(f"[red]--format must be one of {', '.join(FORMATS)}[/red]")
        raise typer.Exit(2)
    settings = _settings()
    submitter = _submitter(settings, submitted_by, on_behalf_of)
    show = not as_json and console.is_terminal
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
        disable=not show,
    ) as bar:  # fmt: skip
        task = bar.add_task(f"ingesting {path.name}", total=None)
        started = time.monotonic()

        def progress(lines: int) -> None:
            rate = lines / max(time.monotonic() - started, 1e-6)
            bar.update(task, description=f"{path.name}: {lines:,} lines, {rate:,.0f} lines/s")

        positions = decision_positions(settings) if wait else []
        try:
            submitted = submit_batch(
                settings, path, submitter, channel="cli", fmt=file_format,
                debtor_account=debtor_account, progress=progress, keep_ids=wait,
            )  # fmt: skip
        except OSError as exc:
            console.print(f"[red]cannot read {path}:[/red] {exc.strerror}", highlight=False)
            raise typer.Exit(1) from exc
    report = submitted.report
    document = report.as_dict()
    if wait and not report.refused:
        document.update(_wait_for_outcomes(settings, path, submitted, positions, wait_timeout))
    _print_ingest(path, submitted, document, as_json=as_json)
    if report.refused:
        raise typer.Exit(1)


def _submitter(settings: Settings, email: str, on_behalf_of: str | None) -> Any:
    """The submitter ``--submitted-by`` (and ``--on-behalf-of``) name; exit 2 if none."""
    from bankflow.bootstrap import db_connect
    from producers.ingest.records import SubmitterRefused
    from producers.ingest.submitters import find_submitter

    with db_connect(settings, autocommit=True) as conn:
        try:
            return find_submitter(conn, email, on_behalf_of)
        except SubmitterRefused as exc:
            console.print(f"[red]--submitted-by:[/red] {exc}", highlight=False)
            raise typer.Exit(2) from exc


def _print_ingest(path: Path, submitted: Any, document: dict[str, Any], *, as_json: bool) -> None:
    report = submitted.report
    if as_json:
        _print_json(document)
        return
    if submitted.duplicate_of is not None:
        console.print(
            f"{path} is a duplicate of batch {submitted.duplicate_of} "
            f"({submitted.batch.status}); nothing was published",
            highlight=False,
        )
    else:
        console.print(
            f"{path}: batch {submitted.batch.id}: {report.lines_read} lines read, "
            f"{report.requests_produced} requests produced, {report.error_count} lines rejected",
            highlight=False,
        )
        for error in report.errors:
            console.print(f"  line {error.line}: {error.field}: {error.reason}", highlight=False)
    if report.refused:
        console.print(f"[red]file refused:[/red] {report.refused}", highlight=False)
    for key in ("statuses", "reasons"):
        if key in document:
            counts = ", ".join(f"{k} {v}" for k, v in sorted(document[key].items()))
            console.print(f"{key}: {counts or 'none'}")
    if "pain002" in document:
        console.print(f"status report: {document['pain002']}")


def _wait_for_outcomes(
    settings: Settings, path: Path, submitted: Any, positions: list[Any], timeout_s: float
) -> dict[str, Any]:
    """Outcomes of the batch's requests (the ledger's first), and its pain.002 for a
    pain.001. A duplicate is not followed: its outcomes are read as they are now."""
    from bankflow.bootstrap import db_connect
    from producers.ingest.batches import batch_outcomes, refused_lines
    from producers.ingest.outcomes import follow, pain002, summarise

    report, batch = submitted.report, submitted.batch
    if submitted.duplicate_of is None:
        transfers = report.transfers or []
        outcomes = follow(settings, [t for _, t in transfers], positions, timeout_s)
        refused = report.refused_lines or []
    else:
        with db_connect(settings, autocommit=True) as conn:
            transfers, outcomes = batch_outcomes(conn, batch.id)
            refused = refused_lines(conn, batch.id)
    result = summarise(outcomes)
    if batch.format == "pain001":
        target = path.with_name(path.name + ".pain002.xml")
        original = batch.original_message_id or ""
        target.write_bytes(pain002(original, transfers, outcomes, refused))
        result["pain002"] = str(target)
    return result


@app.command("verify")
def verify_ledger(
    as_json: JsonFlag = False,
    status_lag_s: Annotated[
        int, typer.Option(min=0, help="Ledger outcomes older than this must show as statuses.")
    ] = 60,
    accepted_age_max_s: Annotated[
        int,
        typer.Option(min=0, help="Accepted transfers older than this must be in the ledger."),
    ] = 900,
    outbox_age_max_s: Annotated[
        int, typer.Option(min=0, help="Outbox rows older than this must have been sent.")
    ] = 600,
) -> None:
    """Check the ledger's invariants, and statuses against it, in PostgreSQL; exit 1 on any
    violation."""
    from bankflow.bootstrap import db_connect
    from bankflow.ledger.verify import Bounds, verify

    settings = _settings()
    bounds = Bounds(status_lag_s, accepted_age_max_s, outbox_age_max_s)
    with db_connect(settings, autocommit=True) as conn:
        results = verify(conn, settings, bounds)
    if as_json:
        _print_json(
            {
                "ok": all(r.ok for r in results),
                "invariants": [
                    {
                        "name": r.name,
                        "description": r.description,
                        "violations": r.violations,
                        "samples": r.samples,
                    }
                    for r in results
                ],
            }
        )
    else:
        for r in results:
            mark = "[green]ok  [/green]" if r.ok else "[red]FAIL[/red]"
            Console().print(
                f"{mark} {r.name}: {r.description}"
                + ("" if r.ok else f" — {r.violations} violations, e.g. {r.samples}")
            )
    if not all(r.ok for r in results):
        raise typer.Exit(1)


# ------------------------------------------------------------------- bench


def _print_bench(result: dict[str, Any], as_json: bool) -> None:
    """A benchmark's figures: one JSON object, or a table without the per-round detail."""
    if as_json:
        _print_json(result)
        return
    table = Table("measure", "value")
    for key, value in result.items():
        if key != "per_round":
            table.add_row(key, str(value))
    Console().print(table)


@bench_app.command("poster")
def bench_poster(
    transfers: Annotated[int, typer.Option(help="Transfers per measurement.")] = 100_000,
    rounds: Annotated[int, typer.Option(min=1, help="Interleaved rounds; medians reported.")] = 3,
    as_json: JsonFlag = False,
) -> None:
    """Poster throughput next to bare set-based SQL, and with one hot account."""
    from bench.poster import run_bench

    result = run_bench(_settings(), transfers, echo=console.print, rounds=rounds)
    _print_bench(result, as_json)


@bench_app.command("ingest")
def bench_ingest(
    lines: Annotated[int, typer.Option(help="Lines of the generated CSV.")] = 1_000_000,
    as_json: JsonFlag = False,
) -> None:
    """Ingest lines per second next to a bare producer, and the ingest's peak memory."""
    from bench.ingest import run_bench

    result = run_bench(_settings(), lines, echo=console.print)
    _print_bench(result, as_json)


@bench_app.command("validator")
def bench_validator(
    requests: Annotated[int, typer.Option(help="Requests per measurement.")] = 100_000,
    rounds: Annotated[int, typer.Option(min=1, help="Interleaved rounds; medians reported.")] = 3,
    as_json: JsonFlag = False,
) -> None:
    """Validator decisions per second next to a bare transactional loop."""
    from bench.validator import run_bench

    result = run_bench(_settings(), requests, echo=console.print, rounds=rounds)
    _print_bench(result, as_json)


@bench_app.command("e2e")
def bench_e2e(
    transfers: Annotated[int, typer.Option(min=1, help="Transfer requests produced.")] = 20_000,
    accounts: Annotated[
        int, typer.Option(min=2, help="Customer accounts, one customer each.")
    ] = 200,
    hot_share: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of transfers debiting a hot account.")
    ] = 0.2,
    rate: Annotated[str, typer.Option(help="Requests per second, or max.")] = "max",
    as_json: JsonFlag = False,
) -> None:
    """The whole pipeline's posted transfers/s and request-to-posted latency, with baselines."""
    from bench.e2e import Options, parse_rate, run_bench

    try:
        rate_per_s = parse_rate(rate)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--rate") from exc
    options = Options(transfers, accounts, hot_share, rate_per_s)
    _print_bench(run_bench(_settings(), options, echo=console.print), as_json)


@bench_app.command("api")
def bench_api(
    seconds: Annotated[int, typer.Option(min=1, help="Load per measurement.")] = 10,
    workers: Annotated[int, typer.Option(min=1, help="uvicorn workers per server.")] = 2,
    rounds: Annotated[int, typer.Option(min=1, help="Rounds; the median is reported.")] = 1,
    as_json: JsonFlag = False,
) -> None:
    """Accepted transfer requests/s and latency at 64 clients, next to two baselines."""
    from bench.api import run_bench

    result = run_bench(_settings(), seconds, workers, echo=console.print, rounds=rounds)
    _print_bench(result, as_json)


@bench_app.command("all")
def bench_all(as_json: JsonFlag = False) -> None:
    """Every benchmark with its defaults."""
    bench_poster(transfers=100_000, rounds=3, as_json=as_json)
    bench_validator(requests=100_000, rounds=3, as_json=as_json)
    bench_api(seconds=10, workers=2, rounds=3, as_json=as_json)
    bench_ingest(lines=1_000_000, as_json=as_json)


# --------------------------------------------------------------------- dlq


def _actor() -> str:
    import getpass

    return f"cli:{getpass.getuser()}"


#: Who replays or discards: named explicitly on every such command (no login name
#: guessed from the environment), until staff sign-in and the audit log take over.
Actor = Annotated[
    str,
    typer.Option(
        "--actor", help="Who does this, e.g. an e-mail address (recorded with the action)."
    ),
]
#: ``dlq replay --all`` replays at most this many letters per run; run it again for more.
REPLAY_ALL_MAX = 1000


@dlq_app.command("list")
def dlq_list(
    status: Annotated[str, typer.Option(help="open, replayed or discarded.")] = "open",
    reason: Annotated[str | None, typer.Option(help="Only reasons containing this.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Dead letters with their reasons (open ones by default)."""
    from bankflow.bootstrap import db_connect
    from bankflow.dead_letters import list_open

    with db_connect(_settings(), autocommit=True) as conn:
        letters = list_open(conn, status, reason)
    if as_json:
        _print_json([d.as_dict() for d in letters])
        return
    table = Table("id", "from", "error", "reason", "attempts", "last failure")
    for d in letters:
        table.add_row(
            str(d.id),
            f"{d.original_topic}[{d.original_partition}]@{d.original_offset}",
            d.error_class,
            d.reason,
            str(d.attempts),
            d.last_failure_at.isoformat(),
        )
    Console().print(table)


@dlq_app.command("show")
def dlq_show(dead_letter_id: int, as_json: JsonFlag = False) -> None:
    """One dead letter, with its key, payload and headers."""
    from bankflow.bootstrap import db_connect
    from bankflow.dead_letters import get

    with db_connect(_settings(), autocommit=True) as conn:
        letter = get(conn, dead_letter_id)
    _print_json(letter.as_dict(payload=True))


@dlq_app.command("replay")
def dlq_replay(
    actor: Actor,
    dead_letter_id: Annotated[int | None, typer.Argument(help="The dead letter to replay.")] = None,
    replay_all: Annotated[bool, typer.Option("--all", help="Every open dead letter.")] = False,
    reason: Annotated[str | None, typer.Option(help="With --all: only these reasons.")] = None,
) -> None:
    """Send dead letters' transfer requests to transfers.requested, to be validated again.

    A letter from transfers.accepted or transfers.review is sent as the request its
    transfer was made from; a letter that holds no transfer request is refused and
    stays open. Safe to repeat: the transfer id dedupes.
    """
    from rich.markup import escape

    from bankflow.bootstrap import db_connect, kafka_producer
    from bankflow.dead_letters import DeadLetterNotOpen, NotReplayable, checked_actor, list_open
    from bankflow.dead_letters import replay as replay_letter
    from schemas.topics import TRANSFERS_REQUESTED

    if (dead_letter_id is None) == (not replay_all):
        console.print("[red]give a dead letter id or --all[/red]")
        raise typer.Exit(2)
    settings = _settings()
    actor = checked_actor(actor)
    producer = kafka_producer(settings)
    topic = settings.topic(TRANSFERS_REQUESTED)
    failed = 0
    with db_connect(settings, autocommit=True) as conn:
        ids = (
            [d.id for d in list_open(conn, "open", reason, REPLAY_ALL_MAX)]
            if dead_letter_id is None
            else [dead_letter_id]
        )
        if not ids:
            console.print("no open dead letters")
        for letter_id in ids:
            try:
                sent = replay_letter(conn, producer, letter_id, topic=topic,
                                     topic_prefix=settings.topic_prefix, actor=actor)  # fmt: skip
            except DeadLetterNotOpen as exc:
                # With --all, a letter resolved meanwhile by someone else is no failure.
                failed += dead_letter_id is not None
                console.print(
                    f"dead letter {letter_id} is {exc.status} already; nothing sent", soft_wrap=True
                )
                continue
            except NotReplayable as exc:
                failed += 1
                console.print(f"[red]{escape(str(exc))}[/red]", highlight=False, soft_wrap=True)
                continue
            console.print(
                f"replayed dead letter {letter_id} as transfer request "
                f"{sent.request.transfer_id} to {topic}",
                highlight=False,
                soft_wrap=True,
            )
    if failed:
        raise typer.Exit(1)


@dlq_app.command("discard")
def dlq_discard(
    dead_letter_id: int,
    reason: Annotated[str, typer.Option(help="Why it is discarded (recorded).")],
    actor: Actor,
) -> None:
    """Close a dead letter without replaying it, recording who and why."""
    from bankflow.bootstrap import db_connect
    from bankflow.dead_letters import DeadLetterNotOpen, resolve

    with db_connect(_settings(), autocommit=True) as conn:
        try:
            resolve(conn, dead_letter_id, "discard", actor, reason)
        except DeadLetterNotOpen as exc:
            console.print(f"[red]dead letter {dead_letter_id} is {exc.status} already; "
                          "not discarded[/red]", soft_wrap=True)  # fmt: skip
            raise typer.Exit(1) from exc
    console.print(f"discarded dead letter {dead_letter_id}")


# --------------------------------------------------------------------- keys

keys_app = typer.Typer(
    no_args_is_help=True,
    help="Signing keys of the stage messages that move money (docs/security.md).",
)
app.add_typer(keys_app, name="keys")


@keys_app.command("list-signing")
def keys_list_signing(as_json: JsonFlag = False) -> None:
    """Key ids, their signers and which are active; never the secrets."""
    from bankflow.signing import Keyring

    settings = _settings()
    keyring = Keyring.load(settings.signing_keys_path)
    active = set(keyring.active.values())
    keys = sorted(keyring.keys.values(), key=lambda k: (k.signer, k.key_id))
    if as_json:
        _print_json(
            [{"key_id": k.key_id, "signer": k.signer, "active": k.key_id in active} for k in keys]
        )
        return
    table = Table("key id", "signer", "active")
    for k in keys:
        table.add_row(k.key_id, k.signer, "yes" if k.key_id in active else "")
    console.print(f"{settings.signing_keys_path}")
    Console().print(table)


@keys_app.command("rotate-signing")
def keys_rotate_signing(
    signer: Annotated[str, typer.Argument(help="validator or review.")],
) -> None:
    """Add a key for SIGNER and make it active; the old one still verifies (retire it
    once its messages are consumed). Restart the signer's services to sign with it."""
    from bankflow.signing import write_new_key

    settings = _settings()
    key_id = write_new_key(settings.signing_keys_path, signer)
    console.print(
        f"{signer} signs with {key_id} from its next start ({settings.signing_keys_path})"
    )


@keys_app.command("retire-signing")
def keys_retire_signing(
    key_id: Annotated[str, typer.Argument(help="A key id that is no longer active.")],
) -> None:
    """Remove an inactive key: messages it signed stop verifying."""
    from bankflow.signing import retire_key

    retire_key(_settings().signing_keys_path, key_id)
    console.print(f"retired {key_id}")


# --------------------------------------------------------------------- halts

halt_app = typer.Typer(
    no_args_is_help=True, help="Stages halted on purpose (the poster): list, clear."
)
app.add_typer(halt_app, name="halt")


@halt_app.command("list")
def halt_list(
    include_cleared: Annotated[
        bool, typer.Option("--all", help="Cleared halts too, with who cleared them.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Halted stages with the reason; exit 0 either way (``bankflow status`` flags them)."""
    from bankflow.bootstrap import db_connect
    from bankflow.streaming import halts

    with db_connect(_settings(), autocommit=True) as conn:
        found = halts.listing(conn, include_cleared)
    if as_json:
        typer.echo(json.dumps([h.as_dict() for h in found]))
        return
    if not found:
        console.print("no stage is halted")
        return
    table = Table("stage", "halted at", "reason", "cleared")
    for h in found:
        cleared = f"{h.cleared_at:%Y-%m-%d %H:%M} by {h.cleared_by}" if h.cleared_at else ""
        table.add_row(h.stage, f"{h.halted_at:%Y-%m-%d %H:%M:%S}", h.reason, cleared)
    Console().print(table)


@halt_app.command("clear")
def halt_clear(
    stage: Annotated[
        str, typer.Argument(help="STAGE, or STAGE:TOPIC:PARTITION for one partition.")
    ],
    note: Annotated[str, typer.Option(help="What was fixed (recorded with your name).")],
    actor: Actor,
    accept_gap: Annotated[
        bool,
        typer.Option(
            "--accept-gap",
            help="For a partition halted on a gap in its log: resume at the first record "
            "that exists, knowingly leaving the missing ones unprocessed (account for them "
            "first: docs/runbook.md#a-gap-in-a-partition).",
        ),
    ] = False,
) -> None:
    """Clear a stage's (or a partition's) halt once its cause is fixed; it resumes from
    its stored position within a few seconds, without a restart."""
    from bankflow.bootstrap import db_connect
    from bankflow.streaming import halts

    settings = _settings()
    with db_connect(settings, autocommit=True) as conn, conn.transaction():
        if accept_gap:
            note = f"{_accept_gap(conn, settings, stage)}; {note}"
        cleared = halts.clear(conn, stage, actor, note)
    console.print(f"cleared the halt of {cleared.stage}, halted since {cleared.halted_at:%c}")


def _accept_gap(conn: Any, settings: Settings, scope: str) -> str:
    """Move the poster's stored position of a halted partition to its log's first record."""
    from confluent_kafka import TopicPartition

    from bankflow.bootstrap import kafka_consumer
    from bankflow.registry import service
    from bankflow.streaming import halts

    parsed = halts.parse_partition_scope(scope)
    if parsed is None:
        raise typer.BadParameter(
            "--accept-gap clears a partition's halt: give STAGE:TOPIC:PARTITION", param_hint="STAGE"
        )
    stage, topic, partition = parsed
    if stage != "poster":
        raise typer.BadParameter(
            f"{stage} keeps its positions in Kafka: reset its group's offset for that partition "
            "with kafka-consumer-groups.sh --reset-offsets --to-earliest while it is stopped",
            param_hint="STAGE",
        )
    group = service(stage).consumer_group(settings)
    probe = kafka_consumer(settings, group_id=f"{group}-gap-probe")
    try:
        low, _high = probe.get_watermark_offsets(
            TopicPartition(settings.topic(topic), partition), timeout=10, cached=False
        )
    finally:
        probe.close()
    before = conn.execute(
        "select next_offset from consumer_offsets "
        "where group_id = %s and topic = %s and partition = %s for update",
        (group, settings.topic(topic), partition),
    ).fetchone()
    conn.execute(
        "insert into consumer_offsets (group_id, topic, partition, next_offset) "
        "values (%s, %s, %s, %s) on conflict (group_id, topic, partition) do update "
        "set next_offset = greatest(consumer_offsets.next_offset, excluded.next_offset), "
        "updated_at = now()",
        (group, settings.topic(topic), partition, low),
    )
    start = before[0] if before else 0
    return (
        f"gap accepted: {topic}[{partition}] offsets {start}..{low - 1} left unprocessed, "
        f"resumes at {low}"
    )


# --------------------------------------------------------------------- lag

#: How often ``bankflow lag --watch`` refreshes: often enough to watch a backlog drain.
LAG_WATCH_INTERVAL_S = 2.0
_STATUS_COLOURS = {"OK": "green", "WARN": "yellow", "STALL": "red", "STOP": "red"}


@app.command("lag")
def lag(
    watch: Annotated[
        bool,
        typer.Option("--watch", help=f"Refresh every {LAG_WATCH_INTERVAL_S:g} s until Ctrl-C."),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Consumer lag of every group of ours: messages, seconds and status (OK/WARN/STALL/STOP).

    Shows what the running lag exporter reports; without one, measures directly.
    """
    from consumers.lag import LagMonitor, build_monitor, lag_document
    from consumers.lag_exporter import read_exporter

    settings = _settings()
    monitor: LagMonitor | None = None

    def snapshot() -> dict[str, Any]:
        nonlocal monitor
        document = read_exporter(settings)
        if document is not None:
            return document
        monitor = monitor or build_monitor(settings)
        return lag_document(monitor.evaluate(), "direct")

    try:
        if not watch:
            document = snapshot()
            _print_json(document) if as_json else Console().print(_lag_table(document, settings))
            return
        if as_json:
            while True:
                sys.stdout.write(json.dumps(snapshot(), default=str) + "\n")
                sys.stdout.flush()
                time.sleep(LAG_WATCH_INTERVAL_S)
        from rich.live import Live

        with Live(_lag_table(snapshot(), settings), console=Console(), auto_refresh=False) as live:
            while True:
                time.sleep(LAG_WATCH_INTERVAL_S)
                live.update(_lag_table(snapshot(), settings), refresh=True)
    except KeyboardInterrupt:
        pass
    finally:
        if monitor is not None:
            monitor.close()


def _lag_table(document: dict[str, Any], settings: Settings) -> Table:
    if document["source"] == "exporter":
        caption = f"from the lag exporter on port {settings.lag_exporter_port}"
    else:
        caption = (
            f"measured directly: no lag exporter answers on port {settings.lag_exporter_port}; "
            "statuses and lag in seconds need a window of evaluations, which --watch builds up"
        )
    table = Table(
        "group",
        "status",
        "topic",
        "partition",
        "committed",
        "end",
        "lag",
        "lag (s)",
        caption=caption,
    )
    for column in table.columns:
        column.overflow = "fold"
    for group in document["groups"]:
        colour = _STATUS_COLOURS.get(group["status"], "white")
        status = f"[{colour}]{group['status']}[/{colour}]"
        if not group["partitions"]:
            table.add_row(group["group_id"], status, "[dim]no partitions (no topic?)[/dim]")
        for i, p in enumerate(group["partitions"]):
            committed = p["committed_offset"]
            table.add_row(
                group["group_id"] if i == 0 else "",
                status if i == 0 else "",
                p["topic"],
                str(p["partition"]),
                "-" if committed is None else str(committed),
                str(p["end_offset"]),
                f"{p['lag_messages']:,}",
                f"{p['lag_seconds']:.1f}",
            )
        table.add_section()
    return table


# --------------------------------------------------------------------- run


@app.command("run")
def run(
    service: Annotated[str, typer.Argument(help="A service name, or `all`.")],
    demo: Annotated[bool, typer.Option(help="With `all`: also feed demo traffic.")] = False,
    only: Annotated[
        str, typer.Option(help="With `all`: only these services (comma-separated).")
    ] = "",
    without: Annotated[
        str, typer.Option(help="With `all`: every service but these (comma-separated).")
    ] = "",
) -> None:
    """Run one service in the foreground, or `all` of them, each restarted when it exits.

    `all` supervises: a service that exits is started again after 1 s, doubling to
    30 s while it keeps exiting; the others keep running. Ctrl-C stops them all.
    """
    from bankflow import registry
    from bankflow.services import chosen, run_all

    settings = _settings()
    if service == "all":
        try:
            names = chosen(demo, _names(only), _names(without))
        except ValueError as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(2) from exc
        raise typer.Exit(run_all(settings, console.print, names))
    if only or without:
        console.print("[red]--only and --without go with `run all`[/red]")
        raise typer.Exit(2)
    if service not in registry.BY_NAME:
        known = ", ".join(["all", *registry.BY_NAME])
        console.print(f"[red]unknown service {service!r}[/red]; known: {known}")
        raise typer.Exit(2)
    from bankflow.logs import set_service

    set_service(service)  # every log line of the process names its service
    registry.service(service).entry_point()(settings)


def _names(option: str) -> list[str]:
    return [name.strip() for name in option.split(",") if name.strip()]


# ------------------------------------------------------------------- users


@users_app.command("create")
def users_create(
    email: Annotated[str, typer.Option(help="The email the user signs in with.")],
    role: Annotated[str, typer.Option(help="customer, teller, reviewer, auditor or admin.")],
    password: Annotated[
        str | None,
        typer.Option(
            help="Prompted for (twice, hidden) when left out, which keeps it out of the "
            "shell's history."
        ),
    ] = None,
    full_name: Annotated[
        str | None, typer.Option(help="The person's name; required for a customer.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a user: the first admin, other staff, or a customer (with a customer record)."""
    import asyncio
    import re

    from bankflow.bootstrap import db_connect_async
    from bankflow.identity.passwords import password_hasher
    from bankflow.identity.policy import password_problem
    from bankflow.identity.store import User, create_user
    from schemas.auth import EMAIL_PATTERN, ROLES, normalize_email

    email = normalize_email(email)
    if role not in ROLES:
        console.print(f"[red]--role must be one of {', '.join(ROLES)}[/red]")
        raise typer.Exit(2)
    if not re.match(EMAIL_PATTERN, email):
        console.print(f"[red]{email!r} is not an email address[/red]")
        raise typer.Exit(2)
    if role == "customer" and not full_name:
        console.print("[red]a customer needs --full-name[/red]")
        raise typer.Exit(2)
    settings = _settings()
    if password is None:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    problem = password_problem(password, email)
    if problem is not None:
        console.print(f"[red]the password {problem}[/red]")
        raise typer.Exit(2)
    password_hash = password_hasher(settings.password_hash_profile).hash(password)

    async def create() -> User:
        conn = await db_connect_async(settings, autocommit=True)
        try:
            return await create_user(
                conn,
                email=email,
                password_hash=password_hash,
                role=role,  # narrowed by the check against ROLES above
                full_name=full_name,
            )
        finally:
            await conn.close()

    user = asyncio.run(create())
    document = {
        "id": str(user.id),
        "email": user.email,
        "role": user.role,
        "customer_id": str(user.customer_id) if user.customer_id else None,
    }
    if as_json:
        _print_json(document)
    else:
        console.print(f"created {user.role} {user.email} (user {user.id})", highlight=False)


def main() -> None:
    """Console-script entry point: bankflow's own errors print as one clear line, exit 1."""
    try:
        app()
    except BankflowError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
