"""Consumer lag rules: lag in seconds from head samples, and Burrow-style statuses."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bankflow.domain.lag import (
    Evaluation,
    HeadHistory,
    HeadPoint,
    LagStatus,
    LagTracker,
    PartitionReading,
    lag_seconds,
    partition_status,
    visible_lag,
    worst,
)

# ------------------------------------------------------------- head history


def history(*points: tuple[int, float], points_max: int = 60) -> HeadHistory:
    h = HeadHistory(points_max)
    for offset, at in points:
        h.add(offset, at)
    return h


def test_interpolates_between_the_samples_around_the_offset() -> None:
    h = history((100, 10.0), (200, 20.0))
    assert h.time_at(150) == pytest.approx(15.0)
    assert lag_seconds(h, 150, now_s=30.0) == pytest.approx(15.0)


def test_consumer_at_the_head_has_no_lag() -> None:
    h = history((100, 10.0), (200, 20.0))
    assert lag_seconds(h, 200, now_s=99.0) == 0.0


def test_a_flat_run_keeps_its_first_and_last_sample() -> None:
    h = history((200, 1.0), (200, 2.0), (200, 3.0), (200, 4.0))
    assert [p.at_s for p in h.points] == [1.0, 4.0]


def test_offset_on_a_flat_run_was_the_head_until_the_run_ended() -> None:
    # The head sat at 200 from t=1 to t=3, then 1,000 messages arrived by t=4: the
    # message at 200 is about as old as the end of the run.
    h = history((200, 1.0), (200, 3.0), (1200, 4.0))
    assert h.time_at(200) == pytest.approx(3.0)
    assert lag_seconds(h, 200, now_s=10.0) == pytest.approx(7.0)


def test_lag_in_seconds_grows_while_the_consumer_stands_still() -> None:
    h = history((0, 0.0), (0, 1.0), (1000, 2.0))
    seen = []
    for now in (3.0, 4.0, 5.0):
        h.add(1000, now)
        seen.append(lag_seconds(h, 0, now_s=now))
    assert seen == sorted(seen) and seen[0] < seen[-1]


def test_offsets_older_than_the_history_are_extrapolated_at_its_rate() -> None:
    h = history((1000, 10.0), (2000, 20.0), points_max=2)
    assert h.time_at(500) == pytest.approx(5.0)


def test_a_single_sample_gives_a_lower_bound() -> None:
    h = history((1000, 10.0))
    assert lag_seconds(h, 0, now_s=12.0) == pytest.approx(2.0)


def test_a_log_that_went_backwards_starts_a_new_history() -> None:
    h = history((1000, 1.0), (2000, 2.0), (5, 3.0))
    assert [p.offset for p in h.points] == [5]


def test_out_of_order_samples_are_ignored() -> None:
    h = history((100, 5.0), (200, 4.0))
    assert [p.offset for p in h.points] == [100]


head_samples = st.lists(
    st.tuples(st.integers(0, 50), st.floats(0.01, 10.0)), min_size=1, max_size=80
)


@given(head_samples, st.integers(2, 12), st.data())
def test_history_stays_bounded_monotone_and_brackets_its_estimates(
    steps: list[tuple[int, float]], points_max: int, data: st.DataObject
) -> None:
    h = HeadHistory(points_max)
    offset, at = 0, 0.0
    for grow, wait in steps:
        offset, at = offset + grow, at + wait
        h.add(offset, at)
    points = h.points
    assert 1 <= len(points) <= points_max
    assert all(a.offset <= b.offset and a.at_s < b.at_s for a, b in pairwise(points))
    assert points[-1] == HeadPoint(offset, at)
    consumer = data.draw(st.integers(points[0].offset, points[-1].offset))
    when = h.time_at(consumer)
    assert when is not None
    assert points[0].at_s <= when <= points[-1].at_s
    now = at + data.draw(st.floats(0, 100))
    assert 0.0 <= lag_seconds(h, consumer, now) <= now - points[0].at_s


@given(head_samples)
def test_lag_in_seconds_never_shrinks_for_a_consumer_that_stands_still(
    steps: list[tuple[int, float]],
) -> None:
    # Room for every sample: the estimate only moves when the history loses points.
    h = HeadHistory(200)
    offset, at, previous = 0, 0.0, 0.0
    h.add(offset, at)
    for grow, wait in steps:
        offset, at = offset + grow, at + wait
        h.add(offset, at)
        seconds = lag_seconds(h, 0, at)
        assert seconds >= previous - 1e-9
        previous = seconds


# ----------------------------------------------------------------- statuses

WINDOW = 4


def evaluations(
    lags: list[int], offsets: list[int] | None = None, active: bool = True
) -> list[Evaluation]:
    offsets = offsets or list(range(len(lags)))
    return [
        Evaluation(float(i), offset, lag, active)
        for i, (lag, offset) in enumerate(zip(lags, offsets, strict=True))
    ]


def status(window: list[Evaluation], offset_since_s: float = 0.0, now_s: float = 3.0) -> LagStatus:
    return partition_status(window, offset_since_s, now_s, window_size=WINDOW, stop_after_s=10.0)


def test_lag_zero_anywhere_in_the_window_is_ok() -> None:
    assert status(evaluations([5, 0, 7, 9])) == LagStatus.OK


def test_growing_lag_with_a_moving_consumer_is_warn() -> None:
    assert status(evaluations([5, 6, 6, 9])) == LagStatus.WARN


def test_lag_that_shrinks_once_is_ok() -> None:
    assert status(evaluations([5, 6, 4, 9])) == LagStatus.OK


def test_constant_lag_is_not_growing() -> None:
    assert status(evaluations([5, 5, 5, 5])) == LagStatus.OK


def test_an_owned_partition_whose_offset_does_not_move_is_stall() -> None:
    assert status(evaluations([5, 6, 7, 8], offsets=[3, 3, 3, 3])) == LagStatus.STALL


def test_no_consumer_and_an_old_offset_is_stop() -> None:
    window = evaluations([5, 6, 7, 8], offsets=[3, 3, 3, 3], active=False)
    assert status(window, offset_since_s=0.0, now_s=10.0) == LagStatus.STOP


def test_no_consumer_but_a_recent_offset_is_not_stop_yet() -> None:
    window = evaluations([5, 6, 7, 8], offsets=[3, 3, 3, 3], active=False)
    assert status(window, offset_since_s=0.0, now_s=9.9) == LagStatus.WARN


def test_stall_and_warn_wait_for_a_full_window() -> None:
    assert status(evaluations([5, 6, 7], offsets=[3, 3, 3])) == LagStatus.OK


def test_messages_waiting_out_a_retry_delay_are_on_schedule() -> None:
    def waiting(lag_seconds: float, active: bool = True) -> list[Evaluation]:
        return [Evaluation(float(t), 3, 5, active, lag_seconds - 3 + t) for t in range(4)]

    def retry_status(window: list[Evaluation]) -> LagStatus:
        return partition_status(
            window, 0.0, 30.0, window_size=WINDOW, stop_after_s=10.0, delay_s=60.0
        )

    assert retry_status(waiting(50.0)) == LagStatus.OK
    assert retry_status(waiting(60.5)) == LagStatus.OK  # within one evaluation
    assert retry_status(waiting(75.0)) == LagStatus.STALL  # overdue and not moving
    assert retry_status(waiting(75.0, active=False)) == LagStatus.STOP


def test_a_group_is_as_bad_as_its_worst_partition() -> None:
    assert worst([LagStatus.OK, LagStatus.STOP, LagStatus.WARN]) == LagStatus.STOP
    assert worst([]) == LagStatus.OK


def test_lag_counts_up_to_the_last_stable_offset() -> None:
    assert visible_lag(stable_offset=101, reading_from=100) == 1
    assert visible_lag(stable_offset=100, reading_from=101) == 0


# ------------------------------------------------------------------ tracker


def reading(committed: int | None, stable: int, active: bool, **kw: object) -> PartitionReading:
    fields: dict[str, object] = {
        "topic": "t",
        "partition": 0,
        "committed_offset": committed,
        "log_start_offset": 0,
        "end_offset": stable,
        "stable_offset": stable,
        "consumer_active": active,
    }
    fields.update(kw)
    return PartitionReading(**fields)  # type: ignore[arg-type]


def test_a_stopped_consumer_goes_ok_warn_stop_and_back_to_ok() -> None:
    """The acceptance scenario on plain values: caught up, stopped under load, restarted."""
    tracker = LagTracker(window_size=3, stop_after_s=5.0, history_points_max=30)

    def observe(committed: int, stable: int, active: bool, now: float) -> tuple[int, float, str]:
        (group,) = tracker.observe({("poster", "g"): [reading(committed, stable, active)]}, now)
        return group.lag_messages, group.lag_seconds, group.status

    assert observe(10, 10, True, 0.0) == (0, 0.0, "OK")
    assert observe(10, 10, False, 1.0) == (0, 0.0, "OK")  # stopped, nothing to read yet
    seen = [observe(10, 1010, False, t) for t in (2.0, 3.0, 4.0, 5.0, 6.0)]
    assert all(lag == 1000 for lag, _, _ in seen)
    assert [s for _, s, _ in seen] == sorted(s for _, s, _ in seen)
    assert seen[-1][1] > seen[0][1]
    assert seen[-1][2] == "STOP"
    assert observe(600, 1010, True, 7.0)[2] != "STOP"  # restarted, catching up
    assert observe(1010, 1010, True, 8.0) == (0, 0.0, "OK")


@given(
    st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 5), st.booleans(), st.floats(0.01, 3.0)),
        min_size=1,
        max_size=40,
    )
)
def test_tracker_state_stays_bounded_and_caught_up_is_ok(
    steps: list[tuple[int, int, bool, float]],
) -> None:
    tracker = LagTracker(window_size=4, stop_after_s=2.0, history_points_max=8)
    committed, stable, now = 0, 0, 0.0
    for consumed, produced, active, wait in steps:
        stable += produced
        committed = min(stable, committed + consumed)
        now += wait
        (group,) = tracker.observe({("s", "g"): [reading(committed, stable, active)]}, now)
        assert group.lag_messages == stable - committed
        if committed == stable:
            assert group.status == LagStatus.OK and group.lag_seconds == 0.0
        assert len(tracker._windows[("g", "t", 0)].evaluations) <= 4
        assert len(tracker._heads[("t", 0)].points) <= 8


def test_a_group_on_a_commit_marker_is_caught_up() -> None:
    """After a transaction the group's offset is the commit marker, one below the end."""
    tracker = LagTracker(window_size=3, stop_after_s=5.0, history_points_max=10)
    for now in (1.0, 2.0, 3.0, 4.0):
        (group,) = tracker.observe({("s", "g"): [reading(100, 101, True, readable_from=101)]}, now)
        assert (group.lag_messages, group.lag_seconds, group.status) == (0, 0.0, "OK")


