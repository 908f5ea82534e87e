"""What the ops page shows, measured in the API process: lag, throughput, dead letters, review.

``OpsMonitor.snapshot`` evaluates at most once every ``REFRESH_MIN_S``, however many
pages poll: consumer lag with the lag exporter's own code (``consumers.lag``: the
same offsets, the same transaction-marker handling, the same statuses), each
topic's end offsets (from that same reading) and, from PostgreSQL, the postings, the
dead letters not yet handled and the review queue. Successive snapshots make a
bounded history from which the rates and the page's charts come.

Statuses are judged over a window of evaluations (``BANKFLOW_LAG_WINDOW_EVALUATIONS``)
like the exporter's, but only while someone looks: a freshly opened page may show a
status the exporter, which evaluates all the time, has already moved on from.

Throughput per stage is the growth of a topic's end offsets per second. Offsets count
Kafka's transaction markers too (one per partition per transaction on the topics the
validator and the retrier write), so at very low traffic a transactional topic reads
up to twice its messages; under load the difference vanishes. Postings are the
ledger's new entries divided by two (a posting is one debit and one credit).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bankflow.domain.lag import GroupLag
from bankflow.domain.throughput import RateHistory
from bankflow.services import read_state
from bankflow.settings import Settings
from consumers.lag import LagMonitor, build_monitor, lag_document
from schemas.topics import TRANSFERS_DLQ, TRANSFERS_REVIEW

#: One evaluation costs a handful of admin requests and a probe; pages polling at the
#: same time share it.
REFRESH_MIN_S = 2.0
#: Current rates are averaged over this long, so one batch does not make a spike.
RATE_WINDOW_S = 10.0
#: Evaluations kept for the charts: 150 at the page's 5 s are about twelve minutes.
HISTORY_POINTS_MAX = 150
#: The counter of ledger entries in the rate history (topics are the others).
LEDGER_ENTRIES = "ledger:entries"


@dataclass(frozen=True)
class Snapshot:
    """One evaluation: the lag document, end offsets, counts, and the history until now."""

    evaluated_at: datetime
    at_s: float
    lag: dict[str, Any]
    end_offsets: dict[str, int]
    rates: dict[str, float]
    counts: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


class OpsMonitor:
    """Lag and throughput for the ops page; one per app, built on first use."""

    def __init__(
        self,
        settings: Settings,
        build: Callable[[Settings], LagMonitor] = build_monitor,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._build = build
        self._clock = clock
        self._monitor: LagMonitor | None = None
        self._lock = asyncio.Lock()
        self._last: Snapshot | None = None
        self._rates = RateHistory(HISTORY_POINTS_MAX)
        self._history: deque[dict[str, Any]] = deque(maxlen=HISTORY_POINTS_MAX)
        #: The highest ledger entry id counted so far, and the entries counted since start.
        self._entry_mark: int | None = None
        self._entries = 0
        self._logical = {settings.topic(t): t for t in settings.all_topics()}

    async def snapshot(self, db_pool: Any) -> Snapshot:
        """The last snapshot if it is recent enough, else a new one."""
        async with self._lock:
            if self._last is not None and self._clock() - self._last.at_s < REFRESH_MIN_S:
                return self._last
            groups, errors = await asyncio.to_thread(self._evaluate)
            counts = await self._ledger_counts(db_pool)
            self._last = self._record(groups, errors, counts)
            return self._last

    def close(self) -> None:
        if self._monitor is not None:
            self._monitor.close()
            self._monitor = None

    def _evaluate(self) -> tuple[list[GroupLag], list[str]]:
        if self._monitor is None:
            self._monitor = self._build(self.settings)
        groups = self._monitor.evaluate()
        return groups, list(self._monitor.errors)

    async def _ledger_counts(self, db_pool: Any) -> dict[str, Any]:
        """New ledger entries since the last call, open dead letters, the review queue."""
        async with db_pool.connection() as db:
            if self._entry_mark is None:
                row = await (await db.execute(
                    "select coalesce(max(id), 0) from entries"
                )).fetchone()  # fmt: skip
                self._entry_mark = int(row[0])
            else:
                # Only the entries past the mark: an index range scan, however big the ledger.
                row = await (await db.execute(
                    "select count(*), coalesce(max(id), %s) from entries where id > %s",
                    (self._entry_mark, self._entry_mark),
                )).fetchone()  # fmt: skip
                self._entries += int(row[0])
                self._entry_mark = int(row[1])
            row = await (await db.execute(
                "select (select count(*) from dead_letters where status = 'open'), "
                "(select count(*) from review_queue where status = 'held'), "
                "(select extract(epoch from now() - min(held_at)) from review_queue "
                "where status = 'held')"
            )).fetchone()  # fmt: skip
        return {
            "dead_letters_open": int(row[0]),
            "review_held": int(row[1]),
            "review_oldest_held_s": None if row[2] is None else round(float(row[2]), 1),
        }

    def _record(
        self, groups: Sequence[GroupLag], errors: list[str], counts: dict[str, Any]
    ) -> Snapshot:
        at_s = self._clock()
        now = datetime.now(UTC)
        end_offsets = self._end_offsets(groups)
        self._rates.add(at_s, {**end_offsets, LEDGER_ENTRIES: self._entries})
        rates = self._rates.rates(RATE_WINDOW_S)
        latest = self._rates.rates(0)  # between the last two evaluations, for the charts
        lag = lag_document(groups, "api")
        lag["errors"] = errors
        self._history.append(
            {
                "at": now.timestamp(),
                "lag_messages": {g.name: g.lag_messages for g in groups},
                "messages_per_s": {t: round(latest.get(t, 0.0), 2) for t in end_offsets},
                "postings_per_s": round(latest.get(LEDGER_ENTRIES, 0.0) / 2, 2),
                "dead_letters_open": counts["dead_letters_open"],
                "review_held": counts["review_held"],
            }
        )
        return Snapshot(now, at_s, lag, end_offsets, rates, counts, list(self._history))

    def _end_offsets(self, groups: Sequence[GroupLag]) -> dict[str, int]:
        """Each topic's end offsets summed over its partitions, by logical topic name."""
        ends: dict[tuple[str, int], int] = {}
        for group in groups:
            for p in group.partitions:
                ends[(p.topic, p.partition)] = p.end_offset
        totals: dict[str, int] = {}
        for (topic, _), end in sorted(ends.items()):
            name = self._logical.get(topic, topic)
            totals[name] = totals.get(name, 0) + end
        order = {t: i for i, t in enumerate(self.settings.all_topics())}
        return dict(sorted(totals.items(), key=lambda item: order.get(item[0], len(order))))


