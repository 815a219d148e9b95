"""Unit tests for lib.chapters.heavy_tailed_imbalance (study, plots) and lib.core.optim."""

import math

import numpy as np
import pytest
import torch

from lib.chapters.heavy_tailed_imbalance import cnn
from lib.chapters.heavy_tailed_imbalance import study as ht
from lib.core.optim import StackedOptimizer, contiguous_blocks

torch.set_num_threads(1)


# ------------------------------------------------------------------------- data


@pytest.mark.parametrize("m", [2, 4, 7])
def test_sizes_and_class_counts_per_tier(m):
    n, c, d = ht.sizes(m)
    assert (n, c, d) == (m * 2**m, 2**m - 1, (m + 1) * 2**m)
    counts, tiers = ht.class_counts(m), ht.class_tiers(m)
    assert counts.numel() == c and int(counts.sum()) == n
    for i in range(m):
        in_tier = counts[tiers == i]
        assert in_tier.numel() == 2**i  # tier i has 2^i classes
        assert torch.all(in_tier == 2 ** (m - i))  # of 2^(m-i) samples each
        assert int(in_tier.sum()) == 2**m  # every tier holds 1/m of the data
    assert torch.all(counts[:-1] >= counts[1:])  # sorted by decreasing frequency


def test_labels_and_inputs():
    m = 5
    y = ht.make_labels(m)
    assert torch.equal(torch.bincount(y), ht.class_counts(m))
    x, y2, (w, b) = ht.make_problem(m, seed=3)
    n, c, d = ht.sizes(m)
    assert torch.equal(y, y2)
    assert x.shape == (n, d) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) < 1.0
    assert abs(float(x.mean()) - 0.5) < 0.01  # not centred
    x3, _, (w3, b3) = ht.make_problem(m, seed=3)
    assert torch.equal(x, x3) and torch.equal(w, w3) and torch.equal(b, b3)  # the seed fixes all
    assert not torch.equal(x, ht.make_problem(m, seed=4)[0])
    xc, _, (wc, _) = ht.make_problem(m, seed=3, centred=True)
    assert torch.allclose(xc, x - 0.5) and abs(float(xc.mean())) < 0.01
    assert torch.equal(wc, w)  # centring shifts the inputs, the stream stays the same


def test_initialisation_is_independent_of_the_data():
    """The defect of issue 10: two generators from one seed made row k of W = (2 X[k] - 1)/sqrt(d).
    Drawn from one stream after the data, W's rows correlate with the samples no more than two
    independent draws do, and every tier starts at about log c."""
    m = 7
    n, c, d = ht.sizes(m)
    scale = ht.independent_correlation_scale(c, n, d)
    g = torch.Generator().manual_seed(123)  # two independent draws of the same shapes
    ref = ht.max_abs_correlation(torch.rand(c, d, generator=g), torch.rand(n, d, generator=g))
    assert 0.5 < ref / scale < 1.5  # the extreme-value scale is where independent draws land
    for seed in (0, 1, 7, 11):
        x, y, (w, b) = ht.make_problem(m, seed)
        assert ht.max_abs_correlation(w, x) / scale < 1.5
        assert not torch.allclose(w[0], (2 * x[0] - 1) / math.sqrt(d), atol=1e-3)
        losses, _ = ht.sample_losses(x, y, w[None], b[None])
        tier_loss = ht.group_means(losses, ht.class_tiers(m)[y], m)[:, 0]
        assert float((tier_loss - math.log(c)).abs().max()) < 1.0
    # the old construction (a fresh generator for the init) fails both tests (at m = 8)
    m = 8
    n, c, d = ht.sizes(m)
    gen = torch.Generator().manual_seed(0)
    x = ht.make_inputs(m, gen)
    w, b = ht.init_linear(d, c, torch.Generator().manual_seed(0))
    assert ht.max_abs_correlation(w, x) > 0.99
    losses, _ = ht.sample_losses(x, ht.make_labels(m), w[None], b[None])
    tier0 = float(ht.group_means(losses, ht.class_tiers(m)[ht.make_labels(m)], m)[0, 0])
    assert tier0 - math.log(c) > 1.0


