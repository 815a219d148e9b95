"""The shared per-sentence scores and paired bootstrap of the UD transfer harness."""

from __future__ import annotations

import numpy as np
import pytest

from lib.core import transfer_scores as ts
from lib.core.pos_transfer import IGNORE, TransferData


def toy() -> tuple[dict, TransferData]:
    rng = np.random.default_rng(0)
    test = {
        lang: [([0] * (k + 3), [IGNORE] + [1] * (k + 1) + [IGNORE]) for k in range(12)]
        for lang in ("en", "de", "hi")
    }
    d = TransferData([], [], test, [], {})
    runs = {
        (arm, seed): {"test": {lang: rng.integers(0, 3, 12).astype(float) for lang in test}}
        for arm in ("a", "b")
        for seed in (0, 1, 2)
    }
    return runs, d


def test_accuracy_is_tags_right_over_words():
    runs, d = toy()
    sc = ts.Scores.from_runs(runs, d)
    acc = sc.accuracy()
    assert acc.shape == (1, 3, 2, 3)
    w = ts.words(d.test["de"]).sum()
    assert acc[0, 1, 0, 1] == pytest.approx(runs[("a", 1)]["test"]["de"].sum() / w)


def test_paired_bootstrap_gives_zero_gain_of_an_arm_over_itself_and_brackets_the_point():
    runs, d = toy()
    sc = ts.Scores.from_runs(runs, d)
    point, boot = sc.accuracy(), sc.bootstrap(n_boot=300, seed=1)
    assert boot.shape == (300, 3, 2, 3)
    assert np.all(ts.gains(boot, sc, "a", "a") == 0)
    e = ts.zs_gain(sc, point, boot, "b", "a")
    en = ts.en_gain(sc, point, boot, "b", "a")
    g = ts.gains(point, sc, "b", "a")[0]
    assert e.value == pytest.approx(g[1:].mean()) and en.value == pytest.approx(g[0])
    assert e.ci[0] <= e.ci[1] and en.ci[0] <= en.ci[1] and e.n_seeds == 3
