"""Tests of lib.chapters.differentiable_dp.smooth_dp: max operators, DTW_Omega and Vit_Omega against
brute force and references."""

import itertools
import math

import numpy as np
import pytest
import torch

from lib.chapters.differentiable_dp import smooth_dp as sd

REGS = ("entropy", "l2")


@pytest.fixture(autouse=True)
def float64():
    """Run every test of this file in float64, restoring the global default afterwards."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def fd_grad(f, x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Central finite-difference gradient of f at x; f maps a batch (K, *x.shape) to values (K,)."""
    k = x.numel()
    eye = torch.eye(k, dtype=x.dtype).reshape(k, *x.shape)
    vals = f(torch.cat([x + eps * eye, x - eps * eye]))
    return ((vals[:k] - vals[k:]) / (2 * eps)).reshape(x.shape)


# ---------------------------------------------------------------- max operators


@pytest.mark.parametrize("gamma", [0.1, 1.0, 3.0])
def test_entropy_max_is_scaled_logsumexp(gamma):
    x = torch.randn(5, 4)
    val, q = sd.max_op(x, gamma, "entropy")
    torch.testing.assert_close(val, gamma * torch.logsumexp(x / gamma, -1))
    torch.testing.assert_close(q, torch.softmax(x / gamma, -1))


@pytest.mark.parametrize("reg", REGS)
@pytest.mark.parametrize("gamma", [0.3, 1.0])
def test_max_op_gradient_matches_finite_differences(reg, gamma):
    torch.manual_seed(1)
    x = torch.randn(6)
    _, q = sd.max_op(x, gamma, reg)
    torch.testing.assert_close(
        q, fd_grad(lambda z: sd.max_op(z, gamma, reg)[0], x), atol=1e-6, rtol=0
    )


def test_sparsemax_is_a_sparse_projection():
    z = torch.tensor([[0.0, 10.0, 0.0], [0.2, 0.1, -5.0], [1.0, 1.0, 1.0]])
    q = sd.sparsemax(z)
    torch.testing.assert_close(q.sum(-1), torch.ones(3))
    assert torch.equal(q[0], torch.tensor([0.0, 1.0, 0.0]))  # exactly one-hot
    torch.testing.assert_close(
        q[1], torch.tensor([0.55, 0.45, 0.0])
    )  # closed form (z1 - z2 + 1) / 2
    assert q[1, 2] == 0.0
    torch.testing.assert_close(q[2], torch.full((3,), 1 / 3))


def test_sparsemax_ignores_minus_infinity():
    q = sd.sparsemax(torch.tensor([-math.inf, 0.3, -math.inf]))
    assert torch.equal(q, torch.tensor([0.0, 1.0, 0.0]))


@pytest.mark.parametrize("reg", REGS)
def test_max_op_tends_to_max_as_gamma_vanishes(reg):
    torch.manual_seed(2)
    x = torch.randn(20, 5)
    hard = x.max(-1).values
    for gamma in [1.0, 0.1, 0.01, 0.001]:
        val, _ = sd.max_op(x, gamma, reg)
        lo, hi = sd.omega_range(5, gamma, reg)
        assert torch.all(val >= hard - hi - 1e-12) and torch.all(val <= hard - lo + 1e-12)
    assert torch.allclose(sd.max_op(x, 1e-4, reg)[0], hard, atol=1e-3)


# ---------------------------------------------------------------- DTW


def monotone_paths(n: int, m: int) -> list[np.ndarray]:
    """All DTW alignment matrices of an n x m grid (steps right, down, diagonal)."""
    out = []

    def walk(i, j, cells):
        if (i, j) == (n - 1, m - 1):
            a = np.zeros((n, m))
            for c in cells:
                a[c] = 1
            out.append(a)
            return
        for di, dj in ((0, 1), (1, 1), (1, 0)):
            if i + di < n and j + dj < m:
                walk(i + di, j + dj, cells + [(i + di, j + dj)])

    walk(0, 0, [(0, 0)])
    return out


