"""``bankflow run inbox-watcher``: files dropped into the inbox are ingested once.

A file is taken when it is complete: names starting with a dot or ending in
``.tmp`` / ``.part`` are still being written, and any other file must keep the
same size and modification time for one whole poll. After ingesting, the file
moves to ``done/`` (or ``failed/`` when it was refused) beside its
``.report.json``. Progress is checkpointed after every acknowledged chunk in
``.<name>.progress``; a watcher killed mid-file resumes from its checkpoint,
and the chunk it may produce twice carries the same transfer ids, which the
ledger posts once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from bankflow.metrics import IngestMetrics, registered
from bankflow.observability import serve_metrics
from bankflow.runtime import configure_logging, on_stop_signal
from bankflow.settings import Settings
from producers.ingest.run import file_digest, ingest

log = logging.getLogger("bankflow.inbox")

#: How often the inbox is looked at; a file must stay unchanged this long to be taken.
POLL_S = 1.0
WRITING_SUFFIXES = (".tmp", ".part")


def _candidates(inbox: Path) -> list[Path]:
    return sorted(
        p for p in inbox.iterdir()
        if p.is_file() and not p.name.startswith(".") and not p.name.endswith(WRITING_SUFFIXES)
    )  # fmt: skip


def _checkpoint_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.progress")


def _resume_point(path: Path, digest: str) -> int:
    try:
        saved = orjson.loads(_checkpoint_path(path).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return 0
    return int(saved["lines_done"]) if saved.get("sha256") == digest else 0


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    temporary.replace(path)


def process(settings: Settings, path: Path, inbox: Path) -> None:
    """Ingest one complete file from where its checkpoint says, then file it away."""
    digest = file_digest(path)
    skip = _resume_point(path, digest)
    checkpoint = _checkpoint_path(path)

    def save(lines_done: int) -> None:
        _write_atomically(checkpoint, orjson.dumps({"sha256": digest, "lines_done": lines_done}))

    log.info("ingesting %s%s", path.name, f" from line {skip + 1}" if skip else "")
    report = ingest(settings, path, progress=save, skip=skip)
    target = inbox / ("failed" if report.refused else "done")
    target.mkdir(exist_ok=True)
    _write_atomically(
        target / f"{path.name}.report.json",
        orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2),
    )
    path.replace(target / path.name)
    checkpoint.unlink(missing_ok=True)
    metrics = registered(IngestMetrics)
    metrics.files.labels("refused" if report.refused else "done").inc()
    metrics.requests.inc(report.requests_produced)
    metrics.rejected_lines.inc(report.error_count)
    log.info(
        "%s: %d requests, %d lines rejected%s",
        path.name,
        report.requests_produced,
        report.error_count,
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
    while not stopping():
        current = {}
        for path in _candidates(inbox):
            stat = path.stat()
            current[path] = (stat.st_size, stat.st_mtime_ns)
            if seen.get(path) == current[path]:  # unchanged for a whole poll: complete
                process(settings, path, inbox)
                current.pop(path)
                if stopping():
                    break
        seen = current
        time.sleep(POLL_S)