def test_equal_mass_groups_recover_tiers_and_are_equal_mass():
    m = 6
    assert torch.equal(ht.equal_mass_groups(ht.class_counts(m), m), ht.class_tiers(m))
    zipf = torch.tensor([1000 // k for k in range(1, 2001)])
    groups = ht.equal_mass_groups(zipf, 10)
    mass = torch.zeros(10).index_add_(0, groups, zipf.float()) / zipf.sum()
    assert torch.all(groups[:-1] <= groups[1:])  # frequent classes first
    assert float(mass.max()) < 0.2 and float(mass.min()) > 0.05


def test_sqrt_class_weights():
    y = torch.tensor([0, 0, 0, 0, 1])
    w = ht.sqrt_class_weights(y, 2)
    assert math.isclose(float(w.sum()), 1.0, rel_tol=1e-6)
    assert math.isclose(float(w[4] / w[0]), 2.0, rel_tol=1e-6)  # 1/sqrt(1) vs 1/sqrt(4)


def test_group_means_and_rare_half():
    values = torch.tensor([[1.0, 10.0], [3.0, 30.0], [5.0, 50.0]])
    got = ht.group_means(values, torch.tensor([0, 0, 1]), 2)
    assert torch.allclose(got, torch.tensor([[2.0, 20.0], [5.0, 50.0]]))
    counts = ht.class_counts(3).numpy()  # [8, 4, 4, 2, 2, 2, 2]
    loss = np.arange(7.0)[None]
    assert ht.rare_half_loss(loss, counts)[0] == pytest.approx(4.5)


# ------------------------------------------------------------ model and gradients


def _autograd_loss(x, y, w, b, sample_w=None):
    logits = torch.einsum("nd,rcd->nrc", x, w) + b
    ce = -torch.log_softmax(logits, dim=2).gather(2, y.view(-1, 1, 1).expand(-1, w.shape[0], 1))
    weight = (
        sample_w
        if sample_w is not None
        else torch.full((x.shape[0],), 1 / x.shape[0], dtype=x.dtype)
    )
    return (ce.squeeze(2) * weight[:, None]).sum()


@pytest.mark.parametrize("weighted", [False, True])
def test_loss_and_grads_match_autograd_and_finite_differences(weighted):
    torch.manual_seed(0)
    m = 3
    n, c, d = ht.sizes(m)
    x = ht.make_problem(m, 0)[0].double()
    y = ht.make_labels(m)
    w = torch.randn(2, c, d, dtype=torch.float64)
    b = torch.randn(2, c, dtype=torch.float64)
    sw = ht.sqrt_class_weights(y, c).double() if weighted else None
    losses, gw, gb = ht.loss_and_grads(x, y, w, b, sw)
    wr, br = w.clone().requires_grad_(), b.clone().requires_grad_()
    total = _autograd_loss(x, y, wr, br, sw)
    total.backward()
    assert torch.allclose(gw, wr.grad, atol=1e-12) and torch.allclose(gb, br.grad, atol=1e-12)
    per_run = total.detach() if weighted else losses.mean(0).sum()
    assert math.isclose(float(per_run), float(total.detach()), rel_tol=1e-12)
    eps, (r, k, j) = 1e-6, (1, 2, 5)  # one coordinate by central differences
    wp, wm = w.clone(), w.clone()
    wp[r, k, j] += eps
    wm[r, k, j] -= eps
    fd = (_autograd_loss(x, y, wp, b, sw) - _autograd_loss(x, y, wm, b, sw)) / (2 * eps)
    assert math.isclose(float(fd), float(gw[r, k, j]), rel_tol=1e-6, abs_tol=1e-10)


def test_init_is_torch_default_range_and_shared_across_runs():
    w, b = ht.init_linear(100, 7, torch.Generator().manual_seed(1))
    assert w.shape == (7, 100) and b.shape == (7,)
    assert float(w.abs().max()) <= 0.1 and float(w.abs().max()) > 0.09
    traces, _, _ = _small_grid()
    start = traces[0].class_loss_at[0]
    assert np.allclose(start, start[:1])  # every run of a seed starts from the same init


def test_hessian_top_eigenvalue_matches_dense_hessian_and_the_prior_formula():
    torch.manual_seed(0)
    x = torch.rand(30, 6, dtype=torch.float64)
    w, b = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    y = torch.randint(0, 4, (30,))

    def loss(theta):
        return torch.nn.functional.cross_entropy(x @ theta[:, :6].t() + theta[:, 6], y)

    theta = torch.cat([w, b[:, None]], 1)
    dense = torch.autograd.functional.hessian(loss, theta).reshape(28, 28)
    top = float(torch.linalg.eigvalsh(dense)[-1])
    got = ht.hessian_top_eigenvalue(x, w, b, iters=500, dtype=torch.float64)
    assert got == pytest.approx(top, rel=1e-6)
    m = 6  # at W = 0, b = log pi every sample predicts the prior: H = S (x) E[x~ x~^T]
    x, y, _ = ht.make_problem(m, 0)
    pi = ht.class_counts(m).float() / ht.sizes(m)[0]
    lam = ht.hessian_top_eigenvalue(x, torch.zeros(ht.sizes(m)[1], ht.sizes(m)[2]), pi.log())
    assert lam == pytest.approx(ht.hessian_top_formula(m, "prior"), rel=0.02)


def test_predicted_learning_rate_shifts():
    assert ht.predicted_lr_shift("gd", 11, 11) == 0.0
    assert ht.predicted_lr_shift("adam_m", 11, 7) == pytest.approx(math.log10(24576 / 1024))
    assert ht.predicted_lr_shift("normgd", 11, 7) == pytest.approx(0.5 * math.log10(24))
    shift = ht.predicted_lr_shift("gd_m", 11, 7)  # lambda ~ pi_max d / 4 -> about 1.2 decades
    assert shift == pytest.approx(ht.predicted_lr_shift("gd", 11, 7))
    assert 1.0 < shift < 1.4
    with pytest.raises(ValueError):
        ht.predicted_lr_shift("lion", 11, 7)


def test_per_class_grad_hessian_matches_autograd():
    torch.manual_seed(1)
    x = torch.rand(12, 4, dtype=torch.float64)
    y = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    w = torch.randn(3, 4, dtype=torch.float64)
    b = torch.randn(3, dtype=torch.float64)
    gnorm, htrace = ht.per_class_grad_hessian(x, y, w, b)

    def loss(theta):  # theta: (3, 5) = [W | b]
        return torch.nn.functional.cross_entropy(x @ theta[:, :4].t() + theta[:, 4], y)

    theta = torch.cat([w, b[:, None]], 1)
    g = torch.autograd.functional.jacobian(loss, theta)
    hess = torch.autograd.functional.hessian(loss, theta).reshape(15, 15)
    assert np.allclose(gnorm, g.norm(dim=1).numpy(), atol=1e-12)
    diag = hess.diagonal().reshape(3, 5).sum(1)
    assert np.allclose(htrace, diag.numpy(), atol=1e-12)
    assert ht.loglog_slope(np.array([1.0, 2.0, 4.0]), np.array([3.0, 6.0, 12.0])) == pytest.approx(
        1.0
    )


# ---------------------------------------------------------------------- optimizers


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, 5, generator=g, dtype=torch.float64), torch.randn(
        4, 3, generator=g, dtype=torch.float64
    )


def _grads(step):
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(4, 3, 5, generator=g, dtype=torch.float64), torch.randn(
        4, 3, generator=g, dtype=torch.float64
    )


def test_contiguous_blocks():
    assert contiguous_blocks(["gd", "gd", "adam", "sign_m"]) == [
        ("gd", slice(0, 2)),
        ("adam", slice(2, 3)),
        ("sign_m", slice(3, 4)),
    ]


def test_sign_and_normalized_gd_follow_their_update_rules():
    w, b = _params()
    w0, b0 = w.clone(), b.clone()
    lrs = [0.1, 0.2, 0.3, 0.4]
    opt = StackedOptimizer([w, b], [0, 0], ["sign", "sign_m", "normgd", "normgd_m"], lrs)
    mom = [torch.zeros(3, 5 + 1, dtype=torch.float64) for _ in range(4)]
    for t in range(3):
        gw, gb = _grads(t)
        opt.step([gw, gb])
        for r, (kind, lr) in enumerate(
            zip(opt_kinds := ["sign", "sign_m", "normgd", "normgd_m"], lrs)
        ):
            g = torch.cat([gw[r], gb[r][:, None]], 1)
            direction = g.sign() if kind.startswith("sign") else g / g.norm()
            beta = 0.9 if kind.endswith("_m") else 0.0
            mom[r] = beta * mom[r] + direction  # heavy ball on the direction
            w0[r] -= lr * mom[r][:, :5]
            b0[r] -= lr * mom[r][:, 5]
    assert opt_kinds and torch.allclose(w, w0, atol=1e-12) and torch.allclose(b, b0, atol=1e-12)


@pytest.mark.parametrize(
    "kind,ref",
    [
        ("gd", lambda p, lr: torch.optim.SGD(p, lr=lr)),
        ("gd_m", lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9)),
        ("adam", lambda p, lr: torch.optim.Adam(p, lr=lr, betas=(0.0, 0.999), eps=1e-8)),
        ("adam_m", lambda p, lr: torch.optim.Adam(p, lr=lr, betas=(0.9, 0.999), eps=1e-8)),
    ],
)
def test_stacked_optimizer_matches_torch_optim(kind, ref):
    w, b = _params()
    lrs = [0.01, 0.03, 0.1, 0.3]
    refs = []
    for r, lr in enumerate(lrs):
        pr = [w[r].clone().requires_grad_(), b[r].clone().requires_grad_()]
        refs.append((pr, ref(pr, lr)))
    opt = StackedOptimizer([w, b], [0, 0], [kind] * 4, lrs)
    for t in range(5):
        gw, gb = _grads(t)
        opt.step([gw, gb])
        for r, (pr, o) in enumerate(refs):
            pr[0].grad, pr[1].grad = gw[r].clone(), gb[r].clone()
            o.step()
    for r, (pr, _) in enumerate(refs):
        assert torch.allclose(w[r], pr[0].detach(), atol=1e-12)
        assert torch.allclose(b[r], pr[1].detach(), atol=1e-12)