def test_a_backlog_after_a_commit_marker_counts_only_its_messages() -> None:
    tracker = LagTracker(window_size=3, stop_after_s=5.0, history_points_max=10)
    tracker.observe({("s", "g"): [reading(100, 101, False, readable_from=101)]}, 1.0)
    tracker.observe({("s", "g"): [reading(100, 101, False, readable_from=101)]}, 50.0)
    (group,) = tracker.observe({("s", "g"): [reading(100, 1101, False, readable_from=101)]}, 51.0)
    # The first message, at 101, arrived after the head was last seen at 101 (t=50),
    # not when the marker at 100 became the head (before t=1).
    assert group.lag_messages == 1000
    assert group.lag_seconds == pytest.approx(1.0)


def test_without_a_probe_every_offset_counts() -> None:
    assert reading(100, 101, True).reading_from == 100
    assert reading(None, 101, True, log_start_offset=7).reading_from == 7
    assert reading(100, 101, True, readable_from=90).reading_from == 100


def test_partitions_no_longer_read_are_forgotten() -> None:
    tracker = LagTracker(window_size=3, stop_after_s=5.0, history_points_max=10)
    tracker.observe({("s", "g"): [reading(0, 5, True), reading(0, 5, True, partition=1)]}, 1.0)
    tracker.observe({("s", "g"): [reading(0, 5, True)]}, 2.0)
    assert set(tracker._windows) == {("g", "t", 0)}
    assert set(tracker._heads) == {("t", 0)}


