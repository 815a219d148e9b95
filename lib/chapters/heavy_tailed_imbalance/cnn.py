"""Beyond the linear model: a small CNN on heavy-tailed, barcoded Fashion-MNIST.

The paper's vision experiment (Kunstner et al. 2024, Fig. 3; authors' code
``datasets/barcoded_mnist.py`` and ``models/cnn.py``) adds to the 10 MNIST classes
10 x 2^10 new classes of 5 images each: an image of digit j with a 10-bit barcode written
into the first 10 pixels of its top row is class (barcode, j). The frequent classes and the
barcoded ones hold about half of the data each; the CNN (two 5x5 conv + ReLU + 2x2 max-pool
blocks, then one linear layer) is trained full batch, 300 steps.

Here the same recipe is built from Fashion-MNIST at a size a CPU core can train:
``bits``-bit barcodes (10 x 2^bits rare classes of ``per_tail_class`` images each),
``head_per_class`` images per frequent class (the paper's ratio: head and tail hold the same
number of images), optionally downsampled images, and a CNN of the paper's shape with fewer
channels. Every learning rate of a grid trains as one stacked model: the first convolution
has (runs x channels) filters, the second is grouped by run, the last layer is a batched
matrix product, so one step is three large kernels whatever the number of runs. Gradients
come from autograd over the whole training set (full batch, in chunks of samples).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lib.chapters.heavy_tailed_imbalance.study import Trace, grid_runs, group_means
from lib.core.optim import StackedOptimizer

N_BASE = 10  # Fashion-MNIST's classes: the frequent ones
# the paper's set: 50 000 MNIST training images + 10 x 2^10 barcoded classes of 5 images
PAPER_IMAGES, PAPER_PER_TAIL_CLASS, PAPER_STEPS = 50_000 + 10 * 2**10 * 5, 5, 300


# --------------------------------------------------------------------------- data


def barcodes(bits: int) -> torch.Tensor:
    """All 2^bits barcodes as rows of 0/1, in the order of ``itertools.product([0, 1],
    repeat=bits)`` (the authors' order; the all-zero barcode included, as in their code)."""
    codes = torch.arange(2**bits)
    shifts = torch.arange(bits - 1, -1, -1)
    return (codes.unsqueeze(1) >> shifts) & 1


def sizes(bits: int, per_tail_class: int, head_per_class: int) -> tuple[int, int, int]:
    """(images n, classes c, barcoded images) of the construction."""
    tail_classes = N_BASE * 2**bits
    n_tail = tail_classes * per_tail_class
    return N_BASE * head_per_class + n_tail, N_BASE + tail_classes, n_tail


@dataclass
class Barcoded:
    """A heavy-tailed image set: images (n, 1, h, w) standardised per pixel, labels, and per
    class its count and whether it is a barcoded (rare) class."""

    x: torch.Tensor
    y: torch.Tensor
    counts: torch.Tensor  # (c,) images per class
    tail: torch.Tensor  # (c,) bool: a barcoded class

    @property
    def group_of_sample(self) -> torch.Tensor:
        """0 for an image of a frequent class, 1 for a barcoded one (the paper's two groups)."""
        return self.tail[self.y].long()


def standardise(x: torch.Tensor) -> torch.Tensor:
    """Per-pixel standardisation over the set (pixels with zero variance are left as they are),
    as the authors' ``safe_normalize``."""
    mean, std = x.mean(0), x.std(0)
    ok = std > 0
    out = x.clone()
    out[:, ok] = (x[:, ok] - mean[ok]) / std[ok]
    return out


def make_barcoded(
    images: torch.Tensor,
    labels: torch.Tensor,
    bits: int,
    per_tail_class: int,
    head_per_class: int,
    gen: torch.Generator,
    image_size: int = 28,
    normalise: bool = True,
) -> Barcoded:
    """Build the heavy-tailed set from a balanced one (images (N, 1, 28, 28) in [0, 1]).

    From ``gen``: a pool of ``head_per_class`` images of each class (without replacement):
    the frequent classes. Then for each barcode (outer loop) and base class j (inner loop),
    ``per_tail_class`` images drawn with replacement from class j's pool get the barcode
    written into the first ``bits`` pixels of the top row: class 10 + 10 b + j. As in the
    authors' code, set bits take the pool's largest pixel value; unset bits are written as 0
    (MNIST's top row is blank, so there they are 0 already; Fashion-MNIST's is not). Images
    are average-pooled to ``image_size`` first, then standardised per pixel over the whole
    set (unless ``normalise`` is False).
    """
    if 28 % image_size or bits > image_size:
        raise ValueError(f"image_size must divide 28 and hold {bits} bits, got {image_size}")
    pool_idx = []
    for j in range(N_BASE):
        of_j = torch.nonzero(labels == j).squeeze(1)
        if of_j.numel() < head_per_class:
            raise ValueError(f"class {j} has {of_j.numel()} images, fewer than {head_per_class}")
        pool_idx.append(of_j[torch.randperm(of_j.numel(), generator=gen)[:head_per_class]])
    pool = images[torch.stack(pool_idx)]  # (10, head_per_class, 1, 28, 28)
    if image_size != 28:
        flat = pool.reshape(-1, 1, 28, 28)
        pool = F.avg_pool2d(flat, 28 // image_size).reshape(*pool.shape[:3], image_size, -1)
    codes = barcodes(bits).to(pool.dtype)
    n_codes = codes.shape[0]
    pick = torch.randint(0, head_per_class, (n_codes, N_BASE, per_tail_class), generator=gen)
    base = torch.arange(N_BASE).view(1, N_BASE, 1).expand_as(pick)
    tail = pool[base, pick].clone()  # (codes, 10, per_tail_class, 1, h, w)
    top = pool.max()
    tail[..., 0, 0, :bits] = (codes * top).view(n_codes, 1, 1, bits)
    x = torch.cat(
        [pool.reshape(-1, 1, image_size, image_size), tail.reshape(-1, 1, image_size, image_size)]
    )
    y_head = torch.arange(N_BASE).repeat_interleave(head_per_class)
    y_tail = (
        N_BASE + N_BASE * torch.arange(n_codes).view(-1, 1) + torch.arange(N_BASE)
    ).repeat_interleave(per_tail_class, dim=1)
    y = torch.cat([y_head, y_tail.reshape(-1)])
    c = N_BASE + N_BASE * n_codes
    counts = torch.bincount(y, minlength=c)
    is_tail = torch.arange(c) >= N_BASE
    return Barcoded(standardise(x) if normalise else x, y, counts, is_tail)


def rare_budget_ratio(data: Barcoded, steps: int) -> float:
    """The barcoded classes' budget as a multiple of the paper's at equal step size: a
    barcoded class's share of the data x steps, over the paper's (5 of 101 200 images, 300
    steps). GD moves a class's loss on the scale of 1/(eta pi_k) steps (Sec. 3.3)."""
    share = float(data.counts[data.tail].min()) / float(data.counts.sum())
    return share * steps / (PAPER_PER_TAIL_CLASS / PAPER_IMAGES * PAPER_STEPS)


# ------------------------------------------------------------------- stacked CNN


def fan_in_uniform(shape: Sequence[int], fan_in: int, gen: torch.Generator) -> torch.Tensor:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default for Conv2d and Linear weights
    (kaiming_uniform with a = sqrt 5) and biases."""
    bound = 1 / math.sqrt(fan_in)
    return torch.rand(*shape, generator=gen).mul_(2 * bound).sub_(bound)


def feature_size(channels: Sequence[int], image_size: int) -> int:
    """Inputs of the last layer: channels of the second block x its spatial size after two
    2x2 max-pools (floor, as nn.MaxPool2d)."""
    side = (image_size // 2) // 2
    return channels[1] * side * side


def init_cnn(
    channels: Sequence[int], kernel: int, n_classes: int, image_size: int, gen: torch.Generator
) -> list[torch.Tensor]:
    """[w1 (c1, 1, k, k), b1, w2 (c2, c1, k, k), b2, w3 (classes, features), b3] with PyTorch's
    default initialisation, drawn from ``gen`` in that order."""
    c1, c2 = channels
    f = feature_size(channels, image_size)
    shapes = [((c1, 1, kernel, kernel), kernel**2), ((c1,), kernel**2)]
    shapes += [((c2, c1, kernel, kernel), c1 * kernel**2), ((c2,), c1 * kernel**2)]
    shapes += [((n_classes, f), f), ((n_classes,), f)]
    return [fan_in_uniform(s, fan, gen) for s, fan in shapes]


def stack(params: Sequence[torch.Tensor], runs: int) -> list[torch.Tensor]:
    """Copies of one set of parameters for ``runs`` runs (run axis 0), as leaves that track
    gradients."""
    return [p.unsqueeze(0).repeat(runs, *[1] * p.dim()).requires_grad_() for p in params]


def module_of_run(params: Sequence[torch.Tensor], run: int) -> torch.nn.Module:
    """The same CNN as ``torch.nn`` layers, with the parameters of one run of a stack: the
    independent reference that the stacked forward pass is checked against."""
    from torch import nn

    w1, b1, w2, b2, w3, b3 = (p[run].detach().clone() for p in params)
    k = w1.shape[-1]
    net = nn.Sequential(
        nn.Conv2d(1, w1.shape[0], k, padding=k // 2),
        nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Conv2d(w1.shape[0], w2.shape[0], k, padding=k // 2),
        nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Flatten(),
        nn.Linear(w3.shape[1], w3.shape[0]),
    )
    with torch.no_grad():
        for layer, (w, b) in zip((net[0], net[3], net[7]), ((w1, b1), (w2, b2), (w3, b3))):
            layer.weight.copy_(w)
            layer.bias.copy_(b)
    return net.to(w1.device)


def module_gap(
    x: torch.Tensor, y: torch.Tensor, params: Sequence[torch.Tensor]
) -> tuple[float, float]:
    """Largest relative difference between the stacked model and :func:`module_of_run` for
    every run: (logits, gradient of the mean cross-entropy), on images x and labels y."""
    logits = stacked_logits(x, params)
    losses = sample_losses(logits, y)
    grads = torch.autograd.grad(losses.mean(0).sum(), params)
    gap_logits = gap_grads = 0.0
    for r in range(logits.shape[1]):
        net = module_of_run(params, r)
        out = net(x)
        F.cross_entropy(out, y).backward()
        ref = out.detach()
        scale = float(ref.abs().max())
        gap_logits = max(gap_logits, float((ref - logits[:, r].detach()).abs().max()) / scale)
        for p, g in zip([m for m in net.parameters()], grads):
            err = float((p.grad - g[r]).abs().max()) / float(p.grad.abs().max())
            gap_grads = max(gap_grads, err)
    return gap_logits, gap_grads


def stacked_logits(x: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
    """Logits (n, runs, classes) of every run of a stacked CNN on images x (n, 1, h, w).

    conv(5x5, same padding) -> ReLU -> 2x2 max-pool, twice, then a linear layer: the first
    convolution of all runs is one convolution with runs x c1 filters (the input is shared),
    the second is grouped by run, the linear layer is one batched product.
    """
    w1, b1, w2, b2, w3, b3 = params
    r, c1, _, k, _ = w1.shape
    c2 = w2.shape[1]
    h = F.conv2d(x, w1.reshape(r * c1, 1, k, k), b1.reshape(-1), padding=k // 2)
    h = F.max_pool2d(F.relu(h), 2)
    h = F.conv2d(h, w2.reshape(r * c2, c1, k, k), b2.reshape(-1), padding=k // 2, groups=r)
    h = F.max_pool2d(F.relu(h), 2)
    feats = h.reshape(x.shape[0], r, -1).transpose(0, 1)  # (r, n, f), each run's in C-H-W order
    return torch.baddbmm(b3.unsqueeze(1), feats, w3.transpose(1, 2)).transpose(0, 1)


def sample_losses(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (n, runs) of logits (n, runs, classes) against labels y (n,)."""
    n, r, _ = logits.shape
    picked = logits.gather(2, y.view(n, 1, 1).expand(n, r, 1)).squeeze(2)
    return torch.logsumexp(logits, dim=2) - picked


def losses_and_grads(
    x: torch.Tensor, y: torch.Tensor, params: Sequence[torch.Tensor], chunk: int = 2048
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Per-sample losses (n, runs) and, for every run, the gradient of its mean loss over the
    whole set (full batch; the set is processed in chunks of samples and the gradients summed).

    The runs' parameters are disjoint slices, so the gradient of the sum over runs of their
    mean losses is each run's own gradient.
    """
    n = x.shape[0]
    grads = [torch.zeros_like(p) for p in params]
    losses = []
    for s in range(0, n, chunk):
        with torch.enable_grad():
            part = sample_losses(stacked_logits(x[s : s + chunk], params), y[s : s + chunk])
            g = torch.autograd.grad(part.sum() / n, params)
        for acc, gi in zip(grads, g):
            acc.add_(gi)
        losses.append(part.detach())
    return torch.cat(losses), grads


def train_stack(
    data: Barcoded,
    kinds: Sequence[str],
    lrs: Sequence[float],
    steps: int,
    init: Sequence[torch.Tensor],
    chunk: int = 2048,
    class_steps: Sequence[int] = (),
) -> Trace:
    """Full-batch training of len(kinds) stacked CNNs from one initialisation ``init``.

    Losses per group (frequent, barcoded) and overall are recorded at every step from the
    forward pass of that step; per-class losses at step 0, at ``class_steps`` and at the end.
    Runs whose loss is no longer finite are frozen (their record stays non-finite), so one
    diverged run cannot turn the others' shared kernels into NaN work.
    """
    params = stack(init, len(kinds))
    opt = StackedOptimizer(params, [0] * len(params), list(kinds), list(lrs))
    groups, n_classes = data.group_of_sample, int(data.counts.numel())
    keep = {0, *class_steps}
    rec_group, rec_loss, by_class = [], [], {}

    def record(t: int, losses: torch.Tensor) -> None:
        rec_group.append(group_means(losses, groups, 2).t().cpu())
        rec_loss.append(losses.mean(0).cpu())
        if t in keep or t == steps:
            by_class[t] = group_means(losses, data.y, n_classes).t().cpu().numpy()

    for t in range(steps):
        losses, grads = losses_and_grads(data.x, data.y, params, chunk)
        record(t, losses)
        bad = ~torch.isfinite(losses.mean(0))
        for g in grads:
            g[bad] = 0.0
        opt.step(grads)
    with torch.no_grad():
        losses = torch.cat(
            [
                sample_losses(stacked_logits(data.x[s : s + chunk], params), data.y[s : s + chunk])
                for s in range(0, data.x.shape[0], chunk)
            ]
        )
    record(steps, losses)
    return Trace(
        list(kinds),
        [float(v) for v in lrs],
        np.arange(steps + 1),
        torch.stack(rec_group).numpy(),
        torch.stack(rec_loss).numpy(),
        by_class[steps],
        by_class,
    )


def problem(
    images: torch.Tensor,
    labels: torch.Tensor,
    seed: int,
    *,
    bits: int,
    per_tail_class: int,
    head_per_class: int,
    image_size: int,
    channels: Sequence[int],
    kernel: int = 5,
) -> tuple[Barcoded, list[torch.Tensor]]:
    """The heavy-tailed set and the CNN's initialisation of one seed, from one random stream
    (the set first, as the authors seed once and then build the data and the model)."""
    gen = torch.Generator().manual_seed(seed)
    data = make_barcoded(images, labels, bits, per_tail_class, head_per_class, gen, image_size)
    init = init_cnn(channels, kernel, int(data.counts.numel()), image_size, gen)
    return data, init


def module_check(
    data: Barcoded,
    init: Sequence[torch.Tensor],
    kinds: Sequence[str],
    lrs: Sequence[float],
    n: int = 64,
    steps: int = 2,
) -> float:
    """Largest relative gap (logits and gradients, :func:`module_gap`) between the stacked CNN
    and torch.nn layers, after ``steps`` stacked updates on the first ``n`` images (so that the
    runs differ)."""
    x, y = data.x[:n], data.y[:n]
    params = stack(init, len(kinds))
    opt = StackedOptimizer(params, [0] * len(params), list(kinds), list(lrs))
    for _ in range(steps):
        opt.step(losses_and_grads(x, y, params)[1])
    return max(module_gap(x, y, params))


def run_grid(
    images: torch.Tensor,
    labels: torch.Tensor,
    seeds: Sequence[int],
    grid: dict[str, Sequence[float]],
    steps: int,
    *,
    bits: int,
    per_tail_class: int,
    head_per_class: int,
    image_size: int,
    channels: Sequence[int],
    kernel: int = 5,
    chunk: int = 2048,
    class_steps: Sequence[int] = (),
    device: torch.device | str = "cpu",
) -> tuple[list[Trace], list[Barcoded]]:
    """Every (optimizer, log10 learning rate) of ``grid`` for each seed, stacked in one model
    per seed. The seed fixes the heavy-tailed set (which images, which copies) and then the
    initialisation, from one random stream."""
    kinds, lrs = grid_runs(grid)
    traces, sets = [], []
    for s in seeds:
        data, init = problem(
            images,
            labels,
            s,
            bits=bits,
            per_tail_class=per_tail_class,
            head_per_class=head_per_class,
            image_size=image_size,
            channels=channels,
            kernel=kernel,
        )
        on = Barcoded(*(v.to(device) for v in (data.x, data.y, data.counts, data.tail)))
        init = [p.to(device) for p in init]
        traces.append(train_stack(on, kinds, lrs, steps, init, chunk, class_steps))
        sets.append(data)
    return traces, sets