def test_stacked_runs_are_independent():
    w, b = _params()
    kinds = ["gd", "adam_m", "sign_m", "normgd"]
    opt = StackedOptimizer([w, b], [0, 0], kinds, [0.1] * 4)
    w1, b1 = _params()
    solo = StackedOptimizer([w1[1:2], b1[1:2]], [0, 0], ["adam_m"], [0.1])
    for t in range(3):
        gw, gb = _grads(t)
        opt.step([gw, gb])
        solo.step([gw[1:2].clone(), gb[1:2].clone()])
    assert torch.equal(w[1], w1[1]) and torch.equal(b[1], b1[1])


def test_bad_optimizer_arguments_raise():
    w, b = _params()
    with pytest.raises(ValueError, match="unknown optimizer"):
        StackedOptimizer([w, b], [0, 0], ["gd", "gd", "lion", "gd"], [0.1] * 4)
    with pytest.raises(ValueError, match="runs"):
        StackedOptimizer([w, b], [0, 0], ["gd"] * 3, [0.1] * 3)


# ----------------------------------------------------------------- selection rule


def test_selection_rule_uses_worst_seed_and_counts_divergence_as_no_progress():
    initial = np.array([5.0, 5.0])
    final = np.array([[1.0, 0.1, np.nan, 9.0], [2.0, 4.0, 0.0, 0.5]])
    best, worst = ht.select_lr(final, initial)
    assert np.allclose(worst, [2.0, 4.0, 5.0, 5.0])  # NaN and > 1.5 x initial -> initial
    assert best == 0


