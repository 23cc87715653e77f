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
from scipy import special

MAX_SEEDS = 10**9  # seeds_needed searches up to here; beyond it the gap is unresolvable
# A spread of paired differences below this (in points) is float round-off of equal
# differences (values are percent of float scores), and counts as no spread.
ROUND_OFF = 1e-9


def paired_power(effect: float, n, alpha: float):
    """Power of the two-sided paired t-test at level ``alpha`` with ``n`` >= 2 pairs for a
    true mean difference of ``effect`` standard deviations of the differences; ``n`` may be
    an array of pair counts (one scipy call for all, the same values as one call each)."""
    df = np.asarray(n, dtype=float) - 1
    critical = special.stdtrit(df, 1 - alpha / 2)  # scipy.stats.t.ppf
    noncentrality = effect * np.sqrt(df + 1)
    upper = _nct_sf(critical, df, noncentrality)
    # P(t < -critical), written as the upper tail at -noncentrality: scipy's cdf there gives
    # NaN where the tail underflows, its sf gives 0
    lower = _nct_sf(critical, df, -noncentrality)
    power = upper + lower
    return float(power) if np.ndim(power) == 0 else power


def _nct_sf(x, df, noncentrality):
    """``scipy.stats.nct.sf``: its own kernel, scipy.special's ``_nct_sf`` (the same numbers
    without importing scipy.stats, most of a second), or scipy.stats where scipy lacks it."""
    try:
        from scipy.special._ufuncs import _nct_sf as kernel
    except ImportError:  # another scipy: the public, slower way to the same function
        from scipy import stats

        return stats.nct.sf(x, df, noncentrality)
    with np.errstate(over="ignore"):
        return np.clip(kernel(x, df, noncentrality), 0, 1)


@lru_cache(maxsize=256)
def detectable_effect(n: int, alpha: float, power: float) -> float:
    """The standardised difference detected with ``power`` by the test with ``n`` >= 2 pairs
    (the root of :func:`paired_power` - ``power``; the power grows with the effect)."""
    if n < 2:
        raise ValueError(f"a paired t-test needs at least 2 pairs, got {n}")
    low, high = 0.0, 1.0
    while paired_power(high, n, alpha) < power:
        low, high = high, 2 * high
    while high - low > EFFECT_TOLERANCE:  # bisection
        middle = (low + high) / 2
        if paired_power(middle, n, alpha) < power:
            low = middle
        else:
            high = middle
    return (low + high) / 2


EFFECT_TOLERANCE = 1e-12  # detectable_effect's root, in standard deviations


def without_round_off(value: float) -> float:
    """``value`` (a mean or a std of paired differences, in points), 0 when its size is
    below ``ROUND_OFF``: float round-off of equal values."""
    return 0.0 if abs(value) < ROUND_OFF else value


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
    if effect * math.sqrt(minimum) > CERTAIN:  # certain detection (and past scipy's range)
        return minimum
    if paired_power(effect, minimum, alpha) >= power:
        return minimum
    # doubled until it reaches the power (~log2(n) candidates, evaluated together), then the
    # smallest n between the last two: power grows with n
    highs, high = [], minimum
    while high < MAX_SEEDS:
        high = min(2 * high, MAX_SEEDS)
        highs.append(high)
    reached = np.flatnonzero(_powers(effect, np.array(highs), alpha) >= power)
    if not reached.size:
        return None
    k = int(reached[0])
    return _first_reaching(effect, highs[k - 1] if k else minimum, highs[k], alpha, power)