def dtw_cellwise(theta: np.ndarray, gamma: float, reg: str) -> float:
    """DTW_Omega by the textbook cell-by-cell loop (an independent reference)."""
    n, m = theta.shape
    v = np.full((n + 1, m + 1), -np.inf)
    v[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            x = torch.tensor([v[i, j - 1], v[i - 1, j - 1], v[i - 1, j]])
            v[i, j] = theta[i - 1, j - 1] + float(sd.max_op(x, gamma, reg)[0])
    return v[n, m]


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_dtw_entropy_equals_path_enumeration(gamma):
    torch.manual_seed(3)
    theta = torch.randn(3, 4, 5)
    paths = torch.tensor(np.stack(monotone_paths(4, 5)))  # (P, 4, 5)
    scores = torch.einsum("pnm,bnm->bp", paths, theta) / gamma
    ref_val = gamma * torch.logsumexp(scores, -1)
    ref_grad = torch.einsum("bp,pnm->bnm", torch.softmax(scores, -1), paths)
    val, grad = sd.dtw_value_and_grad(theta, gamma, "entropy")
    torch.testing.assert_close(val, ref_val)
    torch.testing.assert_close(grad, ref_grad)


def test_dtw_hard_equals_best_path():
    torch.manual_seed(4)
    theta = torch.randn(2, 4, 3)
    paths = torch.tensor(np.stack(monotone_paths(4, 3)))
    scores = torch.einsum("pnm,bnm->bp", paths, theta)
    val, grad = sd.dtw_value_and_grad(theta, 1.0, "hard")
    torch.testing.assert_close(val, scores.max(-1).values)
    torch.testing.assert_close(grad, paths[scores.argmax(-1)])


@pytest.mark.parametrize("shape", [(1, 1), (1, 4), (4, 1), (3, 5), (6, 4)])
@pytest.mark.parametrize("reg", REGS)
def test_dtw_matches_cellwise_loop_and_finite_differences(shape, reg):
    torch.manual_seed(5)
    theta = torch.randn(1, *shape)
    val, grad = sd.dtw_value_and_grad(theta, 0.7, reg)
    assert float(val) == pytest.approx(dtw_cellwise(theta[0].numpy(), 0.7, reg), abs=1e-12)
    fd = fd_grad(lambda t: sd.dtw_forward(t, 0.7, reg, keep=False)[0], theta[0])[None]
    torch.testing.assert_close(grad, fd, atol=1e-6, rtol=0)


@pytest.mark.parametrize("reg", REGS)
def test_dtw_autograd_function_uses_correct_backward(reg):
    torch.manual_seed(6)
    theta = torch.randn(2, 4, 3, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: sd.dtw(t, 0.5, reg), (theta,))


@pytest.mark.parametrize("reg", REGS)
def test_backward_recursion_equals_autograd_through_the_loop(reg):
    torch.manual_seed(20)
    theta = torch.randn(3, 7, 9, requires_grad=True)
    val, _ = sd.dtw_forward(
        theta, 0.5, reg, keep=False
    )  # autograd records every anti-diagonal step
    ref = torch.autograd.grad(val.sum(), theta)[0]
    torch.testing.assert_close(sd.dtw_value_and_grad(theta.detach(), 0.5, reg)[1], ref)


@pytest.mark.parametrize("gamma", [0.01, 0.1, 1.0, 10.0])
def test_soft_dtw_equals_tslearn(gamma):
    tsm = pytest.importorskip("tslearn.metrics")
    rng = np.random.default_rng(7)
    x, y = sd.random_walks(rng, 1, 12, 2), sd.random_walks(rng, 1, 17, 2)
    align, ref = tsm.soft_dtw_alignment(x[0].numpy(), y[0].numpy(), gamma=gamma)
    val, grad = sd.dtw_value_and_grad(-sd.sq_dists(x, y), gamma, "entropy")
    assert -float(val) == pytest.approx(ref, rel=1e-10)
    np.testing.assert_allclose(grad[0].numpy(), align, atol=1e-8)
    assert float(sd.soft_dtw(x, y, gamma)) == pytest.approx(
        tsm.soft_dtw(x[0].numpy(), y[0].numpy(), gamma=gamma)
    )


def test_hard_dtw_equals_tslearn_dtw_squared():
    tsm = pytest.importorskip("tslearn.metrics")
    rng = np.random.default_rng(8)
    x, y = sd.random_walks(rng, 1, 20), sd.random_walks(rng, 1, 9)
    ref = tsm.dtw(x[0].numpy(), y[0].numpy()) ** 2
    assert float(sd.soft_dtw(x, y, 1.0, "hard")) == pytest.approx(ref, rel=1e-12)


@pytest.mark.parametrize("reg", REGS)
def test_dtw_bounds_hold_on_random_instances(reg):
    torch.manual_seed(9)
    for n, m in [(1, 1), (3, 7), (10, 10), (25, 4)]:
        theta = 3 * torch.randn(30, n, m)
        hard = sd.dtw_value_and_grad(theta, 1.0, "hard")[0]
        for gamma in [0.1, 1.0, 10.0]:
            gap = sd.dtw_value_and_grad(theta, gamma, reg)[0] - hard
            lo, hi = sd.dtw_bounds(n, m, gamma, reg)
            assert torch.all(gap >= lo - 1e-9) and torch.all(gap <= hi + 1e-9)


def test_l2_alignment_is_sparse_and_entropy_dense():
    rng = np.random.default_rng(10)
    x, y = sd.random_walks(rng, 1, 15), sd.random_walks(rng, 1, 12)
    _, a_l2 = sd.dtw_value_and_grad(-sd.sq_dists(x, y), 1.0, "l2")
    _, a_ent = sd.dtw_value_and_grad(
        -sd.sq_dists(x, y) / 1e3, 1.0, "entropy"
    )  # mild scale: no underflow
    assert (a_l2 == 0).double().mean() > 0.5  # exact zeros, not small numbers
    assert torch.all(a_ent > 0)
    # every row and column is covered by the alignment, with mass at least 1
    assert torch.all(a_l2.sum(-1) >= 1 - 1e-9) and torch.all(a_l2.sum(-2) >= 1 - 1e-9)


def test_dtw_cdist_matches_pairwise_values():
    rng = np.random.default_rng(11)
    x, y = sd.random_walks(rng, 3, 8), sd.random_walks(rng, 2, 6)
    d = sd.dtw_cdist(x, y, 0.5, "entropy", chunk=4)
    for i in range(3):
        for k in range(2):
            assert float(d[i, k]) == pytest.approx(
                float(sd.soft_dtw(x[i : i + 1], y[k : k + 1], 0.5))
            )


def test_barycenter_lowers_the_soft_dtw_objective():
    rng = np.random.default_rng(12)
    x = sd.random_walks(rng, 4, 8)
    init = x.mean(0)
    z, _ = sd.barycenter(x, 1.0, "entropy", init, max_iter=10)
    before = sd.soft_dtw(init[None].expand(4, -1, -1), x, 1.0).mean()
    after = sd.soft_dtw(z[None].expand(4, -1, -1), x, 1.0).mean()
    assert after < before - 1e-3


# ---------------------------------------------------------------- compiled kernel and dispatch


@pytest.mark.parametrize("reg", ("hard", "entropy", "l2"))
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 1, 6), (2, 7, 5), (4, 13, 9)])
def test_numba_kernel_equals_torch_recursion(reg, shape):
    torch.manual_seed(30)
    theta = 3 * torch.randn(*shape)
    v_t, g_t = sd.dtw_value_and_grad(theta, 0.6, reg, backend="torch")
    v_n, g_n = sd.dtw_value_and_grad(theta, 0.6, reg, backend="numba")
    torch.testing.assert_close(v_n, v_t, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_n, g_t, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sd.dtw_value(theta, 0.6, reg, backend="numba"), v_t)


