"""Consumer lag: how far behind a consumer group is, in messages and in seconds, and its status.

Pure: the lag exporter and ``bankflow lag`` read offsets from Kafka and PostgreSQL
and hand them here as plain values, with the time they were read.

Lag in seconds is estimated the way kafka-lag-exporter does it: every evaluation
records, per partition, the head (the offset the next message will get) and when
it was the head. The time at which the consumer's offset was the head is
interpolated between the two samples around it; the lag is the time since then.

Statuses follow the spirit of Burrow's evaluation rules, over a sliding window of
evaluations rather than of commits (the exporter samples offsets; Kafka's offset
API does not say when an offset was committed). See ``partition_status``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from itertools import pairwise


class LagStatus(StrEnum):
    """A group's health, worst partition first (Burrow's names, without REWIND and ERR)."""

    OK = "OK"
    #: Lag grew over the whole window while the consumer moved: it is too slow.
    WARN = "WARN"
    #: A consumer owns the partition but its offset did not move over the window.
    STALL = "STALL"
    #: No consumer owns the partition and its offset has not moved for ``stop_after_s``.
    STOP = "STOP"


#: Worse statuses compare higher; a group is as bad as its worst partition.
SEVERITY: dict[LagStatus, int] = {
    LagStatus.OK: 0,
    LagStatus.WARN: 1,
    LagStatus.STALL: 2,
    LagStatus.STOP: 3,
}


@dataclass(frozen=True)
class HeadPoint:
    """The partition's head ``offset`` was observed at ``at_s`` (seconds on any one clock)."""

    offset: int
    at_s: float


class HeadHistory:
    """Bounded samples of one partition's head, for estimating when an offset was the head.

    Samples only move forward in time and offset. A run of samples with the same
    offset is kept as its first and last sample (the last one moving right), so an
    idle partition does not push its history out of the window.
    """

    def __init__(self, points_max: int) -> None:
        if points_max < 2:
            raise ValueError("a head history needs room for at least two points")
        self._points: deque[HeadPoint] = deque(maxlen=points_max)

    @property
    def points(self) -> tuple[HeadPoint, ...]:
        return tuple(self._points)

    def add(self, offset: int, at_s: float) -> None:
        point = HeadPoint(offset, at_s)
        if not self._points:
            self._points.append(point)
            return
        last = self._points[-1]
        if at_s <= last.at_s:
            return  # out of order: a sample cannot be older than the newest one
        if offset < last.offset:
            # The log went backwards: the topic was deleted and created again.
            # Nothing recorded so far describes the new log.
            self._points.clear()
            self._points.append(point)
            return
        flat = (
            offset == last.offset and len(self._points) >= 2 and self._points[-2].offset == offset
        )
        if flat:
            self._points[-1] = point
        else:
            self._points.append(point)

    def time_at(self, offset: int) -> float | None:
        """When ``offset`` was (last) the head; None when the history cannot tell.

        Inside the history: linear interpolation between the newest pair of samples
        that brackets the offset (on a flat run, its newest end: the moment the
        head moved past it). Before the oldest sample: extrapolated along the
        history's average rate, and never later than the oldest sample.
        """
        points = self._points
        if not points or offset > points[-1].offset:
            return None
        if offset == points[-1].offset:
            return points[-1].at_s
        for i in range(len(points) - 1, 0, -1):
            left, right = points[i - 1], points[i]
            if left.offset <= offset <= right.offset:
                # Clamped: float rounding must not put the estimate outside its pair.
                return min(max(_interpolate(left, right, offset), left.at_s), right.at_s)
        first, last = points[0], points[-1]
        if last.offset == first.offset:
            return first.at_s
        return min(first.at_s, _interpolate(first, last, offset))


def _interpolate(left: HeadPoint, right: HeadPoint, offset: int) -> float:
    if right.offset == left.offset:
        return right.at_s
    rate_s = (right.at_s - left.at_s) / (right.offset - left.offset)
    return right.at_s - (right.offset - offset) * rate_s


