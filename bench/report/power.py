"""What a paired comparison over a few seeds can detect: the power of the table's test.

The table marks a method † when a two-sided paired t-test against the baseline over the
shared seeds gives p < alpha (:func:`bench.report.table.paired_test`). No † does not mean
"no difference": with few seeds the test detects only large ones. For ``n`` pairs whose
differences have standard deviation ``sd``, a true mean difference ``delta`` gives the test
statistic a noncentral t distribution with ``n - 1`` degrees of freedom and noncentrality
``delta * sqrt(n) / sd``; its power is the chance that ``|t|`` passes the critical value.

- :func:`detectable_effect`: the standardised difference ``delta / sd`` detected with the
  given power at ``n`` pairs (solved exactly on the noncentral t, not a normal
  approximation); times the observed ``sd`` it is the minimum detectable difference.
- :func:`seeds_needed`: the smallest number of pairs at which an observed gap, at the
  observed spread, would be detected with that power.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy import optimize, stats

MAX_SEEDS = 10**9  # seeds_needed searches up to here; beyond it the gap is unresolvable
# A spread of paired differences below this (in points) is float round-off of equal
# differences (values are percent of float scores), and counts as no spread.
ROUND_OFF = 1e-9


def paired_power(effect: float, n: int, alpha: float) -> float:
    """Power of the two-sided paired t-test at level ``alpha`` with ``n`` >= 2 pairs for a
    true mean difference of ``effect`` standard deviations of the differences."""
    df = n - 1
    critical = stats.t.ppf(1 - alpha / 2, df)
    noncentrality = effect * math.sqrt(n)
    upper = stats.nct.sf(critical, df, noncentrality)
    # P(t < -critical), written as the upper tail at -noncentrality: scipy's cdf there gives
    # NaN where the tail underflows, its sf gives 0
    lower = stats.nct.sf(critical, df, -noncentrality)
    return float(upper + lower)


@lru_cache(maxsize=256)
def detectable_effect(n: int, alpha: float, power: float) -> float:
    """The standardised difference detected with ``power`` by the test with ``n`` >= 2 pairs
    (the root of :func:`paired_power` - ``power``; the power grows with the effect)."""
    if n < 2:
        raise ValueError(f"a paired t-test needs at least 2 pairs, got {n}")
    high = 1.0
    while paired_power(high, n, alpha) < power:
        high *= 2
    return float(
        optimize.brentq(lambda d: paired_power(d, n, alpha) - power, 0.0, high, xtol=1e-12)
    )


def spread(differences: np.ndarray) -> float:
    """The sample std (ddof=1) of >= 2 paired differences, 0 below ``ROUND_OFF``."""
    value = float(np.std(np.asarray(differences, dtype=float), ddof=1))
    return 0.0 if value < ROUND_OFF else value


def minimum_detectable_difference(
    n: int, spread: float, alpha: float, power: float
) -> float | None:
    """The smallest true mean difference the test over ``n`` pairs whose differences have
    std ``spread`` detects with ``power``; None for fewer than 2 pairs, 0 when the
    differences do not vary (any true difference would be detected)."""
    if n < 2:
        return None
    return detectable_effect(n, alpha, power) * spread


def seeds_needed(
    gap: float, spread: float, alpha: float, power: float, minimum: int = 2
) -> int | None:
    """The smallest number of pairs (at least ``minimum``) at which a true mean difference
    ``gap`` with differences of std ``spread`` is detected with ``power``; None when there
    is no gap to detect, or more than ``MAX_SEEDS`` would be needed."""
    if gap == 0:
        return None
    if spread == 0:
        return minimum
    effect = abs(gap) / spread
    if effect * math.sqrt(minimum) > 1e3:  # certain detection (and past scipy's range)
        return minimum
    low = minimum
    if paired_power(effect, low, alpha) >= power:
        return low
    high = min(2 * low, MAX_SEEDS)  # doubled until it reaches the power: ~log2(n) steps
    while paired_power(effect, high, alpha) < power:
        if high == MAX_SEEDS:
            return None
        low, high = high, min(2 * high, MAX_SEEDS)
    while high - low > 1:  # power grows with n: bisect on the smallest n that reaches it
        middle = (low + high) // 2
        if paired_power(effect, middle, alpha) >= power:
            high = middle
        else:
            low = middle
    return high
