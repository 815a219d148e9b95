"""The statistics behind the chapter's findings, on constructed per-sentence scores whose
answers are known: relative drops, the gap and its slope, paired intervals, the language
heterogeneity test, collapse detection, and that every declared finding gets an estimate."""

import numpy as np
import pandas as pd
import pytest

from lib.book import profiles
from lib.chapters.pruning_zero_shot import study as ps

ARMS = [("plain", 0.0), ("plain", 0.5), ("plain", 0.9), ("cos", 0.5), ("frob", 0.5)]
LANGS = ["en", "de", "hi", "zh"]


def scores(acc: dict, n: int = 40, seeds: int = 3, words: int = 10, rng=None) -> ps.Scores:
    """Scores whose accuracy is exactly ``acc[(arm, sparsity)][lang]`` in every seed (each
    sentence has ``words`` words; ``rng`` given: correct counts drawn binomially instead)."""
    correct = {}
    for j, lang in enumerate(LANGS):
        a = np.array([[acc[arm][j]] * n for arm in ARMS])  # arms x sentences
        if rng is None:
            c = np.broadcast_to(a * words, (seeds, *a.shape))
        else:
            c = rng.binomial(words, np.broadcast_to(a, (seeds, *a.shape)))
        correct[lang] = np.asarray(c, dtype=float)
    wd = {lang: np.full(n, words) for lang in LANGS}
    ret = {arm: np.ones((seeds, n)) * (0.8 if arm[1] == 0 else 0.6) for arm in ARMS}
    return ps.Scores(ARMS, list(range(seeds)), LANGS, correct, wd, ret)


BASE = {
    ("plain", 0.0): [0.9, 0.8, 0.6, 0.5],
    ("plain", 0.5): [0.9, 0.6, 0.45, 0.375],  # zero-shot -25 %, English 0
    ("plain", 0.9): [0.45, 0.2, 0.15, 0.125],  # English -50 %, zero-shot -75 %
    ("cos", 0.5): [0.9, 0.6, 0.45, 0.375],
    ("frob", 0.5): [0.9, 0.7, 0.525, 0.4375],  # zero-shot -12.5 %
}


def test_drops_gap_and_slope_on_known_accuracies():
    sc = scores(BASE)
    point = sc.accuracy()
    assert point.shape == (1, 3, len(ARMS), len(LANGS))
    assert ps.gap(point, sc)[0].tolist() == pytest.approx([0.0, 25.0, 25.0, 25.0, 12.5])
    assert ps.zs_drop(point, sc)[0, sc.arm("frob", 0.5)] == pytest.approx(12.5)
    assert ps.en_drop_points(point, sc)[0, sc.arm("plain", 0.9)] == pytest.approx(45.0)
    # gap 0, 25, 25 at sparsity 0, 5, 9 (tens of points): least-squares slope by hand
    x, y = np.array([0.0, 5.0, 9.0]), np.array([0.0, 25.0, 25.0])
    assert ps.gap_slope(point, sc)[0] == pytest.approx(np.polyfit(x, y, 1)[0])


def test_exact_scores_give_degenerate_intervals_and_paired_differences_cancel():
    sc = scores(BASE)
    point, boot = sc.accuracy(), sc.bootstrap(n_boot=200)
    est, why = ps.key_findings(sc, point, boot, 0.5)
    assert est["zs_minus_en_drop_at_key"].ci == pytest.approx((25.0, 25.0))
    assert est["cos_reduces_zs_drop"].value == 0.0 and est["cos_reduces_zs_drop"].ci == (0.0, 0.0)
    assert est["frob_reduces_zs_drop"].value == pytest.approx(12.5)
    assert est["retrieval_change_at_key"].value == pytest.approx(-20.0)
    assert all(e.n_seeds == 3 for e in est.values())


def test_paired_bootstrap_is_narrower_than_the_noise_of_either_arm():
    rng = np.random.default_rng(1)
    sc = scores(BASE, rng=rng)
    point, boot = sc.accuracy(), sc.bootstrap(n_boot=400)
    e = ps.english_lost(sc, point, boot, 0.9)
    assert e.ci[0] < e.value < e.ci[1] and 40 < e.value < 50
    # cos equals plain in expectation, drawn independently: interval covers 0
    r = ps.key_findings(sc, point, boot, 0.5)[0]["cos_reduces_zs_drop"]
    assert r.ci[0] < 0 < r.ci[1]


