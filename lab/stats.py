"""The one percentile of the lab, the benchmarks and the tests, and the lab's name for the one
Wilson score interval (implemented next to the attack theory in consensus/attack_theory.py, which
the simulators already used: re-exported here so that lab code and scenarios need not reach into
consensus for a statistic)."""

from __future__ import annotations

import math
from collections.abc import Iterable

from consensus.attack_theory import wilson_interval

__all__ = ["percentile", "wilson_interval"]


def percentile(values: Iterable[float], q: float) -> float:
    """The nearest-rank percentile: the smallest sample with at least a fraction `q` of all
    samples at or below it, i.e. the ⌈q·n⌉-th smallest of n (the smallest for q = 0).

    `q` is a fraction in [0, 1] (0.5 for the median, 0.99 for p99). Every result is one of
    the samples, never an interpolation between two: "p90 of 7 blocks" is the 7th (the
    slowest), since only the slowest has at least 90 % of the blocks at or below it. For an
    even n, q = 0.5 gives the lower of the two middle samples. No samples: ValueError.
    """
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no samples")
    if not 0 <= q <= 1:
        raise ValueError(f"percentile fraction {q} is outside [0, 1]")
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]
