"""Rates from counters sampled over time: messages per second per topic, postings per second.

The ops page samples monotonic counters (each topic's end offset summed over its
partitions, the ledger's postings) every few seconds and keeps a bounded history.
A rate is the counter's growth over a window divided by the time it took. A counter
that went down (a topic deleted and created again, a test's schema dropped) restarts
from its new value: that interval counts as no growth, never as a negative rate.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Sample:
    at_s: float
    counters: Mapping[str, int]


class RateHistory:
    """The last ``points_max`` samples, and rates computed from them."""

    def __init__(self, points_max: int) -> None:
        if points_max < 2:
            raise ValueError("a rate needs at least two samples")
        self._samples: deque[Sample] = deque(maxlen=points_max)

    def __len__(self) -> int:
        return len(self._samples)

    def add(self, at_s: float, counters: Mapping[str, int]) -> None:
        """Record a sample; one not later than the last is ignored (clocks only move on)."""
        if self._samples and at_s <= self._samples[-1].at_s:
            return
        self._samples.append(Sample(at_s, dict(counters)))

    def rates(self, window_s: float) -> dict[str, float]:
        """Per counter, its growth per second over the last ``window_s`` seconds.

        The window starts at the newest sample at least ``window_s`` old (or the
        oldest there is); ``rates(0)`` is the rate between the last two samples. A
        counter seen only in the newest sample has rate 0.
        """
        if len(self._samples) < 2:
            return dict.fromkeys(self._samples[-1].counters, 0.0) if self._samples else {}
        newest = self._samples[-1]
        start = 0
        for i in range(len(self._samples) - 2, -1, -1):
            if newest.at_s - self._samples[i].at_s >= window_s:
                start = i
                break
        return _rates(list(self._samples)[start:])


def _rates(samples: list[Sample]) -> dict[str, float]:
    """Growth per second over consecutive samples, a decrease counting as a restart."""
    elapsed_s = samples[-1].at_s - samples[0].at_s
    growth: dict[str, int] = dict.fromkeys(samples[-1].counters, 0)
    for before, after in itertools.pairwise(samples):
        for name, value in after.counters.items():
            previous = before.counters.get(name)
            if previous is not None and value >= previous:
                growth[name] = growth.get(name, 0) + value - previous
    return {name: grown / elapsed_s for name, grown in growth.items()}
