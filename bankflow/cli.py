"""``bankflow``: the single entry point for every service and tool."""

from __future__ import annotations

import json
import sys
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
app.add_typer(stack_app, name="stack")
app.add_typer(topics_app, name="topics")

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
    """Migrate the database and create the topics: what a fresh deployment needs once."""
    migrate()
    topics_create(as_json=False)


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


# --------------------------------------------------------------------- run


@app.command("run")
def run(
    service: Annotated[str, typer.Argument(help="A service name, or `all`.")],
    demo: Annotated[bool, typer.Option(help="With `all`: also feed demo traffic.")] = False,
) -> None:
    """Run one service in the foreground, or `all` of them (Ctrl-C stops them)."""
    from bankflow.services import SERVICES, entry_point, run_all

    settings = _settings()
    if service == "all":
        raise typer.Exit(run_all(settings, console.print, demo=demo))
    if service not in SERVICES:
        console.print(f"[red]unknown service {service!r}[/red]; known: all, {', '.join(SERVICES)}")
        raise typer.Exit(2)
    entry_point(service)(settings)


def main() -> None:
    """Console-script entry point: bankflow's own errors print as one clear line, exit 1."""
    try:
        app()
    except BankflowError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
