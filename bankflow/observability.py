"""What a worker service serves on its own port: ``/metrics``, ``/healthz`` and ``/readyz``.

A worker (the poster, the relay, the lag exporter) has no web framework; this
serves the three paths from a daemon thread beside its loop::

    server = serve_metrics(settings.lag_exporter_port, ready=lambda: exporter.ready())
    try:
        run_the_loop()
    finally:
        server.close()

``/healthz`` answers 200 while the process can answer at all; ``/readyz`` answers
200 when ``ready()`` is true and 503 otherwise (so an orchestrator stops routing to
it, or an operator sees it); ``/metrics`` is the Prometheus text of ``registry``.
"""

from __future__ import annotations

import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, CollectorRegistry, make_wsgi_app

from bankflow.settings import Settings

log = logging.getLogger("bankflow.observability")

StartResponse = Callable[..., Any]


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    """One thread per request, so a slow scrape never blocks a health check."""

    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    """Scrapes and probes arrive every few seconds; one log line each would drown the logs."""

    def log_message(self, format: str, *args: Any) -> None:
        return


class MetricsServer:
    """The running server: ``port`` is the bound port (useful when asked for port 0)."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def health_app(
    ready: Callable[[], bool], registry: CollectorRegistry = REGISTRY
) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    """The WSGI application behind ``serve_metrics`` (usable on its own in tests)."""
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics(environ, start_response)  # type: ignore[no-any-return]
        if path == "/healthz":
            return _text(start_response, "200 OK", "ok\n")
        if path == "/readyz":
            try:
                is_ready = bool(ready())
            except Exception:  # a readiness check that fails means: not ready
                log.exception("the readiness check failed")
                is_ready = False
            if is_ready:
                return _text(start_response, "200 OK", "ready\n")
            return _text(start_response, "503 Service Unavailable", "not ready\n")
        return _text(start_response, "404 Not Found", "try /metrics, /healthz or /readyz\n")

    return app


def _text(start_response: StartResponse, status: str, body: str) -> list[bytes]:
    data = body.encode()
    start_response(
        status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))]
    )
    return [data]


def serve_metrics(
    port: int,
    ready: Callable[[], bool],
    *,
    host: str = "127.0.0.1",
    registry: CollectorRegistry = REGISTRY,
) -> MetricsServer:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` on ``host:port`` from a daemon thread.

    ``port`` 0 binds a free port (see ``MetricsServer.port``). The thread dies with
    the process; ``close()`` stops it sooner.
    """
    server = make_server(
        host,
        port,
        health_app(ready, registry),
        server_class=_ThreadingWSGIServer,
        handler_class=_QuietHandler,
    )
    thread = threading.Thread(target=server.serve_forever, name="metrics-server", daemon=True)
    thread.start()
    return MetricsServer(server, thread)


# Readiness checks the worker services share; each is cheap enough for every probe.


def connection_alive(conn: Any) -> bool:
    """A psycopg connection that is neither closed nor broken (it does not query)."""
    return not conn.closed and not conn.broken


#: ``bankflow status`` gives each probe this long: a service that answers slower is in trouble.
PROBE_TIMEOUT_S = 1.0


def probe(host: str, port: int, timeout_s: float = PROBE_TIMEOUT_S) -> dict[str, bool]:
    """Ask a service's metrics port ``/healthz`` and ``/readyz``; what each answered."""
    return {
        path: _answers_ok(f"http://{host}:{port}/{path}", timeout_s)
        for path in ("healthz", "readyz")
    }


def _answers_ok(url: str, timeout_s: float) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - http only
            return int(response.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def service_statuses(settings: Settings, services: Sequence[str]) -> list[dict[str, Any]]:
    """Each service's state as its metrics port tells it (``bankflow status``).

    ``state`` is ``up`` when ``/healthz`` answers, ``down`` otherwise (or ``no port``
    for a service without a metrics port setting); ``ready`` is what ``/readyz`` said.
    The services are probed at once, so a status takes one timeout at worst.
    """
    host = settings.metrics_host
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - bound to all; probe over loopback
        host = "127.0.0.1"
    ports = {name: settings.metrics_port(name) for name in services}

    def status(name: str) -> dict[str, Any]:
        port = ports[name]
        if not port:
            return {"name": name, "address": None, "state": "no port", "ready": False}
        answers = probe(host, port)
        return {
            "name": name,
            "address": f"{host}:{port}",
            "state": "up" if answers["healthz"] else "down",
            "ready": answers["readyz"],
        }

    with ThreadPoolExecutor(max_workers=max(1, len(services))) as pool:
        return list(pool.map(status, services))
