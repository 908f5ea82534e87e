"""``run all``'s supervisor with stand-in processes and a clock the test moves.

The real processes are in tests/chaos/test_supervision.py; here every rule of the
supervisor is checked at once: restarts, the doubling delay and its reset, the crash
loop and its end, the state file, the metrics, and that one exit stops nobody else.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from bankflow.services import (
    CRASH_LOOP_EXITS,
    CRASH_LOOP_WINDOW_S,
    RESTART_DELAY_MAX_S,
    RESTART_DELAY_MIN_S,
    STABLE_AFTER_S,
    Backoff,
    Child,
    Supervisor,
    read_state,
    state_file,
)
from bankflow.settings import Settings

pytestmark = pytest.mark.timeout(10)


class FakeProcess:
    """What the supervisor asks of a ``subprocess.Popen``."""

    pids = iter(range(1000, 100_000))

    def __init__(self) -> None:
        self.pid = next(self.pids)
        self.returncode: int | None = None
        self.signals: list[int] = []

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, number: int) -> None:
        self.signals.append(number)
        self.returncode = -number

    def wait(self, timeout: float | None = None) -> int:
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        self.returncode = -9


class Clock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(state_dir=tmp_path)


def supervisor(settings: Settings, *names: str) -> tuple[Supervisor, Clock, dict[str, list]]:
    clock = Clock()
    started: dict[str, list[FakeProcess]] = {name: [] for name in names}

    def start(child: Child) -> FakeProcess:
        process = FakeProcess()
        started[child.name].append(process)
        return process  # type: ignore[return-value]

    sup = Supervisor(settings, [Child(n, n) for n in names], start=start, clock=clock)
    sup.start_all()
    return sup, clock, started


def exit_and_wait(sup: Supervisor, clock: Clock, process: FakeProcess, code: int = 1) -> float:
    """Let ``process`` exit, and return the delay the supervisor chose before its restart."""
    process.returncode = code
    sup.step()
    child = next(c for c in sup.children if c.process is None)
    assert child.restart_at_s is not None
    return child.restart_at_s - clock.now_s


def test_backoff_doubles_to_its_cap_and_resets_after_a_stable_run() -> None:
    backoff = Backoff()
    delays = [backoff.after_exit(uptime_s=0.5) for _ in range(8)]
    assert delays[:3] == [RESTART_DELAY_MIN_S, 2 * RESTART_DELAY_MIN_S, 4 * RESTART_DELAY_MIN_S]
    assert max(delays) == delays[-1] == RESTART_DELAY_MAX_S
    assert backoff.after_exit(uptime_s=STABLE_AFTER_S) == RESTART_DELAY_MIN_S


def test_an_exited_service_is_restarted_after_its_delay_and_the_others_run_on(
    settings: Settings,
) -> None:
    sup, clock, started = supervisor(settings, "poster", "validator")
    delay_s = exit_and_wait(sup, clock, started["poster"][0], code=-9)
    assert delay_s == RESTART_DELAY_MIN_S
    assert started["validator"][0].signals == []  # nobody else is touched
    clock.now_s += delay_s / 2
    sup.step()
    assert len(started["poster"]) == 1, "restarted before its delay"
    clock.now_s += delay_s
    sup.step()
    assert len(started["poster"]) == 2
    poster = sup.children[0].as_dict(clock.now_s)
    assert poster["state"] == "running"
    assert poster["pid"] == started["poster"][1].pid
    assert poster["restarts"] == 1
    assert poster["last_exit_code"] == -9
    assert len(started["validator"]) == 1
    metrics = generate_latest(sup.registry).decode()
    assert 'bankflow_service_restarts_total{service="poster"} 1.0' in metrics
    assert 'bankflow_service_restarts_total{service="validator"} 0.0' in metrics
    assert 'bankflow_service_running{service="poster"} 1.0' in metrics


def test_repeated_exits_are_a_crash_loop_until_the_service_stays_up(
    settings: Settings,
) -> None:
    sup, clock, started = supervisor(settings, "validator", "poster")
    delays = []
    for _ in range(CRASH_LOOP_EXITS):
        delays.append(exit_and_wait(sup, clock, started["validator"][-1]))
        clock.now_s += delays[-1]
        sup.step()
    assert delays == [RESTART_DELAY_MIN_S * 2**i for i in range(CRASH_LOOP_EXITS)]
    validator = sup.children[0]
    assert validator.as_dict(clock.now_s)["state"] == "crash-looping"
    assert (
        'bankflow_service_crash_looping{service="validator"} 1.0'
        in generate_latest(sup.registry).decode()
    )
    # While it waits out a delay it is still crash-looping, with its pid gone.
    exit_and_wait(sup, clock, started["validator"][-1])
    waiting = validator.as_dict(clock.now_s)
    assert (waiting["state"], waiting["pid"], waiting["crash_looping"]) == (
        "crash-looping", None, True,
    )  # fmt: skip
    assert waiting["restart_in_s"] == RESTART_DELAY_MIN_S * 2**CRASH_LOOP_EXITS
    assert sup.children[1].as_dict(clock.now_s)["state"] == "running"
    # Started again and up for a while: no longer a crash loop, the next delay is short.
    clock.now_s += waiting["restart_in_s"]
    sup.step()
    clock.now_s += STABLE_AFTER_S
    sup.step()
    assert validator.as_dict(clock.now_s)["state"] == "running"
    assert exit_and_wait(sup, clock, started["validator"][-1]) == RESTART_DELAY_MIN_S


def test_old_exits_leave_the_crash_loop_window(settings: Settings) -> None:
    sup, clock, started = supervisor(settings, "relay")
    for _ in range(CRASH_LOOP_EXITS - 1):
        clock.now_s += exit_and_wait(sup, clock, started["relay"][-1])
        sup.step()
    clock.now_s += CRASH_LOOP_WINDOW_S
    clock.now_s += exit_and_wait(sup, clock, started["relay"][-1])
    assert not sup.children[0].crash_looping(clock.now_s)


def test_the_state_file_says_what_a_reader_needs(settings: Settings) -> None:
    sup, clock, started = supervisor(settings, "poster", "cache")
    exit_and_wait(sup, clock, started["cache"][0], code=3)
    document = json.loads(state_file(settings).read_text())
    assert document["format"] == 1
    assert set(document["supervisor"]) == {
        "pid", "started_at", "updated_at", "stopped", "metrics_port",
    }  # fmt: skip
    cache = document["services"][1]
    assert cache == {
        "name": "cache", "service": "cache", "state": "backoff", "pid": None,
        "crash_looping": False, "restarts": 0, "last_exit_code": 3,
        "last_start_at": cache["last_start_at"], "last_exit_at": cache["last_exit_at"],
        "restart_in_s": RESTART_DELAY_MIN_S,
    }  # fmt: skip
    state = read_state(settings)
    assert state is not None and state["supervisor"]["running"]
    # No leftovers from the atomic writes.
    assert [p.name for p in state_file(settings).parent.iterdir()] == ["services.json"]


def test_stopping_stops_every_child_and_says_so(settings: Settings) -> None:
    sup, _clock, started = supervisor(settings, "poster", "relay")
    sup.stop()
    assert all(p[0].signals == [15] for p in started.values())  # SIGTERM
    state = read_state(settings)
    assert state is not None and not state["supervisor"]["running"]
    assert {s["state"] for s in state["services"]} == {"stopped"}


def test_the_ops_page_json_carries_the_supervisors_state(settings: Settings) -> None:
    from api.ops import supervisor_view
    from schemas.ops import SupervisorOut

    assert supervisor_view(settings) is None  # no run all here yet
    sup, clock, started = supervisor(settings, "poster", "validator")
    for _ in range(CRASH_LOOP_EXITS):
        clock.now_s += exit_and_wait(sup, clock, started["validator"][-1])
        sup.step()
    view = SupervisorOut.model_validate(supervisor_view(settings))
    assert view.running
    shown = {s.name: s for s in view.services}
    assert (shown["validator"].state, shown["validator"].restarts) == ("crash-looping", 3)
    assert shown["poster"].state == "running"
