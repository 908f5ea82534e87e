"""The ops page shows what ``bankflow run all`` says of its services, crash loops first.

A supervisor in the test process (stand-in children, a validator that exited three
times) keeps its state file fresh in the API's state folder; the API runs as a
process; ``/v1/ops/throughput`` must carry that state, and Chromium must draw it as
the services table (``data-service`` rows with their state).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest

from bankflow.services import CRASH_LOOP_EXITS, HEARTBEAT_S, Supervisor
from bankflow.settings import Settings
from infra.browser import chromium_path
from tests.integration.test_api_auth import PASSWORD, create_staff
from tests.integration.test_ops_page import chromium
from tests.integration.test_structured_logs import api_process
from tests.unit.test_supervisor import exit_and_wait, supervisor

pytestmark = pytest.mark.timeout(180)


class Rows(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.services: dict[str, dict[str, str | None]] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and a.get("data-service"):
            self.services[str(a["data-service"])] = a


@contextmanager
def kept_fresh(sup: Supervisor) -> Iterator[None]:
    """Rewrite the state file as a live supervisor does, until the block ends."""
    done = threading.Event()

    def beat() -> None:
        while not done.wait(HEARTBEAT_S / 2):
            sup.write_state(sup._clock())

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(5)


def test_the_ops_page_shows_a_crash_looping_service(
    settings: Settings, topics: Any, db: Any, tmp_path: Path, *, monkeypatch: Any
) -> None:
    if chromium_path() is None:
        message = "headless Chromium is missing: `make setup` installs Debian's chromium"
        if os.environ.get("BANKFLOW_TEST_REQUIRE_STACK") == "1":
            pytest.fail(message)
        pytest.skip(message)
    topics()
    state_dir = tmp_path / "state"
    sup, clock, started = supervisor(
        settings.model_copy(update={"state_dir": state_dir}), "poster", "validator"
    )
    for _ in range(CRASH_LOOP_EXITS):
        clock.now_s += exit_and_wait(sup, clock, started["validator"][-1])
        sup.step()
    staff = settings.model_copy(update={"password_hash_profile": "test"})
    create_staff(staff, "auditor@bank.example", "auditor", monkeypatch)
    with (
        kept_fresh(sup),
        api_process(settings, tmp_path / "api.log", BANKFLOW_STATE_DIR=str(state_dir)) as base,
        httpx.Client(base_url=base) as http,
    ):
        signed_in = http.post(
            "/v1/auth/token", data={"username": "auditor@bank.example", "password": PASSWORD}
        )
        token = signed_in.json()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        view = http.get("/v1/ops/throughput", headers=auth).json()["supervisor"]
        dumped = chromium(f"{base}/ops#token={token}", tmp_path / "profile", "--dump-dom")
    assert view["running"]
    shown = {s["name"]: s for s in view["services"]}
    assert shown["validator"]["state"] == "crash-looping"
    assert shown["validator"]["restarts"] == CRASH_LOOP_EXITS
    assert shown["poster"]["state"] == "running"
    assert dumped.returncode == 0, dumped.stderr[-3000:]
    rows = Rows()
    rows.feed(dumped.stdout)
    assert {name: row["data-state"] for name, row in rows.services.items()} == {
        "poster": "running",
        "validator": "crash-looping",
    }, dumped.stdout[:3000]
    assert rows.services["validator"]["data-crash-looping"] == "true"
