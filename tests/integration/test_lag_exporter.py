"""The lag exporter's acceptance (issue 7): a stopped poster shows up as lag and STOP.

The exporter and the poster run as processes (``bankflow run ...``), as in
production; the test reads the exporter's ``/metrics`` the way Prometheus does.
Short windows keep it quick: an evaluation every 0.5 s, statuses over four
evaluations, STOP after 3 s without a consumer.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bankflow.bootstrap import kafka_producer
from bankflow.settings import Settings
from schemas.topics import TRANSFERS_ACCEPTED, TRANSFERS_DLQ, TRANSFERS_REQUESTED
from tests.conftest import TESTS_DIR
from tests.ledger_support import (
    accepted,
    open_test_accounts,
    produce_accepted,
    settings_env,
    signed,
    start_service,
    stop_service,
    transfer_count,
    wait_for,
)

pytestmark = pytest.mark.timeout(180)

BACKLOG = 1000
WARM_UP = 30
EXPORTER_ENV = {
    "BANKFLOW_LAG_POLL_INTERVAL_S": "0.5",
    "BANKFLOW_LAG_WINDOW_EVALUATIONS": "4",
    "BANKFLOW_LAG_STOP_AFTER_S": "3",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


class GroupView:
    """One group's series in one scrape of the exporter."""

    def __init__(self, text: str, group: str) -> None:
        series: dict[str, dict[tuple[str, str], float]] = defaultdict(dict)
        self.status: str | None = None
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.labels.get("group", group) != group:
                    continue  # another group's series (end offsets carry no group)
                if s.name == "bankflow_consumer_group_status" and s.value == 1:
                    self.status = s.labels["status"]
                elif "partition" in s.labels:
                    series[s.name][(s.labels["topic"], s.labels["partition"])] = s.value
        self.lag = series["bankflow_consumer_lag_messages"]
        self.seconds = series["bankflow_consumer_lag_seconds"]
        self.committed = series["bankflow_consumer_committed_offset"]
        self.end = series["bankflow_topic_end_offset"]

    @property
    def lag_messages(self) -> int:
        return int(sum(self.lag.values()))

    @property
    def lag_seconds(self) -> float:
        return max(self.seconds.values(), default=0.0)


def scrape(port: int, group: str) -> GroupView | None:
    code, text = get(port, "/metrics")
    return GroupView(text, group) if code == 200 else None


def wait_for_view(port: int, group: str, condition: Any, what: str, timeout_s: float) -> GroupView:
    seen: list[GroupView] = []

    def check() -> bool:
        view = scrape(port, group)
        if view is not None and view.status is not None:
            seen[:] = [view]
            return bool(condition(view))
        return False

    try:
        wait_for(check, timeout_s, what, interval_s=0.25)
    except AssertionError as exc:
        last = seen[0] if seen else None
        detail = (last.status, last.lag_messages, dict(last.lag)) if last else "no scrape"
        raise AssertionError(f"{exc}; last seen: {detail}") from None
    return seen[0]


def produce_in_one_transaction(settings: Settings, transfers: list[Any]) -> None:
    """As the validator writes transfers.accepted: inside a Kafka transaction, so every
    partition written ends with a commit marker after the last transfer."""
    producer = kafka_producer(settings, transactional_id=f"{settings.topic_prefix}warm-up")
    producer.init_transactions(30)
    producer.begin_transaction()
    topic = settings.topic(TRANSFERS_ACCEPTED)
    for t in transfers:
        key, value = str(t.debit_account_id).encode(), t.model_dump_json().encode()
        headers = signed(settings, TRANSFERS_ACCEPTED, key, value)
        producer.produce(topic, key=key, value=value, headers=headers)
    producer.commit_transaction(30)


