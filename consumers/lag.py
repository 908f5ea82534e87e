"""Reading consumer lag: every group of ours, its committed offsets and its topic's ends.

The lag exporter and ``bankflow lag`` both use this: ``OffsetReader`` reads offsets
from Kafka (and the poster's from PostgreSQL, where it keeps them), and
``bankflow.domain.lag.LagTracker`` turns successive readings into lag in messages,
lag in seconds and a status. Nothing here decides anything about lag.

Transaction markers. The validator writes ``transfers.accepted`` and
``transfers.dlq`` in Kafka transactions; each transaction leaves a commit (or abort)
marker in every partition it wrote, an offset no consumer is ever given. A
consumer that commits "last message + 1", as ours do, sits on the marker after
the last transaction: one offset below the end for ever, and one offset before the
first message of the next backlog. So lag is counted up to the last stable offset
(what a read_committed consumer can read up to: an open transaction is not lag
yet) from where a read_committed reader starting at the group's offset is first
given a message. A probe finds that offset: it reads each lagging partition from
the group's offset until the first message or the end. An idle, caught-up group
shows 0; a backlog after a transaction shows exactly its messages (markers between
transactions inside a backlog still count, one per transaction). The answer is
kept while the group's offset stays (and, when the probe found only markers, while
the end stays too): an idle group costs one probe, a moving one a short fetch per
lagging partition per evaluation.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from confluent_kafka import (
    OFFSET_INVALID,
    Consumer,
    ConsumerGroupTopicPartitions,
    IsolationLevel,
    KafkaError,
    TopicPartition,
)

# confluent-kafka re-exports OffsetSpec without declaring it, and its factories are untyped.
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

from bankflow import registry
from bankflow.bootstrap import db_connect, kafka_admin, kafka_consumer
from bankflow.domain.lag import GroupLag, LagTracker, PartitionReading
from bankflow.settings import Settings
from consumers.tracker import TRACKED
from schemas.topics import (
    TRANSFERS_ACCEPTED,
    TRANSFERS_DLQ,
    TRANSFERS_POSTED,
    TRANSFERS_REQUESTED,
    retry_topic,
)

log = logging.getLogger("bankflow.lag")

#: One admin request (offsets, group descriptions) may take this long; an evaluation
#: that cannot finish fails as a whole and the next one starts afresh.
ADMIN_TIMEOUT_S = 10
#: One probe round reads at most this long. A partition it could not settle counts
#: every offset from the group's as lag, the conservative answer.
PROBE_TIMEOUT_S = 2.0
_LATEST: OffsetSpec = OffsetSpec.latest()  # type: ignore[no-untyped-call]
_EARLIEST: OffsetSpec = OffsetSpec.earliest()  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class MonitoredGroup:
    """A consumer group of ours and the topics it reads."""

    name: str
    group_id: str
    #: Each topic with how long its messages are meant to wait there before they are
    #: read (a retry tier's delay; 0 elsewhere): lag younger than that is on purpose.
    topics: tuple[tuple[str, float], ...]
    #: The poster keeps its offsets in PostgreSQL (``consumer_offsets``); Kafka's
    #: copy of them is only committed after the fact, for tools.
    offsets_in_postgres: bool = False


def monitored_groups(settings: Settings) -> tuple[MonitoredGroup, ...]:
    """Every consumer group of a bankflow service (temporary readers such as
    ``ingest --wait`` are not services and are left out).

    The names and group ids come from ``bankflow.registry``; what each group reads
    is said here. ``tests/unit/test_registry.py`` holds the two to each other.
    """

    def group(name: str, topics: tuple[tuple[str, float], ...], **kw: bool) -> MonitoredGroup:
        group_id = registry.service(name).group_id(settings)
        if group_id is None:
            raise LookupError(f"bankflow.registry gives {name} no consumer group")
        return MonitoredGroup(name, group_id, topics, **kw)

    return (
        group("validator", ((settings.topic(TRANSFERS_REQUESTED), 0),)),
        group(
            "retrier",
            tuple(
                (settings.topic(retry_topic(tier)), delay_s)
                for tier, delay_s in settings.retry_tiers.items()
            ),
        ),
        group("poster", ((settings.topic(TRANSFERS_ACCEPTED), 0),), offsets_in_postgres=True),
        group("tracker", tuple((settings.topic(t), 0) for t in TRACKED)),
        group("dlq-sink", ((settings.topic(TRANSFERS_DLQ), 0),)),
        # The balance cache's faust agent commits its offsets to Kafka like the others.
        group("cache", ((settings.topic(TRANSFERS_POSTED), 0),)),
    )


@dataclass
class Readings:
    """One reading of every group; groups whose offsets could not be read are left out."""

    at_s: float
    groups: dict[tuple[str, str], list[PartitionReading]]
    errors: list[str] = field(default_factory=list)


PartitionKey = tuple[str, int]


@dataclass(frozen=True)
class _Probed:
    end_offset: int
    #: The first offset a read_committed reader was given, or None: it reached the end.
    first_readable: int | None


class OffsetReader:
    """Reads, for every monitored group, the offsets ``PartitionReading`` needs."""

    def __init__(
        self,
        groups: Sequence[MonitoredGroup],
        admin: AdminClient,
        probe: Consumer,
        connect: Callable[[], psycopg.Connection[Any]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.groups = tuple(groups)
        self.admin = admin
        self.probe = probe
        self.connect = connect
        self.clock = clock
        self._conn: psycopg.Connection[Any] | None = None
        self._probed: dict[tuple[str, int, int], _Probed] = {}

    def read(self) -> Readings:
        topics = {topic for g in self.groups for topic, _ in g.topics}
        partitions = {topic: self._partitions(topic) for topic in sorted(topics)}
        tps = [TopicPartition(t, p) for t, ps in partitions.items() for p in ps]
        ends = self._offsets(tps, _LATEST, IsolationLevel.READ_UNCOMMITTED)
        stables = self._offsets(tps, _LATEST, IsolationLevel.READ_COMMITTED)
        at_s = self.clock()
        starts = self._offsets(tps, _EARLIEST, IsolationLevel.READ_UNCOMMITTED)
        owned = self._owned_partitions()
        readings = Readings(at_s, {})
        for group in self.groups:
            keys = [(t, p) for t, _ in group.topics for p in partitions[t]]
            try:
                committed = self._committed(group, keys)
            except psycopg.Error as exc:
                self._drop_connection()
                readings.errors.append(f"{group.name}: offsets in PostgreSQL unreadable: {exc}")
                continue
            delays = dict(group.topics)
            readings.groups[(group.name, group.group_id)] = [
                PartitionReading(
                    topic=topic,
                    partition=partition,
                    committed_offset=committed.get((topic, partition)),
                    log_start_offset=starts[(topic, partition)],
                    end_offset=ends[(topic, partition)],
                    stable_offset=stables[(topic, partition)],
                    consumer_active=(group.group_id, topic, partition) in owned,
                    delay_s=delays[topic],
                )
                for topic, partition in keys
            ]
        self._settle_marker_gaps(readings)
        return readings

    def close(self) -> None:
        self.probe.close()
        self._drop_connection()

    # ------------------------------------------------------------------ Kafka

    def _partitions(self, topic: str) -> list[int]:
        """The topic's partition ids; none when the topic does not exist (yet)."""
        metadata = self.admin.list_topics(topic=topic, timeout=ADMIN_TIMEOUT_S)
        found = metadata.topics.get(topic)
        if found is None or found.error is not None:
            return []
        return sorted(found.partitions)

    def _offsets(
        self, tps: list[TopicPartition], spec: OffsetSpec, isolation: IsolationLevel
    ) -> dict[PartitionKey, int]:
        if not tps:
            return {}
        futures = self.admin.list_offsets(
            dict.fromkeys(tps, spec), isolation_level=isolation, request_timeout=ADMIN_TIMEOUT_S
        )
        return {
            (tp.topic, tp.partition): int(future.result(timeout=ADMIN_TIMEOUT_S).offset)
            for tp, future in futures.items()
        }

    def _owned_partitions(self) -> set[tuple[str, str, int]]:
        """(group, topic, partition) for every partition a live group member owns."""
        futures = self.admin.describe_consumer_groups(
            [g.group_id for g in self.groups], request_timeout=ADMIN_TIMEOUT_S
        )
        owned: set[tuple[str, str, int]] = set()
        for group_id, future in futures.items():
            description = future.result(timeout=ADMIN_TIMEOUT_S)
            for member in description.members:
                assignment = member.assignment
                for tp in assignment.topic_partitions if assignment is not None else ():
                    owned.add((group_id, tp.topic, tp.partition))
        return owned

    def _committed(
        self, group: MonitoredGroup, keys: list[PartitionKey]
    ) -> dict[PartitionKey, int]:
        if not keys:
            return {}
        if group.offsets_in_postgres:
            return self._committed_in_postgres(group)
        request = ConsumerGroupTopicPartitions(
            group.group_id, [TopicPartition(t, p) for t, p in keys]
        )
        futures = self.admin.list_consumer_group_offsets([request], request_timeout=ADMIN_TIMEOUT_S)
        result = futures[group.group_id].result(timeout=ADMIN_TIMEOUT_S)
        return {
            (tp.topic, tp.partition): tp.offset
            for tp in result.topic_partitions
            if tp.offset != OFFSET_INVALID
        }

    # ------------------------------------------------------------- PostgreSQL

    def _committed_in_postgres(self, group: MonitoredGroup) -> dict[PartitionKey, int]:
        if self._conn is None or self._conn.closed:
            self._conn = self.connect()
        rows = self._conn.execute(
            "select topic, partition, next_offset from consumer_offsets "
            "where group_id = %s and topic = any(%s)",
            (group.group_id, [topic for topic, _ in group.topics]),
        ).fetchall()
        return {(str(topic), int(partition)): int(offset) for topic, partition, offset in rows}

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    # ---------------------------------------------------- transaction markers

    def _settle_marker_gaps(self, readings: Readings) -> None:
        """Find where a read_committed reader would really start in each lagging partition."""
        gaps = {
            (r.topic, r.partition, r.consumer_offset): r.stable_offset
            for rs in readings.groups.values()
            for r in rs
            if r.stable_offset > r.consumer_offset
        }
        self._probed = {k: v for k, v in self._probed.items() if k in gaps}
        unsettled = {
            k: end for k, end in gaps.items() if _readable_from(self._probed.get(k), end) is None
        }
        if unsettled:
            self._probed.update(self._probe(unsettled))
        for key, rs in readings.groups.items():
            readings.groups[key] = [self._with_readable_from(r) for r in rs]

    def _with_readable_from(self, reading: PartitionReading) -> PartitionReading:
        probed = self._probed.get((reading.topic, reading.partition, reading.consumer_offset))
        readable_from = _readable_from(probed, reading.stable_offset)
        if readable_from is None:
            return reading
        return dataclasses.replace(reading, readable_from=readable_from)

    def _probe(self, gaps: dict[tuple[str, int, int], int]) -> dict[tuple[str, int, int], _Probed]:
        """Read each gap from its start until a message or the end, whichever comes first.

        Two groups may start different gaps in one partition; one probe round reads
        one start per partition, the others wait for the next evaluation.
        """
        chosen: dict[PartitionKey, tuple[int, int]] = {}
        for (topic, partition, start), end in gaps.items():
            chosen.setdefault((topic, partition), (start, end))
        self.probe.assign([TopicPartition(t, p, start) for (t, p), (start, _) in chosen.items()])
        found: dict[tuple[str, int, int], _Probed] = {}
        deadline = time.monotonic() + PROBE_TIMEOUT_S
        try:
            while len(found) < len(chosen) and time.monotonic() < deadline:
                message = self.probe.poll(0.1)
                if message is None:
                    continue
                key = (str(message.topic()), int(message.partition() or 0))
                if key not in chosen:
                    continue
                start, end = chosen[key]
                offset = message.offset()
                error = message.error()
                if offset is None or offset < start or (*key, start) in found:
                    continue
                if error is None:
                    found[(*key, start)] = _Probed(end, offset)
                elif error.code() == KafkaError._PARTITION_EOF and offset >= end:
                    # The reader got to the end without being given a message.
                    found[(*key, start)] = _Probed(end, None)
        finally:
            self.probe.unassign()
        return found


