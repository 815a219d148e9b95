"""Heavy-tailed class imbalance: why Adam beats GD on linear softmax models.

Library code for the chapter reproducing Kunstner, Yadav, Milligan, Schmidt and Bietti
(2024), arXiv:2402.19449.  It holds the synthetic data set of the authors' code
(``BalancedXImbalancedY``: m tiers, tier i has 2^i classes of 2^(m-i) samples, inputs
uniform on [0, 1)), full-batch training of many runs stacked in one linear model, the
authors' learning-rate selection rule, the continuous-time theory of their Section 3.3,
per-class gradient and Hessian statistics, a bigram next-token model on WikiText-2, and the
estimates (with intervals from :mod:`lib.book.stats`) that feed the chapter's findings.

Training here does not go through :func:`lib.core.train.fit`, on purpose: every function
trains a whole learning-rate grid as *one* stacked model (a run axis in every tensor), with
closed-form gradients (two matrix products per full-batch step) and one
:class:`~lib.core.optim.StackedOptimizer` that gives each run its own optimizer and learning
rate.  ``fit`` trains one model with one ``torch.optim`` optimizer through autograd; running
the grid through it would cost one model per run and autograd's dense (runs x c x d)
temporaries, many times the time of one stacked step (``benchmarks/heavy_tail_step.py``).
The bigram model is minibatch but stacked in the same way, for the same reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import stats as _st

from lib.book import stats
from lib.core.optim import LABELS, StackedOptimizer

# --------------------------------------------------------------------------- data


def sizes(m: int) -> tuple[int, int, int]:
    """(samples n, classes c, input dimension d) of the synthetic problem with m tiers."""
    return m * 2**m, 2**m - 1, (m + 1) * 2**m


def class_tiers(m: int) -> torch.Tensor:
    """Tier of each class (class 0 is the most frequent; tier i holds 2^i classes)."""
    return torch.repeat_interleave(torch.arange(m), 2 ** torch.arange(m))


def class_counts(m: int) -> torch.Tensor:
    """Number of samples of each class: 2^(m - tier)."""
    return 2 ** (m - class_tiers(m))


def make_labels(m: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Labels of the n samples, sorted by class (class k repeated class_counts[k] times)."""
    c = 2**m - 1
    return torch.repeat_interleave(torch.arange(c), class_counts(m)).to(device)


def make_inputs(
    m: int, gen: torch.Generator, device: torch.device | str = "cpu", centred: bool = False
) -> torch.Tensor:
    """Inputs i.i.d. uniform on [0, 1) (or on [-1/2, 1/2) if centred), float32, on the device,
    drawn from ``gen`` (which the initialisation then continues: see :func:`make_problem`)."""
    n, _, d = sizes(m)
    x = torch.rand(n, d, generator=gen, device=device, dtype=torch.float32)
    return x.sub_(0.5) if centred else x


