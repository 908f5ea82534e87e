"""The API's Kafka producer: idempotent, acks=all, awaited until the broker acknowledged.

confluent-kafka calls delivery callbacks from ``poll``; a thread of its own polls,
and each callback resolves the asyncio future of its request on the event loop.
So a request's ``await send(...)`` returns only once the write is durable on the
broker, which is when the API may answer ``202 Accepted`` (DESIGN.md, stage 1).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from api.errors import ApiError
from bankflow.bootstrap import kafka_producer
from bankflow.settings import Settings

#: How long a request waits for the broker's acknowledgement before answering 503.
ACK_TIMEOUT_S = 10.0
#: The poll thread's wait: bounds how late a delivery report reaches its request.
POLL_S = 0.05


class BrokerUnavailable(ApiError):
    status = 503
    slug = "broker-unavailable"
    title = "Broker unavailable"


class AsyncProducer:
    def __init__(self, settings: Settings) -> None:
        tuning: dict[str, Any] = {
            "linger.ms": 1,
            "delivery.timeout.ms": int(ACK_TIMEOUT_S * 1000),
        }
        self.producer: Producer = kafka_producer(settings, **tuning)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="kafka-poll", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stopping.is_set():
            self.producer.poll(POLL_S)

    async def send(
        self, topic: str, *, key: bytes, value: bytes, headers: list[tuple[str, str | bytes | None]]
    ) -> None:
        """Produce and wait for the acknowledgement; ``BrokerUnavailable`` if it fails."""
        loop = asyncio.get_running_loop()
        acked: asyncio.Future[None] = loop.create_future()

        def delivered(error: KafkaError | None, _message: Message) -> None:
            loop.call_soon_threadsafe(_settle, acked, error)

        try:
            self.producer.produce(
                topic, key=key, value=value, headers=headers, on_delivery=delivered
            )
        except BufferError as exc:  # the local queue is full: the broker is not keeping up
            raise BrokerUnavailable(
                "too many requests are waiting for the broker; try again shortly",
                headers={"Retry-After": "1"},
            ) from exc
        try:
            await asyncio.wait_for(acked, ACK_TIMEOUT_S + 1)
        except TimeoutError as exc:
            raise BrokerUnavailable(
                "the broker did not acknowledge the request in time; retry with the "
                "same Idempotency-Key",
                headers={"Retry-After": "2"},
            ) from exc

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(5)
        self.producer.flush(ACK_TIMEOUT_S)


def _settle(future: asyncio.Future[None], error: Any) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(
            BrokerUnavailable(
                f"the broker refused the request ({error}); retry with the same Idempotency-Key",
                headers={"Retry-After": "2"},
            )
        )
