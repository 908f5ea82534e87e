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
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, CollectorRegistry, make_wsgi_app

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
