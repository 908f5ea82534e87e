"""The local stack without Docker: a real Kafka broker, PostgreSQL and Redis on loopback.

``bankflow stack up`` resolves Apache Kafka's jars from Maven Central into
``.local/kafka/libs`` and starts ``kafka.Kafka`` in KRaft mode (one combined
broker and controller), initialises a PostgreSQL cluster under ``.local/pg`` and
starts Debian's ``redis-server``, each on its own port. Every process it starts
is recorded in a pid file, so ``down`` stops exactly those and nothing else.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import psycopg
import redis
from confluent_kafka import KafkaException

from bankflow.bootstrap import kafka_admin
from bankflow.errors import StackError
from bankflow.settings import Settings
from bankflow.signing import ensure_keys

KAFKA_POM = Path(__file__).resolve().parent / "kafka" / "pom.xml"
KAFKA_LOG4J = Path(__file__).resolve().parent / "kafka" / "log4j2.properties"

#: How long ``up`` waits for a server to answer before giving up. Kafka's first
#: start creates its internal topics, which takes a few seconds on two cores.
READY_TIMEOUT_S = 90
#: How long ``down`` waits for a graceful stop before it sends SIGKILL.
STOP_TIMEOUT_S = 60
#: Kafka 4.x brokers need Java 17 or newer.
JAVA_VERSION_MIN = 17
#: Lines of a server's log shown when it fails to start.
LOG_TAIL_LINES = 25

Server = Literal["kafka", "postgres", "redis"]


@dataclass(frozen=True)
class ServerStatus:
    """What ``bankflow stack status`` reports for one server."""

    name: str
    state: Literal["up", "down"]
    address: str
    version: str | None
    managed: bool
    pid: int | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes in URL-safe base64 without padding.

    One in 64 of those starts with "-", which the storage tool's argument parser
    takes for an option ("--cluster-id expected one argument"); Kafka's own
    ``Uuid.randomUuid`` draws again in that case, and so does this.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


class LocalStack:
    """Starts, stops and inspects the three servers of the local stack."""

    def __init__(self, settings: Settings, echo: Callable[[str], None] = print) -> None:
        self.settings = settings
        self.echo = echo
        self.root = settings.state_dir
        self.run_dir = self.root / "run"
        self._apt_updated = False

    # ----------------------------------------------------------------- public

    def up(self) -> list[ServerStatus]:
        """Start whatever is not running yet, wait until each answers, write stack.env."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._start_kafka()
        self._start_postgres()
        self._start_redis()
        self._write_stack_env()
        # Development keys for the signed stage messages, never in the repository.
        ensure_keys(self.settings.signing_keys_path)
        return self.status()

    def down(self, purge: bool = False) -> list[str]:
        """Stop the processes this stack started (by pid file); remove data with ``purge``."""
        stopped: list[str] = []
        if self._stop_postgres():
            stopped.append("postgres")
        for name in ("redis", "kafka"):
            if self._stop_pidfile(name):
                stopped.append(name)
        if purge:
            for path in (self.root / "kafka" / "data", self.pg_root, self.root / "redis"):
                shutil.rmtree(path, ignore_errors=True)
            self.settings.stack_env_file.unlink(missing_ok=True)
        return stopped

    def status(self) -> list[ServerStatus]:
        """Ask each configured server whether it answers, and which version it runs."""
        return [self._kafka_status(), self._postgres_status(), self._redis_status()]

    # ------------------------------------------------------------------ Kafka

    @property
    def kafka_dir(self) -> Path:
        return self.root / "kafka"

    def kafka_libs(self) -> Path:
        """Resolve the broker's jars once per version; later calls download nothing."""
        version = self.settings.kafka_version
        libs = self.kafka_dir / "libs" / version
        marker = libs / ".resolved"
        if marker.exists():
            return libs
        if shutil.which("mvn") is None:
            raise StackError(
                "Maven (mvn) is not on PATH; it resolves Kafka's jars from Maven Central. "
                "Install it (apt-get install maven) and run `bankflow stack up` again."
            )
        self.echo(f"resolving org.apache.kafka:kafka_2.13:{version} from Maven Central ...")
        libs.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [
                "mvn",
                "-B",
                "-q",
                "-f",
                str(KAFKA_POM),
                "dependency:copy-dependencies",
                f"-Dkafka.version={version}",
                f"-DoutputDirectory={libs}",
                "-DincludeScope=runtime",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-LOG_TAIL_LINES:])
            raise StackError(
                f"could not resolve Kafka {version} from Maven Central (mvn exited "
                f"{result.returncode}). Check the network to the Maven registry and that "
                f"BANKFLOW_KAFKA_VERSION names a released version.\n{tail}"
            )
        marker.write_text(version + "\n")
        return libs

    def _start_kafka(self) -> None:
        if self._alive("kafka"):
            self.echo(f"kafka      already running at {self.settings.kafka_bootstrap}")
            return
        self._require_java()
        port, controller_port = self.settings.kafka_port, self.settings.kafka_controller_port
        self._require_free_port("kafka", port, "BANKFLOW_KAFKA_PORT")
        self._require_free_port(
            "kafka controller", controller_port, "BANKFLOW_KAFKA_CONTROLLER_PORT"
        )
        libs = self.kafka_libs()
        props = self._write_server_properties()
        classpath = f"{libs}/*"
        if not (self.kafka_dir / "data" / "meta.properties").exists():
            self._format_kafka_storage(classpath, props)
        heap = f"-Xmx{self.settings.kafka_heap_mb}m"
        cmd = [
            "java",
            heap,
            f"-Xms{min(self.settings.kafka_heap_mb, 256)}m",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={KAFKA_LOG4J}",
            "-cp",
            classpath,
            "kafka.Kafka",
            str(props),
        ]
        self._spawn("kafka", cmd, self.kafka_dir / "kafka.log")
        (self.run_dir / "kafka.version").write_text(self.settings.kafka_version + "\n")
        self._wait_until("kafka", self._kafka_answers, self.kafka_dir / "kafka.log")
        self.echo(
            f"kafka      up at {self.settings.kafka_bootstrap} "
            f"(Apache Kafka {self.settings.kafka_version}, KRaft)"
        )

    def _write_server_properties(self) -> Path:
        s = self.settings
        data = self.kafka_dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        lines = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{s.kafka_controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{s.kafka_port},"
            f"CONTROLLER://127.0.0.1:{s.kafka_controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{s.kafka_port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(data),
            # A single node: every internal topic has one replica.
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # Fewer internal partitions than the default 50: a faster first start on two cores.
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.num.partitions": "10",
            # Topics are created on purpose (`bankflow topics create`), never by a typo.
            "auto.create.topics.enable": "false",
            "num.partitions": str(s.topic_partitions),
            # Tests and demos start consumers often; do not wait 3 s before each first rebalance.
            "group.initial.rebalance.delay.ms": "0",
        }
        props = self.kafka_dir / "server.properties"
        props.write_text("".join(f"{k}={v}\n" for k, v in lines.items()))
        return props

    def _format_kafka_storage(self, classpath: str, props: Path) -> None:
        cluster_id = new_cluster_id()
        result = subprocess.run(
            [
                "java",
                "-cp",
                classpath,
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                f"--cluster-id={cluster_id}",
                "-c",
                str(props),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise StackError(f"formatting Kafka's storage failed:\n{result.stdout}{result.stderr}")

    def _kafka_answers(self) -> bool:
        # log_level 0: a probe that expects "connection refused" while the broker starts
        # must not flood the terminal with librdkafka's complaints about it.
        admin = kafka_admin(
            self.settings, **{"socket.connection.setup.timeout.ms": 2000, "log_level": 0}
        )
        try:
            admin.list_topics(timeout=3)
        except KafkaException:  # any failure means "not answering yet"
            return False
        return True

    def _kafka_status(self) -> ServerStatus:
        up = self._kafka_answers()
        managed = self._alive("kafka")
        version_file = self.run_dir / "kafka.version"
        version = version_file.read_text().strip() if managed and version_file.exists() else None
        pid = self._pid("kafka") if managed else None
        return ServerStatus(
            "kafka",
            "up" if up else "down",
            self.settings.kafka_bootstrap,
            version if up else None,
            managed,
            pid,
        )

    def _require_java(self) -> None:
        java = shutil.which("java")
        if java is None:
            raise StackError(
                f"Java is not on PATH; the Kafka broker needs Java {JAVA_VERSION_MIN} or newer. "
                "Install it (apt-get install openjdk-17-jre-headless) and try again."
            )
        out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
        match = re.search(r'version "(\d+)', out.stderr + out.stdout)
        if match and int(match.group(1)) < JAVA_VERSION_MIN:
            raise StackError(
                f"{java} is Java {match.group(1)}; Kafka 4 needs Java {JAVA_VERSION_MIN} or "
                "newer. Put a newer java first on PATH (or set JAVA_HOME's bin first)."
            )

    # ------------------------------------------------------------- PostgreSQL

    @functools.cached_property
    def pg_root(self) -> Path:
        """Where the PostgreSQL cluster lives: ``.local/pg``, or beside it when it must.

        PostgreSQL refuses to run as root, so as root the cluster belongs to the
        ``postgres`` user, who must be able to reach it. When a parent folder of the
        checkout is closed to other users, the cluster lives under ``/var/tmp``
        instead, named after the state folder so that two checkouts never share one.
        """
        local = self.root / "pg"
        user = self._postgres_user() if os.geteuid() == 0 else None
        if user is None or self._reachable_by(user, self.root):
            return local
        digest = hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:12]
        # A fixed, per-checkout name under the sticky /var/tmp, created by root: not a
        # shared temporary file another user could have prepared.
        return Path("/var/tmp") / f"bankflow-pg-{digest}"  # noqa: S108

    @property
    def pg_data(self) -> Path:
        return self.pg_root / "data"

    def _start_postgres(self) -> None:
        if self._postgres_pid() is not None:
            self.echo(f"postgres   already running at 127.0.0.1:{self.settings.postgres_port}")
            return
        self._require_free_port("postgres", self.settings.postgres_port, "BANKFLOW_POSTGRES_PORT")
        bindir = self._postgres_bindir()
        user = self._postgres_user()
        if not (self.pg_data / "PG_VERSION").exists():
            self._initdb(bindir, user)
        log = self.pg_root / "postgres.log"
        options = (
            f"-p {self.settings.postgres_port} -c listen_addresses=127.0.0.1 "
            "-c unix_socket_directories='' -c max_connections=200"
        )
        result = self._run_as(
            user,
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(self.pg_data),
                "-l",
                str(log),
                "-o",
                options,
                "-w",
                "-t",
                str(READY_TIMEOUT_S),
                "start",
            ],
        )
        if result.returncode != 0:
            raise StackError(
                f"PostgreSQL did not start:\n{result.stdout}{result.stderr}\n{self._tail(log)}"
            )
        self._wait_until("postgres", self._postgres_answers, log)
        self._ensure_database()
        self.echo(f"postgres   up at 127.0.0.1:{self.settings.postgres_port}")

    def _postgres_bindir(self) -> Path:
        if not _debian_initdbs() and shutil.which("initdb") is None:
            self._apt_install("postgresql", "PostgreSQL")
        candidates = _debian_initdbs()
        if candidates:
            return candidates[-1].parent
        initdb = shutil.which("initdb")
        if initdb is None:
            raise StackError("PostgreSQL's initdb was not found after installing postgresql.")
        return Path(initdb).resolve().parent

    def _postgres_user(self) -> str | None:
        """PostgreSQL refuses to run as root; as root we run it as the ``postgres`` user."""
        if os.geteuid() != 0:
            return None
        for name in ("postgres", "bankflow-pg"):
            with contextlib.suppress(KeyError):
                pwd.getpwnam(name)
                return name
        subprocess.run(["useradd", "--system", "--no-create-home", "bankflow-pg"], check=True)
        return "bankflow-pg"

    def _initdb(self, bindir: Path, user: str | None) -> None:
        pg_root = self.pg_root
        pg_root.mkdir(parents=True, exist_ok=True)
        pwfile = pg_root / ".pwfile"
        pwfile.write_text("bankflow\n")
        if user is not None:
            entry = pwd.getpwnam(user)
            os.chown(pg_root, entry.pw_uid, entry.pw_gid)
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        result = self._run_as(
            user,
            [
                str(bindir / "initdb"),
                "-D",
                str(self.pg_data),
                "-U",
                "bankflow",
                f"--pwfile={pwfile}",
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        )
        pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise StackError(f"initdb failed:\n{result.stdout}{result.stderr}")

    def _reachable_by(self, user: str, path: Path) -> bool:
        path.mkdir(parents=True, exist_ok=True)
        return self._run_as(user, ["test", "-x", str(path)]).returncode == 0

    def _run_as(self, user: str | None, cmd: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            check=False,
            user=user,
            cwd="/",
            env={**os.environ, "LC_ALL": "C"},
        )

    def _postgres_pid(self) -> int | None:
        pidfile = self.pg_data / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _process_alive(pid, "postgres") else None

    def _postgres_answers(self) -> bool:
        try:
            with psycopg.connect(self._admin_dsn(), connect_timeout=3) as conn:
                conn.execute("select 1")
        except psycopg.Error:
            return False
        return True

    def _admin_dsn(self) -> str:
        return f"postgresql://bankflow:bankflow@127.0.0.1:{self.settings.postgres_port}/postgres"

    def _ensure_database(self) -> None:
        with psycopg.connect(self._admin_dsn(), autocommit=True) as conn:
            exists = conn.execute("select 1 from pg_database where datname = 'bankflow'").fetchone()
            if exists is None:
                conn.execute("create database bankflow")

    def _postgres_status(self) -> ServerStatus:
        address = _redact(self.settings.database_url)
        version = None
        try:
            with psycopg.connect(self.settings.database_url, connect_timeout=3) as conn:
                row = conn.execute("show server_version").fetchone()
                version = str(row[0]) if row else None
        except psycopg.Error:
            pass
        pid = self._postgres_pid()
        return ServerStatus(
            "postgres", "up" if version else "down", address, version, pid is not None, pid
        )

    def _stop_postgres(self) -> bool:
        if self._postgres_pid() is None:
            return False
        bindir = self._postgres_bindir()
        result = self._run_as(
            self._postgres_user(),
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(self.pg_data),
                "-m",
                "fast",
                "-w",
                "-t",
                str(STOP_TIMEOUT_S),
                "stop",
            ],
        )
        if result.returncode != 0:
            raise StackError(f"PostgreSQL did not stop:\n{result.stdout}{result.stderr}")
        return True

    # ------------------------------------------------------------------ Redis

    def _start_redis(self) -> None:
        if self._alive("redis"):
            self.echo(f"redis      already running at 127.0.0.1:{self.settings.redis_port}")
            return
        self._require_free_port("redis", self.settings.redis_port, "BANKFLOW_REDIS_PORT")
        binary = shutil.which("redis-server")
        if binary is None:
            self._apt_install("redis-server", "Redis")
            binary = shutil.which("redis-server")
        if binary is None:
            raise StackError("redis-server was not found after installing it.")
        data = self.root / "redis"
        data.mkdir(parents=True, exist_ok=True)
        # Append-only with a fsync a second: the fraud rules' windows survive a restart.
        cmd = [
            binary,
            "--port",
            str(self.settings.redis_port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data),
            "--daemonize",
            "no",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--protected-mode",
            "yes",
        ]
        self._spawn("redis", cmd, data / "redis.log")
        self._wait_until("redis", self._redis_answers, data / "redis.log")
        self.echo(f"redis      up at 127.0.0.1:{self.settings.redis_port}")

    def _redis_info(self) -> dict[str, Any] | None:
        client = redis.Redis.from_url(
            self.settings.redis_url, socket_connect_timeout=2, socket_timeout=2
        )
        try:
            info: dict[str, Any] = client.info("server")
        except redis.RedisError:
            return None
        finally:
            client.close()
        return info

    def _redis_answers(self) -> bool:
        return self._redis_info() is not None

    def _redis_status(self) -> ServerStatus:
        info = self._redis_info()
        managed = self._alive("redis")
        return ServerStatus(
            "redis",
            "up" if info else "down",
            _redact(self.settings.redis_url),
            str(info["redis_version"]) if info else None,
            managed,
            self._pid("redis") if managed else None,
        )

    # -------------------------------------------------------------- processes

    def _spawn(self, name: Server, cmd: list[str], log: Path) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            # A new session: the server outlives this command and ignores the terminal's Ctrl-C.
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.root,
            )
        (self.run_dir / f"{name}.pid").write_text(f"{proc.pid}\n")

    def _pid(self, name: Server) -> int | None:
        try:
            return int((self.run_dir / f"{name}.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def _alive(self, name: Server) -> bool:
        pid = self._pid(name)
        marker = {"kafka": "kafka.Kafka", "redis": "redis-server", "postgres": "postgres"}[name]
        return pid is not None and _process_alive(pid, marker)

    def _stop_pidfile(self, name: Server) -> bool:
        pid = self._pid(name)
        pidfile = self.run_dir / f"{name}.pid"
        if pid is None or not self._alive(name):
            pidfile.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline and _process_alive(pid, ""):
            time.sleep(0.2)
        if _process_alive(pid, ""):
            self.echo(f"{name} did not stop within {STOP_TIMEOUT_S} s; sending SIGKILL")
            os.kill(pid, signal.SIGKILL)
        pidfile.unlink(missing_ok=True)
        return True

    def _wait_until(self, name: str, answers: Callable[[], bool], log: Path) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if answers():
                return
            if name in ("kafka", "redis") and not self._alive(name):  # type: ignore[arg-type]
                raise StackError(
                    f"{name} exited during start-up; its log ends with:\n{self._tail(log)}"
                )
            time.sleep(0.5)
        raise StackError(
            f"{name} did not answer within {READY_TIMEOUT_S} s; its log ends with:\n"
            f"{self._tail(log)}"
        )

    def _require_free_port(self, name: str, port: int, variable: str) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(1)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                raise StackError(
                    f"port {port} for {name} is in use by another process that this stack did "
                    f"not start. Stop that process, or choose another port with {variable}=... "
                    "(and run `bankflow stack up` again)."
                )

    def _apt_install(self, package: str, what: str) -> None:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise StackError(
                f"{what} is not installed. Install Debian's {package} package "
                f"(sudo apt-get install {package}) and try again."
            )
        self.echo(f"installing {package} with apt-get ...")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        if not self._apt_updated:
            subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, capture_output=True)
            self._apt_updated = True
        result = subprocess.run(
            ["apt-get", "install", "-y", "-qq", package],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise StackError(f"apt-get install {package} failed:\n{result.stderr[-2000:]}")

    def _write_stack_env(self) -> None:
        s = self.settings
        self.settings.stack_env_file.write_text(
            "# Written by `bankflow stack up`; `source` it, or let bankflow read it.\n"
            f"BANKFLOW_KAFKA_BOOTSTRAP={s.kafka_bootstrap}\n"
            f"BANKFLOW_DATABASE_URL={s.database_url}\n"
            f"BANKFLOW_REDIS_URL={s.redis_url}\n"
        )

    def _tail(self, log: Path) -> str:
        try:
            return "\n".join(log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:])
        except OSError:
            return "(no log)"


#: Redis rewrites its command line (its process title) while it starts; a read in
#: that instant finds it empty. Re-read a few times before believing it.
CMDLINE_READS_MAX = 5


def _process_alive(pid: int, marker: str) -> bool:
    """True when ``pid`` runs and its command line holds ``marker`` (a recycled pid does not)."""
    for _ in range(CMDLINE_READS_MAX):
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1]
        except (OSError, IndexError):
            return False
        if state == "Z":
            return False
        if raw:
            return marker in raw.replace(b"\0", b" ").decode(errors="replace")
        time.sleep(0.05)
    return False


def _debian_initdbs() -> list[Path]:
    """Debian's PostgreSQL binaries, oldest major version first."""
    found = Path("/usr/lib/postgresql").glob("*/bin/initdb")
    return sorted(found, key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)


def _redact(url: str) -> str:
    """A URL without its password, fit for printing."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)