@pytest.mark.parametrize("reg", ("entropy", "l2"))
def test_numba_kernel_float32_and_large_costs(reg):
    rng = np.random.default_rng(31)
    x, y = sd.random_walks(rng, 2, 60), sd.random_walks(rng, 2, 45)
    theta = -sd.sq_dists(x, y)  # costs in the thousands: exp underflows (flushed to zero)
    v_t, g_t = sd.dtw_value_and_grad(theta, 0.1, reg, backend="torch")
    v_n, g_n = sd.dtw_value_and_grad(theta, 0.1, reg, backend="numba")
    torch.testing.assert_close(v_n, v_t, rtol=1e-12, atol=1e-9)
    # l2 weights come from differences of z = x / gamma ~ 1e5 here: rounding ~ 1e5 * 2e-16
    torch.testing.assert_close(g_n, g_t, rtol=0, atol=1e-10)
    v32, g32 = sd.dtw_value_and_grad(theta.float(), 0.1, reg, backend="numba")
    assert v32.dtype == torch.float32
    torch.testing.assert_close(v32.double(), v_t, rtol=1e-5, atol=1e-3)


def test_auto_backend_picks_the_kernel_on_cpu_and_torch_for_huge_batches(monkeypatch):
    theta = torch.randn(2, 5, 4)
    assert sd.use_numba(theta)
    monkeypatch.setattr(sd, "NUMBA_MAX_CELLS", 10)
    assert not sd.use_numba(theta)
    assert not sd.use_numba(theta.to(torch.int64))


# ---------------------------------------------------------------- second order


