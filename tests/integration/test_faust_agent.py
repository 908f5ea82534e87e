"""faust-streaming (aiokafka underneath) consumes from and produces to the real broker.

The side agents (cache, activity profiles, notifications) use faust; this test is
what tells us the broker version suits it as well as confluent-kafka.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from confluent_kafka import TopicPartition

from bankflow.bootstrap import kafka_consumer, kafka_producer
from bankflow.settings import Settings
from tests.conftest import TESTS_DIR

#: faust joins its group and starts its agent within a few seconds on two cores.
ECHO_WAIT_S = 60


def test_a_faust_agent_reads_and_writes_through_the_broker(settings: Settings, topics) -> None:
    source, sink = topics("transfers.posted", "transfers.failed")
    env = {
        **os.environ,
        "FAUST_ECHO_APP_ID": f"{settings.topic_prefix}faust-echo",
        "BANKFLOW_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "FAUST_ECHO_SOURCE": source,
        "FAUST_ECHO_SINK": sink,
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.faust_echo", "worker", "-l", "warn"],
        cwd=TESTS_DIR.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    consumer = kafka_consumer(settings, group_id=f"{settings.topic_prefix}check")
    consumer.assign([TopicPartition(sink, p, 0) for p in range(settings.topic_partitions)])
    producer = kafka_producer(settings)
    try:
        producer.produce(source, value=b"ping")
        producer.flush(10)
        deadline = time.monotonic() + ECHO_WAIT_S
        received = None
        while received is None and time.monotonic() < deadline:
            assert worker.poll() is None, worker.stdout.read().decode() if worker.stdout else ""
            message = consumer.poll(1.0)
            if message is not None and message.error() is None:
                received = message.value()
        assert received == b"PING"
    finally:
        consumer.close()
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