def lag_seconds(history: HeadHistory, consumer_offset: int, now_s: float) -> float:
    """How long ago the consumer's offset was the head: 0 when it is at the head.

    With a single sample the answer is a lower bound (the offset was the head
    before that sample was taken); it sharpens as samples accumulate.
    """
    points = history.points
    if not points or consumer_offset >= points[-1].offset:
        return 0.0
    when = history.time_at(consumer_offset)
    if when is None:
        return 0.0
    return max(0.0, now_s - when)


@dataclass(frozen=True)
class Evaluation:
    """One partition of one group, as one evaluation found it."""

    at_s: float
    consumer_offset: int
    lag_messages: int
    #: A live member of the group owns the partition (it would commit if it could).
    consumer_active: bool
    lag_seconds: float = 0.0


def partition_status(
    window: Sequence[Evaluation],
    offset_since_s: float,
    now_s: float,
    *,
    window_size: int,
    stop_after_s: float,
    delay_s: float = 0.0,
) -> LagStatus:
    """Burrow-style rules over the window of evaluations, oldest first; first match wins.

    1. Lag zero now or anywhere in the window: OK (a consumer that catches up is fine).
       So is, on a topic whose messages are meant to wait ``delay_s`` (a retry tier),
       an oldest unread message no older than that, give or take one evaluation.
    2. No consumer owns the partition and its offset has not changed since
       ``offset_since_s`` for ``stop_after_s`` or longer: STOP.
    3. The window is full, a consumer owns the partition and the offset is the same
       in every evaluation: STALL (it is there, but not getting anywhere).
    4. The window is full and the lag never shrank and grew overall: WARN.
    5. Otherwise OK.

    Kafka's offset API does not say when an offset was committed, so "committing"
    is judged by whether a live group member owns the partition.
    """
    if not window or any(e.lag_messages == 0 for e in window) or _on_schedule(window, delay_s):
        return LagStatus.OK
    latest = window[-1]
    if not latest.consumer_active and now_s - offset_since_s >= stop_after_s:
        return LagStatus.STOP
    if len(window) < window_size:
        return LagStatus.OK
    if latest.consumer_active and len({e.consumer_offset for e in window}) == 1:
        return LagStatus.STALL
    lags = [e.lag_messages for e in window]
    if all(a <= b for a, b in pairwise(lags)) and lags[-1] > lags[0]:
        return LagStatus.WARN
    return LagStatus.OK


def _on_schedule(window: Sequence[Evaluation], delay_s: float) -> bool:
    """The oldest unread message waits no longer than it is meant to (to one evaluation:
    the estimate's resolution)."""
    if delay_s <= 0:
        return False
    latest = window[-1]
    resolution_s = latest.at_s - window[-2].at_s if len(window) > 1 else 0.0
    return latest.lag_seconds <= delay_s + resolution_s


def worst(statuses: Iterable[LagStatus]) -> LagStatus:
    """The group's status: its worst partition's (OK for a group with no partitions)."""
    return max(statuses, key=SEVERITY.__getitem__, default=LagStatus.OK)


def visible_lag(stable_offset: int, reading_from: int) -> int:
    """Messages a read_committed consumer reading from ``reading_from`` has yet to get.

    Counted in offsets up to the last stable offset (an open transaction is not lag
    yet); a transaction marker inside that range counts as one, which is the only
    approximation left (see ``PartitionReading.readable_from`` for the ones removed).
    """
    return max(0, stable_offset - reading_from)


@dataclass(frozen=True)
class PartitionReading:
    """What the offsets of one partition were for one group, read at one moment."""

    topic: str
    partition: int
    #: The group's committed offset; None when it never committed one.
    committed_offset: int | None
    log_start_offset: int
    #: The high watermark: the offset the next message written will get.
    end_offset: int
    #: The last stable offset: the end a read_committed consumer can read up to.
    stable_offset: int
    consumer_active: bool
    #: The offset of the first message a read_committed reader starting at the
    #: consumer's offset is given (or the end it reached without one), when known.
    #: A consumer that commits "last message + 1" after a transaction sits on the
    #: transaction's commit marker, an offset no consumer is ever given: without
    #: this, an idle caught-up group would show a lag of one for ever.
    readable_from: int | None = None
    #: How long messages are meant to wait in this topic before they are read (a
    #: retry tier's delay): a consumer holding them back that long is doing its job.
    delay_s: float = 0.0

    @property
    def consumer_offset(self) -> int:
        """Where the group reads next: a group that never committed starts at the log start."""
        return self.log_start_offset if self.committed_offset is None else self.committed_offset

    @property
    def reading_from(self) -> int:
        """The consumer's offset, moved past markers and aborted records when known."""
        if self.readable_from is None:
            return self.consumer_offset
        return max(self.consumer_offset, self.readable_from)


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    committed_offset: int | None
    end_offset: int
    lag_messages: int
    lag_seconds: float
    status: LagStatus


