"""A trivial faust-streaming app used by test_faust_agent: it upper-cases what it reads.

Run as ``python -m tests.integration.faust_echo worker`` with FAUST_ECHO_* variables.
"""

from __future__ import annotations

import os

import faust

app = faust.App(
    os.environ["FAUST_ECHO_APP_ID"],
    broker=f"kafka://{os.environ['FAUST_ECHO_BOOTSTRAP']}",
    store="memory://",
    web_enabled=False,
    topic_partitions=1,
    topic_replication_factor=1,
)
source = app.topic(os.environ["FAUST_ECHO_SOURCE"], value_type=bytes, value_serializer="raw")
sink = app.topic(os.environ["FAUST_ECHO_SINK"], value_type=bytes, value_serializer="raw")


@app.agent(source)
async def echo(stream: faust.Stream) -> None:
    async for value in stream:
        await sink.send(value=value.upper())


if __name__ == "__main__":
    app.main()
