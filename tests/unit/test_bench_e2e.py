"""The end-to-end bench's pure parts: rates, percentiles, the workload and the JSON shape."""

from __future__ import annotations

import uuid

import pytest

from bankflow.settings import Settings
from bench.e2e import (
    HOT_ACCOUNTS,
    Options,
    parse_rate,
    percentile,
    plan_transfers,
    steady_middle,
    steady_rate_per_s,
    summarise,
)


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # 1..100, unsorted
    assert percentile(values, 0.50) == 50
    assert percentile(values, 0.99) == 99
    assert percentile(values, 1.0) == 100
    assert percentile([7.0], 0.99) == 7
    assert percentile([], 0.5) == 0


def test_the_steady_rate_leaves_out_warm_up_and_tail() -> None:
    # 10 events during a slow start, 80 at 100/s, 10 during a slow tail.
    times = [i * 1.0 for i in range(10)] + [10 + i / 100 for i in range(80)]
    times += [20 + i * 1.0 for i in range(10)]
    assert steady_rate_per_s(times) == pytest.approx(79 / 0.79)


def test_no_rate_from_too_few_events_or_events_all_at_once() -> None:
    assert steady_rate_per_s([]) == 0
    assert steady_rate_per_s([1.0]) == 0
    assert steady_rate_per_s([5.0] * 100) == 0


def test_steady_latencies_leave_out_the_first_and_last_requests() -> None:
    # Requests at t=0..99; the first ten waited for the first batches.
    pairs = [(float(t), 500.0 if t < 10 else 20.0) for t in range(99, -1, -1)]
    middle = steady_middle(pairs)
    assert len(middle) == 80
    assert set(middle) == {20.0}
    assert steady_middle([]) == []


def test_rates_are_max_or_positive_numbers() -> None:
    assert parse_rate("max") is None
    assert parse_rate("MAX") is None
    assert parse_rate("500") == 500
    for wrong in ("0", "-3", "nan", "fast"):
        with pytest.raises(ValueError):
            parse_rate(wrong)


def test_the_workload_sends_the_hot_share_from_the_hot_accounts() -> None:
    accounts = [uuid.uuid4() for _ in range(200)]
    planned = plan_transfers(accounts, 10_000, hot_share=0.5)
    hot = set(accounts[:HOT_ACCOUNTS])
    from_hot = sum(p.debit in hot for p in planned)
    # Half chosen hot, plus the uniform half's 2 % that happen to pick a hot account.
    assert 0.46 < from_hot / len(planned) < 0.56
    assert all(p.debit != p.credit for p in planned)
    assert len({p.transfer_id for p in planned}) == len(planned)
    assert plan_transfers(accounts, 100, 0.5) == plan_transfers(accounts, 100, 0.5)


def test_the_json_object_has_every_figure() -> None:
    pipeline = {
        "posted_tps": 1000.4, "produced_tps": 5000.0, "latency_ms_p50": 12.34,
        "latency_ms_p99": 80.0, "latency_ms_max": 95.0, "latency_ms_max_all": 600.0,
        "validator_ms_p50": 5.0, "posted": 100, "cpu_s_poster": 1.234, "wall_s": 2.0, "rejected": 0,
        "failed": 0, "lost": 0, "duplicated": 0,
    }  # fmt: skip
    kafka = {"tps": 4000.0, "produce_tps": 4000.0, "consume_tps": 9000.0}
    result = summarise(Options(100, 200, 0.2, 500.0), pipeline, kafka, 2000.0, Settings())
    required = {
        "posted_tps", "latency_ms_p50", "latency_ms_p99", "latency_ms_max",
        "kafka_baseline_tps", "sql_baseline_tps", "ratio_to_sql", "transfers", "accounts",
        "rate", "lost", "duplicated",
    }  # fmt: skip
    assert required <= result.keys()
    assert result["posted_tps"] == 1000
    assert result["ratio_to_sql"] == pytest.approx(0.5, abs=0.001)
    assert result["ratio_to_kafka"] == pytest.approx(0.25, abs=0.001)
    assert result["rate"] == 500.0
    assert result["validator_ms_p50"] == 5.0
    assert result["latency_ms_max_all"] == 600.0
    assert result["cpu_s_poster"] == 1.2
    nothing = {"tps": 0.0, "produce_tps": 0.0, "consume_tps": 0.0}
    assert (
        summarise(Options(1, rate_per_s=None), pipeline, nothing, 0.0, Settings())["rate"] == "max"
    )