# ------------------------------------------------- the exporter's endpoints


def test_bankflow_lag_reads_back_what_the_exporter_serves() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from bankflow.domain.lag import GroupLag, PartitionLag
    from bankflow.settings import Settings
    from consumers.lag import lag_document, monitored_groups
    from consumers.lag_exporter import LagMetrics, document_from_metrics

    settings = Settings(topic_prefix="t.", poster_group="p", validator_group="v")
    groups = [
        GroupLag(
            g.name,
            g.group_id,
            LagStatus.STOP if g.name == "poster" else LagStatus.OK,
            (
                PartitionLag(g.topics[0][0], 0, 10, 1010, 1000, 12.5, LagStatus.STOP),
                PartitionLag(g.topics[-1][0], 1, None, 0, 0, 0.0, LagStatus.OK),
            ),
        )
        for g in monitored_groups(settings)
    ]
    registry = CollectorRegistry()
    LagMetrics(registry).update(groups)
    served = generate_latest(registry).decode()
    assert 'bankflow_consumer_group_status{group="p",status="STOP"} 1.0' in served
    assert document_from_metrics(served, settings) == lag_document(groups, "exporter")
    # Another configuration's exporter (other group ids) is not taken for ours.
    other = Settings(topic_prefix="t.", poster_group="other", validator_group="v")
    assert document_from_metrics(served, other) is None


def test_health_endpoints_answer_for_the_readiness_callable() -> None:
    from prometheus_client import CollectorRegistry

    from bankflow.observability import health_app

    def call(app: object, path: str) -> tuple[str, bytes]:
        answer: list[str] = []
        body = app({"PATH_INFO": path, "REQUEST_METHOD": "GET"}, lambda s, h: answer.append(s))  # type: ignore[operator]
        return answer[0], b"".join(body)

    ready = {"now": False}
    app = health_app(lambda: ready["now"], CollectorRegistry())
    assert call(app, "/healthz")[0] == "200 OK"
    assert call(app, "/readyz")[0].startswith("503")
    ready["now"] = True
    assert call(app, "/readyz")[0] == "200 OK"
    assert call(app, "/nope")[0].startswith("404")

    def broken() -> bool:
        raise RuntimeError("the check itself failed")

    assert call(health_app(broken, CollectorRegistry()), "/readyz")[0].startswith("503")