@dataclass(frozen=True)
class GroupLag:
    #: The service the group belongs to (``poster``), and its consumer group id.
    name: str
    group_id: str
    status: LagStatus
    partitions: tuple[PartitionLag, ...]

    @property
    def lag_messages(self) -> int:
        return sum(p.lag_messages for p in self.partitions)

    @property
    def lag_seconds(self) -> float:
        return max((p.lag_seconds for p in self.partitions), default=0.0)


@dataclass
class _Window:
    evaluations: deque[Evaluation]
    offset_since_s: float


class LagTracker:
    """Lag and status of every group over successive evaluations; state stays bounded.

    Memory: one head history per partition (``history_points_max`` samples) and one
    window per group and partition (``window_size`` evaluations); partitions that
    are no longer read are forgotten.
    """

    def __init__(self, *, window_size: int, stop_after_s: float, history_points_max: int) -> None:
        if window_size < 1:
            raise ValueError("the status window needs at least one evaluation")
        self.window_size = window_size
        self.stop_after_s = stop_after_s
        self.history_points_max = history_points_max
        self._heads: dict[tuple[str, int], HeadHistory] = {}
        self._windows: dict[tuple[str, str, int], _Window] = {}
        self.evaluations = 0

    def observe(
        self,
        readings: Mapping[tuple[str, str], Sequence[PartitionReading]],
        now_s: float,
    ) -> list[GroupLag]:
        """One evaluation: ``readings`` by (service name, group id), read at ``now_s``."""
        self.evaluations += 1
        self._record_heads(readings, now_s)
        groups = [
            self._group(name, group_id, partitions, now_s)
            for (name, group_id), partitions in readings.items()
        ]
        seen = {(g, r.topic, r.partition) for (_, g), rs in readings.items() for r in rs}
        for key in set(self._windows) - seen:
            del self._windows[key]
        return groups

    def _record_heads(
        self, readings: Mapping[tuple[str, str], Sequence[PartitionReading]], now_s: float
    ) -> None:
        heads = {(r.topic, r.partition): r.stable_offset for rs in readings.values() for r in rs}
        for key in set(self._heads) - set(heads):
            del self._heads[key]
        for key, offset in heads.items():
            history = self._heads.setdefault(key, HeadHistory(self.history_points_max))
            history.add(offset, now_s)

    def _group(
        self, name: str, group_id: str, readings: Sequence[PartitionReading], now_s: float
    ) -> GroupLag:
        partitions = tuple(self._partition(group_id, r, now_s) for r in readings)
        return GroupLag(name, group_id, worst(p.status for p in partitions), partitions)

    def _partition(self, group_id: str, reading: PartitionReading, now_s: float) -> PartitionLag:
        offset = reading.consumer_offset
        lag = visible_lag(reading.stable_offset, reading.reading_from)
        history = self._heads[(reading.topic, reading.partition)]
        seconds = lag_seconds(history, reading.reading_from, now_s) if lag else 0.0
        key = (group_id, reading.topic, reading.partition)
        window = self._windows.get(key)
        if window is None:
            window = _Window(deque(maxlen=self.window_size), now_s)
            self._windows[key] = window
        elif window.evaluations and window.evaluations[-1].consumer_offset != offset:
            window.offset_since_s = now_s
        window.evaluations.append(Evaluation(now_s, offset, lag, reading.consumer_active, seconds))
        status = partition_status(
            window.evaluations,
            window.offset_since_s,
            now_s,
            window_size=self.window_size,
            stop_after_s=self.stop_after_s,
            delay_s=reading.delay_s,
        )
        return PartitionLag(
            reading.topic,
            reading.partition,
            reading.committed_offset,
            reading.end_offset,
            lag,
            seconds,
            status,
        )
