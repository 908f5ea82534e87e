"""The inbox watcher's containment, with the ingest replaced: no file stops it.

A file whose ingest raises goes to failed/ with the reason; a transient failure of
Kafka or PostgreSQL leaves the file for a later try, waiting longer each time up to
a bound. The watcher run as a process against the real stack: tests/chaos.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from bankflow.settings import Settings
from producers.ingest import watcher
from producers.ingest.records import LineError
from producers.ingest.run import IngestReport
from producers.intake import NotAcknowledged

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    folder = tmp_path / "inbox"
    folder.mkdir()
    return folder


#: The submitter's folder files are dropped in (``inbox/<email>/``).
SUBMITTER = "ann@example.com"


def drop(inbox: Path, name: str = "payments.csv") -> Path:
    (inbox / SUBMITTER).mkdir(exist_ok=True)
    path = inbox / SUBMITTER / name
    path.write_bytes(b"debit_account,credit_account,amount,currency\n")
    return path


def ingest_that(outcome: BaseException | IngestReport) -> Any:
    def fake(_settings: Settings, path: Path, _inbox: Path, **_kwargs: Any) -> IngestReport:
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return fake


def report_of(inbox: Path, folder: str, name: str = "payments.csv") -> dict[str, Any]:
    """The report of a file filed away in its submitter's ``folder`` (done/, failed/)."""
    assert (inbox / SUBMITTER / folder / name).exists()
    assert not (inbox / SUBMITTER / name).exists()
    return orjson.loads((inbox / SUBMITTER / folder / f"{name}.report.json").read_bytes())


def test_a_file_whose_ingest_raises_goes_to_failed_with_the_reason(
    inbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = drop(inbox)
    (inbox / SUBMITTER / ".payments.csv.progress").write_bytes(b"not json")  # ignored, removed
    monkeypatch.setattr(watcher, "submit", ingest_that(ValueError("x" * 5_000)))
    watcher.process(Settings(), path, inbox)
    report = report_of(inbox, "failed")
    assert report["refused"].startswith("the ingest failed: ValueError: xxx")
    assert len(report["refused"]) <= watcher.REASON_MAX
    assert not (inbox / SUBMITTER / ".payments.csv.progress").exists()


@pytest.mark.parametrize(
    "error",
    [NotAcknowledged("Kafka timed out"), psycopg.OperationalError("connection refused")],
)
def test_a_dependency_that_is_down_leaves_the_file_for_later(
    inbox: Path, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    path = drop(inbox)
    monkeypatch.setattr(watcher, "submit", ingest_that(error))
    with pytest.raises(type(error)):
        watcher.process(Settings(), path, inbox)
    assert path.exists() and not (inbox / SUBMITTER / "failed").exists()


def test_a_file_of_nothing_but_bad_lines_fails_as_a_whole(
    inbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = drop(inbox)
    bad = IngestReport(str(path), lines_read=1, error_count=1)
    bad.errors.append(LineError(2, "amount", "amount 'abc' is not a plain decimal such as 12.30"))
    monkeypatch.setattr(watcher, "submit", ingest_that(bad))
    watcher.process(Settings(), path, inbox)
    report = report_of(inbox, "failed")
    assert report["refused"].startswith("no line could be ingested: 1 bad lines")
    assert "line 2, amount" in report["refused"]
    assert report["errors"] == [
        {
            "line": 2,
            "field": "amount",
            "reason": "amount 'abc' is not a plain decimal such as 12.30",
            "code": "invalid_amount",
        }
    ]


def test_a_file_with_some_good_lines_is_done_with_its_bad_lines_reported(
    inbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = drop(inbox)
    partial = IngestReport(str(path), lines_read=2, requests_produced=1, error_count=1)
    partial.errors.append(LineError(3, "credit_account", "not an account id"))
    monkeypatch.setattr(watcher, "submit", ingest_that(partial))
    watcher.process(Settings(), path, inbox)
    assert report_of(inbox, "done")["refused"] is None


def test_failures_to_process_are_retried_later_waiting_longer_up_to_a_bound(
    inbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = drop(inbox)
    calls: list[Path] = []

    def down(_settings: Settings, taken: Path, _inbox: Path) -> None:
        calls.append(taken)
        raise NotAcknowledged("Kafka timed out")

    monkeypatch.setattr(watcher, "process", down)
    retries: dict[Path, Any] = {}
    waits = []
    for _ in range(10):
        watcher._take(Settings(), path, inbox, retries)  # never raises
        waits.append(retries[path].wait_s)
    assert waits[0] == watcher.RETRY_WAIT_S_MIN
    assert waits == sorted(waits) and waits[-1] == watcher.RETRY_WAIT_S_MAX

    # Anything else (the inbox not writable, say) is retried the same way, not raised.
    def read_only(*_args: Any) -> None:
        raise PermissionError("the inbox is read-only")

    monkeypatch.setattr(watcher, "process", read_only)
    watcher._take(Settings(), path, inbox, retries)
    assert retries[path].wait_s == watcher.RETRY_WAIT_S_MAX
    # Once the file goes through, it is forgotten.
    monkeypatch.setattr(watcher, "process", lambda *_args: None)
    watcher._take(Settings(), path, inbox, retries)
    assert retries == {}


def test_a_file_outside_a_submitters_folder_is_refused_without_being_read(
    inbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = inbox / "payments.csv"
    path.write_bytes(b"debit_account,credit_account,amount,currency\n")
    monkeypatch.setattr(watcher, "submit_batch", lambda *_a, **_k: pytest.fail("ingested"))
    assert watcher._candidates(inbox) == [path]
    watcher.process(Settings(), path, inbox)
    report = orjson.loads((inbox / "failed" / "payments.csv.report.json").read_bytes())
    assert report["refused"].startswith("no submitter: a file is taken from its submitter's")
    assert report["requests_produced"] == 0


def test_processed_files_are_not_taken_again_and_each_folder_is_watched(inbox: Path) -> None:
    first = drop(inbox)
    (inbox / "bob@example.com").mkdir()
    second = inbox / "bob@example.com" / "b.csv"
    second.write_bytes(b"x")
    for folder in ("done", "failed", ".hidden"):
        (inbox / SUBMITTER / folder).mkdir()
        (inbox / SUBMITTER / folder / "old.csv").write_bytes(b"x")
        (inbox / folder).mkdir(exist_ok=True)
        (inbox / folder / "old.csv").write_bytes(b"x")
    assert watcher._candidates(inbox) == [first, second]