# ------------------------------------------------------------------------ theory


def test_gradient_flow_closed_form_solves_the_ode_and_obeys_the_bounds():
    c, pi = 64, np.array([0.2, 0.01, 0.001])
    t = np.array([0.0, 1.0, 50.0, 1e3, 1e5])
    u = ht.gf_margin(pi, t, c)
    assert np.allclose(np.exp(u) + (c - 1) * u, 1 + c * np.multiply.outer(t, pi), rtol=1e-12)
    assert np.allclose(ht.gf_loss(pi, t[:1], c), math.log(c))  # W = 0: loss log c
    h = 1e-4  # du/dt = c pi / (e^u + c - 1)
    dudt = (ht.gf_margin(pi, t[1:] + h, c) - ht.gf_margin(pi, t[1:] - h, c)) / (2 * h)
    assert np.allclose(dudt, c * pi / (np.exp(u[1:]) + c - 1), rtol=1e-5)
    tt = np.array([1e3, 1e4, 1e5])
    loss, pit = ht.gf_loss(pi, tt, c), np.multiply.outer(tt, pi)
    ok = pit >= 1
    assert np.all((c - 1) / (2 * c) / pit[ok] <= loss[ok]) and np.all(loss[ok] <= (c - 1) / pit[ok])


def test_small_step_simulation_matches_closed_forms():
    c = 16
    pi = 1 / np.arange(1, c + 1)
    pi /= pi.sum()
    h, steps = 0.01, 2000
    rec = [0, 500, 2000]
    gd = ht.simulate_simple_model(pi, h, steps, "gd", rec)
    exact = ht.gf_loss(pi, np.array(rec) * h, c)
    assert np.max(np.abs(gd - exact) / exact) < 0.01
    rec = [0, 100, 800]  # sign: t <= 8, loss above 1e-5
    sign = ht.simulate_simple_model(pi, h, 800, "sign", rec)
    exact_sign = ht.sign_flow_loss(np.array(rec) * h, c)[:, None]
    assert np.allclose(sign, exact_sign, rtol=1e-9, atol=0)  # u = 2t exactly, every class
    assert np.all(exact_sign > 1e-8)  # still far from float64 resolution


# ------------------------------------------------------------------- bigram model


def test_build_bigrams_caps_the_vocabulary():
    tokens = "a b a c a b d a".split()
    data = ht.build_bigrams(tokens, vocab_cap=2)
    assert data.vocab == ["a", "b", "<unknown>"]
    assert data.prev.tolist() == [0, 1, 0, 2, 0, 1, 2]
    assert data.nxt.tolist() == [1, 0, 2, 0, 1, 2, 0]
    assert data.counts.tolist() == [3, 2, 2]


def test_bigram_reference_losses():
    tokens = "a b a c a b d a".split()
    data = ht.build_bigrams(tokens, vocab_cap=2)  # ids a=0, b=1, unknown=2
    groups = torch.tensor([0, 1, 1])
    prior, mle = ht.bigram_reference_losses(data, groups, 2)
    # next tokens: b a u a b u a -> group 0 (a): 3 tokens, group 1 (b, u): 4 tokens
    assert prior[0] == pytest.approx(-math.log(3 / 7))
    assert prior[1] == pytest.approx(-(2 * math.log(2 / 7) + 2 * math.log(2 / 7)) / 4)
    # pairs a->b x2, a->u (row a: 3); b->a, b->u (row b: 2); u->a x2 (row u: 2)
    assert mle[0] == pytest.approx(math.log(2) / 3)
    assert mle[1] == pytest.approx(-(2 * math.log(2 / 3) + math.log(1 / 3) + math.log(1 / 2)) / 4)
    assert np.all(mle <= prior + 1e-12)


