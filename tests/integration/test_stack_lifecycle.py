"""`bankflow stack up | status | down` on a second, throw-away stack of its own.

It runs beside the session's stack, in its own state folder and on its own ports,
so it can stop what it starts without disturbing the other tests.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bankflow.errors import StackError
from bankflow.settings import Settings
from infra.stack import LocalStack
from tests.conftest import TESTS_DIR

pytestmark = pytest.mark.timeout(300)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def processes_mentioning(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (proc / "stat").read_text().split(") ", 1)[1][:1]
        except (OSError, IndexError):
            continue
        if text in cmdline and state != "Z":
            pids.append(int(proc.name))
    return pids


@pytest.fixture
def throwaway_env(tmp_path: Path) -> dict[str, str]:
    if shutil.which("java") is None or shutil.which("mvn") is None:
        pytest.skip("the local stack needs java and mvn")
    state = tmp_path / "state"
    # Reuse the jars the session's stack resolved, so this test downloads nothing.
    version = Settings().kafka_version
    resolved = Settings().state_dir / "kafka" / "libs" / version
    if (resolved / ".resolved").exists():
        (state / "kafka" / "libs").mkdir(parents=True)
        (state / "kafka" / "libs" / version).symlink_to(resolved)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BANKFLOW_")}
    env.update(
        {
            "BANKFLOW_STATE_DIR": str(state),
            "BANKFLOW_KAFKA_PORT": str(free_port()),
            "BANKFLOW_KAFKA_CONTROLLER_PORT": str(free_port()),
            "BANKFLOW_POSTGRES_PORT": str(free_port()),
            "BANKFLOW_REDIS_PORT": str(free_port()),
        }
    )
    return env


def bankflow(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bankflow.cli", *args],
        env=env,
        cwd=TESTS_DIR.parent,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_up_status_down_leaves_nothing_running(throwaway_env: dict[str, str]) -> None:
    state = throwaway_env["BANKFLOW_STATE_DIR"]
    try:
        up = bankflow(throwaway_env, "stack", "up")
        assert up.returncode == 0, up.stderr
        assert (Path(state) / "stack.env").read_text().count("BANKFLOW_") == 3

        status = bankflow(throwaway_env, "stack", "status", "--json")
        assert status.returncode == 0, status.stderr
        servers = {s["name"]: s for s in json.loads(status.stdout)}
        assert set(servers) == {"kafka", "postgres", "redis"}
        assert all(s["state"] == "up" and s["managed"] and s["version"] for s in servers.values())
        assert servers["kafka"]["version"].startswith("4.")
        assert servers["kafka"]["address"] == f"127.0.0.1:{throwaway_env['BANKFLOW_KAFKA_PORT']}"
        pids = [s["pid"] for s in servers.values()]

        again = bankflow(throwaway_env, "stack", "up", "--json")
        assert again.returncode == 0, again.stderr
        assert "already running" in again.stderr
        assert [s["pid"] for s in json.loads(again.stdout)] == pids, "a second up restarted servers"
    finally:
        down = bankflow(throwaway_env, "stack", "down", "--purge")
    assert down.returncode == 0, down.stderr
    still_running = [pid for pid in pids if pid in processes_mentioning("")]
    assert still_running == [], f"stack down left processes running: {still_running}"
    assert processes_mentioning(state) == []

    after = bankflow(throwaway_env, "stack", "status", "--json")
    assert after.returncode == 1
    assert {s["state"] for s in json.loads(after.stdout)} == {"down"}


def test_a_port_taken_by_a_stranger_fails_with_a_clear_message(
    throwaway_env: dict[str, str],
) -> None:
    with socket.socket() as stranger:
        stranger.bind(("127.0.0.1", int(throwaway_env["BANKFLOW_KAFKA_PORT"])))
        stranger.listen()
        result = bankflow(throwaway_env, "stack", "up")
    bankflow(throwaway_env, "stack", "down", "--purge")
    assert result.returncode == 1
    assert "in use by another process" in result.stderr
    assert "BANKFLOW_KAFKA_PORT" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_failed_download_says_which_version_and_what_to_check(tmp_path: Path) -> None:
    if shutil.which("mvn") is None:
        pytest.skip("mvn is not installed")
    settings = Settings(_env_file=None, state_dir=tmp_path, kafka_version="0.0.0-no-such-version")
    stack = LocalStack(settings, echo=lambda _line: None)
    with pytest.raises(StackError, match=r"could not resolve Kafka 0\.0\.0-no-such-version"):
        stack.kafka_libs()
    assert not (tmp_path / "kafka" / "libs" / "0.0.0-no-such-version" / ".resolved").exists()