def seeds_needed_many(
    gaps: list[float], spreads: list[float], alpha: float, power: float, minimum: int = 2
) -> list[int | None]:
    """:func:`seeds_needed` of each (gap, spread) pair, the same numbers with far fewer
    scipy calls (a table has hundreds of cells): the normal approximation with Guenther's
    correction for the t test (n + z_{1-alpha/2}^2 / 2; Guenther 1981, "Sample size formulas
    for normal theory t tests", The American Statistician 35(4)) guesses each n; the exact
    power is evaluated for a window of n around every guess, all in one call, and a window
    that shows where the power first reaches ``power`` (or that starts at ``minimum``)
    gives the answer. ``WINDOWS`` are tried in turn on the pairs not yet answered, the
    narrowest first; the rest are searched one by one."""
    answers: list[int | None] = [None] * len(gaps)
    guesses = {}  # pair index -> (effect, guessed n)
    z_alpha = special.ndtri(1 - alpha / 2)  # scipy.stats.norm.ppf
    z, correction = z_alpha + special.ndtri(power), z_alpha**2 / 2
    for k, (gap, spread) in enumerate(zip(gaps, spreads, strict=True)):
        effect = abs(gap) / spread if gap != 0 and spread != 0 else 0.0
        guess = (z / effect) ** 2 + correction if effect else 0.0
        if not effect or effect * math.sqrt(minimum) > CERTAIN or guess > MAX_SEEDS / 2:
            answers[k] = seeds_needed(gap, spread, alpha, power, minimum)  # no search
        else:
            guesses[k] = (effect, int(guess))
    for below, above in WINDOWS:
        if not guesses:
            break
        found = _answers_in_windows(guesses, below, above, alpha, power, minimum)
        for k, n in found.items():
            answers[k] = n
            del guesses[k]
    for k in guesses:  # every window missed: the search
        answers[k] = seeds_needed(gaps[k], spreads[k], alpha, power, minimum)
    return answers


def _answers_in_windows(
    guesses: dict[int, tuple[float, int]], below: int, above: int, alpha, power, minimum
) -> dict[int, int]:
    """Pair index -> the smallest n reaching ``power``, for the pairs whose window of n
    (``below`` under to ``above`` over its guess, at least ``minimum``) shows it."""
    windows = {}
    for k, (_, n) in guesses.items():
        low = max(minimum, n - below)
        windows[k] = np.arange(low, max(low, n + above) + 1)
    effects = np.concatenate([np.full(len(windows[k]), e) for k, (e, _) in guesses.items()])
    counts = np.concatenate(list(windows.values()))
    powers = np.ones(len(counts))
    uncertain = effects * np.sqrt(counts) <= CERTAIN
    powers[uncertain] = paired_power(effects[uncertain], counts[uncertain], alpha)
    found, start = {}, 0
    for k, n in windows.items():
        reached = powers[start : start + len(n)] >= power
        start += len(n)
        first = int(np.argmax(reached))
        if reached.any() and (first > 0 or n[0] == minimum):
            found[k] = int(n[first])
    return found


# seeds_needed_many's windows around the corrected normal approximation's n, (below,
# above) its integer part, tried in turn: the exact n is that part + 1 for 9 in 10 effects
# from 0.02 to 3 and 0-2 above it for the rest; past a million pairs it falls a few below
# (a window checks where the exact power crosses; a miss is searched)
WINDOWS = ((0, 1), (3, 4))
CERTAIN = 1e3  # a noncentrality past this is detected with power 1 at any level we use
SEARCH_POINTS = 256  # pair counts evaluated per step of the search between two bounds


def _powers(effect: float, n: np.ndarray, alpha: float) -> np.ndarray:
    """:func:`paired_power` at each of ``n``; 1 where detection is certain (not evaluated)."""
    certain = effect * np.sqrt(n) > CERTAIN
    powers = np.ones(len(n))
    if (~certain).any():
        powers[~certain] = paired_power(effect, n[~certain], alpha)
    return powers


def _first_reaching(effect: float, low: int, high: int, alpha: float, power: float) -> int:
    """The smallest n in (``low``, ``high``] whose power reaches ``power`` (``low``'s does
    not, ``high``'s does): up to ``SEARCH_POINTS`` evenly spaced candidates per step."""
    while high - low > 1:
        candidates = np.unique(np.linspace(low + 1, high - 1, SEARCH_POINTS).astype(np.int64))
        reached = _powers(effect, candidates, alpha) >= power
        first = int(np.argmax(reached)) if reached.any() else len(candidates)
        high = int(candidates[first]) if first < len(candidates) else high
        low = int(candidates[first - 1]) if first > 0 else low
    return high
