"""Issue 7's ops page acceptance: Chromium draws the charts, and the lag equals the API's.

Seven requests wait on ``transfers.requested`` with no validator running, so the lag
stands still while the page and the test look at it. The API runs as a process;
Debian's ``chromium`` opens ``/ops#token=...`` (the fragment never reaches the
server) with a virtual time budget long enough for the first polls, and dumps the
DOM. The lag table's data attributes must equal ``/v1/ops/lag`` group for group, and
each chart must have been drawn. A screenshot is kept in ``tests/artifacts/``.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.ops import REFRESH_MIN_S
from bankflow.bootstrap import kafka_producer
from bankflow.settings import Settings
from infra.browser import chromium_path
from schemas.topics import TRANSFERS_REQUESTED
from tests.conftest import TESTS_DIR
from tests.integration.test_api_auth import PASSWORD, create_staff
from tests.integration.test_structured_logs import api_process

pytestmark = pytest.mark.timeout(180)

WAITING = 7
MORE = 5
ARTIFACTS = TESTS_DIR / "artifacts"
#: Virtual time Chromium gives the page: two polls at 5 s; network waits do not count.
VIRTUAL_TIME_BUDGET_MS = 7000
BROWSER_TIMEOUT_S = 90


class Page(HTMLParser):
    """What the test reads from the dumped DOM: the body, the lag rows, the charts."""

    def __init__(self) -> None:
        super().__init__()
        self.body: dict[str, str | None] = {}
        self.rows: list[dict[str, str | None]] = []
        self.charts: dict[str, dict[str, str | None]] = {}
        self.marks: dict[str, int] = {}
        self._chart: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "body":
            self.body = a
        elif tag == "tr" and "data-group" in a:
            self.rows.append(a)
        elif tag == "svg" and a.get("data-chart"):
            self._chart = str(a["data-chart"])
            self.charts[self._chart] = a
        elif self._chart and tag in ("path", "circle", "rect"):
            self.marks[self._chart] = self.marks.get(self._chart, 0) + 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._chart = None


def chromium(url: str, profile: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    binary = chromium_path()
    assert binary is not None
    return subprocess.run(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}",
         f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}", "--window-size=1280,1000",
         *flags, url],
        capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S, check=False,
    )  # fmt: skip


def test_the_ops_page_draws_its_charts_and_shows_the_lag_the_api_reports(
    settings: Settings, topics: Any, db: Any, redis_client: Any, tmp_path: Path, *, monkeypatch: Any
) -> None:
    if chromium_path() is None:
        message = "headless Chromium is missing: `make setup` installs Debian's chromium"
        if os.environ.get("BANKFLOW_TEST_REQUIRE_STACK") == "1":
            pytest.fail(message)
        pytest.skip(message)
    topics()
    producer = kafka_producer(settings)
    for n in range(WAITING):
        producer.produce(settings.topic(TRANSFERS_REQUESTED), key=str(n).encode(), value=b"{}")
    assert producer.flush(30) == 0
    staff = settings.model_copy(update={"password_hash_profile": "test"})
    create_staff(staff, "auditor@bank.example", "auditor", monkeypatch)
    with api_process(settings, tmp_path / "api.log") as base, httpx.Client(base_url=base) as http:
        signed_in = http.post(
            "/v1/auth/token", data={"username": "auditor@bank.example", "password": PASSWORD}
        )
        token = signed_in.json()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        assert http.get("/v1/ops/lag").status_code == 401
        assert http.get("/v1/ops/throughput", headers=_customer(http)).status_code == 403
        assert _lag(http.get("/v1/ops/lag", headers=auth).json())["validator"] == WAITING
        opened = http.get("/ops")  # the page itself holds no data and needs no token
        assert opened.status_code == 200 and "/ops/static/ops.js" in opened.text
        assert "script-src 'self'" in opened.headers["Content-Security-Policy"]
        assert http.get("/ops/static/ops.js").headers["content-type"].startswith("text/javascript")
        assert http.get("/ops/static/missing.js").status_code == 404

        dumped = chromium(f"{base}/ops#token={token}", tmp_path / "profile", "--dump-dom")
        assert dumped.returncode == 0, dumped.stderr[-3000:]
        page = Page()
        page.feed(dumped.stdout)
        reported = http.get("/v1/ops/lag", headers=auth).json()
        # More traffic, and the next evaluation sees it as messages per second.
        for n in range(MORE):
            producer.produce(settings.topic(TRANSFERS_REQUESTED), key=str(n).encode(), value=b"{}")
        assert producer.flush(30) == 0
        time.sleep(REFRESH_MIN_S + 0.2)
        throughput = http.get("/v1/ops/throughput", headers=auth).json()

        ARTIFACTS.mkdir(exist_ok=True)
        screenshot = ARTIFACTS / "ops-page.png"
        screenshot.unlink(missing_ok=True)
        shot = chromium(
            f"{base}/ops#token={token}", tmp_path / "profile-2", f"--screenshot={screenshot}"
        )
        assert shot.returncode == 0 and screenshot.stat().st_size > 10_000, shot.stderr[-3000:]
        print(f"ops page screenshot: {screenshot}")

    assert page.body.get("data-state") == "ready", dumped.stdout[:3000]
    shown = {row["data-group"]: int(row["data-lag-messages"] or -1) for row in page.rows}
    assert shown == _lag(reported)
    assert shown["validator"] == shown["tracker"] == WAITING
    stages = {stage["topic"]: stage for stage in throughput["stages"]}
    assert stages[TRANSFERS_REQUESTED]["end_offset"] == WAITING + MORE
    assert stages[TRANSFERS_REQUESTED]["messages_per_s"] > 0
    assert {row["data-status"] for row in page.rows} <= {"OK", "WARN", "STALL", "STOP"}
    # Every chart was drawn: a line (or a first point) per group, a bar per stage.
    assert int(page.charts["lag"]["data-series"] or 0) == len(reported["groups"])
    assert page.marks["lag"] >= 2 * len(reported["groups"])  # lines or points, and legends
    assert page.marks["throughput-bars"] >= len(throughput["stages"]) + 1
    for chart in ("throughput", "dead-letters", "review"):
        assert page.marks.get(chart, 0) >= 2, (chart, page.marks)


def _lag(document: dict[str, Any]) -> dict[str, int]:
    return {g["name"]: g["lag_messages"] for g in document["groups"]}


def _customer(http: httpx.Client) -> dict[str, str]:
    email = f"cu.{uuid.uuid4().hex[:8]}@example.com"
    registered = http.post(
        "/v1/auth/register", json={"email": email, "password": PASSWORD, "full_name": "C"}
    )
    assert registered.status_code == 201, registered.text
    pair = http.post("/v1/auth/token", data={"username": email, "password": PASSWORD}).json()
    return {"Authorization": f"Bearer {pair['access_token']}"}
