"""``bankflow run all``: every service as a process of its own, restarted when it exits.

The services come from ``bankflow.registry``. A service that exits, whatever its exit
code, is started again after a delay that doubles from ``RESTART_DELAY_MIN_S`` to
``RESTART_DELAY_MAX_S`` and falls back to the minimum once the service has stayed up
for ``STABLE_AFTER_S``; the others keep running. ``CRASH_LOOP_EXITS`` exits within
``CRASH_LOOP_WINDOW_S`` mark a service as crash-looping. Ctrl-C or SIGTERM stops them
all (SIGTERM, then SIGKILL after ``STOP_GRACE_S``).

The supervisor says what it does in three places: its log, a JSON file that
``bankflow status`` and the API's ops page read (``state_file``, written atomically
on every change and every ``HEARTBEAT_S``), and Prometheus metrics on
``BANKFLOW_SUPERVISOR_METRICS_PORT`` (``SupervisorMetrics``).

Why not supervisord or circus: both are daemons with their own configuration
language and control channel (XML-RPC, ZeroMQ). Running them in the foreground of
``make run`` is possible, but our per-service state (crash loops, the restart delay
being waited out) would have to be rebuilt from their event streams by yet another
process, and their configuration would be a second service list beside the
registry. What they would add here is about a hundred lines of process polling,
which the tests below exercise with real processes (tests/chaos/test_supervision.py).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from bankflow.registry import DEMO, SERVICES, service
from bankflow.settings import Settings

log = logging.getLogger("bankflow.supervisor")

#: The first restart comes after 1 s: most exits are a dependency that blinked (a
#: broker leader moving, PostgreSQL restarting), which a second usually clears.
RESTART_DELAY_MIN_S = 1.0
#: Each further exit in a row doubles the delay up to 30 s, so a service that cannot
#: start costs two starts a minute, not a busy loop, and still comes back within 30 s
#: of its dependency returning.
RESTART_DELAY_MAX_S = 30.0
#: A service that has run this long is healthy again: its next exit restarts after
#: the minimum delay, and it no longer counts as crash-looping.
STABLE_AFTER_S = 60.0
#: This many exits within the window mark a crash loop: one exit is an accident, three
#: in two minutes (at 1 + 2 + 4 s of delay) mean the service cannot stay up.
CRASH_LOOP_EXITS = 3
CRASH_LOOP_WINDOW_S = 120.0
#: How often the supervisor looks at its processes: an exit is noticed within this.
TICK_S = 0.2
#: The state file is rewritten at least this often, so a reader can tell a live
#: supervisor from one that died (``STALE_AFTER_S``).
HEARTBEAT_S = 2.0
#: A state file not rewritten for this long belongs to a supervisor that is gone.
STALE_AFTER_S = 5 * HEARTBEAT_S
#: How long ``run all`` gives its services to stop after Ctrl-C before killing them.
STOP_GRACE_S = 20
#: The state file's format; a reader refuses another.
STATE_FORMAT = 1

RUNNING = "running"
BACKOFF = "backoff"
CRASH_LOOPING = "crash-looping"
STOPPED = "stopped"


def state_file(settings: Settings) -> Path:
    """Where ``run all`` keeps its services' state: ``<state dir>/run/services.json``."""
    return settings.state_dir / "run" / "services.json"


def entry_point(name: str) -> Callable[[Settings], None]:
    """The entry function of the service (or the demo feed) called ``name``."""
    return service(name).entry_point()


def chosen(demo: bool = False, only: Sequence[str] = (), without: Sequence[str] = ()) -> list[str]:
    """The services ``run all`` starts: every one, or ``only`` these, less ``without``."""
    names = [s.name for s in SERVICES] + ([DEMO.name] if demo else [])
    unknown = [n for n in (*only, *without) if n not in names]
    if unknown:
        raise ValueError(f"unknown service(s): {', '.join(unknown)}; known: {', '.join(names)}")
    return [n for n in names if (not only or n in only) and n not in without]