def _readable_from(probed: _Probed | None, end: int) -> int | None:
    """Where reading really starts, if the probe still says; None: probe (again)."""
    if probed is None:
        return None
    if probed.first_readable is not None:
        return probed.first_readable  # a message stays where it is, whatever came after
    # The reader got to ``probed.end_offset`` without a message; anything after is unknown.
    return probed.end_offset if probed.end_offset == end else None


class LagMonitor:
    """Reads the offsets and feeds the tracker: one call, one evaluation of every group."""

    def __init__(self, reader: OffsetReader, tracker: LagTracker) -> None:
        self.reader = reader
        self.tracker = tracker
        self.errors: list[str] = []

    def evaluate(self) -> list[GroupLag]:
        readings = self.reader.read()
        self.errors = readings.errors
        return self.tracker.observe(readings.groups, readings.at_s)

    def close(self) -> None:
        self.reader.close()


def build_monitor(settings: Settings) -> LagMonitor:
    """Wire a lag monitor from the settings: the one place its clients are built."""
    probe = kafka_consumer(
        settings,
        # Never subscribes or commits: it only reads gaps, so the group stays empty.
        group_id=f"{settings.topic_prefix}bankflow-lag-probe",
        **{
            "enable.partition.eof": True,
            # An end of partition answered within 50 ms keeps a probe round short.
            "fetch.wait.max.ms": 50,
            # One message is all a probe needs; do not pull a megabyte per partition.
            "max.partition.fetch.bytes": 64 * 1024,
        },
    )
    reader = OffsetReader(
        monitored_groups(settings),
        kafka_admin(settings),
        probe,
        lambda: db_connect(settings, application_name="bankflow-lag-exporter", autocommit=True),
    )
    tracker = LagTracker(
        window_size=settings.lag_window_evaluations,
        stop_after_s=settings.lag_stop_after_s,
        history_points_max=settings.lag_history_points_max,
    )
    return LagMonitor(reader, tracker)


def lag_document(groups: Sequence[GroupLag], source: str) -> dict[str, Any]:
    """The JSON document ``bankflow lag --json`` prints (and its table shows)."""
    return {
        "source": source,
        "groups": [
            {
                "name": g.name,
                "group_id": g.group_id,
                "status": g.status.value,
                "lag_messages": g.lag_messages,
                "lag_seconds": round(g.lag_seconds, 3),
                "partitions": [
                    {
                        "topic": p.topic,
                        "partition": p.partition,
                        "committed_offset": p.committed_offset,
                        "end_offset": p.end_offset,
                        "lag_messages": p.lag_messages,
                        "lag_seconds": round(p.lag_seconds, 3),
                    }
                    for p in g.partitions
                ],
            }
            for g in groups
        ],
    }
