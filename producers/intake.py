"""Putting a transfer request on ``transfers.requested``: the CLI's deposit, tests, demos.

The write is acknowledged by the broker (idempotent producer, acks=all) before
this returns; a request that was not acknowledged raises instead of vanishing.
"""

from __future__ import annotations

from confluent_kafka import KafkaError, Message, Producer

from bankflow.errors import BankflowError
from schemas.transfers import TransferRequest

#: How long a request may wait for the broker's acknowledgement.
ACK_TIMEOUT_S = 30


class NotAcknowledged(BankflowError):
    """The broker did not acknowledge a transfer request; it was not accepted."""

    transient = True


def publish_requests(producer: Producer, topic: str, requests: list[TransferRequest]) -> None:
    """Produce every request keyed by its debit account, and wait for all acknowledgements."""
    publish(
        producer,
        topic,
        [(r.debit_account.encode(), r.model_dump_json().encode()) for r in requests],
    )


def publish(producer: Producer, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    """Produce serialised requests (key, value) and wait until the broker acknowledged all."""
    errors: list[str] = []

    def delivered(error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            errors.append(str(error))

    for key, value in messages:
        producer.produce(topic, key=key, value=value, on_delivery=delivered)
        producer.poll(0)
    remaining = producer.flush(ACK_TIMEOUT_S)
    if errors or remaining:
        raise NotAcknowledged(
            f"{len(errors) + remaining} of {len(messages)} transfer requests were not "
            f"acknowledged by Kafka: {errors[:3] or 'timed out'}"
        )
