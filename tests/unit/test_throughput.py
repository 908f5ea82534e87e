"""Rates from sampled counters (the ops page's throughput per stage)."""

from __future__ import annotations

import pytest

from bankflow.domain.throughput import RateHistory


def test_rates_over_a_window_and_between_the_last_two_samples() -> None:
    history = RateHistory(points_max=10)
    for at_s, offset in [(0, 0), (2, 10), (4, 30), (6, 30), (12, 90)]:
        history.add(at_s, {"requested": offset})
    # The window starts at the newest sample at least 10 s old: t=2.
    assert history.rates(10) == {"requested": pytest.approx(80 / 10)}
    assert history.rates(0) == {"requested": pytest.approx(60 / 6)}
    assert history.rates(1000) == {"requested": pytest.approx(90 / 12)}


def test_a_counter_that_goes_down_restarts_and_a_new_one_starts_at_zero() -> None:
    history = RateHistory(points_max=10)
    history.add(0, {"a": 100})
    history.add(5, {"a": 150})
    history.add(10, {"a": 20, "b": 7})  # a topic recreated; b seen for the first time
    history.add(15, {"a": 40, "b": 17})
    assert history.rates(1000) == {"a": pytest.approx(70 / 15), "b": pytest.approx(10 / 15)}


def test_history_is_bounded_and_ignores_samples_that_do_not_move_forward() -> None:
    history = RateHistory(points_max=3)
    assert history.rates(10) == {}
    history.add(1, {"a": 5})
    assert history.rates(10) == {"a": 0.0}
    history.add(1, {"a": 500})  # same time: ignored
    for at_s in range(2, 10):
        history.add(at_s, {"a": at_s * 10})
    assert len(history) == 3
    assert history.rates(1000) == {"a": pytest.approx(10.0)}
    with pytest.raises(ValueError, match="two samples"):
        RateHistory(points_max=1)