def lag_cli(settings: Settings, port: int) -> dict[str, Any]:
    """``bankflow lag --json`` as a process, pointed at this test's exporter."""
    env = settings_env(settings, BANKFLOW_LAG_EXPORTER_PORT=str(port))
    done = subprocess.run(
        [sys.executable, "-m", "bankflow.cli", "lag", "--json"],
        env=env,
        cwd=TESTS_DIR.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def test_a_stopped_poster_is_lag_and_stop_until_it_catches_up(
    settings: Settings, topics, db, tmp_path: Path
) -> None:
    topics(TRANSFERS_REQUESTED, TRANSFERS_ACCEPTED, TRANSFERS_DLQ)
    # Outcomes do not matter here, only consumption: unfunded accounts make every
    # transfer a quick "insufficient funds" posting, spread over the partitions by key.
    accounts = open_test_accounts(db, settings, 6)

    def transfers(n: int) -> list[Any]:
        return [accepted(accounts[i % 6], accounts[(i + 1) % 6], 100) for i in range(n)]

    port = free_port()
    group = settings.poster_group
    exporter = start_service(
        settings,
        "lag-exporter",
        tmp_path / "exporter.log",
        BANKFLOW_LAG_EXPORTER_PORT=str(port),
        **EXPORTER_ENV,
    )
    poster = start_service(settings, "poster", tmp_path / "poster.log")
    try:
        # Caught up after a transaction: the poster's offsets sit on the commit
        # markers, one below each written partition's end, and that is no lag.
        produce_in_one_transaction(settings, transfers(WARM_UP))
        wait_for(lambda: transfer_count(db) == WARM_UP, 60, "the poster to post the warm-up")
        idle = wait_for_view(
            port,
            group,
            lambda v: v.committed and all(v.end[k] - v.committed[k] == 1 for k in v.committed),
            "the exporter to see the poster's offsets on the commit markers",
            30,
        )
        assert idle.status == "OK" and idle.lag_messages == 0, (idle.status, idle.lag)
        assert get(port, "/healthz")[0] == 200
        assert get(port, "/readyz")[0] == 200

        stop_service(poster)
        produce_accepted(settings, transfers(BACKLOG))
        stopped = wait_for_view(
            port,
            group,
            lambda v: v.status == "STOP",
            "status STOP for the stopped poster",
            30,
        )
        # Nothing was in flight: the poster stopped before the backlog was sent.
        assert stopped.lag_messages == BACKLOG, stopped.lag
        earlier = stopped.lag_seconds
        later = wait_for_view(
            port,
            group,
            lambda v: v.lag_seconds > earlier + 1.0,
            "the lag in seconds to grow",
            15,
        )
        assert later.lag_messages == BACKLOG and later.status == "STOP"

        shown = {g["group_id"]: g for g in lag_cli(settings, port)["groups"]}
        assert shown[group]["status"] == "STOP"
        assert shown[group]["lag_messages"] == BACKLOG
        assert shown[settings.validator_group]["status"] == "OK"

        poster = start_service(settings, "poster", tmp_path / "poster.log")
        caught_up = wait_for_view(
            port,
            group,
            lambda v: v.status == "OK" and v.lag_messages == 0,
            "the restarted poster to catch up",
            90,
        )
        assert caught_up.lag_seconds == 0.0
        assert transfer_count(db) == WARM_UP + BACKLOG
        assert get(port, "/readyz")[0] == 200
    finally:
        stop_service(poster)
        stop_service(exporter)


def test_lag_without_an_exporter_is_measured_directly(settings: Settings, topics, db) -> None:
    """``db``: the poster's offsets table must exist, even with nothing stored in it."""
    topics(TRANSFERS_REQUESTED, TRANSFERS_ACCEPTED, TRANSFERS_DLQ)
    produce_accepted(settings, [accepted(uuid.uuid4(), uuid.uuid4(), 100) for _ in range(7)])
    # A port nothing listens on: the command measures by itself.
    shown = lag_cli(settings, free_port())
    assert shown["source"] == "direct"
    poster = next(g for g in shown["groups"] if g["group_id"] == settings.poster_group)
    assert poster["lag_messages"] == 7
    assert {p["topic"] for p in poster["partitions"]} == {settings.topic(TRANSFERS_ACCEPTED)}
