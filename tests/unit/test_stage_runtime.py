"""The stage runtime's own rules, on plain fakes of a consumer and a producer.

What a message may contain is fuzzed across processes in ``tests/e2e``; here: which
errors count as transient, how a batch is split to the one message that fails, what
is committed, and that an outage commits nothing.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from bankflow.failures import DependencyUnavailable, PoisonMessage, header_map
from bankflow.settings import Settings
from bankflow.streaming import (
    AfterEffect,
    Batch,
    InDatabase,
    KafkaTransaction,
    Output,
    Stage,
    StageRunner,
    is_transient,
)
from schemas import headers as h
from schemas.topics import TRANSFERS_DLQ


@dataclass
class FakeMessage:
    _value: bytes
    _offset: int
    _partition: int = 0
    _topic: str = "in"

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return self._value

    def headers(self) -> list[tuple[str, bytes]]:
        return [(h.ATTEMPT, b"not a number")]  # anyone may write any header

    def error(self) -> None:
        return None


@dataclass
class FakeConsumer:
    batches: list[list[FakeMessage]]
    commits: list[Any] = field(default_factory=list)
    seeks: int = 0

    def consume(self, _n: int, _timeout: float) -> list[FakeMessage]:
        return self.batches.pop(0) if self.batches else []

    def commit(self, offsets: Any, asynchronous: bool = True) -> None:
        self.commits.append([(tp.partition, tp.offset) for tp in offsets])

    def consumer_group_metadata(self) -> object:
        return object()

    def assignment(self) -> list[Any]:
        return []

    def seek(self, _tp: Any) -> None:
        self.seeks += 1

    def subscribe(self, *_: Any, **__: Any) -> None: ...
    def close(self) -> None: ...


@dataclass
class FakeProducer:
    produced: list[tuple[str, bytes | None, dict[str, str]]] = field(default_factory=list)
    offsets: list[Any] = field(default_factory=list)
    open: bool = False

    def begin_transaction(self) -> None:
        self.open = True

    def produce(self, topic: str, key: Any, value: Any, headers: Any, **_: Any) -> None:
        self.produced.append((topic, value, header_map(headers)))

    def send_offsets_to_transaction(self, offsets: Any, *_: Any) -> None:
        self.offsets.append([(tp.partition, tp.offset) for tp in offsets])

    def commit_transaction(self, *_: Any) -> None:
        self.open = False

    def flush(self, *_: Any) -> int:
        return 0


class Echo(Stage):
    """Echoes each value; raises on the values it is told are poison."""

    name = "echo"
    commit = KafkaTransaction()

    def __init__(self, poison: set[bytes], error: Exception | None = None) -> None:
        self.poisonous = poison
        self.error = error or ValueError("cannot read this")
        self.calls = 0
        self.committed_outputs: list[Output] = []

    def topics(self) -> list[str]:
        return ["in"]

    def process(self, batch: Batch) -> list[Output]:
        self.calls += 1
        if any(m.value() in self.poisonous for m in batch.messages):
            raise self.error
        return [Output("out", m.key(), m.value()) for m in batch.messages]

    def committed(self, batch: Batch, outputs: Sequence[Output]) -> None:
        self.committed_outputs.extend(outputs)


def _runner(stage: Stage, batches: list[list[FakeMessage]]) -> tuple[StageRunner[Any], Any, Any]:
    consumer = FakeConsumer(batches)
    producer = FakeProducer()
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    runner = StageRunner(settings, stage, consumer, producer_factory=lambda: producer)  # type: ignore[arg-type]
    runner.backoff.stopped.set()  # never sleep in a unit test: waits return at once
    return runner, consumer, producer


def _messages(values: list[bytes]) -> list[FakeMessage]:
    return [FakeMessage(v, n) for n, v in enumerate(values)]


@given(
    values=st.lists(st.binary(min_size=1, max_size=3), min_size=1, max_size=40, unique=True),
    data=st.data(),
)
def test_a_poison_message_is_dead_lettered_and_every_other_one_processed(
    values: list[bytes], data: st.DataObject
) -> None:
    poison = set(data.draw(st.lists(st.sampled_from(values), max_size=3)))
    runner, _consumer, producer = _runner(Echo(poison), [_messages(values)])
    assert runner.step() == len(values)

    out = [v for topic, v, _ in producer.produced if topic == "out"]
    dead = [(v, hs) for topic, v, hs in producer.produced if topic == TRANSFERS_DLQ]
    assert out == [v for v in values if v not in poison]  # in order, none lost
    assert sorted(v for v, _ in dead) == sorted(poison)
    for value, headers in dead:
        assert headers[h.ERROR_CLASS] == "ValueError"
        assert headers[h.ERROR_MESSAGE] == "cannot read this"
        assert headers[h.ORIGINAL_TOPIC] == "in"
        assert headers[h.ORIGINAL_OFFSET] == str(values.index(value))
        assert headers[h.ATTEMPT] == "1"  # the garbage attempt header is not trusted
    # One transaction, committing past the whole batch.
    assert producer.offsets == [[(0, len(values))]] and not producer.open


def test_finding_one_poison_message_costs_logarithmic_attempts() -> None:
    values = [str(n).encode() for n in range(1024)]
    stage = Echo({b"700"})
    runner, _, _ = _runner(stage, [_messages(values)])
    runner.step()
    assert stage.calls <= 1 + 2 * 10


@pytest.mark.parametrize(
    "error",
    [
        DependencyUnavailable("Redis: connection refused"),
        psycopg.OperationalError("server closed the connection unexpectedly"),
        redis.ConnectionError("connection refused"),
    ],
)
def test_an_outage_commits_nothing_and_the_batch_is_read_again(error: Exception) -> None:
    values = [b"a", b"b"]
    stage = Echo({b"a"}, error)
    runner, _consumer, producer = _runner(stage, [_messages(values)])
    assert runner.step() == 0
    assert producer.produced == [] and producer.offsets == []
    assert runner.rewind_owed and not runner.ready()
    assert runner.backoff.failures_in_a_row == 1


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (psycopg.errors.DataError("invalid input syntax for type uuid"), False),
        (psycopg.errors.NumericValueOutOfRange("bigint out of range"), False),
        (psycopg.errors.UniqueViolation("duplicate key"), False),
        (psycopg.errors.AdminShutdown("terminating connection"), True),
        (psycopg.errors.SerializationFailure("could not serialize"), True),
        (psycopg.OperationalError("connection refused"), True),
        (psycopg.InterfaceError("the connection is closed"), True),
        (redis.TimeoutError("timed out"), True),
        (redis.ResponseError("WRONGTYPE"), False),
        (PoisonMessage("not json"), False),
        (DependencyUnavailable("down"), True),
        (KeyError("amount"), False),
        (ConnectionRefusedError(), True),
    ],
)
def test_only_declared_dependency_failures_are_transient(error: Exception, transient: bool) -> None:
    assert is_transient(error) is transient


class Store(Echo):
    """An ``InDatabase`` stage that records the ranges it was asked to store."""

    commit = InDatabase()  # type: ignore[assignment]

    def __init__(self, poison: set[bytes]) -> None:
        super().__init__(poison)
        self.stored: list[tuple[list[bytes], dict[Any, Any]]] = []

    def stored_offsets(self, partitions: list[tuple[str, int]]) -> dict[Any, int | None]:
        return dict.fromkeys(partitions, 0)

    def process(self, batch: Batch) -> list[Output]:
        super().process(batch)
        self.stored.append(([m.value() for m in batch.messages], dict(batch.ranges)))
        return []

    def poison(self, message: Any, error: Exception, batch: Batch) -> list[Output]:
        self.stored.append(([b"dead:" + message.value()], dict(batch.ranges)))
        return []


def test_in_database_each_part_stores_the_range_that_continues_the_last() -> None:
    stage = Store({b"c"})
    runner, _consumer, _ = _runner(stage, [_messages([b"a", b"b", b"c", b"d"])])
    runner.positions[("in", 0)] = 0
    runner.step()
    ranges = [(r.expected, r.next_offset) for _, part in stage.stored for r in part.values()]
    # Contiguous: every part starts where the one before it ended; nothing is skipped.
    assert ranges[0][0] == 0 and ranges[-1][1] == 4
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    assert [b"dead:c"] in [values for values, _ in stage.stored]
    assert runner.positions[("in", 0)] == 4


def test_after_effect_delivers_dead_letters_before_committing_offsets() -> None:
    class Effect(Echo):
        commit = AfterEffect()  # type: ignore[assignment]

    runner, consumer, producer = _runner(Effect({b"x"}), [_messages([b"a", b"x", b"b"])])
    runner.step()
    assert [(t, v) for t, v, _ in producer.produced] == [
        ("out", b"a"),
        (TRANSFERS_DLQ, b"x"),
        ("out", b"b"),
    ]
    assert consumer.commits == [[(0, 3)]]  # after every dead letter was acknowledged
