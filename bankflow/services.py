"""The services ``bankflow run`` knows, and ``run all``, which starts them together."""

from __future__ import annotations

import importlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable

from bankflow.settings import Settings

#: Each service's entry function, as "module:function"; it takes the settings and runs
#: until it is told to stop (SIGTERM or SIGINT).
SERVICES: dict[str, str] = {
    "api": "api.app:serve",
    "validator": "processors.validator:run",
    "retrier": "processors.retrier:run",
    "poster": "consumers.poster:run",
    "relay": "consumers.relay:run",
    "inbox-watcher": "producers.ingest.watcher:run",
    "dlq-sink": "consumers.dlq_sink:run",
    "lag-exporter": "consumers.lag_exporter:run",
    "tracker": "consumers.tracker:run",
    "cache": "consumers.cache:run",
}

#: Not a service of the bank: ``run all --demo`` adds it to feed demo traffic.
DEMO = {"demo": "producers.demo:run"}

#: How long ``run all`` gives its services to stop after Ctrl-C before killing them.
STOP_GRACE_S = 20


def entry_point(name: str) -> Callable[[Settings], None]:
    module_name, function = {**SERVICES, **DEMO}[name].split(":")
    entry: Callable[[Settings], None] = getattr(importlib.import_module(module_name), function)
    return entry


def run_all(settings: Settings, echo: Callable[[str], None], demo: bool = False) -> int:
    """Start every service as its own process; Ctrl-C stops them all cleanly."""
    names = [*SERVICES, *(DEMO if demo else ())]
    processes = {
        name: subprocess.Popen([sys.executable, "-m", "bankflow.cli", "run", name])
        for name in names
    }
    echo(f"started {', '.join(f'{n} (pid {p.pid})' for n, p in processes.items())}")
    echo(f"API: http://127.0.0.1:{settings.api_port}/docs   ready: /readyz")
    echo("ledger: `bankflow accounts list`, `bankflow verify`   Ctrl-C stops everything")
    signal.signal(signal.SIGTERM, _interrupt)
    exit_code = 0
    try:
        while all(p.poll() is None for p in processes.values()):
            time.sleep(0.5)
        exited = [n for n, p in processes.items() if p.poll() is not None]
        echo(f"service(s) exited: {', '.join(exited)}; stopping the others")
        exit_code = 1
    except KeyboardInterrupt:
        echo("stopping services ...")
    _stop(processes)
    return exit_code


def _interrupt(*_: object) -> None:
    """SIGTERM to ``run all`` stops its services as Ctrl-C does."""
    raise KeyboardInterrupt


def _stop(processes: dict[str, subprocess.Popen[bytes]]) -> None:
    for process in processes.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for process in processes.values():
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
