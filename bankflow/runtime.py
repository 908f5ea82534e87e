"""What every long-running service shares: logging, stop signals, riding out a DB outage."""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable, Sequence

import psycopg
from confluent_kafka import KafkaError, Message, TopicPartition

#: Waits between attempts while PostgreSQL is unreachable: 0.5 s doubling to 30 s,
#: about three minutes in all; then the service exits for its supervisor to restart.
DB_BACKOFF_S = (0.5, 1, 2, 4, 8, 16, 30, 30, 30, 30)


def configure_logging() -> None:
    """Redacted log lines on stderr, JSON or text as ``BANKFLOW_LOG_FORMAT`` says.

    See ``bankflow.logs``; the service name comes from ``bankflow run NAME``.
    """
    from bankflow.logs import configure
    from bankflow.settings import get_settings

    settings = get_settings()
    configure(fmt=settings.log_format_chosen, level=settings.log_level)


def on_stop_signal(stop: Callable[[], None]) -> None:
    """Call ``stop`` on SIGTERM or SIGINT; the service finishes its batch and exits."""
    signal.signal(signal.SIGTERM, lambda *_: stop())
    signal.signal(signal.SIGINT, lambda *_: stop())


def run_until_stopped(
    step: Callable[[], object],
    stopping: Callable[[], bool],
    reconnect: Callable[[], None],
    log: logging.Logger,
) -> None:
    """Repeat ``step`` until ``stopping()``; ride out a PostgreSQL outage with backoff."""
    failures = 0
    while not stopping():
        try:
            step()
            failures = 0
        except psycopg.OperationalError as exc:
            if failures >= len(DB_BACKOFF_S):
                raise
            log.warning("database unavailable (%s); retrying in %s s", exc, DB_BACKOFF_S[failures])
            time.sleep(DB_BACKOFF_S[failures])
            failures += 1
            try:
                reconnect()
            except psycopg.OperationalError as still_down:
                # Still down: the next step fails at once on the closed connection and
                # counts as the next failure of the backoff.
                log.warning("reconnecting failed (%s)", still_down)


def next_offsets(messages: Sequence[Message]) -> list[TopicPartition]:
    """The offsets to commit after ``messages``: one past the last of each partition."""
    last: dict[tuple[str, int], int] = {}
    for m in messages:
        last[(str(m.topic()), int(m.partition() or 0))] = int(m.offset() or 0)
    return [TopicPartition(t, p, offset + 1) for (t, p), offset in last.items()]


def usable(message: Message, log: logging.Logger) -> bool:
    """A message to process; consumer errors are logged (end of partition is not one)."""
    error = message.error()
    if error is not None and error.code() != KafkaError._PARTITION_EOF:
        log.error("consumer error: %s", error)
    return error is None
