"""What every process shares, stage or not: logging and stop signals.

The stages' loop (polling, commits, backoff, containment) is ``bankflow.streaming``.
"""

from __future__ import annotations

import signal
from collections.abc import Callable


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
