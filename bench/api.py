"""``bankflow bench api``: accepted transfer requests per second at 64 concurrent clients.

Three servers, each run by uvicorn with the same settings (workers, no access log)
on the same machine in the same run, loaded by ``wrk`` (C, light enough to leave
the cores to the servers) with 64 connections sending ``POST /v1/transfers`` with a
fresh ``Idempotency-Key`` each:

- ``bare``: an endpoint that only answers 202 (``bench.api_apps.bare_app``);
- ``skeleton``: the same authentication and body validation, no I/O
  (``bench.api_apps.skeleton_app``): the practical ceiling;
- ``api``: the real API: token revocation and rate limits in Redis, the account
  owner in PostgreSQL, the idempotency record in Redis, the request produced to
  Kafka and acknowledged by the broker before the 202.

Reported: requests/s and p50/p99 latency of each, ``ratio`` = api / skeleton and
``skeleton_ratio`` = skeleton / bare. The rate limits are lifted for the run (one
user from one address would hit them at once).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bankflow.bootstrap import db_connect
from bankflow.errors import StackError
from bankflow.ledger.accounts import open_account
from bankflow.settings import PROJECT_ROOT, Settings
from bench.common import clean_up, throwaway

CONCURRENCY = 64
TARGETS = {
    "bare": "bench.api_apps:bare_app",
    "skeleton": "bench.api_apps:skeleton_app",
    "api": "api.app:create_app",
}
STARTUP_TIMEOUT_S = 60
PASSWORD = "bench-password-long-enough-42"  # noqa: S105 - a throw-away bench user

_WRK_SCRIPT = """
local made = 0
function setup(thread)
  made = made + 1
  thread:set("tid", made)
end
function init(args)
  counter = 0
