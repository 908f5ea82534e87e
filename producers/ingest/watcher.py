"""``bankflow run inbox-watcher``: files dropped into the inbox are ingested once.

Every file has a submitter, named by the folder it is dropped in:
``inbox/<email>/payments.csv`` is submitted by the user with that email, and may
debit only that customer's accounts. Whoever can write into a folder submits as its
user, so the folders are the trust boundary: an operator creates one per customer
that hands files in this way and gives write access to it (an SFTP account chrooted
to it, say) to that customer's channel only. A folder per submitter (rather than a
file beside each payment file naming its submitter) lets the file system's own
permissions say who may submit as whom; with a name written in a file, anyone
who can write to the inbox could name anyone. A file at the top of the inbox, or in
the folder of an unknown user, of staff (who submit for customers with the CLI or
the API) or of a disabled user, is refused to ``failed/``.

A file is taken when it is complete: names starting with a dot or ending in
``.tmp`` / ``.part`` are still being written, and any other file must keep the
same size and modification time for one whole poll. After ingesting, the file
moves to ``done/`` in its folder (or ``failed/`` when it was refused, or not one of
its lines could be ingested) beside its ``.report.json``, which names its batch. A
byte-identical copy of a file ingested before is a duplicate of that batch: nothing
is sent, and it goes to ``done/`` with a report that says so. Progress is checkpointed after
every acknowledged chunk in ``.<name>.progress``; a watcher killed mid-file
resumes from its checkpoint, and the chunk it may produce twice carries the
same transfer ids, which the ledger posts once.

No file stops the watcher. One whose ingest raises anything but a transient
failure of a dependency (Kafka or PostgreSQL unreachable) goes to ``failed/``
with the error as its report's reason; after a transient failure the file stays
and is tried again later, waiting longer each time up to a bound.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
import psycopg

from bankflow.bootstrap import db_connect
from bankflow.errors import BankflowError
from bankflow.metrics import IngestMetrics, registered
from bankflow.observability import serve_metrics
from bankflow.runtime import configure_logging, on_stop_signal
from bankflow.settings import Settings
from producers.ingest.batches import submit_batch
from producers.ingest.records import SubmitterRefused
from producers.ingest.run import IngestReport, file_digest
from producers.ingest.submitters import find_submitter

log = logging.getLogger("bankflow.inbox")

#: How often the inbox is looked at; a file must stay unchanged this long to be taken.
POLL_S = 1.0
WRITING_SUFFIXES = (".tmp", ".part")
#: The wait before a file is tried again after Kafka or PostgreSQL could not be reached,
#: doubled on each failure up to the maximum: soon after a blip, and at most once a
#: minute (without flooding the log) while a server is down for longer.
RETRY_WAIT_S_MIN = 1.0
RETRY_WAIT_S_MAX = 60.0
#: Characters of an unexpected error kept as a failed file's reason.
REASON_MAX = 1_000
#: Where processed files go, in each submitter's folder (and at the top for files
#: dropped there): never a submitter's folder.
DONE, FAILED = "done", "failed"


@dataclass(frozen=True, slots=True)
class _Retry:
    wait_s: float
    not_before: float  # time.monotonic()


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` is a dependency failing for now (Kafka, PostgreSQL unreachable)
    rather than something about the file: the same file may go through later."""
    if isinstance(error, BankflowError):
        return error.transient
    return isinstance(error, psycopg.OperationalError)


def _candidates(inbox: Path) -> list[Path]:
    """Complete-looking files at the top of the inbox and in each submitter's folder."""
    folders = [
        inbox,
        *sorted(
            p for p in inbox.iterdir()
            if p.is_dir() and not p.name.startswith(".") and p.name not in (DONE, FAILED)
        ),
    ]  # fmt: skip
    return [
        p
        for folder in folders
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.name.startswith(".") and not p.name.endswith(WRITING_SUFFIXES)
    ]


def submit(
    settings: Settings, path: Path, inbox: Path, *, progress: Callable[[int], None], skip: int
) -> IngestReport:
    """Ingest ``path`` as a batch of the user its folder names (``SubmitterRefused``
    when it names none that may submit)."""
    if path.parent == inbox:
        raise SubmitterRefused(
            "a file is taken from its submitter's folder only (inbox/<email>/), "
            "not from the top of the inbox"
        )
    with db_connect(settings, autocommit=True) as conn:
        submitter = find_submitter(conn, path.parent.name)
    return submit_batch(
        settings, path, submitter, channel="inbox", progress=progress, skip=skip
    ).report


def _checkpoint_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.progress")


