"""A trivial faust-streaming app used by test_faust_agent: it upper-cases what it reads.

Run as ``python -m tests.integration.faust_echo worker`` with FAUST_ECHO_* variables;
it reaches the brokers the ``BANKFLOW_*`` settings name, as a faust service of ours would.
"""

from __future__ import annotations

import os

import faust

from bankflow.bootstrap import faust_broker_options
from bankflow.settings import Settings

app = faust.App(
    os.environ["FAUST_ECHO_APP_ID"],
    **faust_broker_options(Settings()),
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
