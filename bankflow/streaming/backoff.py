"""Waiting out a dependency's outage: bounded, doubling delays, interruptible by a stop."""

from __future__ import annotations

import logging
import threading

from bankflow.metrics import StageMetrics, registered

#: Waits between attempts while a dependency is down: 0.5 s doubling to 30 s, then every
#: 30 s for as long as it takes (the service shows not ready meanwhile, and the lag and
#: readiness alerts tell the operator; exiting would only make the supervisor restart it
#: into the same outage).
BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
#: A reason travels in a header and a log line: long texts are cut.
REASON_MAX = 300


class Backoff:
    """Counts failures in a row of one service and waits the next delay after each."""

    def __init__(self, name: str, stopped: threading.Event, log: logging.Logger) -> None:
        self.name = name
        self.stopped = stopped
        self.log = log
        self.failures_in_a_row = 0
        self.metrics = registered(StageMetrics)

    @property
    def waiting(self) -> bool:
        """Whether the last attempt failed (the service is not ready meanwhile)."""
        return self.failures_in_a_row > 0

    def failed(self, error: BaseException) -> None:
        """Log and count ``error``, then wait the next delay (or until stopped)."""
        delay = BACKOFF_S[min(self.failures_in_a_row, len(BACKOFF_S) - 1)]
        self.failures_in_a_row += 1
        self.metrics.transient.labels(self.name, type(error).__name__).inc()
        self.log.warning("%s: dependency unavailable (%s: %s); retrying in %s s",
                         self.name, type(error).__name__, short(error), delay)  # fmt: skip
        self.stopped.wait(delay)

    def succeeded(self) -> None:
        if self.failures_in_a_row:
            self.log.info("%s is back after %d failed attempt(s)", self.name,
                          self.failures_in_a_row)  # fmt: skip
        self.failures_in_a_row = 0


def short(error: BaseException) -> str:
    """An error's text for a log line or a header, cut at ``REASON_MAX``."""
    text = str(error) or type(error).__name__
    return text if len(text) <= REASON_MAX else text[:REASON_MAX] + "..."
