"""Paired statistics of a metric with and without SSS (or any two settings), on the same requests.

Everything is numpy and seeded (``numpy.random.Generator``), so a table is reproducible.

* :func:`paired_bootstrap` — mean of per-request differences, 95% percentile interval.
* :func:`sign_flip_test` — two-sided paired permutation p-value (flip the sign of each difference).
* :func:`compare_paired` — both at once, as the study's tables use them.
* :func:`unpaired_bootstrap` — the same difference ignoring the pairing (for comparison only).
* :func:`hierarchical_bootstrap` — several training seeds: resample seeds, then requests in each.
* :func:`spearman`, :func:`spearman_bootstrap` — rank correlation (average ranks for ties) and its CI.
* :func:`format_cell` — ``70.5 (Δ +0.6 [−1.2, +2.4])``.

Percentile intervals (not BCa): the metrics are means of 0/1 or [0, 1] scores over tens to
hundreds of requests, where the percentile interval's coverage is already close to nominal
(tests/test_study_stats.py checks it); BCa's jackknife would cost more and be harder to audit.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

DEFAULT_RESAMPLES = 10_000
_CHUNK = 1_000  # resamples drawn at a time, so memory stays ~_CHUNK * n indices


@dataclass(frozen=True)
class Interval:
    """A point estimate with a confidence interval ``[low, high]`` at ``level``."""

    estimate: float
    low: float
    high: float
    level: float = 0.95
    resamples: int = DEFAULT_RESAMPLES

    @property
    def width(self) -> float:
        return self.high - self.low

    def covers(self, value: float) -> bool:
        return self.low <= value <= self.high


@dataclass(frozen=True)
class PairedComparison:
    """``mean(with) - mean(without)`` on ``n`` shared requests: its interval and a paired p-value."""

    with_mean: float
    without_mean: float
    difference: Interval
    p_value: float
    n: int


@dataclass(frozen=True)
class Correlation:
    rho: float
    interval: Interval
    n: int


def _vector(values, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of numbers, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def _pair(with_sss, without_sss):
    a, b = _vector(with_sss, "with_sss"), _vector(without_sss, "without_sss")
    if a.shape != b.shape:
        raise ValueError(f"with_sss and without_sss must score the same requests: {a.size} vs {b.size} values")
    return a, b


def _check(resamples: int, level: float) -> None:
    if not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"resamples must be a positive int, got {resamples!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")


def _bootstrap_means(values: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``resamples`` resamples (with replacement) of ``values``."""
    out = np.empty(resamples)
    for start in range(0, resamples, _CHUNK):
        size = min(_CHUNK, resamples - start)
        out[start:start + size] = values[rng.integers(0, values.size, (size, values.size))].mean(1)
    return out


def _percentile_interval(estimate: float, replicates: np.ndarray, level: float) -> Interval:
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(replicates, [tail, 1.0 - tail])
    return Interval(float(estimate), float(low), float(high), level, replicates.size)


def paired_bootstrap(with_sss, without_sss, *, resamples: int = DEFAULT_RESAMPLES, level: float = 0.95,
                     seed: int = 0) -> Interval:
    """Percentile interval of the mean per-request difference ``with - without`` (requests resampled)."""
    _check(resamples, level)
    a, b = _pair(with_sss, without_sss)
    differences = a - b
    replicates = _bootstrap_means(differences, resamples, np.random.default_rng(seed))
    return _percentile_interval(differences.mean(), replicates, level)


def mean_interval(values, *, resamples: int = DEFAULT_RESAMPLES, level: float = 0.95, seed: int = 0) -> Interval:
    """The mean of ``values`` with its percentile bootstrap interval (one setting's error bar)."""
    _check(resamples, level)
    values = _vector(values, "values")
    rng = np.random.default_rng(seed)
    return _percentile_interval(float(values.mean()), _bootstrap_means(values, resamples, rng), level)


def unpaired_bootstrap(with_sss, without_sss, *, resamples: int = DEFAULT_RESAMPLES, level: float = 0.95,
                       seed: int = 0) -> Interval:
    """The same difference of means with the two groups resampled independently (ignores the pairing)."""
    _check(resamples, level)
    a, b = _vector(with_sss, "with_sss"), _vector(without_sss, "without_sss")
    rng = np.random.default_rng(seed)
    replicates = _bootstrap_means(a, resamples, rng) - _bootstrap_means(b, resamples, rng)
    return _percentile_interval(a.mean() - b.mean(), replicates, level)


def sign_flip_test(with_sss, without_sss, *, permutations: int = DEFAULT_RESAMPLES, seed: int = 0) -> float:
    """Two-sided p-value of "no difference" by flipping the sign of each paired difference at random.

    Under the null each difference is as likely to be ``+d`` as ``-d``; the p-value counts the
    random flips whose mean is at least as far from 0 as the observed one, plus the observed
    itself (so it is never 0): ``(1 + hits) / (1 + permutations)``.
    """
    _check(permutations, 0.5)
    a, b = _pair(with_sss, without_sss)
    differences = a - b
    observed = abs(differences.mean())
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, permutations, _CHUNK):
        size = min(_CHUNK, permutations - start)
        signs = rng.choice(np.array([-1.0, 1.0]), size=(size, differences.size))
        # a relative tolerance keeps ties (e.g. all-equal |d|) counted despite rounding
        hits += int((np.abs((signs * differences).mean(1)) >= observed * (1 - 1e-12)).sum())
    return (1 + hits) / (1 + permutations)