end
function request()
  counter = counter + 1
  local headers = {}
  headers["Authorization"] = "Bearer __TOKEN__"
  headers["Content-Type"] = "application/json"
  headers["Idempotency-Key"] = "__RUN__-" .. tid .. "-" .. counter
  return wrk.format("POST", "/v1/transfers", headers, '__BODY__')
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"bad_status":%d,"socket_errors":%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout))
end
"""


def run_bench(
    settings: Settings, seconds: int, workers: int, echo: Callable[[str], None], rounds: int = 1
) -> dict[str, Any]:
    wrk = _wrk()
    bench = throwaway(
        settings, settings.all_topics(), redis_prefix=f"bench-{uuid.uuid4().hex[:8]}:"
    )
    env = _env(bench, workers)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in TARGETS}
    try:
        token, account = _customer(env, bench, echo)
        body = json.dumps({"debit_account": str(account), "credit_account": str(account),
                           "amount": "1.00", "currency": "EUR"})  # fmt: skip
        for number in range(1, rounds + 1):
            for name, target in TARGETS.items():
                with _server(target, env, workers) as port:
                    _load(wrk, port, token, body, seconds=2)  # warm-up, not measured
                    measured = _load(wrk, port, token, body, seconds=seconds)
                results[name].append(measured)
                echo(f"round {number}/{rounds} {name}: {measured['per_s']:,.0f}/s, "
                     f"p50 {measured['p50_ms']} ms, p99 {measured['p99_ms']} ms")  # fmt: skip
    finally:
        clean_up(bench, bench.all_topics())
    # The median round of each target (by throughput), as the other benchmarks report.
    best = {
        name: sorted(runs, key=lambda r: r["per_s"])[len(runs) // 2]
        for name, runs in results.items()
    }
    return {
        "concurrency": CONCURRENCY,
        "seconds": seconds,
        "workers": workers,
        **{f"{name}_per_s": round(r["per_s"]) for name, r in best.items()},
        **{f"{name}_p50_ms": r["p50_ms"] for name, r in best.items()},
        **{f"{name}_p99_ms": r["p99_ms"] for name, r in best.items()},
        "ratio": round(best["api"]["per_s"] / best["skeleton"]["per_s"], 3),
        "skeleton_ratio": round(best["skeleton"]["per_s"] / best["bare"]["per_s"], 3),
        "bad_responses": {name: int(r["bad"]) for name, r in best.items()},
    }


def _wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0:
        raise StackError("bankflow bench api needs wrk: run `sudo apt-get install -y wrk`")
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, capture_output=True)
    found = shutil.which("wrk")
    if not found:
        raise StackError("wrk was not found after installing it")
    return found


def _env(settings: Settings, workers: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BANKFLOW_")}
    env.update({
        "BANKFLOW_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "BANKFLOW_DATABASE_URL": settings.database_url,
        "BANKFLOW_REDIS_URL": settings.redis_url,
        "BANKFLOW_TOPIC_PREFIX": settings.topic_prefix,
        "BANKFLOW_DB_SCHEMA": settings.db_schema,
        "BANKFLOW_REDIS_PREFIX": settings.redis_prefix,
        "BANKFLOW_API_RATE_PER_USER_PER_MIN": str(10**9),
        "BANKFLOW_API_RATE_PER_ADDRESS_PER_MIN": str(10**9),
        "BANKFLOW_ACCESS_TOKEN_TTL_S": "3600",
        # Pool per worker: enough for 64 clients spread over the workers.
        "BANKFLOW_API_DB_POOL_MAX": str(max(10, CONCURRENCY // workers)),
    })  # fmt: skip
    return env


def _customer(env: dict[str, str], settings: Settings, echo: Callable[[str], None]) -> Any:
    """A registered customer with one account, and an access token, through the real API."""
    echo("registering a customer through the API ...")
    email = f"bench-{uuid.uuid4().hex[:8]}@example.com"
    with _server(TARGETS["api"], env, 1) as port:
        base = f"http://127.0.0.1:{port}/v1/auth"
        user = _post_json(f"{base}/register",
                          {"email": email, "password": PASSWORD, "full_name": "Bench"})  # fmt: skip
        form = f"username={email}&password={PASSWORD}".encode()
        request = urllib.request.Request(f"{base}/token", data=form, method="POST")  # noqa: S310
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
            token = json.load(response)["access_token"]
    with db_connect(settings, autocommit=True) as conn:
        account = open_account(conn, settings, customer_id=uuid.UUID(user["customer_id"]),
                               account_type="checking", currency="EUR").id  # fmt: skip
    return token, account


def _post_json(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(  # noqa: S310 - loopback, built from a port number
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"},
        method="POST",
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
        return json.load(response)


class _server:  # noqa: N801 - used as a context manager, reads as a verb
    """uvicorn serving ``target`` (a factory) on a free port, stopped on exit."""

    last_pid = 0  # for profiling a server from outside (py-spy)

    def __init__(self, target: str, env: dict[str, str], workers: int) -> None:
        self.command = [
            sys.executable, "-m", "uvicorn", "--factory", target, "--host", "127.0.0.1",
            "--workers", str(workers), "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip
        self.env = env

    def __enter__(self) -> int:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        self.process = subprocess.Popen(
            [*self.command, "--port", str(port)], env=self.env, cwd=PROJECT_ROOT
        )
        _server.last_pid = self.process.pid
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    time.sleep(1)  # every worker up, not just the first
                    return port
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.command} exited with {self.process.returncode}")
            time.sleep(0.2)
        raise RuntimeError(f"{self.command} did not listen within {STARTUP_TIMEOUT_S} s")

    def __exit__(self, *_: object) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _load(wrk: str, port: int, token: str, body: str, seconds: int) -> dict[str, float]:
    script = (
        _WRK_SCRIPT.replace("__TOKEN__", token)
        .replace("__RUN__", uuid.uuid4().hex[:12])
        .replace("__BODY__", body)
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
    try:
        done = subprocess.run(
            [wrk, "-t2", f"-c{CONCURRENCY}", f"-d{seconds}s", "--timeout", "10s",
             "-s", handle.name, f"http://127.0.0.1:{port}/v1/transfers"],
            capture_output=True, text=True, check=True, timeout=seconds + 60,
        )  # fmt: skip
    finally:
        Path(handle.name).unlink()
    line = [x for x in done.stdout.splitlines() if x.startswith("{")][-1]
    raw = json.loads(line)
    return {
        "per_s": (raw["requests"] - raw["bad_status"]) / (raw["duration_us"] / 1e6),
        "p50_ms": round(raw["p50_us"] / 1000, 2),
        "p99_ms": round(raw["p99_us"] / 1000, 2),
        "bad": raw["bad_status"] + raw["socket_errors"],
    }
