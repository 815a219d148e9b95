"""GradDrop's masking hooks, its optimizer and the chapter's statistics, on cases whose answers
are known: the drop rate against the binomial law, rescaling against the expected gradient,
masked entries that must not move (frozen reading) or must (decay reading), whole layers
dropped, gradual unfreezing at its declared steps, no full-size allocation in a masking step,
the training loop against the shared harness, and the paired gains and rank correlation."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from lib.book import profiles
from lib.chapters.graddrop import masking, resources
from lib.chapters.graddrop import study as gs
from lib.core import pos_transfer
from lib.core import transfer_scores as ts
from lib.core.pos_transfer import Tagger, TrainConfig, train_tagger, trainable_state


def params_with_grads(shapes, seed=0, fill=None):
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in shapes:
        w = torch.nn.Parameter(torch.randn(*s, generator=g))
        w.grad = torch.full(s, fill) if fill is not None else torch.randn(*s, generator=g)
        out.append(w)
    return out


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_elementwise_mask_drops_a_fraction_p_within_the_binomial_bound(p):
    ws = params_with_grads([(200, 300), (300,), (50, 40)], fill=1.0)
    hook = masking.ElementwiseDrop(ws, p, rescale=False, generator=torch.Generator().manual_seed(1))
    hook(None, 0)
    n = sum(w.numel() for w in ws)
    dropped = sum(int((w.grad == 0).sum()) for w in ws)
    assert abs(dropped - n * p) <= 5 * math.sqrt(n * p * (1 - p))
    assert hook.drop_fraction() == pytest.approx(dropped / n)
    assert abs(hook.drop_z()) <= 5
    assert all(torch.all((w.grad == 0) | (w.grad == 1)) for w in ws)  # kept entries untouched


def test_rescaling_keeps_the_expected_gradient_and_not_rescaling_shrinks_it():
    p, draws = 0.3, 400
    for rescale, factor in ((True, 1.0), (False, 0.7)):
        (w,) = params_with_grads([(1000,)], seed=2)
        g0 = w.grad.clone()
        total = torch.zeros_like(g0)
        gen = torch.Generator().manual_seed(3)
        hook = masking.ElementwiseDrop([w], p, rescale=rescale, generator=gen)
        for t in range(draws):
            w.grad = g0.clone()
            hook(None, t)
            total += w.grad
        mean = total / draws
        # per entry: the mean of `draws` masked copies has sd |g| sqrt(p (1-p) / draws) (x 1/(1-p))
        sd = g0.abs() * math.sqrt(p * (1 - p) / draws) / (0.7 if rescale else 1.0)
        z = ((mean - factor * g0) / sd.clamp_min(1e-12)).abs()
        assert float(z.mean()) < 1.0 and float(z.max()) < 6.0


def test_scheduled_rate_anneals_to_zero():
    (w,) = params_with_grads([(100, 100)], fill=1.0)
    hook = masking.ElementwiseDrop([w], 0.5, schedule=masking.linear_anneal(10))
    assert [hook.rate(t) for t in (0, 5, 10)] == pytest.approx([0.5, 0.25, 0.0])
    hook(None, 10)
    assert torch.all(w.grad == 1.0)  # p = 0: nothing dropped


def adam_state(opt, w):
    s = opt.state[w]
    return s["exp_avg"].clone(), s["exp_avg_sq"].clone()


def test_frozen_reading_masked_weights_and_moments_do_not_move():
    ws = params_with_grads([(60, 70), (70,)], seed=4)
    opt = masking.SparseAdamW(ws, lr=1e-2, weight_decay=0.1)
    opt.step()  # a first, unmasked step: moments non-zero
    for w in ws:
        w.grad = torch.randn_like(w)
    masking.ElementwiseDrop(ws, 0.5, generator=torch.Generator().manual_seed(5))(None, 0)
    masks = [w.grad == 0 for w in ws]
    before = [(w.detach().clone(), *adam_state(opt, w)) for w in ws]
    opt.step()
    for w, m, (w0, m0, v0) in zip(ws, masks, before):
        m1, v1 = adam_state(opt, w)
        assert m.any() and (~m).any()
        for now, old in ((w.detach(), w0), (m1, m0), (v1, v0)):
            assert torch.equal(now[m], old[m])  # masked: exactly unchanged
            assert torch.all(now[~m] != old[~m])  # kept: every entry moved


def test_decay_reading_masked_weights_keep_moving():
    ws = params_with_grads([(40, 50)], seed=6)
    opt = torch.optim.AdamW(ws, lr=1e-2, weight_decay=0.1)
    opt.step()
    for w in ws:
        w.grad = torch.randn_like(w)
    masking.ElementwiseDrop(ws, 0.5, generator=torch.Generator().manual_seed(7))(None, 0)
    (w,) = ws
    m = w.grad == 0
    w0 = w.detach().clone()
    opt.step()
    assert torch.all(w.detach()[m] != w0[m])  # momentum and weight decay still move them


def test_sparse_adamw_is_adamw_when_no_gradient_entry_is_zero():
    a = params_with_grads([(30, 20), (20,)], seed=8)
    b = [torch.nn.Parameter(w.detach().clone()) for w in a]
    oa = masking.SparseAdamW(a, lr=3e-3, weight_decay=0.01)
    ob = torch.optim.AdamW(b, lr=3e-3, weight_decay=0.01, foreach=False)
    g = torch.Generator().manual_seed(9)
    for _ in range(5):
        for x, y in zip(a, b):
            x.grad = torch.randn(x.shape, generator=g)
            y.grad = x.grad.clone()
        oa.step()
        ob.step()
    for x, y in zip(a, b):
        torch.testing.assert_close(x.detach(), y.detach(), rtol=1e-6, atol=1e-7)


def test_adam_ignores_a_constant_gradient_scale_except_through_epsilon():
    a = params_with_grads([(30, 20)], seed=12)
    b = [torch.nn.Parameter(w.detach().clone()) for w in a]
    oa = masking.SparseAdamW(a, lr=3e-3, eps=0.0)
    ob = masking.SparseAdamW(b, lr=3e-3, eps=0.0)
    g = torch.Generator().manual_seed(13)
    for _ in range(4):
        a[0].grad = torch.randn(a[0].shape, generator=g)
        b[0].grad = a[0].grad / 0.7  # rescaled by 1 / (1 - p), p = 0.3
        oa.step()
        ob.step()
    torch.testing.assert_close(a[0].detach(), b[0].detach(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("state", masking.STATES)
def test_layerwise_mask_drops_whole_layers_at_rate_p(state):
    groups = [params_with_grads([(8, 8), (8,)], seed=s, fill=1.0) for s in range(6)]
    hook = masking.LayerwiseDrop(groups, 0.4, state=state, rescale=False,
                                 generator=torch.Generator().manual_seed(10))  # fmt: skip
    steps = 500
    for t in range(steps):
        for grp in groups:
            for w in grp:
                w.grad = torch.ones_like(w)
        hook(None, t)
        for i, grp in enumerate(groups):
            dropped = i in hook.dropped[-1]
            for w in grp:  # the whole layer or nothing
                if state == "frozen":
                    assert (w.grad is None) == dropped
                else:
                    assert torch.all(w.grad == (0.0 if dropped else 1.0))
    n = steps * len(groups)
    k = sum(len(x) for x in hook.dropped)
    assert abs(k - 0.4 * n) <= 5 * math.sqrt(n * 0.4 * 0.6)


def test_gradual_unfreezing_unfreezes_top_down_at_the_declared_steps():
    groups = [params_with_grads([(3, 3)], seed=s) for s in range(5)]  # 4 layers + head
    hook = masking.GradualUnfreezing(groups, steps=100)
    assert hook.unfreeze_steps() == [80, 60, 40, 20, 0]  # bottom ... top, head
    for t in range(100):
        for grp in groups:
            for w in grp:
                w.grad = torch.ones_like(w)
        hook(None, t)
        trained = [grp[0].grad is not None for grp in groups]
        assert trained == [t >= s for s in (80, 60, 40, 20, 0)]
    assert hook.first_update == {0: 80, 1: 60, 2: 40, 3: 20, 4: 0}


def test_a_masking_step_allocates_no_full_size_tensor():
    ws = params_with_grads([(400, 500), (500, 400), (500,)], seed=11)
    full = sum(w.numel() * w.element_size() for w in ws)
    hook = masking.ElementwiseDrop(ws, 0.3)
    assert hook.buffer.numel() == 400 * 500  # one buffer, the largest parameter's size
    hook(None, 0)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        hook(None, 1)
    allocated = sum(max(e.self_cpu_memory_usage, 0) for e in prof.key_averages())
    assert allocated < 0.001 * full
    # the profiler does see a naive mask (a full-size temporary per parameter)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        for w in ws:
            w.grad.mul_(torch.rand_like(w) > 0.3)
    assert sum(max(e.self_cpu_memory_usage, 0) for e in prof.key_averages()) > 0.5 * full


# ---------------------------------------------------------------- the training loop


@pytest.fixture(scope="module")
def tiny():
    tagger, tok = pos_transfer.build_tagger("tiny-xlmr", 2, 0, "cpu")
    rng = np.random.default_rng(0)
    train = [
        ([tok.bos, *rng.integers(5, 500, size=n).tolist(), tok.eos],
         [-100, *rng.integers(0, 17, size=n).tolist(), -100])
        for n in rng.integers(3, 12, size=64)
    ]  # fmt: skip
    return tagger, tok, train


def test_standard_arm_is_the_harness_training(tiny):
    tagger, tok, train = tiny
    pre = trainable_state(tagger)
    cfg = TrainConfig(steps=5, lr=1e-3, batch_size=8, bucket=True, seed=3)
    pos_transfer.reset_tagger(tagger, pre, 3)
    gs.train_arm(tagger, train, cfg, gs.Arm("standard"), tok.pad)
    ours = trainable_state(tagger)
    pos_transfer.reset_tagger(tagger, pre, 3)
    train_tagger(tagger, train, cfg, tok.pad)
    for k, v in trainable_state(tagger).items():
        assert torch.equal(v, ours[k]), k
    pos_transfer.reset_tagger(tagger, pre, 0)


def test_masked_arms_run_through_fit_and_count_their_drops(tiny):
    tagger, tok, train = tiny
    pre = trainable_state(tagger)
    cfg = TrainConfig(steps=6, lr=1e-3, batch_size=8, bucket=True, seed=1)
    kinds = [("elementwise", "frozen"), ("elementwise", "decay"), ("scheduled", "frozen"),
             ("layerwise", "frozen"), ("unfreeze", "frozen")]  # fmt: skip
    for arm in [gs.Arm(k, 0.5, s) for k, s in kinds]:
        pos_transfer.reset_tagger(tagger, pre, 1)
        log = gs.train_arm(tagger, train, cfg, arm, tok.pad)
        assert np.all(np.isfinite(log["loss"])) and len(log["loss"]) == 6
        summary = gs.hook_summary(log["hook"])
        if arm.kind == "elementwise":
            assert summary["drop_fraction"] == pytest.approx(0.5, abs=0.02)
        if arm.kind == "unfreeze":
            assert summary["first_update"] == dict(enumerate(summary["planned"]))
    with pytest.raises(ValueError, match="unknown arm kind"):
        gs.make_hooks(tagger, gs.Arm("dropout"), 5, 0)
    pos_transfer.reset_tagger(tagger, pre, 0)


def test_rescale_makes_no_difference_under_adam(tiny):
    tagger, tok, train = tiny
    pre = trainable_state(tagger)
    d = gs.StudyData(train, train[:8], {}, [], {})
    cfg = TrainConfig(steps=4, lr=1e-3, batch_size=8, bucket=True, seed=2)
    # the chapter's check bound; what is left is Adam's epsilon against tiny gradients
    assert gs.rescale_difference(tagger, pre, d, cfg, 0.5, tok.pad) < 0.01
    assert gs.masked_entries_probe(tagger, d, cfg, tok.pad, 0.5) == 0.0
    pos_transfer.reset_tagger(tagger, pre, 0)


# ---------------------------------------------------------------- selection and statistics


def test_selection_flags_a_choice_at_the_grid_edge():
    assert gs.select({0.1: 0.8, 0.3: 0.9, 0.5: 0.85}, [0.1, 0.3, 0.5]) == (0.3, None)
    best, why = gs.select({0.1: 0.95, 0.3: 0.9, 0.5: 0.85}, [0.1, 0.3, 0.5])
    assert best == 0.1 and "edge" in why
    assert gs.select({4e-4: 0.9}, [4e-4]) == (4e-4, None)  # a one-point grid has no edge


LANGS = ["en", "de", "fr", "hi", "tr"]
ARMS = ["standard", "elementwise p=0.3 frozen"]


def scores(gain: dict, n=60, seeds=3, words=10, base=0.7) -> gs.Scores:
    """Exact scores: standard at ``base`` in every language, the other arm ``gain[lang]``
    (fraction) higher, in every seed and sentence."""
    correct = {
        lang: np.broadcast_to(
            np.array([[base * words] * n, [(base + gain[lang]) * words] * n]), (seeds, 2, n)
        ).astype(float)
        for lang in LANGS
    }
    return gs.Scores(
        ARMS, list(range(seeds)), LANGS, correct, {k: np.full(n, words) for k in LANGS}
    )


def test_paired_gains_are_exact_on_exact_scores_and_anticorrelate_with_size():
    gain = {"en": 0.0, "de": 0.01, "fr": 0.02, "hi": 0.05, "tr": 0.04}
    sc = scores(gain)
    point, boot = sc.accuracy(), sc.bootstrap(n_boot=200)
    e = gs.mean_zs_gain(sc, point, boot, ARMS[1])
    assert e.value == pytest.approx(100 * np.mean([0.01, 0.02, 0.05, 0.04]))
    assert e.ci == pytest.approx((e.value, e.value)) and e.n_seeds == 3
    gt = gs.gain_table(sc, point, boot)
    row = gt[(gt.arm == ARMS[1]) & (gt.lang == "hi")].iloc[0]
    assert row.gain == pytest.approx(5.0) and row.acc == pytest.approx(75.0)
    size = resources.cc100_table()["gib"]  # de 66.6 > fr 56.8 > tr 20.9 > hi 20.2
    rho = gs.resource_correlation(sc, point, boot, ARMS[1], size)
    assert rho.value == pytest.approx(-1.0)
    assert rho.ci[1] <= 1.0 and rho.ci[0] == pytest.approx(-1.0)


def test_noisy_arms_with_no_true_gain_give_an_interval_around_zero():
    rng = np.random.default_rng(0)
    correct = {k: rng.binomial(10, 0.7, size=(3, 2, 80)).astype(float) for k in LANGS}
    sc = gs.Scores(ARMS, [0, 1, 2], LANGS, correct, {k: np.full(80, 10) for k in LANGS})
    e = gs.mean_zs_gain(sc, sc.accuracy(), sc.bootstrap(n_boot=400), ARMS[1])
    assert e.ci[0] < 0 < e.ci[1]


def test_spearman_rows_matches_scipy():
    from scipy import stats

    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(4, 12)), rng.normal(size=(4, 12))
    ours = gs.spearman_rows(x, y)
    for i in range(4):
        assert ours[i] == pytest.approx(stats.spearmanr(x[i], y[i])[0])


def test_beats_baselines_and_cc100_table():
    table = pd.DataFrame({"majority": [0.2, 0.2], "word_lookup": [0.8, 0.5]}, index=["en", "de"])
    assert ts.beats_baselines(table, pd.Series({"en": 0.9, "de": 0.6})) == 1.0
    assert ts.beats_baselines(table, pd.Series({"en": 0.7, "de": 0.6})) == 0.5
    cc = resources.cc100_table()
    langs = profiles.get("graddrop").params["langs"]["choices"]
    assert set(langs) <= set(cc.index) and (cc["gib"] > 0).all()
    assert cc.loc["en", "gib"] == max(cc["gib"])


def test_every_declared_record_has_a_producer():
    chapter = profiles.get("graddrop")
    assert set(chapter.records["findings"]) == {
        "zs_gain_graddrop",
        "zs_gain_graddrop_decay",
        "zs_gain_over_unfreezing",
        "zs_gain_layerwise",
        "gain_vs_resource_rank",
    }
    assert isinstance(Tagger, type)