class SupervisorMetrics:
    """What the supervisor serves on its metrics port; one label value per process it runs."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.restarts = Counter(
            "bankflow_service_restarts",
            "Times run all started a service again after it exited.",
            ["service"],
            registry=registry,
        )
        self.crash_looping = Gauge(
            "bankflow_service_crash_looping",
            "1 while a service exits again and again (see CRASH_LOOP_EXITS), else 0.",
            ["service"],
            registry=registry,
        )
        self.running = Gauge(
            "bankflow_service_running",
            "1 while a service's process runs, 0 while run all waits to restart it.",
            ["service"],
            registry=registry,
        )
        self.restart_delay = Gauge(
            "bankflow_service_restart_delay_seconds",
            "The delay run all waits before the service's next start; 0 while it runs.",
            ["service"],
            registry=registry,
        )


class Backoff:
    """The delay before a restart: doubling while exits follow each other, reset by uptime."""

    def __init__(self) -> None:
        self.delay_s: float | None = None

    def after_exit(self, uptime_s: float) -> float:
        if self.delay_s is None or uptime_s >= STABLE_AFTER_S:
            self.delay_s = RESTART_DELAY_MIN_S
        else:
            self.delay_s = min(self.delay_s * 2, RESTART_DELAY_MAX_S)
        return self.delay_s


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Child:
    """One process ``run all`` keeps running, and what happened to it."""

    name: str
    service: str
    env: dict[str, str] | None = None
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    last_exit_code: int | None = None
    started_s: float = 0.0
    started_at: datetime | None = None
    exited_at: datetime | None = None
    #: While waiting out a delay: when (monotonic) it starts again.
    restart_at_s: float | None = None
    exits_s: deque[float] = field(default_factory=lambda: deque(maxlen=CRASH_LOOP_EXITS))
    backoff: Backoff = field(default_factory=Backoff)
    stopped: bool = False

    def crash_looping(self, now_s: float) -> bool:
        looping = (
            len(self.exits_s) == CRASH_LOOP_EXITS and now_s - self.exits_s[0] <= CRASH_LOOP_WINDOW_S
        )
        recovered = self.process is not None and now_s - self.started_s >= STABLE_AFTER_S
        return looping and not recovered

    def state(self, now_s: float) -> str:
        if self.stopped:
            return STOPPED
        if self.crash_looping(now_s):
            return CRASH_LOOPING
        return RUNNING if self.process is not None else BACKOFF

    def as_dict(self, now_s: float) -> dict[str, Any]:
        waiting = None if self.restart_at_s is None else max(0.0, self.restart_at_s - now_s)
        return {
            "name": self.name,
            "service": self.service,
            "state": self.state(now_s),
            "pid": None if self.process is None else self.process.pid,
            "crash_looping": self.crash_looping(now_s),
            "restarts": self.restarts,
            "last_exit_code": self.last_exit_code,
            "last_start_at": _iso(self.started_at),
            "last_exit_at": _iso(self.exited_at),
            "restart_in_s": None if waiting is None else round(waiting, 1),
        }


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


Launch = Callable[[Child], "subprocess.Popen[bytes]"]


def launch(child: Child) -> subprocess.Popen[bytes]:
    """``bankflow run SERVICE`` as a process; it shares the terminal (and Ctrl-C)."""
    env = None if child.env is None else {**os.environ, **child.env}
    return subprocess.Popen([sys.executable, "-m", "bankflow.cli", "run", child.service], env=env)


def children_for(names: Iterable[str]) -> list[Child]:
    """One child per instance: the first is the service itself, the others get their own
    instance id and a free metrics port (two cannot share one)."""
    children = []
    for name in names:
        spec = service(name)
        children.append(Child(name, name))
        for i in range(1, spec.instances):
            env = {"BANKFLOW_INSTANCE_ID": str(i)}
            if spec.metrics_port_setting:
                env[f"BANKFLOW_{spec.metrics_port_setting.upper()}"] = "0"
            children.append(Child(f"{name}-{i}", name, env))
    return children


class Supervisor:
    """Starts its children, restarts those that exit, and reports on them."""

    def __init__(
        self,
        settings: Settings,
        children: Sequence[Child],
        *,
        start: Launch = launch,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.children = list(children)
        self._start = start
        self._clock = clock
        self.registry = CollectorRegistry()
        self.metrics = SupervisorMetrics(self.registry)
        self.started_at = _now()
        self.metrics_port: int | None = None
        self.stopping = threading.Event()
        self._written_s = -HEARTBEAT_S

    def ready(self) -> bool:
        """For the supervisor's ``/readyz``: every child runs."""
        return all(c.process is not None for c in self.children)

    def start_all(self) -> None:
        now_s = self._clock()
        for child in self.children:
            self._spawn(child, now_s)
        self.write_state(now_s)

    def step(self) -> None:
        """Notice exits, start what is due, and keep the state file and metrics current."""
        now_s = self._clock()
        changed = False
        for child in self.children:
            if self.stopping.is_set():
                return
            changed |= self._look_after(child, now_s)
        for child in self.children:
            self.metrics.crash_looping.labels(child.name).set(int(child.crash_looping(now_s)))
        if changed or now_s - self._written_s >= HEARTBEAT_S:
            self.write_state(now_s)

    def _look_after(self, child: Child, now_s: float) -> bool:
        if child.process is not None:
            code = child.process.poll()
            if code is None:
                return False
            self._exited(child, code, now_s)
            return True
        if child.restart_at_s is not None and now_s >= child.restart_at_s:
            child.restarts += 1
            self.metrics.restarts.labels(child.name).inc()
            self._spawn(child, now_s)
            log.warning(
                "restarted %s (restart %d, pid %s)", child.name, child.restarts, _pid(child)
            )
            return True
        return False

    def _exited(self, child: Child, code: int, now_s: float) -> None:
        uptime_s = now_s - child.started_s
        child.process = None
        child.last_exit_code = code
        child.exited_at = _now()
        child.exits_s.append(now_s)
        delay_s = child.backoff.after_exit(uptime_s)
        child.restart_at_s = now_s + delay_s
        self.metrics.running.labels(child.name).set(0)
        self.metrics.restart_delay.labels(child.name).set(delay_s)
        log.error(
            "%s exited with code %s after %.1f s; restarting in %.0f s%s",
            child.name, code, uptime_s, delay_s,
            " (crash-looping)" if child.crash_looping(now_s) else "",
        )  # fmt: skip

    def _spawn(self, child: Child, now_s: float) -> None:
        child.process = self._start(child)
        child.started_s = now_s
        child.started_at = _now()
        child.restart_at_s = None
        self.metrics.running.labels(child.name).set(1)
        self.metrics.restart_delay.labels(child.name).set(0)
        self.metrics.restarts.labels(child.name)  # present (at 0) before the first restart

    def stop(self) -> None:
        """SIGTERM to every child, SIGKILL to those still running after ``STOP_GRACE_S``."""
        processes = [c.process for c in self.children if c.process is not None]
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for process in processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for child in self.children:
            if child.process is not None:
                child.last_exit_code = child.process.returncode
                child.process = None
            child.restart_at_s = None
            child.stopped = True
        self.write_state(self._clock(), stopped=True)

    def state(self, now_s: float, stopped: bool = False) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "supervisor": {
                "pid": os.getpid(),
                "started_at": self.started_at.isoformat(),
                "updated_at": _now().isoformat(),
                "stopped": stopped,
                "metrics_port": self.metrics_port,
            },
            "services": [c.as_dict(now_s) for c in self.children],
        }

    def write_state(self, now_s: float, stopped: bool = False) -> None:
        """Replace the state file in one rename, so a reader never sees half of it."""
        self._written_s = now_s
        path = state_file(self.settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        document = json.dumps(self.state(now_s, stopped), indent=2)
        with tempfile.NamedTemporaryFile(
            "w", dir=path.parent, prefix=".services.", suffix=".tmp", delete=False
        ) as out:
            out.write(document)
        Path(out.name).replace(path)


def read_state(settings: Settings) -> dict[str, Any] | None:
    """The last state ``run all`` wrote, with ``supervisor.running`` decided; None if none.

    ``running`` is false once the supervisor stopped, its pid is gone, or it has not
    rewritten the file for ``STALE_AFTER_S`` (hung): its services' states are then
    history, not news.
    """
    try:
        document = json.loads(state_file(settings).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(document, dict) or document.get("format") != STATE_FORMAT:
        return None
    supervisor = document["supervisor"]
    try:
        age_s = (_now() - datetime.fromisoformat(supervisor["updated_at"])).total_seconds()
    except (KeyError, TypeError, ValueError):
        return None
    supervisor["running"] = (
        not supervisor.get("stopped") and age_s <= STALE_AFTER_S and _alive(supervisor["pid"])
    )
    return document


def _alive(pid: object) -> bool:
    """Whether a process ``pid`` exists (readers run on the supervisor's host)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def run_all(
    settings: Settings,
    echo: Callable[[str], None],
    names: Sequence[str],
) -> int:
    """Run ``names`` as processes of their own, restarting any that exits, until stopped."""
    from bankflow.logs import configure, set_service
    from bankflow.observability import serve_metrics

    set_service("supervisor")
    configure(fmt=settings.log_format_chosen, level=settings.log_level)
    supervisor = Supervisor(settings, children_for(names))
    server = serve_metrics(
        settings.supervisor_metrics_port,
        supervisor.ready,
        host=settings.metrics_host,
        registry=supervisor.registry,
    )
    supervisor.metrics_port = server.port
    previous = {s: signal.signal(s, lambda *_: supervisor.stopping.set()) for s in _STOP_SIGNALS}
    try:
        supervisor.start_all()
        echo("started " + ", ".join(f"{c.name} (pid {_pid(c)})" for c in supervisor.children))
        if "api" in names:
            echo(f"API: http://127.0.0.1:{settings.api_port}/docs   ops page: /ops")
        echo(f"supervisor: metrics on port {server.port}, state in {state_file(settings)}")
        echo("`bankflow status` shows every service; Ctrl-C stops everything")
        while not supervisor.stopping.wait(TICK_S):
            supervisor.step()
        echo("stopping services ...")
    finally:
        supervisor.stop()
        server.close()
        for number, handler in previous.items():
            signal.signal(number, handler)
    return 0


#: Ctrl-C (SIGINT, which the terminal also sends the children) and SIGTERM stop ``run all``.
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _pid(child: Child) -> int | None:
    return None if child.process is None else child.process.pid
