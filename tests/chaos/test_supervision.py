"""``bankflow run all`` supervises: a killed service comes back, a failing one is retried.

Each test runs ``run all`` as a process with a subset of the services (two of them,
to stay light on two cores), its state file in the test's own folder and every port
free, then waits on what the supervisor writes and what the services answer.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bankflow.observability import probe
from bankflow.services import RESTART_DELAY_MIN_S, TICK_S, read_state
from bankflow.settings import Settings
from tests.conftest import TESTS_DIR
from tests.integration.test_lag_exporter import free_port
from tests.ledger_support import (
    assert_ledger_matches,
    build_workload,
    produce_accepted,
    settings_env,
    transfer_count,
    wait_for,
)

pytestmark = pytest.mark.timeout(300)

SERVICES = ("poster", "validator")
#: Long enough for a Python service to start and join its group on a busy machine.
START_TIMEOUT_S = 90


class RunAll:
    """A ``bankflow run all`` process and where to find what it says."""

    def __init__(self, settings: Settings, tmp_path: Path, **extra: str) -> None:
        self.settings = settings.model_copy(update={"state_dir": tmp_path})
        self.ports = {name: free_port() for name in (*SERVICES, "supervisor")}
        self.env = settings_env(
            settings,
            BANKFLOW_STATE_DIR=str(tmp_path),
            **{f"BANKFLOW_{n.upper()}_METRICS_PORT": str(p) for n, p in self.ports.items()},
            **extra,
        )
        self.log = tmp_path / "run-all.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bankflow.cli", "run", "all", "--only", ",".join(SERVICES)],
                env=self.env,
                cwd=TESTS_DIR.parent,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def services(self) -> dict[str, dict[str, Any]]:
        state = read_state(self.settings)
        if state is None or not state["supervisor"]["running"]:
            return {}
        return {s["name"]: s for s in state["services"]}

    def ready(self, name: str) -> bool:
        child = self.services().get(name)
        return bool(child and child["state"] == "running" and self.answers(name)["readyz"])

    def answers(self, name: str) -> dict[str, bool]:
        return probe("127.0.0.1", self.ports[name])

    def status(self) -> dict[str, Any]:
        result = subprocess.run(
            [sys.executable, "-m", "bankflow.cli", "status", "--json"],
            env=self.env, cwd=TESTS_DIR.parent, capture_output=True, text=True, timeout=60,
            check=False,
        )  # fmt: skip
        assert result.stdout, result.stderr
        document: dict[str, Any] = json.loads(result.stdout)
        return document

    def restarts_metric(self) -> dict[str, float]:
        url = f"http://127.0.0.1:{self.ports['supervisor']}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        return {
            s.labels["service"]: s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "bankflow_service_restarts_total"
        }

    def stop(self) -> int:
        """SIGTERM, as an operator's ``kill`` or systemd would; the exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(60)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@contextmanager
def run_all(settings: Settings, tmp_path: Path, **extra: str) -> Iterator[RunAll]:
    runner = RunAll(settings, tmp_path, **extra)
    runner.start()
    try:
        yield runner
    finally:
        assert runner.process is not None
        if runner.process.poll() is None:
            runner.process.kill()  # only after a failure: the test stops it itself
            runner.process.wait(30)
        # Never leave a service behind: every pid the supervisor knew is gone.
        state = read_state(runner.settings)
        for child in state["services"] if state else []:
            if child["pid"] is not None:
                with pytest.raises(ProcessLookupError):
                    os.kill(child["pid"], 0)


def test_a_killed_service_is_restarted_and_the_pipeline_drains(
    settings: Settings, topics, db, tmp_path: Path
) -> None:
    topics()
    work = build_workload(db, settings, accounts=30, transfers=2_000, seed=23)
    half = len(work.transfers) // 2
    produce_accepted(settings, work.funding)
    with run_all(settings, tmp_path) as runner:
        for name in SERVICES:
            wait_for(lambda n=name: runner.ready(n), START_TIMEOUT_S, f"{name} to be ready")
        produce_accepted(settings, work.transfers[:half])
        wait_for(lambda: transfer_count(db) > len(work.funding), 60, "the poster to post")
        before = runner.services()
        os.kill(before["poster"]["pid"], signal.SIGKILL)
        produce_accepted(settings, work.transfers[half:])

        def restarted() -> bool:
            poster = runner.services().get("poster", {})
            return poster.get("restarts") == 1 and poster.get("state") == "running"

        wait_for(restarted, 60, f"the poster to be restarted:\n{runner.output()}")
        after = runner.services()
        assert after["poster"]["pid"] != before["poster"]["pid"]
        assert after["poster"]["last_exit_code"] == -signal.SIGKILL
        # The other service was left alone.
        assert after["validator"]["pid"] == before["validator"]["pid"]
        assert after["validator"]["restarts"] == 0
        wait_for(
            lambda: transfer_count(db) >= len(work.all_transfers),
            120,
            "the restarted poster to drain the topic",
        )
        assert runner.restarts_metric() == {"poster": 1.0, "validator": 0.0}
        assert runner.stop() == 0, runner.output()
    assert_ledger_matches(db, settings, work)
    state = read_state(runner.settings)
    assert state is not None and not state["supervisor"]["running"]
    assert {s["state"] for s in state["services"]} == {"stopped"}


def test_a_service_that_cannot_start_is_retried_with_backoff_and_shown_crash_looping(
    settings: Settings, topics, db, tmp_path: Path
) -> None:
    """A fraud rule file that does not exist: only the validator reads it, at start."""
    topics()
    missing = tmp_path / "no-such-rules.yaml"
    with run_all(settings, tmp_path, BANKFLOW_FRAUD_RULES=str(missing)) as runner:
        wait_for(lambda: runner.ready("poster"), START_TIMEOUT_S, "the poster to be ready")
        poster_pid = runner.services()["poster"]["pid"]
        # restarts -> the validator's state while that start ran (then its last exit
        # came before its last start)
        seen: dict[int, dict[str, Any]] = {}

        def crash_looping() -> bool:
            validator = runner.services().get("validator")
            if validator is not None and validator["pid"] is not None:
                seen.setdefault(validator["restarts"], validator)
            return bool(validator and validator["crash_looping"])

        wait_for(crash_looping, 120, f"the validator to be crash-looping:\n{runner.output()}", 0.05)
        document = runner.status()
        shown = {s["name"]: s for s in document["services"]}
        assert document["supervisor"]["running"]
        assert shown["validator"]["supervisor"]["state"] == "crash-looping"
        assert shown["validator"]["supervisor"]["last_exit_code"] not in (None, 0)
        assert shown["validator"]["state"] == "down"
        # The poster kept serving all along: same process, up and ready.
        assert shown["poster"]["supervisor"]["pid"] == poster_pid
        assert shown["poster"]["supervisor"]["restarts"] == 0
        assert (shown["poster"]["state"], shown["poster"]["ready"]) == ("up", True)
        assert runner.answers("poster") == {"healthz": True, "readyz": True}
        # Each restart came after its delay, doubling: 1 s, 2 s, ... (a tick late at most).
        assert len(seen) >= 2, seen
        for restarts, validator in seen.items():
            if restarts == 0:
                continue
            waited_s = (
                datetime.fromisoformat(validator["last_start_at"])
                - datetime.fromisoformat(validator["last_exit_at"])
            ).total_seconds()
            assert waited_s >= RESTART_DELAY_MIN_S * 2 ** (restarts - 1) - TICK_S, seen
        assert runner.stop() == 0, runner.output()