def hvp_by_fd(grad_fn, theta: torch.Tensor, z: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Central finite difference of a gradient along z: (grad(theta + eps z) - grad(theta - eps
    z)) / 2 eps."""
    return (grad_fn(theta + eps * z) - grad_fn(theta - eps * z)) / (2 * eps)


@pytest.mark.parametrize("reg", ("hard", "entropy", "l2"))
def test_dtw_double_backward_is_the_hessian_vector_product(reg):
    torch.manual_seed(32)
    theta, z = torch.randn(3, 6, 5), torch.randn(3, 6, 5)
    t = theta.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(sd.dtw(t, 0.7, reg).sum(), t, create_graph=True)
    (hz,) = torch.autograd.grad((g * z).sum(), t)
    fd = hvp_by_fd(lambda th: sd.dtw_value_and_grad(th, 0.7, reg)[1], theta, z)
    torch.testing.assert_close(hz, fd, atol=1e-7, rtol=0)
    if reg != "hard":  # autograd through the recorded loop, twice: an independent reference
        t2 = theta.clone().requires_grad_(True)
        (g2,) = torch.autograd.grad(sd.dtw_forward(t2, 0.7, reg)[0].sum(), t2, create_graph=True)
        (ref,) = torch.autograd.grad((g2 * z).sum(), t2)
        torch.testing.assert_close(hz, ref, atol=1e-12, rtol=0)
        assert hz.abs().max() > 1e-3  # not trivially zero


@pytest.mark.parametrize("reg", ("entropy", "l2"))
@pytest.mark.parametrize("masked", [False, True])
def test_viterbi_double_backward_is_the_hessian_vector_product(reg, masked):
    torch.manual_seed(33)
    theta, z = torch.randn(3, 6, 4, 4), torch.randn(3, 6, 4, 4)
    mask = None
    if masked:
        mask = torch.ones(3, 6, dtype=torch.bool)
        mask[1, 4:] = False
    t = theta.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(sd.viterbi(t, 0.7, reg, mask).sum(), t, create_graph=True)
    (hz,) = torch.autograd.grad((g * z).sum(), t)
    fd = hvp_by_fd(lambda th: sd.viterbi_marginals(th, 0.7, reg, mask)[1], theta, z)
    torch.testing.assert_close(hz, fd, atol=1e-7, rtol=0)
    assert hz.abs().max() > 1e-3


def test_entropy_dtw_hessian_is_symmetric_and_psd():
    torch.manual_seed(34)
    theta = torch.randn(1, 4, 3)
    t = theta.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(sd.dtw(t, 1.0, "entropy").sum(), t, create_graph=True)
    rows = [torch.autograd.grad(g.reshape(-1)[k], t, retain_graph=True)[0] for k in range(12)]
    h = torch.stack([r.reshape(-1) for r in rows])
    torch.testing.assert_close(h, h.T, atol=1e-12, rtol=0)
    assert torch.linalg.eigvalsh(h).min() > -1e-12  # DTW_Omega is convex in theta


# ---------------------------------------------------------------- Viterbi


def viterbi_brute(theta: torch.Tensor, gamma: float, reg: str):
    """Enumerate all S^T tag sequences: (value, unary marginals) for 'entropy' or 'hard'."""
    t_len, s = theta.shape[0], theta.shape[1]
    seqs = torch.tensor(list(itertools.product(range(s), repeat=t_len)))
    prev = torch.cat([torch.zeros_like(seqs[:, :1]), seqs[:, :-1]], 1)
    scores = theta[torch.arange(t_len), seqs, prev].sum(-1)
    onehot = torch.nn.functional.one_hot(seqs, s).to(theta.dtype)
    if reg == "hard":
        return scores.max(), onehot[scores.argmax()]
    p = torch.softmax(scores / gamma, 0)
    return gamma * torch.logsumexp(scores / gamma, 0), torch.einsum("p,pts->ts", p, onehot)


@pytest.mark.parametrize("reg,gamma", [("entropy", 1.0), ("entropy", 0.4), ("hard", 1.0)])
def test_viterbi_equals_enumeration(reg, gamma):
    torch.manual_seed(13)
    theta = torch.randn(2, 4, 3, 3)
    val, marg = sd.viterbi_marginals(theta, gamma, reg)
    for b in range(2):
        ref_val, ref_unary = viterbi_brute(theta[b], gamma, reg)
        torch.testing.assert_close(val[b], ref_val)
        torch.testing.assert_close(marg[b].sum(-1), ref_unary)


def viterbi_cellwise(theta: np.ndarray, gamma: float, reg: str) -> float:
    """Vit_Omega by an explicit loop over time and states (an independent reference)."""
    t_len, s = theta.shape[:2]
    v = theta[0, :, 0].copy()
    for t in range(1, t_len):
        v = np.array(
            [float(sd.max_op(torch.tensor(theta[t, i] + v), gamma, reg)[0]) for i in range(s)]
        )
    return float(sd.max_op(torch.tensor(v), gamma, reg)[0])


@pytest.mark.parametrize("reg", REGS)
def test_viterbi_matches_loop_and_finite_differences(reg):
    torch.manual_seed(14)
    theta = torch.randn(1, 5, 3, 3)
    val, marg = sd.viterbi_marginals(theta, 0.8, reg)
    assert float(val) == pytest.approx(viterbi_cellwise(theta[0].numpy(), 0.8, reg), abs=1e-12)
    fd = fd_grad(lambda t: sd.viterbi_forward(t, 0.8, reg)[0], theta[0])[None]
    torch.testing.assert_close(marg, fd, atol=1e-6, rtol=0)
    assert torch.autograd.gradcheck(
        lambda t: sd.viterbi(t, 0.8, reg), (theta.clone().requires_grad_(True),)
    )


@pytest.mark.parametrize("reg", ("hard", "entropy", "l2"))
def test_viterbi_mask_equals_unpadded(reg):
    torch.manual_seed(15)
    theta = torch.randn(2, 6, 3, 3)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2]).bool()
    val, marg = sd.viterbi_marginals(theta, 1.0, reg, mask)
    short_val, short_marg = sd.viterbi_marginals(theta[1:, :4], 1.0, reg)
    torch.testing.assert_close(val[1], short_val[0])
    torch.testing.assert_close(marg[1, :4], short_marg[0])
    assert torch.all(marg[1, 4:] == 0)


def test_viterbi_entropy_is_crf_log_partition_and_decodes_like_crf():
    torchcrf = pytest.importorskip("torchcrf")
    torch.manual_seed(16)
    crf = torchcrf.CRF(5, batch_first=True).double()
    em = torch.randn(3, 12, 5, requires_grad=True)
    theta = sd.crf_potentials(em, crf.transitions, crf.start_transitions, crf.end_transitions)
    full = torch.ones(12, 3, dtype=torch.bool)
    log_z = crf._compute_normalizer(em.transpose(0, 1), full)
    torch.testing.assert_close(sd.viterbi(theta, 1.0, "entropy"), log_z, atol=1e-10, rtol=0)
    unary_ref = torch.autograd.grad(log_z.sum(), em)[0]  # d log Z / d emissions = unary marginals
    _, marg = sd.viterbi_marginals(theta.detach(), 1.0, "entropy")
    torch.testing.assert_close(marg.sum(-1), unary_ref, atol=1e-10, rtol=0)
    assert sd.viterbi_decode(theta.detach()).tolist() == crf.decode(em.detach())


@pytest.mark.parametrize("reg", REGS)
def test_viterbi_bounds(reg):
    torch.manual_seed(17)
    theta = 2 * torch.randn(100, 7, 5, 5)
    hard = sd.viterbi_marginals(theta, 1.0, "hard")[0]
    for gamma in [0.1, 1.0, 10.0]:
        gap = sd.viterbi_marginals(theta, gamma, reg)[0] - hard
        lo, hi = sd.viterbi_bounds(7, 5, gamma, reg)
        assert torch.all(gap >= lo - 1e-9) and torch.all(gap <= hi + 1e-9)


def test_l2_viterbi_marginals_are_sparse():
    torch.manual_seed(18)
    theta = 3 * torch.randn(4, 10, 6, 6)
    _, m_l2 = sd.viterbi_marginals(theta, 1.0, "l2")
    _, m_ent = sd.viterbi_marginals(theta, 1.0, "entropy")
    assert (m_l2.sum(-1) == 0).double().mean() > 0.5
    assert torch.all(m_ent.sum(-1) > 0)
    torch.testing.assert_close(m_l2.sum((-1, -2)), torch.ones(4, 10))  # one tag per position


def test_tagger_entropy_loss_is_crf_negative_log_likelihood():
    torchcrf = pytest.importorskip("torchcrf")
    from lib.chapters.differentiable_dp import tagger

    sents = [
        (["The", "cat", "sat", "."], ["DET", "NOUN", "VERB", "PUNCT"]),
        (["Dogs", "bark"], ["NOUN", "VERB"]),
    ]
    vocab = tagger.build_vocab(sents, ["DET", "NOUN", "VERB", "PUNCT"], min_count=1)
    torch.manual_seed(19)
    model = tagger.WindowTagger(vocab, dim=8, hidden=8).double().eval()
    with torch.no_grad():
        model.trans.normal_()
        model.start.normal_()
    batch = tagger.encode(sents, vocab)
    crf = torchcrf.CRF(4, batch_first=True).double()
    with torch.no_grad():
        crf.transitions.copy_(model.trans.T)  # torchcrf: transitions[from, to]
        crf.start_transitions.copy_(model.start)
        crf.end_transitions.zero_()
    nll = -crf(model.unaries(batch), batch.tags, batch.mask.to(torch.uint8), reduction="mean")
    torch.testing.assert_close(tagger.loss_fn(model, batch, "entropy", 1.0), nll)


# ---------------------------------------------------------------- tagger training and scoring

TINY = [
    (["The", "cat", "sat", "."], ["DET", "NOUN", "VERB", "PUNCT"]),
    (["Dogs", "bark", "."], ["NOUN", "VERB", "PUNCT"]),
    (
        ["A", "dog", "sat", "on", "the", "mat", "."],
        ["DET", "NOUN", "VERB", "ADP", "DET", "NOUN", "PUNCT"],
    ),
    (["Cats", "sleep"], ["NOUN", "VERB"]),
    (["The", "mat", "is", "red", "."], ["DET", "NOUN", "AUX", "ADJ", "PUNCT"]),
]


def old_training_loop(train_s, test_s, vocab, kind, epochs, seed):
    """The chapter's hand-written loop before the port to lib.core.train.fit (reference)."""
    from lib.chapters.differentiable_dp import tagger

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = tagger.WindowTagger(vocab)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    test = [tagger.encode(g, vocab) for g in tagger.batches(test_s, 256, None)]
    accs = []
    for _ in range(epochs):
        model.train()
        for group in tagger.batches(train_s, 2, rng):
            opt.zero_grad()
            tagger.loss_fn(model, tagger.encode(group, vocab), kind, 1.0).backward()
            opt.step()
        model.eval()
        hit = sum(int(((tagger.predict(model, b, kind) == b.tags) & b.mask).sum()) for b in test)
        accs.append(hit / sum(int(b.mask.sum()) for b in test))
    return accs


@pytest.mark.parametrize("kind", ["softmax", "l2"])
def test_tagger_port_to_fit_keeps_the_numbers(kind):
    from lib.chapters.differentiable_dp import tagger

    torch.set_default_dtype(torch.float32)
    vocab = tagger.build_vocab(TINY, tagger.UPOS, min_count=1)
    ref = old_training_loop(TINY, TINY[:3], vocab, kind, 3, seed=5)
    run = tagger.train(TINY, TINY[:3], vocab, kind, 1.0, 3, 0.01, 2, 5)
    assert run["acc"] == ref  # same draws, same updates, same accuracies, bit for bit
    assert 0 <= run["acc0"] <= 1
    assert run["correct"].mean() == ref[-1]
    assert len(run["correct"]) == sum(len(w) for w, _ in TINY[:3])


def test_token_order_matches_sentences():
    from lib.chapters.differentiable_dp import tagger

    vocab = tagger.build_vocab(TINY, tagger.UPOS, min_count=1)
    groups = tagger.token_sentences(TINY)
    gold = tagger.correct_items(
        lambda b: b.tags, tagger.test_batches(TINY, vocab), lambda b: b.tags, lambda b: b.mask
    )
    assert gold.all() and len(gold) == len(groups)
    # each sentence's tokens are contiguous and as many as its words
    for s in range(len(TINY)):
        where = np.flatnonzero(groups == s)
        assert len(where) == len(TINY[s][0]) and np.all(np.diff(where) == 1)
    # and in that order the gold tags are the sentences' tags
    order = list(dict.fromkeys(groups.tolist()))
    ix = {t: i for i, t in enumerate(vocab.tags)}
    flat = [ix[t] for s in order for t in TINY[s][1]]
    tags = torch.cat([b.tags[b.mask] for b in tagger.test_batches(TINY, vocab)])
    assert tags.tolist() == flat


def test_marginal_nonzeros_sparse_for_l2_dense_for_entropy():
    from lib.chapters.differentiable_dp import tagger

    torch.set_default_dtype(torch.float32)
    vocab = tagger.build_vocab(TINY, tagger.UPOS, min_count=1)
    torch.manual_seed(0)
    model = tagger.WindowTagger(vocab).eval()
    with torch.no_grad():
        model.out.weight.mul_(30)  # peaked scores: sparsemax zeroes most tags
    batch = tagger.encode(TINY, vocab)
    l2 = tagger.marginal_nonzeros(model, batch, "l2", 1.0)
    ent = tagger.marginal_nonzeros(model, batch, "entropy", 1.0)
    assert len(l2) == int(batch.mask.sum())
    assert np.all(ent == 1.0) and l2.mean() < 0.5 and np.all(l2 >= 1 / len(vocab.tags))


# ---------------------------------------------------------------- the chapter's estimates


def test_alignment_nonzeros_per_pair_pool_to_density():
    from lib.chapters.differentiable_dp import study

    rng = np.random.default_rng(20)
    cost = sd.sq_dists(sd.random_walks(rng, 5, 12), sd.random_walks(rng, 5, 15))
    cost = cost / cost.mean((1, 2), keepdim=True)
    per_pair = sd.alignment_nonzeros(-cost, 1.0, "l2")
    pooled = sd.density(sd.dtw_value_and_grad(-cost, 1.0, "l2")[1])
    assert per_pair.mean() == pytest.approx(pooled)  # equal-sized grids: mean of means
    est = study.alignment_sparsity(cost, 1.0, "l2")
    assert est.ci[0] <= est.value <= est.ci[1] and est.value < 0.5
    assert study.alignment_sparsity(cost, 1.0, "entropy").value == pytest.approx(1.0)


def test_tag_difference_is_paired_and_signed():
    from lib.chapters.differentiable_dp import study

    rng = np.random.default_rng(21)
    groups = np.repeat(np.arange(40), 5)
    base = rng.random((3, 200)) < 0.8
    better = base | (rng.random((3, 200)) < 0.5)  # never worse on any token
    runs = {
        "a": [{"correct": row} for row in better],
        "b": [{"correct": row} for row in base],
    }
    est = study.tag_difference(runs, "a", "b", groups)
    assert est.value == pytest.approx(100 * (better.mean() - base.mean()))
    assert est.n_seeds == 3 and 0 < est.ci[0] <= est.value <= est.ci[1]
    same = study.tag_difference(runs, "a", "a", groups)
    assert same.value == 0 and same.ci == (0.0, 0.0)  # paired: no noise from the items


def test_convergence_and_majority_margins():
    from lib.chapters.differentiable_dp import study

    runs = {
        k: [{"acc0": 0.1, "acc": [0.5, 0.80, 0.81], "correct": np.array([1, 1, 1, 0])}] * 2
        for k in ("entropy", "l2")
    }
    assert study.last_epoch_change(runs) == pytest.approx(1.0)
    one_epoch = {k: [{"acc0": 0.1, "acc": [0.8]}] for k in ("entropy", "l2")}
    assert study.last_epoch_change(one_epoch) == pytest.approx(70.0)  # from the untrained start
    train = [(["a", "b", "c", "d"], ["NOUN", "NOUN", "NOUN", "VERB"])]
    test = [(["a", "b", "c", "d"], ["NOUN", "VERB", "VERB", "VERB"])]  # majority: 25 %
    assert study.majority_margin(runs, train, test) == pytest.approx(50.0)


def test_l2_never_denser_reads_every_column():
    import pandas as pd

    from lib.chapters.differentiable_dp import study

    rows = [
        {"gamma": 1.0, "reg": "entropy", "A": 1.0, "B": 1.0},
        {"gamma": 1.0, "reg": "l2", "A": 0.3, "B": 0.4},
    ]
    assert study.l2_never_denser(pd.DataFrame(rows))
    rows[1]["B"] = 1.2
    assert not study.l2_never_denser(pd.DataFrame(rows))


def test_barycenter_study_scores_per_item():
    from lib.chapters.differentiable_dp import study

    rng = np.random.default_rng(22)
    x = torch.cat([sd.random_walks(rng, 6, 10), 5 + sd.random_walks(rng, 6, 10)])
    y = np.repeat([1, 2], 6)
    bary = sd.barycenter_study(x, y, x, y, 1.0, 3)
    for res in bary.values():
        assert res["own"].mean() == pytest.approx(res["inertia"])
        assert res["correct"].mean() == pytest.approx(res["accuracy"])
    assert study.barycenters_descend(bary)
    ratio = study.inertia_ratio(bary, "soft-DTW (entropy)")
    own = bary["soft-DTW (entropy)"]["own"].mean() / bary["Euclidean mean"]["own"].mean()
    assert ratio.value == pytest.approx(own) and ratio.ci[0] <= ratio.value <= ratio.ci[1]
    gain = study.accuracy_gain(bary, "soft-DTW (entropy)")
    assert gain.value == pytest.approx(
        bary["soft-DTW (entropy)"]["accuracy"] - bary["Euclidean mean"]["accuracy"]
    )


def test_verdict_phrase_quotes_the_recorded_verdict():
    from lib.chapters.differentiable_dp import study

    found = [{"name": "x", "verdict": "partly", "value": 0.25, "ci": (0.2, 0.3)}]
    assert study.verdict_phrase(found, "x") == "**partly** (0.25 [0.2, 0.3])"


def test_summary_texts_quote_every_glued_finding():
    from lib.chapters.differentiable_dp import study

    names = [
        "l2_alignment_sparse",
        "tag_l2_marginals_sparse",
        "tag_l2_minus_entropy",
        "bary_inertia_ratio",
        "bary_accuracy_soft_minus_euclid",
        "align_entropy_minus_baseline",
        "align_l2_minus_baseline",
        "attn_l2_sparse",
        "attn_l2_minus_softmax",
    ]
    verdicts = ["reproduced", "partly", "inconclusive", "not reproduced", "reproduced"]
    verdicts += ["inconclusive", "not reproduced", "reproduced", "partly"]
    found = [{"name": n, "verdict": v, "value": 0.5, "ci": None} for n, v in zip(names, verdicts)]
    texts = study.summary_texts(found)
    assert texts["tag_summary"] == "**inconclusive** (0.5)"
    assert (
        "**not reproduced**" in texts["bary_summary"] and "**reproduced**" in texts["bary_summary"]
    )
    assert texts["align_summary"] == (
        "negentropy **inconclusive** (0.5), squared l2 **not reproduced** (0.5)"
    )
    assert "**reproduced**" in texts["attn_summary"] and "**partly**" in texts["attn_summary"]
    assert set(texts) == {
        "headline_verdict",
        "tag_sparse",
        "tag_summary",
        "bary_summary",
        "align_summary",
        "attn_summary",
    }


# ---------------------------------------------------------------- audio-to-score alignment


def test_synthetic_pieces_are_monotone_performances_of_their_scores():
    from lib.chapters.differentiable_dp import align

    rng = np.random.default_rng(40)
    temps = align.templates(rng, 5, 7)
    for p in align.make_pieces(rng, temps, 10, 12, 4.0, 0.5):
        a = p.note_of_frame.numpy()
        assert a[0] == 0 and a[-1] == 11 and np.all(np.diff(a) >= 0) and np.all(np.diff(a) <= 1)
        assert torch.all(p.pitches[1:] != p.pitches[:-1])  # no pitch twice in a row
        y = p.alignment()
        assert torch.equal(y.sum(1), torch.ones(len(a)))  # one note per frame
        assert torch.all(y.sum(0) >= 1)  # every note played
        np.testing.assert_array_equal(align.true_onsets(p), np.searchsorted(a, np.arange(12)))


def test_oracle_scores_align_exactly_and_training_beats_the_uniform_guess():
    from lib.chapters.differentiable_dp import align

    rng = np.random.default_rng(41)
    temps = align.templates(rng, 6, 10)
    clean = align.make_pieces(rng, temps, 5, 10, 5.0, 0.0)
    for p in clean:  # minus distances of normalised frames to the notes' templates: exact onsets
        unit = p.frames / p.frames.norm(dim=1, keepdim=True)
        theta = -sd.sq_dists(unit[None], temps[p.pitches][None])[0]
        np.testing.assert_array_equal(align.path_onsets(theta), align.true_onsets(p))
    train_p = align.make_pieces(rng, temps, 30, 10, 5.0, 0.3)
    test_p = align.make_pieces(rng, temps, 10, 10, 5.0, 0.3)
    null = align.uniform_error(test_p).mean()
    for kind in align.KINDS:
        model = align.train(kind, train_p, 6, 5, 0.05, 1.0, seed=0)
        assert align.evaluate(model, test_p, kind == "baseline").mean() < 0.5 * null


# ---------------------------------------------------------------- structured attention


def test_stretch_task_doubles_the_upper_half_along_a_monotone_alignment():
    from lib.chapters.differentiable_dp import attention

    x, y, align = attention.make_batch(torch.Generator().manual_seed(0), 16, 6, 2, 8)
    assert y.shape == (16, 8) and align.shape == (16, 8, 6)
    assert torch.all((x >= 4).sum(1) == 2)
    for xi, yi, ai in zip(x, y, align):
        expect = [t for t in xi.tolist() for _ in range(2 if t >= 4 else 1)]
        assert yi.tolist() == expect
        src = ai.argmax(1)
        assert torch.all(src.diff() >= 0) and src[0] == 0 and src[-1] == 5
        torch.testing.assert_close(torch.einsum("mn,n->m", ai, xi.double()), yi.double())


@pytest.mark.parametrize("reg", REGS)
def test_dtw_attention_is_an_alignment_and_differentiable(reg):
    torch.manual_seed(42)
    theta = torch.randn(2, 5, 4, requires_grad=True)
    alpha = sd.dtw_grad(theta, 0.8, reg)
    torch.testing.assert_close(alpha, sd.dtw_value_and_grad(theta.detach(), 0.8, reg)[1])
    assert torch.all(alpha.sum(-1) >= 1 - 1e-12)  # every output position attends
    assert torch.autograd.gradcheck(lambda t: sd.dtw_grad(t, 0.8, reg), (theta,))


def test_attention_models_train_and_l2_maps_are_sparse():
    from lib.chapters.differentiable_dp import attention

    test = attention.make_batch(torch.Generator().manual_seed(1), 20, 5, 2, 6)
    out = {
        k: attention.train_and_test(k, 0, 5, 2, 6, 8, 5, 8, 3e-3, 1.0, test)
        for k in attention.KINDS
    }
    for r in out.values():
        assert r["token_acc"].shape == (20,) and np.all(
            (0 <= r["token_acc"]) & (r["token_acc"] <= 1)
        )
    assert np.all(out["softmax"]["nonzeros"] == 1.0)
    assert out["l2"]["nonzeros"].mean() < out["entropy"]["nonzeros"].mean()