def test_bigram_losses_and_grads_match_autograd():
    torch.manual_seed(0)
    v, r = 5, 2
    w, b = torch.randn(r, v, v), torch.randn(r, v)
    a = torch.tensor([0, 1, 1, 4, 0, 0])
    z = torch.tensor([1, 2, 2, 0, 3, 1])
    wr, br = w.clone().requires_grad_(), b.clone().requires_grad_()
    logits = wr[:, a] + br[:, None]
    per_token = (
        -torch.log_softmax(logits, 2).gather(2, z.view(1, -1, 1).expand(r, -1, 1)).squeeze(2)
    )
    per_token.mean(1).sum().backward()
    out = torch.empty_like(w)
    gb = ht.bigram_grads(w, b, a, z, out)
    assert torch.allclose(out, wr.grad, atol=1e-6) and torch.allclose(gb, br.grad, atol=1e-6)
    pairs, counts = torch.unique(torch.stack([a, z], 1), dim=0, return_counts=True)
    pl = ht.bigram_losses(w, b, pairs, counts, chunk=2)
    total = (pl * counts).sum(1) / counts.sum()
    assert torch.allclose(total, per_token.mean(1).detach(), atol=1e-5)


# --------------------------------------------------------- estimates for the findings


def _small_grid(m=4, steps=6, seeds=(0, 1)):
    grid = {"gd": [-1.0, -0.5], "adam_m": [-2.0, -1.5, -1.0]}
    return ht.run_grid(m, steps, list(seeds), grid, class_steps=[3]), m, steps


def test_trace_keeps_per_class_losses_that_agree_with_the_tier_means():
    traces, m, steps = _small_grid()
    t = traces[0]
    assert sorted(t.class_loss_at) == [0, 3, steps]
    assert np.array_equal(t.class_loss_at[steps], t.class_loss)
    counts = ht.class_counts(m).numpy().astype(float)
    tiers = ht.class_tiers(m).numpy()
    for step in (0, 3, steps):
        per_class = t.class_loss_at[step]
        for i in range(m):  # sample-weighted mean of the tier's classes = the recorded tier loss
            w = counts[tiers == i]
            got = per_class[:, tiers == i] @ w / w.sum()
            assert np.allclose(got, t.group_loss[step, :, i], rtol=1e-5)
    start = t.class_loss_at[0]
    assert np.allclose(start, start[:1])  # every run starts from the same initialisation


def test_loss_removed_is_one_minus_final_over_initial_of_the_tier():
    traces, m, steps = _small_grid()
    rare = ht.tier_mask(m, m - 1)
    for run in range(len(traces[0].kinds)):
        est = ht.loss_removed(traces, run, rare)
        per_seed = [ht.tier_loss_removed(t, run, m - 1) for t in traces]
        assert est.value == pytest.approx(np.mean(per_seed), rel=1e-5)
        assert est.ci[0] <= est.value <= est.ci[1] and est.n_seeds == 2
        mid = ht.loss_removed(traces, run, rare, at=3)
        assert mid.value == pytest.approx(
            np.mean([ht.tier_loss_removed(t, run, m - 1, at=3) for t in traces]), rel=1e-5
        )


def test_ratio_over_seeds_is_a_geometric_mean_with_a_log_t_interval():
    est = ht.ratio_over_seeds([8.0, 2.0, 4.0], [1.0, 1.0, 1.0])
    assert est.value == pytest.approx(4.0)
    lo, hi = est.ci
    assert lo < 4.0 < hi and lo * hi == pytest.approx(16.0)  # symmetric on the log scale
    assert ht.ratio_over_seeds([2.0], [1.0]).ci is None  # one seed: no interval


def test_grid_edges_and_the_unresolved_reason():
    sel = {
        "gd": {"exps": [-2.0, -1.5, -1.0], "best": 2, "exp": -1.0, "worst": [3.0, 2.0, 1.0]},
        "adam": {"exps": [-3.0, -2.5, -2.0], "best": 1, "exp": -2.5, "worst": [3.0, 1.0, 2.0]},
        "adam_m": {"exps": [-3.0, -2.5], "best": 0, "exp": -3.0, "worst": [1.0, 2.0]},
    }
    assert [ht.grid_edge(sel[k]) for k in sel] == ["top", None, "bottom"]
    floor = {"exps": [0.0, 1.0, 2.0], "best": 2, "exp": 2.0, "worst": [1.0, 1e-6, 0.0]}
    assert ht.grid_edge(floor) is None  # the loss is at its floor: nothing beyond can beat it
    floor = {"exps": [0.0, 1.0, 2.0], "best": 0, "exp": 0.0, "worst": [0.0, 0.0, 0.0]}
    assert ht.grid_edge(floor) is None
    assert ht.edge_reason((sel, ["adam"])) is None
    reason = ht.edge_reason((sel, ["gd", "adam"]), (sel, ["adam_m"]))
    assert "GD 10^-1.0 (top)" in reason and "Adam+m 10^-3.0 (bottom)" in reason
    assert "Adam 10^" not in reason


def test_budgets_of():
    assert ht.budgets_of(1000) == [100, 300, 1000]
    assert ht.budgets_of(5) == [1, 5]