def compare_paired(with_sss, without_sss, *, resamples: int = DEFAULT_RESAMPLES, level: float = 0.95,
                   seed: int = 0) -> PairedComparison:
    """The paired bootstrap interval and the sign-flip p-value of one metric, as the tables show them."""
    a, b = _pair(with_sss, without_sss)
    return PairedComparison(
        with_mean=float(a.mean()), without_mean=float(b.mean()),
        difference=paired_bootstrap(a, b, resamples=resamples, level=level, seed=seed),
        p_value=sign_flip_test(a, b, permutations=resamples, seed=seed + 1), n=a.size)


def hierarchical_bootstrap(with_by_seed: Sequence, without_by_seed: Sequence, *,
                           resamples: int = DEFAULT_RESAMPLES, level: float = 0.95, seed: int = 0) -> Interval:
    """Two-level bootstrap for several training seeds: resample seeds, then requests within each.

    ``with_by_seed[s]`` and ``without_by_seed[s]`` are the per-request scores of training seed ``s``
    (paired within a seed; seeds may score different numbers of requests). The estimate is the
    mean over seeds of each seed's mean difference, so every seed weighs the same.
    """
    _check(resamples, level)
    if len(with_by_seed) != len(without_by_seed) or len(with_by_seed) == 0:
        raise ValueError(f"need the same non-zero number of seeds on both sides, got "
                         f"{len(with_by_seed)} and {len(without_by_seed)}")
    differences = [np.subtract(*_pair(a, b)) for a, b in zip(with_by_seed, without_by_seed)]
    rng = np.random.default_rng(seed)
    n_seeds = len(differences)
    # per seed, `resamples` request-level means; then each replicate averages the seeds it drew
    within = np.stack([_bootstrap_means(d, resamples, rng) for d in differences])  # [S, R]
    chosen = rng.integers(0, n_seeds, (resamples, n_seeds))  # [R, S]
    replicates = within[chosen, np.arange(resamples)[:, None]].mean(1)
    estimate = float(np.mean([d.mean() for d in differences]))
    return _percentile_interval(estimate, replicates, level)


def average_ranks(values) -> np.ndarray:
    """Ranks 1..n, tied values sharing the mean of the ranks they span."""
    x = _vector(values, "values")
    _, group, counts = np.unique(x, return_inverse=True, return_counts=True)
    first_rank = np.cumsum(counts) - counts + 1  # the rank of each distinct value's first copy
    return (first_rank + (counts - 1) / 2.0)[group.reshape(-1)]


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denominator) if denominator > 0 else float("nan")


def spearman(x, y) -> float:
    """Spearman's rho: Pearson's correlation of the average ranks (NaN when one side is constant)."""
    a, b = _vector(x, "x"), _vector(y, "y")
    if a.shape != b.shape:
        raise ValueError(f"x and y must have the same length: {a.size} vs {b.size}")
    return _pearson(average_ranks(a), average_ranks(b))


def spearman_bootstrap(x, y, *, resamples: int = DEFAULT_RESAMPLES, level: float = 0.95,
                       seed: int = 0) -> Correlation:
    """Spearman's rho with a percentile interval from resampling (x, y) pairs."""
    _check(resamples, level)
    a, b = _vector(x, "x"), _vector(y, "y")
    rho = spearman(a, b)
    rng = np.random.default_rng(seed)
    replicates = np.empty(resamples)
    for r in range(resamples):
        rows = rng.integers(0, a.size, a.size)
        replicates[r] = spearman(a[rows], b[rows])
    replicates = replicates[np.isfinite(replicates)]  # a resample of all-equal values has no rho
    if replicates.size == 0:
        raise ValueError("every resample had a constant side; rho is undefined")
    return Correlation(rho, _percentile_interval(rho, replicates, level), a.size)


def _signed(value: float) -> str:
    return f"{value:+.1f}".replace("-", "\u2212")


def format_difference(difference: Interval, *, percent: bool = True, p_value: Optional[float] = None) -> str:
    """``Δ +0.6 [−1.2, +2.4]`` (and ``, p 0.43`` when given): a difference with its interval."""
    scale = 100.0 if percent else 1.0
    text = (f"\u0394 {_signed(difference.estimate * scale)} "
            f"[{_signed(difference.low * scale)}, {_signed(difference.high * scale)}]")
    return text if p_value is None else f"{text}, p {p_value:.2f}"


def format_cell(value: float, difference: Optional[Interval] = None, *, percent: bool = True,
                p_value: Optional[float] = None) -> str:
    """``70.5 (Δ +0.6 [−1.2, +2.4])``: the metric and, when given, its difference and interval.

    ``percent``: the inputs are fractions in [0, 1] and are shown times 100, one decimal.
    """
    scale = 100.0 if percent else 1.0
    text = f"{value * scale:.1f}".replace("-", "\u2212")
    if difference is None:
        return text
    return f"{text} ({format_difference(difference, percent=percent, p_value=p_value)})"