def supervisor_view(settings: Settings) -> dict[str, Any] | None:
    """What ``bankflow run all`` last wrote of its services (``bankflow.services``), read
    from its state file on each poll: a small file, and always the supervisor's latest."""
    state = read_state(settings)
    if state is None:
        return None
    return {**state["supervisor"], "services": state["services"]}


def lag_view(snapshot: Snapshot) -> dict[str, Any]:
    """``GET /v1/ops/lag``: the lag document and the history of lag per group."""
    return {
        **snapshot.lag,
        "evaluated_at": snapshot.evaluated_at.isoformat(),
        "history": [{"at": p["at"], "lag_messages": p["lag_messages"]} for p in snapshot.history],
    }


def throughput_view(snapshot: Snapshot) -> dict[str, Any]:
    """``GET /v1/ops/throughput``: rates per stage, dead letters, review queue, history."""
    rates = snapshot.rates
    counts = snapshot.counts
    return {
        "evaluated_at": snapshot.evaluated_at.isoformat(),
        "window_s": RATE_WINDOW_S,
        "stages": [
            {"topic": topic, "messages_per_s": round(rates.get(topic, 0.0), 2), "end_offset": end}
            for topic, end in snapshot.end_offsets.items()
        ],
        "postings_per_s": round(rates.get(LEDGER_ENTRIES, 0.0) / 2, 2),
        "dead_letters": {
            "open": counts["dead_letters_open"],
            "arriving_per_s": round(rates.get(TRANSFERS_DLQ, 0.0), 2),
        },
        "review_queue": {
            "held": counts["review_held"],
            "oldest_held_s": counts["review_oldest_held_s"],
            "arriving_per_s": round(rates.get(TRANSFERS_REVIEW, 0.0), 2),
        },
        "history": [{k: v for k, v in p.items() if k != "lag_messages"} for p in snapshot.history],
    }


async def close_monitor(app: Any) -> None:
    """Close the app's ops monitor, if the page was ever polled (its Kafka clients)."""
    monitor: OpsMonitor | None = getattr(app.state, "ops", None)
    if monitor is not None:
        await asyncio.to_thread(monitor.close)
