"""The study's statistics on synthetic data where the truth is known."""
import numpy as np
import pytest

from sss.eval.statistics import (Interval, average_ranks, compare_paired, format_cell, hierarchical_bootstrap,
                             paired_bootstrap, sign_flip_test, spearman, spearman_bootstrap, unpaired_bootstrap)


def _correlated_pair(rng, n=50, shift=0.0):
    """Per-request difficulty shared by both arms (strong positive correlation), plus a true shift."""
    difficulty = rng.normal(0.0, 1.0, n)
    without = difficulty + rng.normal(0.0, 0.3, n)
    return without + shift + rng.normal(0.0, 0.3, n), without


def test_paired_interval_covers_the_true_difference_at_its_nominal_rate():
    rng = np.random.default_rng(123)
    replications, shift = 400, 0.2
    covered = 0
    for r in range(replications):
        with_sss, without = _correlated_pair(rng, shift=shift)
        covered += paired_bootstrap(with_sss, without, resamples=2000, seed=r).covers(shift)
    assert 0.93 <= covered / replications <= 0.97


def test_pairing_narrows_the_interval_on_correlated_data():
    with_sss, without = _correlated_pair(np.random.default_rng(0), n=200, shift=0.1)
    paired = paired_bootstrap(with_sss, without, resamples=2000)
    unpaired = unpaired_bootstrap(with_sss, without, resamples=2000)
    assert paired.estimate == pytest.approx(unpaired.estimate)
    assert paired.width < 0.5 * unpaired.width


def test_sign_flip_p_value_detects_a_shift_and_is_calibrated_under_the_null():
    rng = np.random.default_rng(7)
    with_sss, without = _correlated_pair(rng, shift=0.3)
    assert sign_flip_test(with_sss, without, permutations=2000) < 0.01

    replications = 300
    rejections = sum(sign_flip_test(*_correlated_pair(rng), permutations=500, seed=r) < 0.05
                     for r in range(replications))
    assert 0.02 <= rejections / replications <= 0.09


def test_an_exact_small_case_of_the_sign_flip_test():
    # differences (1, 1, 1): of the 8 sign patterns only the 2 all-equal ones reach |mean| = 1
    p = sign_flip_test([1.0, 1.0, 1.0], [0.0, 0.0, 0.0], permutations=20_000, seed=0)
    assert p == pytest.approx(2 / 8, abs=0.01)


def test_two_level_bootstrap_widens_when_seeds_differ_systematically():
    rng = np.random.default_rng(3)
    seed_effects = [-0.5, 0.0, 0.6]
    withs, withouts = [], []
    for effect in seed_effects:
        with_sss, without = _correlated_pair(rng, n=60, shift=0.1 + effect)
        withs.append(with_sss)
        withouts.append(without)
    two_level = hierarchical_bootstrap(withs, withouts, resamples=2000)
    pooled = paired_bootstrap(np.concatenate(withs), np.concatenate(withouts), resamples=2000)
    assert two_level.estimate == pytest.approx(np.mean([(a - b).mean() for a, b in zip(withs, withouts)]))
    assert two_level.width > 2 * pooled.width


def test_same_seed_same_results_and_another_seed_differs():
    with_sss, without = _correlated_pair(np.random.default_rng(1))
    assert compare_paired(with_sss, without, resamples=2000, seed=5) == compare_paired(
        with_sss, without, resamples=2000, seed=5)
    assert paired_bootstrap(with_sss, without, resamples=2000, seed=5) != paired_bootstrap(
        with_sss, without, resamples=2000, seed=6)
    assert compare_paired(with_sss, without, resamples=50).difference.resamples == 50
    assert paired_bootstrap(with_sss, without).resamples >= 10_000  # the library default


def test_spearman_uses_average_ranks_for_ties():
    x = [10, 20, 20, 30, 40]
    y = [1, 3, 2, 2, 5]
    np.testing.assert_array_equal(average_ranks(x), [1, 2.5, 2.5, 4, 5])
    np.testing.assert_array_equal(average_ranks(y), [1, 4, 2.5, 2.5, 5])
    # by hand: rank deviations (-2, -.5, -.5, 1, 2) and (-2, 1, -.5, -.5, 2): 7.25 / sqrt(9.5 * 9.5)
    assert spearman(x, y) == pytest.approx(7.25 / 9.5)
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 40), rng.normal(size=40)
    assert spearman(a, b) == pytest.approx(np.corrcoef(average_ranks(a), average_ranks(b))[0, 1])
    assert spearman(np.exp(b), b ** 3) == pytest.approx(1.0)  # invariant to monotone maps


def test_spearman_interval_covers_a_known_monotone_dependence():
    rng = np.random.default_rng(4)
    x = rng.normal(size=300)
    y = x + rng.normal(size=300)
    result = spearman_bootstrap(np.exp(x), y, resamples=500)
    true_rho = 6 / np.pi * np.arcsin(np.corrcoef(x, y)[0, 1] / 2)  # Gaussian copula, sample-based r
    assert result.interval.covers(true_rho) and result.interval.width < 0.25


def test_format_cell_reads_like_the_tables():
    assert format_cell(0.705, Interval(0.006, -0.012, 0.024)) == "70.5 (\u0394 +0.6 [\u22121.2, +2.4])"
    assert format_cell(0.705) == "70.5"


@pytest.mark.parametrize("call, message", [
    (lambda: paired_bootstrap([1, 2], [1]), "same requests"),
    (lambda: paired_bootstrap([], []), "non-empty"),
    (lambda: paired_bootstrap([1, float("nan")], [1, 2]), "NaN"),
    (lambda: paired_bootstrap([1, 2], [1, 2], resamples=0), "resamples"),
    (lambda: hierarchical_bootstrap([[1, 2]], []), "number of seeds"),
])
def test_bad_input_is_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()