def test_rank_correlation_slope_and_best_over_kinds():
    x = np.linspace(1.0, 2.0, 50)
    assert ht.rank_correlation(np.column_stack([x, x**3])) == pytest.approx(1.0)
    assert ht.rank_correlation(np.column_stack([x, -x])) == pytest.approx(-1.0)
    est = ht.correlation_estimate(x, np.exp(x))
    assert est.value == pytest.approx(1.0) and est.ci is not None
    freq = np.geomspace(1e-3, 1e-1, 40)
    slope = ht.slope_estimate(freq, 3 * freq**0.5)
    assert slope.value == pytest.approx(0.5) and slope.ci[0] == pytest.approx(0.5)
    traces, _, _ = _small_grid()
    sel = ht.select_per_kind(traces)
    best = ht.best_over_kinds(traces, sel, ["gd", "adam_m"], lambda t, r: float(t.loss[-1, r]))
    expect = [min(t.loss[-1, sel["gd"]["run"]], t.loss[-1, sel["adam_m"]["run"]]) for t in traces]
    assert np.allclose(best, expect)


def test_figures_draw_without_warnings(recwarn):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lib.chapters.heavy_tailed_imbalance import plots

    traces, m, steps = _small_grid()
    sel = ht.select_per_kind(traces)
    colors = {"gd": "k", "adam_m": "r"}
    figs = [
        plots.selection_scores(traces, sel, colors, steps),
        plots.tier_panels(traces[0], sel, colors, m),
        plots.gd_step_sizes(traces[0], sel["adam_m"]["run"], [3, steps], "r", m),
        plots.rare_ratio(
            traces, {3: ht.select_per_kind(traces, at=3), steps: sel}, [3, steps], "gd"
        ),
    ]
    assert all(f.axes for f in figs)
    plt.close("all")
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]


# ------------------------------------------------------- CNN on barcoded images