def _resume_point(path: Path, digest: str) -> int:
    try:
        saved = orjson.loads(_checkpoint_path(path).read_bytes())
        return int(saved["lines_done"]) if saved.get("sha256") == digest else 0
    except (OSError, orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
        return 0  # no checkpoint, or not one of ours: start from the top (ids dedupe)


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    temporary.replace(path)


def process(settings: Settings, path: Path, inbox: Path) -> None:
    """Ingest one complete file from where its checkpoint says, then file it away.

    Raises only for a transient failure of a dependency (see ``is_transient``), or
    when the file cannot be filed away; anything else the ingest raises fails the file.
    """
    digest = file_digest(path)
    skip = _resume_point(path, digest)
    checkpoint = _checkpoint_path(path)

    def save(lines_done: int) -> None:
        _write_atomically(checkpoint, orjson.dumps({"sha256": digest, "lines_done": lines_done}))

    log.info("ingesting %s%s", path.name, f" from line {skip + 1}" if skip else "")
    try:
        report = submit(settings, path, inbox, progress=save, skip=skip)
    except SubmitterRefused as exc:
        log.warning("%s: %s; it goes to failed/", path, exc)
        report = IngestReport(str(path), sha256=digest, refused=f"no submitter: {exc}")
    except Exception as exc:
        if is_transient(exc):
            raise
        log.exception("ingesting %s failed; it goes to failed/", path.name)
        reason = f"the ingest failed: {type(exc).__name__}: {exc}"
        report = IngestReport(
            str(path), sha256=digest, resumed_from=skip, refused=reason[:REASON_MAX]
        )
    if (
        report.refused is None
        and report.duplicate_of is None
        and report.error_count
        and not (report.requests_produced or skip)
    ):
        # Every line was bad: nothing of the file was ingested, so it failed as a whole.
        first = report.errors[0]
        report.refused = (
            f"no line could be ingested: {report.error_count} bad lines, the first "
            f"line {first.line}, {first.field}: {first.reason}"
        )[:REASON_MAX]
    _file_away(path, report)
    checkpoint.unlink(missing_ok=True)


def _file_away(path: Path, report: IngestReport) -> None:
    """Move the file to ``done/`` or ``failed/`` of its folder beside its report, and count it."""
    target = path.parent / (FAILED if report.refused else DONE)
    target.mkdir(exist_ok=True)
    _write_atomically(
        target / f"{path.name}.report.json",
        orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2),
    )
    path.replace(target / path.name)
    metrics = registered(IngestMetrics)
    metrics.files.labels("refused" if report.refused else "done").inc()
    metrics.requests.inc(report.requests_produced)
    metrics.rejected_lines.inc(report.error_count)
    log.info(
        "%s: batch %s, %d requests, %d lines rejected%s%s",
        path.name,
        report.batch_id,
        report.requests_produced,
        report.error_count,
        f"; a duplicate of batch {report.duplicate_of}" if report.duplicate_of else "",
        f"; refused: {report.refused}" if report.refused else "",
    )


def run(settings: Settings) -> None:
    configure_logging()
    inbox = settings.inbox
    inbox.mkdir(parents=True, exist_ok=True)
    stopping = False

    def stop() -> None:
        nonlocal stopping
        stopping = True

    on_stop_signal(stop)
    log.info("watching %s", inbox.resolve())
    # Ready while the inbox is there to watch; Kafka is checked by each file's ingest.
    server = serve_metrics(
        settings.inbox_watcher_metrics_port, inbox.is_dir, host=settings.metrics_host
    )
    log.info("metrics on %s:%d", settings.metrics_host, server.port)
    try:
        _watch(settings, inbox, lambda: stopping)
    finally:
        server.close()


def _watch(settings: Settings, inbox: Path, stopping: Callable[[], bool]) -> None:
    """Take each file once it stayed unchanged for a whole poll, until ``stopping()``."""
    seen: dict[Path, tuple[int, int]] = {}
    retries: dict[Path, _Retry] = {}
    while not stopping():
        current = {}
        for path in _candidates(inbox):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue  # taken away between the listing and now
            current[path] = (stat.st_size, stat.st_mtime_ns)
            retry = retries.get(path)
            if retry is not None and time.monotonic() < retry.not_before:
                continue
            if seen.get(path) == current[path]:  # unchanged for a whole poll: complete
                _take(settings, path, inbox, retries)
                current.pop(path)
                if stopping():
                    break
        seen = current
        # Bounded by the inbox: a file that left it is forgotten.
        retries = {p: r for p, r in retries.items() if p.exists()}
        time.sleep(POLL_S)


def _take(settings: Settings, path: Path, inbox: Path, retries: dict[Path, _Retry]) -> None:
    """Process one file; when that fails, schedule it again instead of stopping."""
    try:
        process(settings, path, inbox)
    except Exception as exc:
        previous = retries.get(path)
        wait_s = min(previous.wait_s * 2, RETRY_WAIT_S_MAX) if previous else RETRY_WAIT_S_MIN
        retries[path] = _Retry(wait_s, time.monotonic() + wait_s)
        if is_transient(exc):
            log.warning("%s: %s; trying it again in %.0f s", path.name, exc, wait_s)
        else:
            # Not even filed away (the inbox is not writable, the file went): log it in
            # full and try again later rather than stop watching.
            log.exception("%s could not be filed away; trying again in %.0f s", path.name, wait_s)
    else:
        retries.pop(path, None)
