"""Intervals that mean what they say: coverage on simulated data, pairing, known values."""

import numpy as np
import pytest
from scipy import stats as st

from lib.book import stats


def test_t_interval_matches_scipy():
    x = [0.81, 0.84, 0.79]
    est = stats.t_interval(x)
    lo, hi = st.t.interval(0.95, 2, loc=np.mean(x), scale=st.sem(x))
    assert est.value == pytest.approx(np.mean(x)) and est.ci == pytest.approx((lo, hi))
    assert stats.t_interval([0.5]).ci is None


def test_item_bootstrap_covers_the_true_accuracy_at_least_95_percent_of_the_time():
    """Two-level resampling is conservative (never anti-conservative), and not absurdly wide."""
    rng = np.random.default_rng(1)
    hits, widths = 0, []
    for trial in range(200):
        scores = rng.random((3, 400)) < 0.8
        lo, hi = stats.bootstrap_items(scores, n_boot=400, seed=trial).ci
        hits += lo <= 0.8 <= hi
        widths.append(hi - lo)
    binomial = 2 * 1.96 * np.sqrt(0.8 * 0.2 / 1200)
    assert hits / 200 >= 0.93
    assert np.mean(widths) < 2 * binomial


def test_pairing_narrows_the_interval_of_a_difference():
    rng = np.random.default_rng(2)
    base = rng.random((3, 2000)) < 0.85
    flip = rng.random((3, 2000)) < 0.03
    other = base ^ flip  # the same items, mostly the same answers
    paired = stats.bootstrap_items(base, other)
    lo_b, hi_b = stats.bootstrap_items(base).ci
    lo_o, hi_o = stats.bootstrap_items(other).ci
    assert paired.ci[1] - paired.ci[0] < 0.5 * ((hi_b - lo_b) + (hi_o - lo_o))
    assert paired.value == pytest.approx(base.mean() - other.mean())


def test_group_bootstrap_is_wider_when_items_within_a_group_agree():
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(100), 20)
    sentence_level = np.repeat(rng.random((1, 100)) < 0.7, 20, axis=1)  # whole sentences right
    grouped = stats.bootstrap_groups(sentence_level, groups)
    naive = stats.bootstrap_items(sentence_level)
    assert grouped.value == pytest.approx(sentence_level.mean())
    assert (grouped.ci[1] - grouped.ci[0]) > 2 * (naive.ci[1] - naive.ci[0])


def test_mcnemar_known_values():
    a = np.array([1] * 10 + [0] * 0 + [1] * 50, bool)
    b = np.array([0] * 10 + [1] * 0 + [1] * 50, bool)
    assert stats.mcnemar(a, b) == pytest.approx(2 * 0.5**10)
    assert stats.mcnemar(a, a) == 1.0


def test_statistic_bootstrap_and_spread():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(60, 2))
    x[:, 1] += 2 * x[:, 0]
    est = stats.bootstrap_statistic(x, lambda r: st.spearmanr(r[:, 0], r[:, 1])[0])
    assert est.ci[0] > 0.5
    spread = stats.seed_spread([1.0, 2.0, 3.0])
    assert spread["sd"] == pytest.approx(1.0) and spread["min"] == 1.0 and spread["n"] == 3
