"""The loop every stage runs on: poll, contain, commit, and ride out what is transient.

One ``step``:

1. If a rewind is owed (a failed transaction, a transient failure), seek back first;
   a batch is never processed past messages whose effects were not committed.
2. If the stage is halted, wait for an operator to clear it.
3. Poll a batch (bounded by the stage's ``batch_max`` and poll timeout), let the stage
   ``admit`` what it processes now, and process it *contained*: an exception that is
   not a declared transient failure splits the batch in halves until the one message
   that raises is found; that message goes to the stage's ``poison`` (the dead-letter
   store, with its error class and reason) and the rest is processed as usual.
4. Commit as the stage's strategy says (``bankflow.streaming.stage``).

A declared transient failure (``bankflow.streaming.errors.is_transient``) backs off
(bounded, doubling), lets the stage reconnect, rewinds and tries again; the stage is
not ready meanwhile. Nothing a message contains can make ``step`` raise: what still
raises is a fault of the runtime or the deployment, and the supervisor restarts it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from pydantic import ValidationError

from bankflow import logs
from bankflow.bootstrap import kafka_producer
from bankflow.failures import DependencyUnavailable, HeaderList, PoisonMessage, header_map
from bankflow.metrics import StageMetrics, registered
from bankflow.settings import Settings
from bankflow.signing import Keyring, Unauthenticated, signers_for
from bankflow.streaming import halts as halt_store
from bankflow.streaming.backoff import Backoff, short
from bankflow.streaming.errors import PositionMoved, StageHalted, is_transient
from bankflow.streaming.kafka import (
    TXN_TIMEOUT_S,
    committed_offsets,
    gap,
    gaps,
    next_offsets,
    position,
    recover,
    rewind,
    transactional_producer,
    usable,
)
from bankflow.streaming.stage import (
    Batch,
    InDatabase,
    KafkaTransaction,
    OffsetRange,
    Output,
    Partition,
    Stage,
    readable_headers,
)
from schemas.errors import describe

#: How long the Kafka commit of an ``AfterEffect`` stage, and the delivery of its
#: dead letters, may take before the batch counts as failed (transient).
FLUSH_TIMEOUT_S = 30.0

S = TypeVar("S", bound=Stage)


class StageRunner(Generic[S]):
    """Runs one ``Stage`` with its consumer (and, for a Kafka transaction, its producer)."""

    def __init__(
        self,
        settings: Settings,
        stage: S,
        consumer: Consumer,
        producer_factory: Callable[[], Producer] | None = None,
    ) -> None:
        self.settings = settings
        self.stage = stage
        self.consumer = consumer
        self.log = logging.getLogger(f"bankflow.{stage.name.replace('-', '_')}")
        self.metrics = registered(StageMetrics)
        self.stopped = threading.Event()
        #: The next offset to read of each owned partition (``InDatabase``: as stored).
        self.positions: dict[Partition, int | None] = {}
        self.rewind_owed = False
        #: The transactional producer must be built anew before the next batch.
        self.producer_owed = False
        self.backoff = Backoff(stage.name, self.stopped, self.log)
        self.halted_reason: str | None = None
        self.next_halt_check = 0.0
        #: Partitions halted on a gap in their log (``_halt_partition``), with the reason.
        self.halted_partitions: dict[Partition, str] = {}
        #: Where each partition's next record should be after the stage was (re)placed
        #: (None: from the start); its first record is checked against it (``_first_checked``).
        self.first_expected: dict[Partition, int | None] = {}
        #: A cleared partition was in librdkafka's error state (its offset was out of
        #: range): it cannot be sought, only assigned anew, at the next rewind.
        self.reassign_owed = False
        self._subscribed = False
        self._logical = {settings.topic(t): t for t in stage.topics()}
        #: Signing and verifying keys, read once (a verifier reloads on an unknown key id).
        self.keyring: Keyring | None = None
        if stage.signer is not None or stage.verifies:
            self.keyring = Keyring.load(settings.signing_keys_path)
            if stage.signer is not None:
                self.keyring.signing_key(stage.signer)  # fail at start, not at the first batch
        self._make_producer = producer_factory or self._default_producer
        self.producer: Producer = self._make_producer()

    # -- lifecycle ---------------------------------------------------------------------

    def _default_producer(self) -> Producer:
        if isinstance(self.stage.commit, KafkaTransaction):
            return transactional_producer(self.settings, self.stage.name)
        return kafka_producer(self.settings)

    def subscribe(self) -> None:
        self.consumer.subscribe(
            list(self._logical), on_assign=self._on_assign, on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )  # fmt: skip
        self._subscribed = True

    def run(self) -> None:
        """Process until ``stop``; what the service's entry function calls."""
        self.subscribe()
        while not self.stopped.is_set():
            self.step()

    def stop(self) -> None:
        """Finish the batch at hand and return from ``run`` (signal-safe)."""
        self.stopped.set()

    def close(self) -> None:
        try:
            self.producer.flush(FLUSH_TIMEOUT_S)
        finally:
            self.consumer.close()
            self.stage.close()

    def ready(self) -> bool:
        """Owns partitions, is neither halted nor waiting out an outage, and the stage's
        clients are usable. Read from the probe's thread: no client call here."""
        return (
            bool(self.positions)
            and self.halted_reason is None
            and not self.backoff.waiting
            and self.stage.ready()
        )

    # -- rebalances (run on the consuming thread, inside poll) -----------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(p.topic, p.partition) for p in partitions]
        if isinstance(self.stage.commit, InDatabase):
            try:
                stored = self.stage.stored_offsets(keys)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                # Assigned all the same (an exception here would leave the consumer
                # without the partitions the group gave it); nothing is processed before
                # the rewind owed reads the stored offsets, and a batch read meanwhile
                # is refused by the store's offset check.
                self.log.warning("stored offsets unavailable (%s); reading them later", exc)
                stored, self.rewind_owed = {}, True
            for p in partitions:
                offset = stored.get((p.topic, p.partition))
                p.offset = offset if offset is not None else OFFSET_BEGINNING
                self.positions[(p.topic, p.partition)] = offset
            consumer.assign(partitions)
            starts = {k: self.positions[k] for k in keys if not self.rewind_owed}
        else:
            try:
                starts = committed_offsets(consumer, partitions)
            except KafkaException as exc:
                # librdkafka resumes from the committed offsets itself; a partition with
                # none is reported (auto.offset.reset=error) and placed by _reset_refused.
                self.log.warning("committed offsets unavailable (%s); reading them later", exc)
                starts = {}
            else:
                for p in partitions:
                    offset = starts.get((p.topic, p.partition))
                    p.offset = offset if offset is not None else OFFSET_BEGINNING
                consumer.assign(partitions)
            self.positions.update(dict.fromkeys(keys))
        self.first_expected.update(starts)
        self.log.info(
            "assigned %s", ", ".join(f"{p.topic}[{p.partition}]@{p.offset}" for p in partitions)
        )
        self._check_gaps(starts)
        self.stage.assigned(keys)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(p.topic, p.partition) for p in partitions]
        for key in keys:
            self.positions.pop(key, None)
            self.first_expected.pop(key, None)
            if self.halted_partitions.pop(key, None) is not None:
                self._partition_gauge(key).set(0)  # whoever gets it checks it again
        if isinstance(self.stage.commit, InDatabase):
            consumer.unassign()
        self.log.info("revoked %s", ", ".join(f"{t}[{p}]" for t, p in keys))
        self.stage.revoked(keys)

    # -- one step ----------------------------------------------------------------------

    def step(self) -> int:
        """One poll, processed and committed; how many messages it handled."""
        try:
            if self.producer_owed:
                self.producer = self._make_producer()
                self.producer_owed = False
            if self.rewind_owed:
                self._rewind()
            if self._halted():
                return 0
            self.stage.tick()
            handled = self._poll_and_process()
        except StageHalted as halt:
            self._halt(str(halt))
            return 0
        except PositionMoved as moved:
            self.metrics.positions_moved.labels(self.stage.name).inc()
            self.log.warning("%s; reading again from the stored positions", moved)
            self.rewind_owed = True
            return 0
        except Exception as exc:
            if not is_transient(exc):
                raise
            self._wait_out(exc)
            return 0
        self.backoff.succeeded()
        return handled

    def _poll_and_process(self) -> int:
        polled = self.consumer.consume(self.stage.batch_max, self.stage.poll_timeout_s())
        messages = []
        for m in polled:
            error = m.error()
            if error is not None and error.code() == KafkaError._AUTO_OFFSET_RESET:
                self._reset_refused(m)
            elif usable(m, self.log) and self._owned(m) and _key(m) not in self.halted_partitions:
                messages.append(m)
        messages = self.stage.admit(self._first_checked(messages))
        if not messages:
            return 0
        commit = self.stage.commit
        if isinstance(commit, KafkaTransaction):
            self._in_transaction(messages)
        elif isinstance(commit, InDatabase):
            self._in_database(messages)
        else:
            self._after_effect(messages)
        return len(messages)

    def _owned(self, message: Message) -> bool:
        # An InDatabase stage may still hold a message fetched before a revocation.
        if not isinstance(self.stage.commit, InDatabase):
            return True
        return (str(message.topic()), int(message.partition() or 0)) in self.positions

    # -- the three commit strategies ---------------------------------------------------

    def _processed(self, messages: list[Message]) -> list[tuple[Batch, list[Output]]]:
        """Each part of ``messages`` with its outputs, poison contained (the two strategies
        that commit after processing: a Kafka transaction, a commit after the effect)."""
        done: list[tuple[Batch, list[Output]]] = []
        self._authenticated(
            messages,
            lambda part: done.append((Batch(part), self.stage.process(Batch(part)))),
            lambda m, error: done.append((Batch([m]), self._poisoned(m, error, Batch([m])))),
        )
        return done

    def _in_transaction(self, messages: list[Message]) -> None:
        batches = self._processed(messages)
        outputs = [o for _, out in batches for o in out]
        producer = self.producer
        producer.begin_transaction()
        try:
            for o in outputs:
                producer.produce(
                    self.settings.topic(o.topic), key=o.key, value=o.value, headers=self._signed(o)
                )
            producer.send_offsets_to_transaction(
                next_offsets(messages), self.consumer.consumer_group_metadata(), TXN_TIMEOUT_S
            )
            producer.commit_transaction(TXN_TIMEOUT_S)
        except KafkaException as exc:
            self.rewind_owed = True
            try:
                self.producer = recover(exc.args[0], producer, self._make_producer, self.log)
            except KafkaException as rebuild_failed:
                self.producer_owed = True
                raise DependencyUnavailable(f"Kafka: {rebuild_failed}") from rebuild_failed
            return
        for batch, out in batches:
            self.stage.committed(batch, out)

    def _after_effect(self, messages: list[Message]) -> None:
        done = self._processed(messages)
        self._deliver([o for _, out in done for o in out])
        try:
            self.consumer.commit(offsets=next_offsets(messages), asynchronous=False)
        except KafkaException as exc:
            # The effects are durable and idempotent: whoever reads these messages again
            # (this instance after a rewind, or another after a rebalance) changes nothing.
            self.log.warning("offset commit failed (%s); reading from the last commit", exc)
            self.rewind_owed = True
        for batch, out in done:
            self.stage.committed(batch, out)

    def _in_database(self, messages: list[Message]) -> None:
        def attempt(part: Sequence[Message]) -> None:
            batch = self._ranged(part)
            outputs = self.stage.process(batch)
            self._advance(batch)
            self.stage.committed(batch, outputs)

        def poisoned(message: Message, error: Exception) -> None:
            batch = self._ranged([message])
            outputs = self._poisoned(message, error, batch)
            self._advance(batch)
            self.stage.committed(batch, outputs)

        self._authenticated(messages, attempt, poisoned)

    def _ranged(self, messages: Sequence[Message]) -> Batch:
        last: dict[Partition, int] = {}
        for m in messages:
            topic, partition, offset = position(m)
            last[(topic, partition)] = offset
        ranges = {k: OffsetRange(self.positions.get(k), offset + 1) for k, offset in last.items()}
        return Batch(messages, ranges)

    def _advance(self, batch: Batch) -> None:
        for key, offset_range in batch.ranges.items():
            self.positions[key] = offset_range.next_offset
        # For tools only (lag exporters, kafka-consumer-groups); resuming reads the store.
        self.consumer.commit(
            offsets=[TopicPartition(t, p, r.next_offset) for (t, p), r in batch.ranges.items()],
            asynchronous=True,
        )

    def _deliver(self, outputs: Sequence[Output]) -> None:
        """Produce ``outputs`` (dead letters of an ``AfterEffect`` stage) and wait for the
        broker's acknowledgement of every one, before any offset moves past them."""
        if not outputs:
            return
        errors: list[str] = []
        for o in outputs:
            self.producer.produce(
                self.settings.topic(o.topic), key=o.key, value=o.value, headers=self._signed(o),
                on_delivery=lambda error, _m: errors.append(str(error)) if error else None,
            )  # fmt: skip
        remaining = self.producer.flush(FLUSH_TIMEOUT_S)
        if errors or remaining:
            raise DependencyUnavailable(
                f"dead letters not acknowledged by Kafka: {errors[:3]}, {remaining} left"
            )

    # -- signatures --------------------------------------------------------------------

    def _signed(self, output: Output) -> HeaderList | None:
        """The headers to produce ``output`` with: signed by the stage's signer when the
        topic is one that must be signed."""
        if self.keyring is None or self.stage.signer is None or signers_for(output.topic) is None:
            return output.headers
        return self.keyring.sign(
            self.stage.signer, output.topic, output.key, output.value, output.headers
        )

    def _authenticated(
        self,
        messages: Sequence[Message],
        attempt: Callable[[Sequence[Message]], Any],
        poisoned: Callable[[Message, Exception], Any],
    ) -> None:
        """``_contained`` over the authentic messages, in order; each message on a signed
        topic without a valid signature goes to ``poisoned`` as ``Unauthenticated``
        without the stage ever acting on it."""
        if self.keyring is None or not self.stage.verifies:
            self._contained(messages, attempt, poisoned)
            return
        run: list[Message] = []
        for m in messages:
            topic = self._logical.get(str(m.topic()), str(m.topic()))
            try:
                problem = self.keyring.problem(topic, m.key(), m.value(), m.headers())
            except Exception as exc:  # noqa: BLE001 - headers the client cannot even decode
                problem = f"unauthenticated: unreadable headers ({type(exc).__name__})"
            if problem is None:
                run.append(m)
                continue
            if run:
                self._contained(run, attempt, poisoned)
                run = []
            self.metrics.unauthenticated.labels(self.stage.name, topic).inc()
            poisoned(m, Unauthenticated(problem))
        if run:
            self._contained(run, attempt, poisoned)

    # -- containment -------------------------------------------------------------------

    def _contained(
        self,
        messages: Sequence[Message],
        attempt: Callable[[Sequence[Message]], Any],
        poisoned: Callable[[Message, Exception], Any],
    ) -> None:
        """``attempt(messages)``; on an error about the data, split until the one message
        that raises is found and hand it to ``poisoned``. At most 2·log2(n) extra
        attempts per poison message."""
        try:
            attempt(messages)
            return
        except Exception as exc:
            if not _containable(exc):
                raise
            if len(messages) == 1:
                poisoned(messages[0], _as_poison(exc))
                return
            self.log.info("a batch of %d failed (%s: %s); splitting it to find the message",
                          len(messages), type(exc).__name__, short(exc))  # fmt: skip
        half = len(messages) // 2
        self._contained(messages[:half], attempt, poisoned)
        self._contained(messages[half:], attempt, poisoned)

    def _poisoned(self, message: Message, error: Exception, batch: Batch) -> list[Output]:
        """The stage's ``poison`` for one message, logged and counted."""
        outputs = self.stage.poison(message, error, batch)
        error_class = type(error).__name__
        self.metrics.poison.labels(self.stage.name, error_class).inc()
        fields = header_map(readable_headers(message))
        with logs.bound(**logs.message_fields(fields, message.value())):
            self.log.warning(
                "poison message %s[%s]@%s to the dead-letter store: %s: %s",
                message.topic(), message.partition(), message.offset(), error_class,
                short(error), extra={"error_class": error_class},
                exc_info=None if isinstance(error, PoisonMessage) else error,
            )  # fmt: skip
        return outputs

    # -- gaps: no partition jumps over records it never processed -----------------------

    def _check_gaps(self, starts: dict[Partition, int | None]) -> None:
        """On assignment: halt each partition whose log no longer holds the records from
        its start position, or that an earlier halt (kept by the stage) still holds."""
        kept = self._kept_partition_halts()
        checked: dict[Partition, int | None] = {}
        for key, expected in starts.items():
            if (self._logical.get(key[0], key[0]), key[1]) in kept:
                self._halt_partition(key, "halted earlier, not cleared yet", record=False)
            else:
                checked[key] = expected
        try:
            found = gaps(self.consumer, checked)
        except KafkaException as exc:  # checked again at each partition's first record
            self.log.warning("log offsets unavailable (%s); checking at the first records", exc)
            return
        for key, problem in found.items():
            self._halt_partition(key, problem)

    def _first_checked(self, messages: list[Message]) -> list[Message]:
        """The messages, but none of a partition whose first record after the stage was
        placed lies beyond a gap; that partition is halted instead."""
        if not self.first_expected:
            return messages
        halted: set[Partition] = set()
        for m in messages:
            key = _key(m)
            if key not in self.first_expected:
                continue
            expected = self.first_expected.pop(key)
            if int(m.offset() or 0) <= (expected or 0):
                continue
            try:
                problem = gap(self.consumer, key[0], key[1], expected)
            except KafkaException as exc:
                raise DependencyUnavailable(f"Kafka watermarks: {exc}") from exc
            if problem is not None:
                self._halt_partition(key, problem)
                halted.add(key)
        return [m for m in messages if _key(m) not in halted] if halted else messages

    def _reset_refused(self, message: Message) -> None:
        """The broker has no record at a partition's position, or the group none
        committed: place it at the start when nothing was skipped, else halt it."""
        key = _key(message)
        if key not in self.positions or key in self.halted_partitions:
            return
        try:
            if isinstance(self.stage.commit, InDatabase):
                expected = self.positions[key]
            else:
                expected = committed_offsets(self.consumer, [TopicPartition(*key)]).get(key)
            problem = gap(self.consumer, key[0], key[1], expected)
        except KafkaException as exc:
            self.log.warning("%s[%d]: %s; looking again", *key, exc)
            self.rewind_owed = True
            return
        if problem is not None:
            self._halt_partition(key, problem)
            return
        where = expected if expected is not None else OFFSET_BEGINNING
        self.first_expected[key] = expected
        self.consumer.seek(TopicPartition(key[0], key[1], where))

    def _halt_partition(self, key: Partition, reason: str, *, record: bool = True) -> None:
        """Stop reading one partition, keep the halt (when the stage keeps halts) and let
        the others go on; an operator clears it (``bankflow halt clear``)."""
        if key in self.halted_partitions:
            return
        self.halted_partitions[key] = reason
        with contextlib.suppress(KafkaException):
            self.consumer.pause([TopicPartition(*key)])
        self._partition_gauge(key).set(1)
        logical = self._logical.get(key[0], key[0])
        self.log.error(
            "%s halted %s[%d]: %s. Its other partitions go on; docs/runbook.md#a-gap-in-a-"
            "partition says how to account for the missing records and clear it "
            "(bankflow halt clear %s:%s:%d --accept-gap).",
            self.stage.name, logical, key[1], reason, self.stage.name, logical, key[1],
        )  # fmt: skip
        if record and self.stage.halts is not None:
            try:
                self.stage.halts.record_partition(logical, key[1], reason)
            except Exception as exc:  # noqa: BLE001 - the halt holds in memory all the same
                self.log.warning("could not record the halt of %s[%d]: %s", *key, exc)

    def _kept_partition_halts(self) -> set[tuple[str, int]]:
        if self.stage.halts is None:
            return set()
        try:
            return self.stage.halts.open_partitions()
        except Exception as exc:  # noqa: BLE001 - read again at the next check
            self.log.warning("could not read the partition halts: %s", exc)
            return set()

    def _resume_cleared(self) -> None:
        """Resume the halted partitions an operator cleared, from their stored position
        (checked again: a gap still there halts the partition again)."""
        if not self.halted_partitions or self.stage.halts is None:
            return
        kept = self._kept_partition_halts()
        for key in list(self.halted_partitions):
            if (self._logical.get(key[0], key[0]), key[1]) in kept:
                continue
            del self.halted_partitions[key]
            self._partition_gauge(key).set(0)
            with contextlib.suppress(KafkaException):
                self.consumer.resume([TopicPartition(*key)])
            self.log.warning("%s[%d] halt cleared; resuming from the stored position", *key)
            self.rewind_owed = self.reassign_owed = True

    def _partition_gauge(self, key: Partition) -> Any:
        logical = self._logical.get(key[0], key[0])
        return self.metrics.partition_halted.labels(self.stage.name, logical, str(key[1]))

    # -- halts, outages, rewinds -------------------------------------------------------

    def _halted(self) -> bool:
        """Whether the stage is halted (looked up every ``HALT_CHECK_S``); while it is,
        wait a moment instead of polling."""
        store = self.stage.halts
        if store is None:
            return False
        now = time.monotonic()
        if now >= self.next_halt_check:
            halt = store.active()
            self.next_halt_check = now + halt_store.HALT_CHECK_S
            self._set_halted(halt.reason if halt else None)
            self._resume_cleared()
        if self.halted_reason is None:
            return False
        self.stopped.wait(min(1.0, max(0.0, self.next_halt_check - time.monotonic())))
        return True

    def _halt(self, reason: str) -> None:
        self.log.error("%s halted: %s", self.stage.name, reason)
        if self.stage.halts is not None:
            self.stage.halts.record(reason)
        self._set_halted(reason)
        self.rewind_owed = True

    def _set_halted(self, reason: str | None) -> None:
        was = self.halted_reason
        self.halted_reason = reason
        self.metrics.halted.labels(self.stage.name).set(1 if reason else 0)
        if reason is None and was is not None:
            self.log.warning("%s halt cleared; resuming from the stored position", self.stage.name)
            self.rewind_owed = True
            if not self._subscribed:
                self.subscribe()
        if reason is not None and self._subscribed:
            # A halted stage holds no partitions: another instance (also halted, as the
            # halt is per stage) or a restarted one resumes exactly where it stopped.
            self.consumer.unsubscribe()
            self.positions.clear()
            self._subscribed = False

    def _wait_out(self, error: Exception) -> None:
        self.rewind_owed = True
        self.backoff.failed(error)
        try:
            self.stage.reconnect()
        except Exception as still_down:
            if not is_transient(still_down):
                raise
            self.log.warning("reconnecting failed (%s)", short(still_down))

    def _rewind(self) -> None:
        """Seek every owned partition back to where its next batch must start."""
        if isinstance(self.stage.commit, InDatabase):
            stored = self.stage.stored_offsets(list(self.positions))
            self.positions = {k: stored.get(k) for k in self.positions}
            self.first_expected.update(self.positions)
            placed = [
                TopicPartition(t, p, offset if offset is not None else OFFSET_BEGINNING)
                for (t, p), offset in self.positions.items()
            ]
            if not self.reassign_owed:
                for tp in placed:
                    if (tp.topic, tp.partition) in self.halted_partitions:
                        continue  # left where it stopped (a partition in error cannot seek)
                    try:
                        self.consumer.seek(tp)
                    except KafkaException as exc:
                        # A partition librdkafka holds in an error state cannot seek; left
                        # there, it would read on from wherever it was and the stored range
                        # would jump. Assigning every partition anew places them all.
                        self.log.warning("seek %s[%d] failed (%s); assigning anew",
                                         tp.topic, tp.partition, exc)  # fmt: skip
                        self.reassign_owed = True
                        break
            if self.reassign_owed:
                self.consumer.assign(placed)
                self.reassign_owed = False
        else:
            self.first_expected.update(rewind(self.consumer, skip=set(self.halted_partitions)))
        self.rewind_owed = False
        self.stage.rewound()
        if self.halted_partitions:  # a stage's rewound() may have resumed them
            with contextlib.suppress(KafkaException):
                self.consumer.pause([TopicPartition(t, p) for t, p in self.halted_partitions])


def _key(message: Message) -> Partition:
    return str(message.topic()), int(message.partition() or 0)


def _containable(error: Exception) -> bool:
    """An error about the data at hand: not a dependency's outage, not a halt."""
    return not is_transient(error) and not isinstance(error, StageHalted | PositionMoved)


def _as_poison(error: Exception) -> Exception:
    if isinstance(error, ValidationError):
        return PoisonMessage(describe(error))
    return error