def test_every_declared_finding_gets_an_estimate():
    sc = scores(BASE, rng=np.random.default_rng(0))
    est, why = ps.key_findings(sc, sc.accuracy(), sc.bootstrap(n_boot=100), 0.5)
    declared = profiles.get("pruning_zero_shot").records["findings"]
    assert set(est) == set(declared) and set(why) == set(declared)
    assert all(np.isfinite(e.value) for e in est.values())


def test_heterogeneity_detects_a_language_effect_and_not_noise():
    rng = np.random.default_rng(0)
    se = np.ones(6)
    noise_boot = rng.normal(0, 1, size=(4000, 6))
    different, _ = ps.heterogeneity(np.array([0.0, 0, 0, 10, 10, 10]), noise_boot)
    assert different.ci[0] > 1  # Q = 150 against 5 degrees of freedom
    same_h, p = [], []
    for _ in range(200):  # no language effect: H near 1, the test rejects about 5 % of the time
        h, pv = ps.heterogeneity(rng.normal(0, se), noise_boot)
        same_h.append(h.ci[0] > 1)
        p.append(pv)
    assert np.mean(same_h) < 0.12 and 0.3 < np.median(p) < 0.7
    two, _ = ps.heterogeneity(np.array([0.0, 3.0]), noise_boot[:, :2])
    assert two.ci is None and two.value == pytest.approx(3 / np.sqrt(2), rel=0.05)


def test_collapse_means_every_language_nearer_its_floor_than_its_dense_accuracy():
    sc = scores(BASE)
    floor = pd.Series([0.2, 0.2, 0.2, 0.2], index=LANGS)
    # at 90 %: en 0.45 < (0.9 + 0.2) / 2, de 0.2 < 0.5, hi 0.15 < 0.4, zh 0.125 < 0.35
    assert ps.collapsed_levels(sc.accuracy(), sc, floor) == [0.9]
    assert ps.is_collapsed(0.9, [0.9]) and not ps.is_collapsed(0.5, [0.9])
    high_floor_en = pd.Series([0.0, 0.2, 0.2, 0.2], index=LANGS)  # en 0.45 = (0.9 + 0) / 2
    assert ps.collapsed_levels(sc.accuracy(), sc, high_floor_en) == []


def test_design_and_bookkeeping_checks():
    ps.check_design([0.0, 0.5], 0.5, [0.5])
    with pytest.raises(ValueError, match="0.0"):
        ps.check_design([0.3, 0.5], 0.5, [0.5])
    with pytest.raises(ValueError, match="reg_sparsities"):
        ps.check_design([0.0, 0.5], 0.5, [0.7])
    res = pd.DataFrame(
        {
            "arm": ["plain", "plain", "cos"],
            "sparsity": [0.0, 0.7, 0.7],
            "measured_sparsity": [0.0, 0.70002, 0.7],
            "reg_at_start": [0.0, 0.0, -3e-7],
        }
    )
    assert ps.sparsity_error(res) == pytest.approx(2e-5)
    assert ps.reg_at_start(res) == pytest.approx(3e-7)
    table = pd.DataFrame({"majority": [0.2, 0.3], "word_lookup": [0.5, 0.6]}, index=["de", "hi"])
    assert (
        ps.share_beating_baselines(table, pd.Series({"de": 0.7, "hi": 0.55}), ["de", "hi"]) == 0.5
    )


def test_prose_reads_adequacy_and_verdicts_from_the_records():
    from lib.book.records import Records
    from lib.book.stats import Estimate

    records = Records(profiles.get("pruning_zero_shot").records, "book")
    records.adequacy("english_close_at_key", 17.6)  # the last book run's English loss at 70 %
    assert ps.adequacy_text(records, "english_close_at_key") == "not met (<= 2 points)"
    records.finding("gap_slope", Estimate(1.0, (0.5, 1.5), 3, "test"))
    assert ps.verdicts(records, ["gap_slope"]) == {"gap_slope": "inconclusive"}
    assert records.findings[0]["why"].startswith("budget")