def _balanced_images(per_class=12, side=28, seed=0):
    """A stand-in for Fashion-MNIST: random images in [0, 1], per_class of each of 10 classes."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(10 * per_class, 1, side, side, generator=g)
    y = torch.arange(10).repeat(per_class)
    return x, y


def test_barcodes_are_all_bit_patterns_in_product_order():
    import itertools

    for bits in (1, 3, 5):
        expected = torch.tensor(list(itertools.product([0, 1], repeat=bits)))
        assert torch.equal(cnn.barcodes(bits), expected)


@pytest.mark.parametrize("bits,per_tail,head", [(2, 5, 20), (3, 2, 16), (4, 5, 80)])
def test_barcoded_set_hits_its_counts(bits, per_tail, head):
    x, y = _balanced_images(per_class=max(head, 12))
    data = cnn.make_barcoded(x, y, bits, per_tail, head, torch.Generator().manual_seed(1))
    n, c, n_tail = cnn.sizes(bits, per_tail, head)
    assert data.x.shape == (n, 1, 28, 28) and data.y.shape == (n,)
    assert data.counts.numel() == c == 10 + 10 * 2**bits
    assert torch.equal(torch.bincount(data.y, minlength=c), data.counts)
    assert torch.all(data.counts[:10] == head)  # the frequent classes
    assert torch.all(data.counts[10:] == per_tail)  # every barcoded class
    assert int(data.tail.sum()) == c - 10 and not data.tail[:10].any()
    assert int(data.group_of_sample.sum()) == n_tail
    # standardised per pixel over the set
    flat = data.x.reshape(n, -1)
    varied = flat.std(0) > 0
    assert float(flat[:, varied].mean(0).abs().max()) < 1e-4
    assert float((flat[:, varied].std(0) - 1).abs().max()) < 1e-4


def test_barcoded_images_carry_their_code_on_a_copy_of_a_pool_image_of_their_class():
    bits, per_tail, head = 3, 4, 6
    x, y = _balanced_images(per_class=10)
    gen = torch.Generator().manual_seed(2)
    data = cnn.make_barcoded(x, y, bits, per_tail, head, gen, normalise=False)
    codes = cnn.barcodes(bits).float()
    top = float(x.max())
    head_x = data.x[: 10 * head]
    for i in range(10 * head, data.x.shape[0]):
        cls = int(data.y[i]) - 10
        code, base = divmod(cls, 10)
        img = data.x[i, 0]
        assert torch.equal(img[0, :bits], codes[code] * top)  # the barcode, set bits at the max
        # the rest of the image is one of the frequent images of the same base class
        pool = head_x[data.y[: 10 * head] == base, 0]
        same = (pool[:, 1:] == img[1:]).all(dim=(1, 2)) & (pool[:, 0, bits:] == img[0, bits:]).all(
            1
        )
        assert bool(same.any())
    # the frequent images come from their own class, without repetition
    for j in range(10):
        picked = head_x[data.y[: 10 * head] == j]
        assert picked.shape[0] == head
        assert len({tuple(p.flatten()[:20].tolist()) for p in picked}) == head
        originals = x[y == j]
        assert all(bool((originals == p).all(dim=(1, 2, 3)).any()) for p in picked)


def test_barcoded_set_downsamples_before_writing_the_code_and_depends_on_the_seed():
    x, y = _balanced_images()
    a = cnn.make_barcoded(x, y, 3, 2, 8, torch.Generator().manual_seed(0), image_size=14)
    assert a.x.shape[-2:] == (14, 14)
    b = cnn.make_barcoded(x, y, 3, 2, 8, torch.Generator().manual_seed(0), image_size=14)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    c = cnn.make_barcoded(x, y, 3, 2, 8, torch.Generator().manual_seed(5), image_size=14)
    assert not torch.equal(a.x, c.x)
    with pytest.raises(ValueError):
        cnn.make_barcoded(x, y, 3, 2, 8, torch.Generator(), image_size=10)
    with pytest.raises(ValueError):  # not enough images of a class for the frequent pool
        cnn.make_barcoded(x, y, 3, 2, 50, torch.Generator())


def test_cnn_init_is_torch_default_range():
    params = cnn.init_cnn((4, 6), 5, 30, 14, torch.Generator().manual_seed(0))
    shapes = [(4, 1, 5, 5), (4,), (6, 4, 5, 5), (6,), (30, 6 * 3 * 3), (30,)]
    fans = [25, 25, 100, 100, 54, 54]
    for p, shape, fan in zip(params, shapes, fans):
        assert p.shape == shape
        bound = 1 / math.sqrt(fan)
        assert float(p.abs().max()) <= bound and float(p.abs().max()) > 0.7 * bound


def test_stacked_cnn_matches_torch_modules_run_by_run():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 1, 14, 14, generator=g)
    y = torch.randint(0, 12, (9,), generator=g)
    params = cnn.stack(cnn.init_cnn((3, 5), 5, 12, 14, g), 3)
    with torch.no_grad():  # make the runs differ
        for p in params:
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    gap_logits, gap_grads = cnn.module_gap(x, y, params)
    assert gap_logits < 1e-5 and gap_grads < 1e-4
    # the comparison is not vacuous: the runs differ, and run 0's module is not run 1's logits
    logits = cnn.stacked_logits(x, params).detach()
    ref0 = cnn.module_of_run(params, 0)(x).detach()
    assert float((ref0 - logits[:, 1]).abs().max()) > 1e-3 * float(ref0.abs().max())


def test_full_batch_gradient_does_not_depend_on_the_chunk_size():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(23, 1, 14, 14, generator=g)
    y = torch.randint(0, 7, (23,), generator=g)
    params = cnn.stack(cnn.init_cnn((2, 4), 5, 7, 14, g), 2)
    l1, g1 = cnn.losses_and_grads(x, y, params, chunk=100)
    l2, g2 = cnn.losses_and_grads(x, y, params, chunk=5)
    assert torch.allclose(l1, l2, atol=1e-6)
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)
    ref = torch.nn.functional.cross_entropy(cnn.module_of_run(params, 1)(x), y, reduction="none")
    assert torch.allclose(l1[:, 1], ref, atol=1e-5)


def _tiny_set(seed=0):
    x, y = _balanced_images(per_class=12)
    gen = torch.Generator().manual_seed(seed)
    data = cnn.make_barcoded(x, y, 2, 2, 8, gen, image_size=14)
    return data, cnn.init_cnn((2, 4), 5, int(data.counts.numel()), 14, gen)


def test_group_losses_of_the_trace_equal_a_direct_computation():
    data, init = _tiny_set()
    kinds, lrs, steps = ["gd", "adam_m"], [0.1, 0.01], 3
    trace = cnn.train_stack(data, kinds, lrs, steps, init, chunk=16, class_steps=[1])
    assert trace.group_loss.shape == (steps + 1, 2, 2) and trace.loss.shape == (steps + 1, 2)
    # replay the runs one by one with torch.optim and nn modules; compare every record
    refs = []
    for kind, lr in zip(kinds, lrs):
        net = cnn.module_of_run(cnn.stack(init, 1), 0)
        opt = (
            torch.optim.SGD(net.parameters(), lr=lr)
            if kind == "gd"
            else torch.optim.Adam(net.parameters(), lr=lr)
        )
        per_step = []
        for t in range(steps + 1):
            losses = torch.nn.functional.cross_entropy(net(data.x), data.y, reduction="none")
            per_step.append(losses.detach())
            if t < steps:
                opt.zero_grad()
                losses.mean().backward()
                opt.step()
        refs.append(torch.stack(per_step))
    tail = data.group_of_sample.bool()
    for r, ref in enumerate(refs):
        for t in range(steps + 1):
            direct = [float(ref[t][~tail].mean()), float(ref[t][tail].mean())]
            assert np.allclose(trace.group_loss[t, r], direct, rtol=1e-4, atol=1e-5)
            assert math.isclose(trace.loss[t, r], float(ref[t].mean()), rel_tol=1e-4)
        for t in (0, 1, steps):
            per_class = [float(ref[t][data.y == k].mean()) for k in range(data.counts.numel())]
            assert np.allclose(trace.class_loss_at[t][r], per_class, rtol=1e-4, atol=1e-5)
    assert np.array_equal(trace.class_loss, trace.class_loss_at[steps])
    # the fraction of the barcoded classes' loss removed, from the per-class losses
    est = ht.loss_removed([trace], 1, data.tail.numpy())
    t0, tn = trace.class_loss_at[0][1, 10:], trace.class_loss[1, 10:]
    assert math.isclose(est.value, 1 - tn.mean() / t0.mean(), rel_tol=1e-6)


def test_a_diverging_run_does_not_touch_the_others():
    data, init = _tiny_set(1)
    steps = 4
    together = cnn.train_stack(data, ["gd", "gd"], [1e-1, 1e30], steps, init)
    alone = cnn.train_stack(data, ["gd"], [1e-1], steps, init)
    assert not np.isfinite(together.loss[-1, 1])  # diverged, frozen, its record stays non-finite
    assert np.allclose(together.loss[:, 0], alone.loss[:, 0], rtol=1e-5)


def test_cnn_grid_is_reproducible_per_seed_and_training_lowers_the_loss():
    x, y = _balanced_images(per_class=12)
    kw = dict(bits=2, per_tail_class=2, head_per_class=8, image_size=14, channels=(2, 4))
    grid = {"gd": [-1.0], "adam_m": [-2.0]}
    a, sets_a = cnn.run_grid(x, y, [0, 1], grid, 5, **kw)
    b, _ = cnn.run_grid(x, y, [0], grid, 5, **kw)
    assert np.array_equal(a[0].loss, b[0].loss)
    assert not np.array_equal(a[0].loss, a[1].loss)
    assert not torch.equal(sets_a[0].x, sets_a[1].x)
    for t in a:
        assert t.kinds == ["gd", "adam_m"] and np.allclose(t.lrs, [0.1, 0.01])
        assert np.all(t.loss[-1] < t.loss[0])
        assert abs(t.loss[0, 0] - math.log(len(sets_a[0].counts))) < 1.0  # starts near log c


def test_rare_budget_ratio_counts_steps_stable_step_and_rarest_frequency():
    assert math.isclose(ht.rare_budget_ratio(ht.PAPER_M, 1000), 1.0)
    assert math.isclose(ht.rare_budget_ratio(7, 1000), 10 * ht.rare_budget_ratio(7, 100))

    # by hand: steps x 2/lambda_prior x 2/n, over the paper's
    def units(m, t):
        return t * 2 / ht.hessian_top_formula(m, "prior") * 2 / ht.sizes(m)[0]

    assert math.isclose(ht.rare_budget_ratio(8, 100), units(8, 100) / units(11, 1000))
    # a smaller problem gives its rarest classes more budget per step
    assert ht.rare_budget_ratio(7, 1000) > ht.rare_budget_ratio(8, 1000) > 1.0


def test_little_progress_findings_are_refuted_only_within_the_paper_budget():
    """Every at_most ("little progress") finding lists its budget's adequacy under
    needs_to_refute; "progress" findings do not (the rule is one-sided)."""
    from lib.book import profiles

    spec = profiles.get("heavy_tailed_imbalance").records["findings"]
    little = [n for n, e in spec.items() if "loss_removed" in n and "at_most" in e["criterion"]]
    assert len(little) >= 9
    assert all(
        spec[n]["needs_to_refute"][0].endswith(("within_paper", "_mid", "_short")) for n in little
    )
    assert not any("needs_to_refute" in e for e in spec.values() if "at_least" in e["criterion"])


def test_cnn_budget_ratio_and_the_problem_of_a_seed():
    x, y = _balanced_images(per_class=12)
    kw = dict(bits=2, per_tail_class=2, head_per_class=8, image_size=14, channels=(2, 4))
    data, init = cnn.problem(x, y, 4, **kw)
    again, init2 = cnn.problem(x, y, 4, **kw)
    assert torch.equal(data.x, again.x) and all(torch.equal(a, b) for a, b in zip(init, init2))
    n = int(data.counts.sum())
    paper = cnn.PAPER_PER_TAIL_CLASS / cnn.PAPER_IMAGES * cnn.PAPER_STEPS
    assert cnn.PAPER_IMAGES == 101_200
    assert math.isclose(cnn.rare_budget_ratio(data, 30), 2 / n * 30 / paper)
    assert cnn.module_check(data, init, ["gd", "adam_m"], [0.1, 0.01], n=16) < 1e-4


def test_cnn_figure_draws_without_warnings(recwarn):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lib.chapters.heavy_tailed_imbalance import plots

    x, y = _balanced_images(per_class=12)
    kw = dict(bits=2, per_tail_class=1, head_per_class=6, image_size=14, channels=(2, 4))
    grid = {"gd": [-1.0, -0.5], "adam_m": [-2.0]}
    traces, _ = cnn.run_grid(x, y, [0, 1], grid, 4, class_steps=[1], **kw)
    sels = {b: ht.select_per_kind(traces, at=b) for b in (1, 4)}
    fig = plots.cnn_groups(traces, sels, {"gd": "k", "adam_m": "r"}, [10, 40])
    assert fig.axes and len(fig.axes) == 2 * 3
    plt.close("all")
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]
