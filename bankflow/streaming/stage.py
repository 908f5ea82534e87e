"""What a stage declares: its inputs, its commit strategy and how it processes a batch.

A stage is a subclass of ``Stage`` that keeps only its business logic::

    class Tracker(Stage):
        name = "tracker"
        commit = AfterEffect()

        def topics(self) -> list[str]:
            return [TRANSFERS_REQUESTED, ...]

        def process(self, batch: Batch) -> list[Output]:
            ...  # one PostgreSQL transaction for the batch's statuses
            return []

The three commit strategies (DESIGN.md, "Exactly-once, stage by stage"):

- ``KafkaTransaction``: ``process`` returns the outputs; the runtime produces them and
  the input offsets in one Kafka transaction (the validator, the retrier).
- ``InDatabase``: the stage keeps its offsets in PostgreSQL and writes them in the same
  transaction as its effect; ``process`` and ``poison`` get each partition's offset
  range (``Batch.ranges``) and must store it with the effect (the poster). The runtime
  seeks to ``stored_offsets`` on assignment.
- ``AfterEffect``: ``process`` makes a durable, idempotent effect; the runtime commits
  the Kafka offsets afterwards (the tracker, the dead-letter sink). At least once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, ClassVar

from confluent_kafka import Message

from bankflow.failures import HeaderList, route_failure

# One type for a stored offset range, shared with the ledger that stores it.
from bankflow.ledger.store import OffsetRange

if TYPE_CHECKING:
    from bankflow.streaming.halts import Halts

__all__ = ["Batch", "OffsetRange", "Output", "Stage"]

#: A partition as the runtime keys it: the topic as read (with any prefix) and its number.
Partition = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Output:
    """A message to produce: a logical topic (the runtime adds the prefix), key, value."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: HeaderList | None = None


@dataclass(frozen=True, slots=True)
class Batch:
    """Messages to process, in the order read. ``ranges`` is set for ``InDatabase``."""

    messages: Sequence[Message]
    ranges: Mapping[Partition, OffsetRange] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class KafkaTransaction:
    """Outputs and input offsets in one Kafka transaction per batch."""


@dataclass(frozen=True, slots=True)
class InDatabase:
    """Offsets stored in PostgreSQL with the effect; Kafka's are written for tools only."""


@dataclass(frozen=True, slots=True)
class AfterEffect:
    """Kafka offsets committed after a durable, idempotent effect."""


CommitStrategy = KafkaTransaction | InDatabase | AfterEffect


class Stage:
    """A stage's business logic; every hook but ``topics`` and ``process`` has a default."""

    #: The stage's name: logs, metrics labels, its transactional id and its halts.
    name: ClassVar[str]
    commit: ClassVar[CommitStrategy]
    #: A batch closes at this many messages or after ``batch_wait_s``.
    batch_max: int = 1000
    batch_wait_s: float = 0.1
    #: Set by a stage that may halt (``StageHalted``); the halt survives a restart.
    halts: Halts | None = None
    #: The signer whose key the runtime signs this stage's outputs with, on the topics
    #: that must be signed (``bankflow.signing.SIGNERS``); None: the stage signs nothing.
    signer: ClassVar[str | None] = None
    #: Whether the runtime checks the signature of every message read from a signed
    #: topic before ``process`` sees it; one that fails goes to ``poison`` as
    #: ``Unauthenticated``. Every stage that acts on a signed topic sets it.
    verifies: ClassVar[bool] = False

    def topics(self) -> list[str]:
        """The logical topics the stage reads."""
        raise NotImplementedError

    def process(self, batch: Batch) -> list[Output]:
        """Turn a batch into effects. Anything raised that is not a declared transient
        failure is contained: the runtime splits the batch to the message that fails."""
        raise NotImplementedError

    def poison(self, message: Message, error: Exception, batch: Batch) -> list[Output]:
        """What to do with one message that cannot be processed: by default, send it to
        the dead-letter topic with its reason and original coordinates.

        ``InDatabase`` stages must override it to store the dead letter and the batch's
        offsets in one transaction and return nothing.
        """
        return [dead_letter_output(message, error)]

    def committed(self, batch: Batch, outputs: Sequence[Output]) -> None:
        """Called once a batch's commit is durable: count and log what it did."""

    def admit(self, messages: list[Message]) -> list[Message]:
        """The messages of a poll to process now (the retrier holds back what is not due);
        the rest must have been sought back to by the stage."""
        return messages

    def poll_timeout_s(self) -> float:
        return self.batch_wait_s

    def tick(self) -> None:
        """Periodic work between batches (gauges, timeouts); keep it short."""

    def assigned(self, partitions: list[Partition]) -> None:
        """The group gave the stage these partitions."""

    def revoked(self, partitions: list[Partition]) -> None:
        """The group took these partitions away."""

    def rewound(self) -> None:
        """Every partition will be read again from its committed position."""

    def stored_offsets(self, partitions: list[Partition]) -> Mapping[Partition, int | None]:
        """``InDatabase``: each partition's stored next offset (None: nothing stored)."""
        raise NotImplementedError

    def reconnect(self) -> None:
        """After a transient failure: open anew what may have broken."""

    def ready(self) -> bool:
        """Whether the stage's own clients are usable (the runtime adds its own checks)."""
        return True

    def close(self) -> None:
        """Release the stage's clients at shutdown."""


def dead_letter_output(message: Message, error: Exception) -> Output:
    """``message`` to the dead-letter topic, with the DESIGN.md failure headers.

    No retry tier is offered (``tiers={}``): what reaches here is poison by definition.
    """
    route = route_failure(
        origin=(str(message.topic()), int(message.partition() or 0), int(message.offset() or 0)),
        headers=readable_headers(message),
        error=error,
        tiers={},
        now=datetime.now(UTC),
    )
    return Output(route.topic, message.key(), message.value(), route.headers)


def readable_headers(message: Message) -> HeaderList | None:
    """A message's headers, or none when the client cannot decode them (a header name
    that is not UTF-8, written by another client): a stage never dies on data."""
    try:
        return message.headers()  # type: ignore[return-value]
    except Exception:  # noqa: BLE001
        return None
