"""The process around a stage: logging, stop signals, the metrics port, clean shutdown.

Every stage's ``run(settings)`` is ``serve(build(settings), port)``: ``build`` is the
composition root that makes the stage's clients once, from the settings, and passes
them in; nothing opens a client lazily inside the loop or per probe.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from bankflow.observability import serve_metrics
from bankflow.runtime import configure_logging, on_stop_signal
from bankflow.settings import Settings


class Runnable(Protocol):
    def run(self) -> None: ...
    def stop(self) -> None: ...
    def ready(self) -> bool: ...
    def close(self) -> None: ...


def serve(settings: Settings, name: str, build: Callable[[], Runnable], port: int) -> None:
    """Build the service (after logging is set up), run it until SIGTERM or SIGINT with
    ``/metrics``, ``/healthz`` and ``/readyz`` on ``port``, and close it however the
    loop ends."""
    configure_logging()
    log = logging.getLogger(f"bankflow.{name.replace('-', '_')}")
    runnable = build()
    on_stop_signal(runnable.stop)
    server = serve_metrics(port, runnable.ready, host=settings.metrics_host)
    log.info("%s started; metrics on %s:%d", name, settings.metrics_host, server.port)
    try:
        runnable.run()
    finally:
        server.close()
        runnable.close()
        log.info("%s stopped", name)
