# The bankflow services for docker compose: one image, the service chosen by the command.
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY pyproject.toml README.md ./
COPY bankflow bankflow
COPY api api
COPY producers producers
COPY processors processors
COPY consumers consumers
COPY schemas schemas
COPY infra infra
RUN pip install --no-cache-dir .
RUN useradd --system --uid 10001 bankflow
# The inbox watcher's folder and the signing keys (volumes in docker-compose.yml),
# writable by the service; the keys readable by it alone.
RUN mkdir /app/inbox /keys && chown bankflow /app/inbox /keys && chmod 700 /keys
USER bankflow
ENTRYPOINT ["bankflow"]