def make_problem(
    m: int, seed: int, device: torch.device | str = "cpu", centred: bool = False
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Inputs, labels and the initial (W, b) of one seed, drawn from ONE random stream: the
    data first, then the initialisation, as in the authors' code (seed, then data, then model).

    Two generators started from the same seed would give the same numbers to the data and the
    weights: row k of W would be a rescaled copy of sample k.
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    x = make_inputs(m, gen, device, centred)
    _, c, d = sizes(m)
    return x, make_labels(m, device), init_linear(d, c, gen, device)


def equal_mass_groups(counts: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Group of each class when classes, sorted by frequency, are cut into groups of equal
    sample mass."""
    order = torch.argsort(counts, descending=True, stable=True)
    c = counts[order].double()
    mid = (torch.cumsum(c, 0) - c / 2) / c.sum()  # middle of each class's mass interval
    g_sorted = torch.clamp((mid * n_groups).floor().long(), max=n_groups - 1)
    groups = torch.empty_like(g_sorted)
    groups[order] = g_sorted
    return groups


def sqrt_class_weights(y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Per-sample weights proportional to 1/sqrt(class count), summing to 1 (the paper's remedy)."""
    counts = torch.bincount(y, minlength=n_classes).to(torch.float32)
    w = counts[y].rsqrt()
    return w / w.sum()


# --------------------------------------------------------------- stacked linear model


@dataclass
class Trace:
    """Loss history of stacked runs: per group over steps, overall, and per class at the end."""

    kinds: list[str]
    lrs: list[float]
    steps: np.ndarray  # (T,) step index of each record
    group_loss: np.ndarray  # (T, R, G) mean loss of the samples of each group
    loss: np.ndarray  # (T, R) mean loss over all samples
    class_loss: np.ndarray  # (R, c) mean loss of each class at the last record
    class_loss_at: dict[int, np.ndarray] = field(default_factory=dict)  # step -> (R, c)


def init_linear(
    d: int, c: int, gen: torch.Generator, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch's default Linear init U(-1/sqrt(d), 1/sqrt(d)) from ``gen``: W (c, d), b (c,)."""
    bound = 1 / math.sqrt(d)
    w = torch.rand(c, d, generator=gen, device=device).mul_(2 * bound).sub_(bound)
    b = torch.rand(c, generator=gen, device=device).mul_(2 * bound).sub_(bound)
    return w, b


def max_abs_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest |Pearson correlation| between a row of ``a`` and a row of ``b`` (same width)."""
    za = a.double() - a.double().mean(1, keepdim=True)
    zb = b.double() - b.double().mean(1, keepdim=True)
    za = za / za.norm(dim=1, keepdim=True)
    zb = zb / zb.norm(dim=1, keepdim=True)
    return float((za @ zb.t()).abs().max())


def independent_correlation_scale(rows_a: int, rows_b: int, width: int) -> float:
    """Where the largest |correlation| between rows_a x rows_b pairs of independent vectors of
    ``width`` entries lies: each correlation is about N(0, 1/width), and the largest |.| of N
    such values is about sqrt(2 log(2N) / width) (the Gaussian extreme-value scale)."""
    return math.sqrt(2 * math.log(2 * rows_a * rows_b) / width)


def sample_losses(
    x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of every sample under every run (n, R), and the logits (n, R, c)."""
    n, (r, c, d) = x.shape[0], w.shape
    logits = torch.addmm(b.reshape(1, r * c), x, w.reshape(r * c, d).t()).view(n, r, c)
    lse = torch.logsumexp(logits, dim=2)
    picked = logits.gather(2, y.view(n, 1, 1).expand(n, r, 1)).squeeze(2)
    return lse - picked, logits


def loss_and_grads(
    x: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor,
    sample_w: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample losses (n, R) and the gradients of the (weighted) mean loss for W and b.

    Two matrix products over the whole data set: X W^T for the logits and G^T X for dW.
    """
    n, (r, c, d) = x.shape[0], w.shape
    logits = torch.addmm(b.reshape(1, r * c), x, w.reshape(r * c, d).t()).view(n, r, c)
    lse = torch.logsumexp(logits, dim=2, keepdim=True)
    true_class = y.view(n, 1, 1).expand(n, r, 1)
    losses = (lse - logits.gather(2, true_class)).squeeze(2)
    g = logits.sub_(lse).exp_()  # softmax, in the logits' memory
    g.scatter_add_(2, true_class, torch.full((n, r, 1), -1.0, device=x.device, dtype=g.dtype))
    weight = (
        sample_w
        if sample_w is not None
        else torch.full((n,), 1.0 / n, device=x.device, dtype=g.dtype)
    )
    g.mul_(weight.view(n, 1, 1))
    gw = torch.mm(g.view(n, r * c).t(), x).view(r, c, d)
    return losses, gw, g.sum(0)


def group_means(values: torch.Tensor, group_of_sample: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Mean of per-sample values (n, R) within each group: (G, R)."""
    sums = torch.zeros(n_groups, values.shape[1], device=values.device, dtype=values.dtype)
    sums.index_add_(0, group_of_sample, values)
    counts = torch.bincount(group_of_sample, minlength=n_groups).to(values.dtype)
    return sums / counts.unsqueeze(1)


def train_stack(
    x: torch.Tensor,
    y: torch.Tensor,
    group_of_sample: torch.Tensor,
    n_groups: int,
    kinds: Sequence[str],
    lrs: Sequence[float],
    steps: int,
    init: tuple[torch.Tensor, torch.Tensor],
    sample_w: torch.Tensor | None = None,
    record_every: int = 1,
    callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
    class_steps: Sequence[int] = (),
) -> Trace:
    """Full-batch training of len(kinds) runs of a linear softmax model with bias, all stacked.

    Runs share the data and the initialisation ``init`` = (W (c, d), b (c,)) (as the paper's
    runs with one seed do);
    losses are recorded from the forward pass of each step, so tracking them is free.
    ``callback(t, W, b)`` (if given) sees the parameters before update t. The per-class
    losses are kept at step 0, at the steps in ``class_steps`` and at the end.
    """
    n_classes = int(y.max()) + 1
    r = len(kinds)
    w, b = init[0].unsqueeze(0).repeat(r, 1, 1), init[1].unsqueeze(0).repeat(r, 1)
    opt = StackedOptimizer([w, b], [0, 0], list(kinds), list(lrs))
    rec_steps, groups, overall = [], [], []
    keep = {0, *class_steps}
    by_class: dict[int, np.ndarray] = {}

    def record(t: int, losses: torch.Tensor) -> None:
        rec_steps.append(t)
        groups.append(group_means(losses, group_of_sample, n_groups).t().cpu())
        overall.append(losses.mean(0).cpu())

    for t in range(steps):
        losses, gw, gb = loss_and_grads(x, y, w, b, sample_w)
        if t % record_every == 0:
            record(t, losses)
        if t in keep:
            by_class[t] = group_means(losses, y, n_classes).t().cpu().numpy()
        if callback is not None:
            callback(t, w, b)
        opt.step([gw, gb])
        del gw, gb
    with torch.no_grad():
        losses, _ = sample_losses(x, y, w, b)
    record(steps, losses)
    class_loss = group_means(losses, y, n_classes).t().cpu().numpy()
    by_class[steps] = class_loss
    return Trace(
        list(kinds),
        [float(v) for v in lrs],
        np.array(rec_steps),
        torch.stack(groups).numpy(),
        torch.stack(overall).numpy(),
        class_loss,
        by_class,
    )


# ----------------------------------------------------------- learning-rate selection


def progress_score(
    final: np.ndarray, initial: np.ndarray | float, blowup: float = 1.5
) -> np.ndarray:
    """Final loss, or the initial loss for runs that diverged (NaN/inf or above blowup x
    initial)."""
    final = np.asarray(final, dtype=float)
    init = np.broadcast_to(np.asarray(initial, dtype=float), final.shape)
    bad = ~np.isfinite(final) | (final > blowup * init)
    return np.where(bad, init, final)


def select_lr(final: np.ndarray, initial: np.ndarray) -> tuple[int, np.ndarray]:
    """The authors' rule: for each learning rate the worst seed's score; return the argmin
    and the scores.

    final: (seeds, lrs) final training losses; initial: (seeds,) initial losses.
    """
    worst = progress_score(final, np.asarray(initial)[:, None]).max(axis=0)
    return int(np.argmin(worst)), worst


# ---------------------------------------------------------- continuous-time theory


def gf_margin(pi: np.ndarray, t: np.ndarray, c: int) -> np.ndarray:
    """Margin u of gradient flow on the simplified model: the root of e^u + (c-1) u = 1 + c pi t.

    Newton's method from u = log(1 + c pi t), where the convex increasing left side is
    already above the target, so the iterates decrease monotonically to the root.
    """
    s = 1.0 + c * np.multiply.outer(np.asarray(t, dtype=float), np.asarray(pi, dtype=float))
    u = np.log(s)
    for _ in range(100):
        step = (np.exp(u) + (c - 1) * u - s) / (np.exp(u) + (c - 1))
        u = u - step
        if np.all(np.abs(step) <= 1e-13 * np.maximum(1.0, np.abs(u))):
            break
    return u


def gf_loss(pi: np.ndarray, t: np.ndarray, c: int) -> np.ndarray:
    """Per-class loss log(1 + (c-1) e^-u) under gradient flow, shape (len(t), len(pi))."""
    return np.log1p((c - 1) * np.exp(-gf_margin(pi, t, c)))


def sign_flow_loss(t: np.ndarray, c: int) -> np.ndarray:
    """Per-class loss under sign flow, log(1 + (c-1) e^{-2t}), the same for every class."""
    return np.log1p((c - 1) * np.exp(-2.0 * np.asarray(t, dtype=float)))


def simulate_simple_model(
    pi: np.ndarray, h: float, steps: int, method: str, record: Sequence[int]
) -> np.ndarray:
    """Small-step GD or sign descent on L(W) = sum_k pi_k CE(W e_k, k), W (c x c) from 0.

    Returns the per-class losses at the requested step counts, shape (len(record), c).
    """
    pi_t = torch.as_tensor(pi, dtype=torch.float64)
    c = pi_t.numel()
    w = torch.zeros(c, c, dtype=torch.float64)
    eye = torch.eye(c, dtype=torch.float64)
    wanted, out = set(record), {}
    for k in range(steps + 1):
        if k in wanted:  # log(1 + sum_j!=k e^{w_jk - w_kk}), no cancellation
            ratio = torch.exp(w - w.diagonal().unsqueeze(0))
            ratio.diagonal().zero_()
            out[k] = torch.log1p(ratio.sum(0)).numpy().copy()
        if k == steps:
            break
        g = (torch.softmax(w, dim=0) - eye) * pi_t.unsqueeze(0)
        w -= h * (g if method == "gd" else g.sign())
    return np.stack([out[k] for k in record])


# ---------------------------------------------------- per-class gradient and Hessian


def per_class_grad_hessian(
    x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """Norm of the gradient and trace of the Hessian block of each class's weights (w_k, b_k).

    w: (c, d), b: (c,) of one run.
    For a linear softmax model the Hessian block of class k is sum_n p_nk (1 - p_nk) x_n x_n^T / n
    (x with a 1 appended for the bias), so its trace is exact and cheap.
    """
    n = x.shape[0]
    p = torch.softmax(x @ w.t() + b, dim=1)
    resid = p - torch.nn.functional.one_hot(y, p.shape[1]).to(p.dtype)
    grad_w = resid.t() @ x / n
    grad_norm = (grad_w.pow(2).sum(1) + (resid.sum(0) / n).pow(2)).sqrt()
    sq_norm = x.pow(2).sum(1) + 1.0
    hess_trace = (p * (1 - p)).t() @ sq_norm / n
    return grad_norm.cpu().numpy(), hess_trace.cpu().numpy()


def hessian_top_eigenvalue(
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor,
    iters: int = 60,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> float:
    """Largest eigenvalue of the Hessian of the mean cross-entropy of a linear softmax model
    (W (c, d), b (c,)) by power iteration on exact Hessian-vector products.

    The Hessian is (1/n) sum_i S_i (x) x~_i x~_i^T with S_i = diag(p_i) - p_i p_i^T and
    x~ = (x, 1), so H V = Z^T X~ / n with U = X~ V^T and Z = P * U - P rowsum(P * U). It is
    positive semi-definite, so power iteration converges to its largest eigenvalue.
    """
    ones = torch.ones(x.shape[0], 1, dtype=dtype, device=x.device)
    xt = torch.cat([x.to(dtype), ones], 1)
    theta = torch.cat([w.to(dtype), b.to(dtype).unsqueeze(1)], 1)  # (c, d + 1)
    p = torch.softmax(xt @ theta.t(), dim=1)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    v = torch.randn(theta.shape, generator=gen, device=x.device).to(dtype)
    v /= v.norm()
    lam = 0.0
    for _ in range(iters):
        pu = p * (xt @ v.t())
        hv = (pu - p * pu.sum(1, keepdim=True)).t() @ xt / x.shape[0]
        lam = float((hv * v).sum())
        v = hv / hv.norm()
    return lam


def input_moment_top(d: int) -> float:
    """Largest eigenvalue of E[x~ x~^T] for x uniform on [0, 1)^d and x~ = (x, 1): the mean
    direction (1/2, ..., 1/2, 1) carries d/4 + 1, plus the per-coordinate variance 1/12."""
    return d / 4 + 1 + 1 / 12


def prior_softmax_top(m: int) -> float:
    """Largest eigenvalue of diag(pi) - pi pi^T for the class frequencies of the m-tier problem
    (the softmax covariance once the model predicts the class prior for every input)."""
    pi = class_counts(m).double() / sizes(m)[0]
    return float(torch.linalg.eigvalsh(torch.diag(pi) - torch.outer(pi, pi))[-1])


def hessian_top_formula(m: int, at: str) -> float:
    """Predicted largest Hessian eigenvalue, uniform [0, 1) inputs: S (x) E[x~ x~^T] with the
    softmax covariance S of uniform predictions at initialisation (top eigenvalue 1/c) or of
    predictions equal to the class prior (``at`` = "init" or "prior")."""
    _, c, d = sizes(m)
    s_top = 1.0 / c if at == "init" else prior_softmax_top(m)
    return s_top * input_moment_top(d)


# The learning rates of the paper's per-class figures (log10, m = 11, 1 000 steps), from the
# authors' balanced_x_perclass.py (GD, GD+m, Adam, Adam+m; Fig. 2) and
# balanced_x_perclass_alt_opt.py (sign and normalized descent; Sec. 2.3).
PAPER_LR_M11 = {
    "gd": -2.5,
    "gd_m": -3.0,
    "adam": -4.0,
    "adam_m": -3.5,
    "sign": -5.0,
    "sign_m": -5.0,
    "normgd": -1.0,
    "normgd_m": -1.5,
}
PAPER_M = 11


def predicted_lr_shift(kind: str, m_from: int, m_to: int) -> float:
    """Predicted change of log10 of the best learning rate when the problem goes from m_from to
    m_to tiers, from how the step size each optimizer can take scales with the problem.

    - GD, GD+m (and their heavy ball): the step is capped by the stability limit 2/lambda_max
      (2(1+beta)/lambda_max with momentum: the same scaling), and within a few steps the
      model predicts the class prior, where lambda_max = :func:`hessian_top_formula` "prior".
    - Adam, sign descent: each coordinate moves by about the learning rate, and a row of W
      moved by lr in every coordinate changes a logit by about lr d/2 (inputs with mean 1/2),
      so the usable learning rate scales like 1/d.
    - normalized GD: the whole step has norm lr, which changes a logit by at most lr |x~|
      ~ lr sqrt(d/3): the usable learning rate scales like 1/sqrt(d).
    """
    base = kind.removesuffix("_m")
    if base == "gd":
        return math.log10(hessian_top_formula(m_from, "prior") / hessian_top_formula(m_to, "prior"))
    d_from, d_to = sizes(m_from)[2], sizes(m_to)[2]
    if base in ("adam", "sign"):
        return math.log10(d_from / d_to)
    if base == "normgd":
        return 0.5 * math.log10(d_from / d_to)
    raise ValueError(f"no scaling rule for optimizer {kind!r}")


def rare_budget_ratio(m: int, steps: int, m_ref: int = PAPER_M, steps_ref: int = 1000) -> float:
    """The rarest classes' budget as a multiple of the paper's (m = 11, 1 000 steps), in the
    time scale of Sec. 3.3: GD moves class k's loss on the scale of 1/(eta pi_k) steps, so a
    budget counts as steps x eta x pi_min, with eta GD's stability limit once the class prior
    is learned (2/lambda_max, :func:`hessian_top_formula`) and pi_min = 2/n (the rarest tier)."""

    def units(mm: int, t: int) -> float:
        return t * (2 / hessian_top_formula(mm, "prior")) * (2 / sizes(mm)[0])

    return units(m, steps) / units(m_ref, steps_ref)


def loglog_slope(freq: np.ndarray, values: np.ndarray) -> float:
    """Least-squares slope of log(values) against log(freq)."""
    return float(np.polyfit(np.log(freq), np.log(values), 1)[0])


# ------------------------------------------------------ bigram model on real text


@dataclass
class Bigrams:
    """Previous/next token ids of a text with a capped vocabulary (last id = unknown)."""

    prev: torch.Tensor
    nxt: torch.Tensor
    vocab: list[str]
    counts: torch.Tensor  # occurrences of each id as a next token


def build_bigrams(tokens: Sequence[str], vocab_cap: int) -> Bigrams:
    """Map tokens to the vocab_cap most frequent types plus one unknown id; pair each with
    its successor."""
    types, inverse, freq = np.unique(np.asarray(tokens), return_inverse=True, return_counts=True)
    order = np.lexsort((types, -freq))  # by frequency, ties alphabetical
    rank = np.empty(len(types), dtype=np.int64)
    rank[order] = np.arange(len(types))
    ids = torch.from_numpy(np.minimum(rank[inverse], vocab_cap))
    vocab = [str(t) for t in types[order[:vocab_cap]]] + ["<unknown>"]
    nxt = ids[1:].clone()
    return Bigrams(ids[:-1].clone(), nxt, vocab, torch.bincount(nxt, minlength=vocab_cap + 1))


def text_groups(counts: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Equal-mass frequency groups of the known token types; the unknown id (last) gets
    group n_groups."""
    groups = equal_mass_groups(counts[:-1], n_groups)
    return torch.cat([groups, torch.tensor([n_groups])])


def bigram_reference_losses(
    data: Bigrams, groups: torch.Tensor, n_groups: int
) -> tuple[np.ndarray, np.ndarray]:
    """Loss on the whole text, per group of next tokens, of two reference models: the unigram
    prior (every row predicts the next-token frequencies: what any optimizer learns first) and
    the bigram maximum-likelihood model count(a, z) / count(a) (the floor of this model's
    training loss). Returns (prior (G,), mle (G,))."""
    prev, nxt = data.prev.long(), data.nxt.long()
    v = len(data.vocab)
    freq = data.counts.double() / data.counts.sum()
    pairs, pair_counts = torch.unique(torch.stack([prev, nxt], 1), dim=0, return_counts=True)
    pair_counts = pair_counts.double()
    row = torch.zeros(v, dtype=torch.float64).index_add_(0, pairs[:, 0], pair_counts)
    g = groups[pairs[:, 1]]
    mass = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, g, pair_counts)
    prior = -freq[pairs[:, 1]].log() * pair_counts
    mle = -(pair_counts / row[pairs[:, 0]]).log() * pair_counts
    sums = [torch.zeros(n_groups, dtype=torch.float64).index_add_(0, g, x) for x in (prior, mle)]
    return (sums[0] / mass).numpy(), (sums[1] / mass).numpy()


def bigram_losses(
    w: torch.Tensor,
    b: torch.Tensor,
    pairs: torch.Tensor,
    pair_counts: torch.Tensor,
    chunk: int = 512,
) -> torch.Tensor:
    """Loss of every distinct (prev, next) pair under every run, (R, P); rows of W in chunks.

    The model's logits depend only on the previous token, so the full-data loss needs the
    log-normaliser of each vocabulary row once, not one row of logits per token.
    """
    r, v, _ = w.shape
    lse = torch.empty(r, v, device=w.device)
    for s in range(0, v, chunk):
        lse[:, s : s + chunk] = torch.logsumexp(w[:, s : s + chunk] + b.unsqueeze(1), dim=2)
    a, z = pairs[:, 0], pairs[:, 1]
    return lse[:, a] - w[:, a, z] - b[:, z]


def bigram_grads(
    w: torch.Tensor, b: torch.Tensor, a: torch.Tensor, z: torch.Tensor, out: torch.Tensor
) -> torch.Tensor:
    """Gradient of the mean loss of the pairs (a -> z) for W (written into ``out``) and b
    (returned).

    Only the rows of W of the previous tokens in the batch get a gradient (index_add).
    """
    logits = w.index_select(1, a)  # (R, B, V); index_select and += give the same bits as
    logits += b.unsqueeze(1)  # w[:, a] + b, one (R, B, V) temporary fewer
    g = torch.softmax(logits, dim=2)
    del logits
    g[:, torch.arange(a.numel(), device=a.device), z] -= 1.0
    g /= a.numel()
    out.zero_().index_add_(1, a, g)
    return g.sum(1)


def train_bigram_stack(
    data: Bigrams,
    groups: torch.Tensor,
    n_groups: int,
    kinds: Sequence[str],
    lrs: Sequence[float],
    steps: int,
    batch: int,
    seed: int,
    eval_every: int,
    device: torch.device | str = "cpu",
) -> Trace:
    """Minibatch training of stacked bigram softmax models W[prev] + b, W (R, V, V), from zero.

    The loss on the whole text, per group of next tokens, is evaluated every eval_every steps.
    """
    v, r = len(data.vocab), len(kinds)
    prev, nxt = data.prev.to(device), data.nxt.to(device)
    pairs, pair_counts = torch.unique(torch.stack([prev, nxt], 1), dim=0, return_counts=True)
    pair_counts = pair_counts.to(torch.float32)
    pair_group = groups.to(device)[pairs[:, 1]]
    mass = torch.zeros(n_groups, device=device).index_add_(0, pair_group, pair_counts)
    w = torch.zeros(r, v, v, device=device)
    b = torch.zeros(r, v, device=device)
    gw = torch.zeros_like(w)
    opt = StackedOptimizer([w, b], [0, 0], list(kinds), list(lrs))
    gen = torch.Generator(device=device).manual_seed(seed)
    rec_steps, group_hist, overall = [], [], []
    for t in range(steps + 1):
        if t % eval_every == 0 or t == steps:
            pl = bigram_losses(w, b, pairs, pair_counts) * pair_counts
            sums = torch.zeros(r, n_groups, device=device).index_add_(1, pair_group, pl)
            rec_steps.append(t)
            group_hist.append((sums / mass).cpu())
            overall.append((pl.sum(1) / pair_counts.sum()).cpu())
        if t == steps:
            break
        idx = torch.randint(0, prev.numel(), (batch,), generator=gen, device=device)
        gb = bigram_grads(w, b, prev[idx], nxt[idx], out=gw)
        opt.step([gw, gb])
    class_loss = np.full((r, v), np.nan)
    return Trace(
        list(kinds),
        [float(x) for x in lrs],
        np.array(rec_steps),
        torch.stack(group_hist).numpy(),
        torch.stack(overall).numpy(),
        class_loss,
    )


# ------------------------------------------------------------------ grids of runs


def grid_runs(grid: dict[str, Sequence[float]]) -> tuple[list[str], list[float]]:
    """Flatten {kind: [log10 learning rates]} into per-run kinds and learning rates (kinds
    contiguous)."""
    kinds = [k for k, exps in grid.items() for _ in exps]
    lrs = [10.0**e for exps in grid.values() for e in exps]
    return kinds, lrs


def run_grid(
    m: int,
    steps: int,
    seeds: Sequence[int],
    grid: dict[str, Sequence[float]],
    device: torch.device | str = "cpu",
    centred: bool = False,
    weighted: bool = False,
    record_every: int = 1,
    max_stack: int = 64,
    class_steps: Sequence[int] = (),
) -> list[Trace]:
    """Train every (kind, learning rate) of the grid for each seed, stacking up to max_stack
    runs per model.

    As in the authors' code the seed fixes both the data and the initialisation, drawn from
    one stream (:func:`make_problem`).
    """
    kinds, lrs = grid_runs(grid)
    traces = []
    for s in seeds:
        x, y, init = make_problem(m, s, device, centred)
        tiers = class_tiers(m).to(device)[y]
        sample_w = sqrt_class_weights(y, sizes(m)[1]) if weighted else None
        parts = [
            train_stack(
                x,
                y,
                tiers,
                m,
                kinds[i : i + max_stack],
                lrs[i : i + max_stack],
                steps,
                init,
                sample_w,
                record_every,
                class_steps=class_steps,
            )
            for i in range(0, len(kinds), max_stack)
        ]
        traces.append(concat_traces(parts))
        del x
    return traces


def concat_traces(parts: Sequence[Trace]) -> Trace:
    """Join traces of disjoint runs recorded at the same steps into one."""
    if len(parts) == 1:
        return parts[0]
    return Trace(
        sum((p.kinds for p in parts), []),
        sum((p.lrs for p in parts), []),
        parts[0].steps,
        np.concatenate([p.group_loss for p in parts], 1),
        np.concatenate([p.loss for p in parts], 1),
        np.concatenate([p.class_loss for p in parts], 0),
        {k: np.concatenate([p.class_loss_at[k] for p in parts], 0) for k in parts[0].class_loss_at},
    )


def select_per_kind(traces: Sequence[Trace], at: int = -1) -> dict[str, dict]:
    """Apply the selection rule per optimizer kind: worst seed's loss at record ``at``,
    divergence = no progress.

    Returns {kind: {"exps", "worst", "best" (index into the runs of that kind), "runs" (run
    indices), "run" and "exp" (the chosen run and its log10 learning rate)}}.
    """
    kinds = traces[0].kinds
    final = np.stack([t.loss[at] for t in traces])  # (seeds, runs)
    initial = np.stack([t.loss[0] for t in traces])
    out = {}
    for kind in dict.fromkeys(kinds):
        runs = [i for i, k in enumerate(kinds) if k == kind]
        best, worst = select_lr(final[:, runs], initial[:, runs].max(axis=1))
        exps = [math.log10(traces[0].lrs[i]) for i in runs]
        out[kind] = {
            "exps": exps,
            "worst": worst,
            "best": best,
            "runs": runs,
            "run": runs[best],
            "exp": exps[best],
        }
    return out


def rare_half_loss(class_loss: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Sample-weighted mean loss of the rarer half of the classes (by frequency), per run."""
    order = np.argsort(-np.asarray(counts), kind="stable")
    rare = order[len(order) // 2 :]
    wts = np.asarray(counts, dtype=float)[rare]
    return class_loss[..., rare] @ wts / wts.sum()


# ------------------------------------------------------------ estimates for the findings


def tier_mask(m: int, tier: int) -> np.ndarray:
    """Boolean mask of the classes of one tier (tier m - 1 is the rarest)."""
    return class_tiers(m).numpy() == tier


def tier_loss_removed(trace: Trace, run: int, tier: int, at: int = -1) -> float:
    """Fraction of a tier's initial loss removed by record ``at`` (1 - loss_at / loss_0)."""
    return float(1.0 - trace.group_loss[at, run, tier] / trace.group_loss[0, run, tier])


def loss_removed(
    traces: Sequence[Trace], run: int, classes: np.ndarray, at: int | None = None
) -> stats.Estimate:
    """Fraction of the initial loss of ``classes`` removed by step ``at`` (default: the end).

    Per seed it is 1 - mean final / mean initial loss over the classes (equal-count classes, so
    also over their samples); the estimate is its mean over seeds, with the two-level
    bootstrap of :func:`lib.book.stats.bootstrap_items` over seeds and classes, paired (the
    start and the end of the same class). Each seed's losses are divided by its mean
    initial loss, held fixed in the resampling.
    """
    start = np.stack([t.class_loss_at[0][run, classes] for t in traces])
    end = np.stack(
        [(t.class_loss if at is None else t.class_loss_at[at])[run, classes] for t in traces]
    )
    scale = start.mean(axis=1, keepdims=True)
    return stats.bootstrap_items(start / scale, end / scale)


def ratio_over_seeds(num: Sequence[float], den: Sequence[float]) -> stats.Estimate:
    """Geometric mean over seeds of num / den, with a t interval on the log ratio."""
    e = stats.t_interval(np.log(np.asarray(num, dtype=float) / np.asarray(den, dtype=float)))
    ci = None if e.ci is None else (math.exp(e.ci[0]), math.exp(e.ci[1]))
    what = "geometric mean over seeds, t interval of the log ratio"
    return stats.Estimate(math.exp(e.value), ci, e.n_seeds, what if ci else e.method)


def grid_edge(entry: dict) -> str | None:
    """'bottom' or 'top' if a selection (an entry of :func:`select_per_kind`) chose the
    smallest or largest learning rate of its grid, else None (a one-point grid is an edge).

    A choice whose worst-seed score is exactly 0 is not an edge: the loss has reached its floor
    (float32 rounds it to 0 on this separable problem), so no learning rate beyond the grid can
    score better.
    """
    if entry["worst"][entry["best"]] == 0:
        return None
    if entry["best"] == len(entry["exps"]) - 1:
        return "top"
    return "bottom" if entry["best"] == 0 else None


def edge_reason(*uses: tuple[dict[str, dict], Sequence[str]]) -> str | None:
    """Why a finding that rests on chosen learning rates is unresolved, or None.

    ``uses`` are (selection, kinds) pairs: the optimizers whose chosen learning rates the
    finding uses. If one sits at an edge of its grid, a better one may lie outside it.
    """
    edges = [
        f"{LABELS[k]} 10^{sel[k]['exp']:+.1f} ({edge})"
        for sel, kinds in uses
        for k in kinds
        if (edge := grid_edge(sel[k]))
    ]
    return "chosen learning rate at the edge of its grid: " + ", ".join(edges) if edges else None


def budgets_of(steps: int) -> list[int]:
    """The step budgets at which learning rates are chosen: steps/10, 3 steps/10 and steps
    (100, 300 and 1 000 at the paper's 1 000 steps)."""
    return sorted({max(1, steps // 10), max(1, (3 * steps) // 10), steps})


def rank_correlation(rows: np.ndarray) -> float:
    """Spearman rank correlation of the two columns of ``rows``."""
    return float(_st.spearmanr(rows[:, 0], rows[:, 1]).statistic)


def correlation_estimate(a: np.ndarray, b: np.ndarray) -> stats.Estimate:
    """Rank correlation of a and b over classes, bootstrap over classes."""
    return stats.bootstrap_statistic(np.column_stack([a, b]), rank_correlation)


def slope_estimate(freq: np.ndarray, values: np.ndarray) -> stats.Estimate:
    """Log-log slope of values against freq, bootstrap over classes."""
    rows = np.column_stack([freq, values])
    return stats.bootstrap_statistic(rows, lambda r: loglog_slope(r[:, 0], r[:, 1]))


def best_over_kinds(
    traces: Sequence[Trace],
    selection: dict[str, dict],
    kinds: Sequence[str],
    value: Callable[[Trace, int], float],
) -> np.ndarray:
    """Per seed, the lowest ``value(trace, run)`` over the chosen runs of ``kinds``."""
    return np.array([min(value(t, selection[k]["run"]) for k in kinds) for t in traces])
