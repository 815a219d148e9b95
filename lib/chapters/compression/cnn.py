"""The CNN testbed of the compression chapter: every family on one properly trained CNN, at
several compression levels and several retraining budgets.

Model: a small equal-width residual CNN on Fashion-MNIST (Debian's ``dataset-fashion-mnist``
through :func:`lib.core.data.fashion_mnist`): a strided 5x5 stem convolution, two strided
3x3 convolutions (28 -> 14 -> 7 -> 4 pixels), ``depth`` residual 3x3 convolutions and a
linear classifier on the flattened 4x4 map. Every 3x3 convolution after the stem has the
same shape, so layer fusion has ``depth + 2`` candidates.

Families (each a function that turns a trained dense CNN into a compressed one):
global magnitude pruning (fixed masks) with or without the cross-correlation
self-distillation loss of :mod:`lib.core.pruning`, structured channel pruning (the residual
stream and the stem channels physically removed), post-training quantisation (fp16, static
int8 with per-channel weights and calibrated activations, 4-bit weights), quantisation-aware
training (int8 weights and activations; 4-bit weights), truncated SVD of the 3x3
convolutions, knowledge distillation into narrower CNNs trained from scratch, and layer
fusion (the most similar convolutions averaged and tied, :func:`lib.core.compress.fuse_layers`).

Budgets: every arm is compressed once, then retrained at a constant learning rate, and
scored at each budget on the way (0 epochs is the compressed model as it is): with a
constant rate and fixed masks, stopping at an earlier checkpoint is the same as a shorter
run, so one run gives the whole budget curve. The reference at each budget is the dense CNN
retrained for as long (the same seed's dense model, the same rate). Sizes are whole-model
files written with ``torch.save`` and measured on disk; FLOPs are counted by hooks and
checked against a formula of the architecture.
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lib.book.stats import Estimate
from lib.core import compress, latency, pruning
from lib.core.data import fashion_mnist
from lib.core.train import fit

if TYPE_CHECKING:
    import pandas as pd

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import torch.ao.nn.quantized as nnq

N_CLASSES = 10
SIDE = 4  # the feature map the classifier reads is SIDE x SIDE

# ---------------------------------------------------------------- configuration


@dataclass
class CnnConfig:
    """Sizes, budgets and levels of the CNN testbed: the chapter's ``cnn_*`` parameters, whose
    one source of defaults is the chapter's YAML (no default is repeated here)."""

    width: int
    depth: int
    n_train: int
    n_test: int
    epochs: float  # dense training (one-cycle schedule)
    budgets: tuple[float, ...]  # retraining budgets in epochs (0 = none)
    batch: int  # dense training
    retrain_batch: int  # every arm that retrains (and the students)
    lr: float  # peak rate of the dense training and rate of the students
    retrain_lr: float  # constant rate of every retraining arm
    sparsities: tuple[float, ...]
    channel_fractions: tuple[float, ...]
    rank_ratios: tuple[float, ...]
    student_widths: tuple[float, ...]  # width multipliers of the distilled students
    fusion_removed: tuple[int, ...]  # convolutions fused away
    qat_bits: tuple[int, ...]  # weight bits of the QAT arms (8: int8 weights and activations)
    cc_weight: float
    kd_weight: float
    seeds: int
    latency_rounds: int
    latency_warmup: int
    linear_epochs: int = 3
    temperature: float = 2.0
    calib: int = 1000  # training images that calibrate static int8

    @classmethod
    def from_params(cls, params: dict) -> CnnConfig:
        """The configuration from the chapter's ``cnn_*`` parameters (lists become tuples)."""
        names = [f for f in cls.__dataclass_fields__ if f"cnn_{f}" in params]
        names += [f for f in ("n_train", "n_test") if f not in names]
        alias = {"n_train": "cnn_train", "n_test": "cnn_test"}
        kw = {f: params[alias.get(f, f"cnn_{f}")] for f in names}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()})


# ---------------------------------------------------------------- data


@dataclass
class Split:
    """Images (N, 1, 28, 28), standardised with the training set's mean and std, and labels."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


def load(n_train: int, n_test: int) -> tuple[Split, Split]:
    """Fashion-MNIST: the whole split when ``n`` is its size, else a fixed subset (seed 0 for
    train, 1 for test), standardised with the training subset's pixel mean and std."""
    x, y = fashion_mnist("train")
    xt, yt = fashion_mnist("test")
    tr = np.random.default_rng(0).permutation(len(y))[:n_train]
    te = np.random.default_rng(1).permutation(len(yt))[:n_test]
    if n_train == len(y):
        tr = np.arange(len(y))
    if n_test == len(yt):
        te = np.arange(len(yt))
    x, y, xt, yt = x[tr], y[tr], xt[te], yt[te]
    mean, std = float(x.mean()), float(x.std())
    return (
        Split(((x - mean) / std).contiguous(), y.clone()),
        Split(((xt - mean) / std).contiguous(), yt.clone()),
    )


# ---------------------------------------------------------------- the model


class ResCNN(nn.Module):
    """5x5 stride-2 stem (``stem`` channels), two stride-2 3x3 convolutions to ``width``
    channels at 4x4, ``depth`` residual 3x3 convolutions h + relu(conv(h)), then a linear
    classifier on the flattened map."""

    def __init__(self, width: int, depth: int, stem: int | None = None) -> None:
        super().__init__()
        stem = width if stem is None else stem
        self.stem0 = nn.Conv2d(1, stem, 5, 2, 2)
        self.stem1 = nn.Conv2d(stem, width, 3, 2, 1)
        self.stem2 = nn.Conv2d(width, width, 3, 2, 1)
        self.blocks = nn.ModuleList([nn.Conv2d(width, width, 3, 1, 1) for _ in range(depth)])
        self.head = nn.Linear(width * SIDE * SIDE, N_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map (N, width, 4, 4)."""
        h = F.relu(self.stem0(x))
        h = F.relu(self.stem1(h))
        h = F.relu(self.stem2(h))
        for conv in self.blocks:
            h = h + F.relu(conv(h))
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def conv_names(model: ResCNN) -> list[str]:
    """Every convolution, in order."""
    return ["stem0", "stem1", "stem2"] + [f"blocks.{i}" for i in range(len(model.blocks))]


def square_convs(model: nn.Module) -> list[str]:
    """The 3x3 convolutions whose weight is (width, width, 3, 3): the fusion candidates and
    what low rank factorises."""
    w = model.stem2.weight.shape[0]
    return [
        n
        for n in conv_names(model)
        if isinstance(compress.get_module(model, n), nn.Conv2d)
        and tuple(compress.get_module(model, n).weight.shape) == (w, w, 3, 3)
    ]


def weight_layers(model: nn.Module) -> list[str]:
    """Every Conv2d and Linear (what pruning and quantisation act on)."""
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def n_params(model: nn.Module) -> int:
    """Parameters stored once each (tied tensors counted once)."""
    return sum(p.numel() for p in {p.data_ptr(): p for p in model.parameters()}.values())


def conv_flops(c_in: int, c_out: int, k: int, side: int) -> int:
    """2 x multiply-accumulates of a k x k convolution producing a side x side map."""
    return 2 * c_in * c_out * k * k * side * side


def flops_formula(width: int, depth: int, stem: int, rank: int | None = None) -> int:
    """FLOPs of one image through :class:`ResCNN` from its shape alone (an independent
    reference for the hook count); ``rank``: the square convolutions factorised into a
    rank-r 3x3 convolution and a 1x1 one."""

    def square(side: int) -> int:
        if rank is None:
            return conv_flops(width, width, 3, side)
        return conv_flops(width, rank, 3, side) + conv_flops(rank, width, 1, side)

    stem1 = conv_flops(stem, width, 3, 7) if (stem != width or rank is None) else square(7)
    total = conv_flops(1, stem, 5, 14) + stem1 + square(SIDE) + depth * square(SIDE)
    return total + 2 * width * SIDE * SIDE * N_CLASSES


def shape_of(model: nn.Module) -> dict[str, int | None]:
    """Width, stem channels and (for factorised square convolutions) the rank of a ResCNN."""
    stem2 = model.stem2
    rank = stem2[0].weight.shape[0] if isinstance(stem2, nn.Sequential) else None
    return {
        "width": model.head.in_features // (SIDE * SIDE),
        "stem": model.stem0.weight.shape[0],
        "rank": rank,
    }


def clone(model: nn.Module) -> nn.Module:
    """A deep copy (tied tensors stay tied inside the copy)."""
    return copy.deepcopy(model)


# ---------------------------------------------------------------- training and scoring


def steps_for(epochs: float, n_train: int, batch: int) -> int:
    """Optimizer steps in ``epochs`` passes over ``n_train`` images."""
    return int(round(epochs * n_train / batch))


def epoch_batches(n: int, batch: int, gen: torch.Generator) -> Callable[[int], torch.Tensor]:
    """Index batches of step t: a fresh permutation per pass, drawn from ``gen`` (sampling
    without replacement within a pass)."""
    per = max(n // batch, 1)
    perms: dict[int, torch.Tensor] = {}

    def at(t: int) -> torch.Tensor:
        e, i = divmod(t, per)
        if e not in perms:
            perms.clear()
            perms[e] = torch.randperm(n, generator=gen)
        return perms[e][i * batch : (i + 1) * batch]

    return at


@dataclass
class TeacherOutputs:
    """A frozen teacher's last feature map and logits for every training image, computed once
    (the teacher never changes, so a batch's rows are what a forward pass would give)."""

    feats: torch.Tensor  # (N, width, SIDE, SIDE)
    logits: torch.Tensor  # (N, classes)


@torch.no_grad()
def teacher_outputs(teacher: nn.Module, data: Split, batch: int = 500) -> TeacherOutputs:
    """Run the teacher once over ``data`` (no gradients, batches of 500)."""
    teacher.eval()
    feats = torch.cat([teacher.features(data.x[s : s + batch]) for s in range(0, len(data), batch)])
    feats = feats.contiguous()
    return TeacherOutputs(feats, teacher.head(feats.flatten(1)))


def distil_terms(
    logits: torch.Tensor,
    feats: torch.Tensor,
    t_logits: torch.Tensor,
    t_feats: torch.Tensor,
    kd: float,
    cc: float,
    temperature: float,
) -> torch.Tensor:
    """Output KD (KL at ``temperature``, scaled by its square) against the teacher's logits of
    the same images, and the cross-correlation self-distillation loss on the channel means of
    the last feature map (one value per channel: width dimensions against a batch of
    hundreds, so the correlation matrix has full rank)."""
    loss = logits.new_zeros(())
    if kd:
        tau = temperature
        loss = loss + kd * tau**2 * F.kl_div(
            F.log_softmax(logits / tau, -1),
            F.log_softmax(t_logits / tau, -1),
            log_target=True,
            reduction="batchmean",
        )
    if cc:
        s, t = feats.mean((2, 3)), t_feats.mean((2, 3))
        loss = loss + cc * pruning.cross_correlation_loss(t, s) / s.shape[1]
    return loss


def train(
    model: nn.Module,
    data: Split,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    *,
    one_cycle: bool = False,
    teacher: TeacherOutputs | None = None,
    kd: float = 0.0,
    cc: float = 0.0,
    temperature: float = 2.0,
    after_step: Callable[[int], None] | None = None,
    checkpoints: dict[int, Callable[[], None]] | None = None,
) -> list[float]:
    """Adam on cross-entropy (plus the distillation terms against ``teacher``'s outputs for the
    batch's images) through the book's loop :func:`lib.core.train.fit`. ``one_cycle``: the
    dense recipe (warm-up to ``lr``, then cosine decay); else a constant rate.
    ``after_step(t)`` runs after update t (pruning masks); ``checkpoints[k]()`` after k updates
    (scoring at a budget; ``checkpoints[0]`` before the first). Batches come from a generator
    seeded with ``seed``. The model's 4-d weights are moved to channels-last memory order in
    place (same values; tied tensors stay tied; not for QAT models), which runs the
    convolutions faster on one thread."""
    gen = torch.Generator().manual_seed(seed)
    batches = epoch_batches(len(data), batch, gen)
    checkpoints = checkpoints or {}
    distil = teacher is not None and bool(kd or cc)

    if not any(isinstance(m, FakeQuant) for m in model.modules()):
        model.to(memory_format=torch.channels_last)  # QAT's rounding runs slower that way

    def next_batch(t: int):
        idx = batches(t)
        return data.x[idx], data.y[idx], idx

    def loss_fn(m: nn.Module, b) -> torch.Tensor:
        x, y, idx = b
        feats = m.features(x)
        logits = m.head(feats.flatten(1))
        loss = F.cross_entropy(logits, y)
        if distil:
            t_logits, t_feats = teacher.logits[idx], teacher.feats[idx]
            loss = loss + distil_terms(logits, feats, t_logits, t_feats, kd, cc, temperature)
        return loss

    def after(t: int) -> None:
        if after_step is not None:
            after_step(t)
        if t + 1 in checkpoints:
            checkpoints[t + 1]()
            model.train()

    sched = None
    if one_cycle:
        sched = lambda opt: torch.optim.lr_scheduler.OneCycleLR(  # noqa: E731
            opt, lr, total_steps=max(steps, 1), pct_start=0.15
        )
    if 0 in checkpoints:
        checkpoints[0]()
    if steps == 0:
        return []
    log = fit(
        model,
        next_batch,
        loss_fn,
        steps,
        lambda params: torch.optim.Adam(params, lr=lr),
        make_scheduler=sched,
        after_step=after,
    )
    return log["loss"]


@torch.no_grad()
def predict(model: nn.Module, data: Split, batch: int = 500) -> torch.Tensor:
    """Predicted class of every item, in batches of 500 without gradients (on one thread
    larger batches run slower)."""
    model.eval()
    return torch.cat([model(data.x[s : s + batch]).argmax(-1) for s in range(0, len(data), batch)])


def correct(model: nn.Module, data: Split, batch: int = 500) -> np.ndarray:
    """Per-item correctness (bool, in order); accuracy is its mean."""
    return (predict(model, data, batch) == data.y).numpy()


def majority_share(data: Split) -> float:
    """Share of the most frequent class (what a model that predicts one class scores)."""
    return float(torch.bincount(data.y).max()) / len(data)


def linear_floor(train_set: Split, test_set: Split, epochs: int, seed: int = 0) -> float:
    """Test accuracy of a softmax regression on the raw pixels (the floor a CNN must clear),
    Adam in batches of 500 for ``epochs`` passes."""
    torch.manual_seed(seed)
    lin = nn.Linear(28 * 28, N_CLASSES)
    gen = torch.Generator().manual_seed(seed)
    batches = epoch_batches(len(train_set), 500, gen)
    x = train_set.x.flatten(1)

    def loss_fn(m, b):
        return F.cross_entropy(m(x[b]), train_set.y[b])

    steps = steps_for(epochs, len(train_set), 500)
    fit(lin, batches, loss_fn, steps, lambda p: torch.optim.Adam(p, lr=1e-3))
    with torch.no_grad():
        return float((lin(test_set.x.flatten(1)).argmax(-1) == test_set.y).float().mean())


# ---------------------------------------------------------------- families: pruning


class MaskKeeper:
    """Global magnitude pruning of every conv and linear weight, once; the masks are multiplied
    back after every update so pruned weights stay exact zeros."""

    def __init__(self, model: nn.Module, sparsity: float) -> None:
        self.weights = {n: compress.get_module(model, n).weight for n in weight_layers(model)}
        self.masks = pruning.global_masks(self.weights, sparsity)
        self(0)

    @torch.no_grad()
    def __call__(self, t: int) -> None:
        for n, w in self.weights.items():
            w.mul_(self.masks[n])

    def sparsity(self) -> float:
        zeros = sum(int((w == 0).sum()) for w in self.weights.values())
        return zeros / sum(w.numel() for w in self.weights.values())


def channel_scores(model: ResCNN) -> tuple[torch.Tensor, torch.Tensor]:
    """L2 norm of every weight that writes or reads each residual-stream channel, and of each
    stem channel (a channel whose weights are all zero scores 0)."""
    sq = lambda w, dims: w.detach().pow(2).sum(dims)  # noqa: E731
    stream = sq(model.stem1.weight, (1, 2, 3)) + sq(model.stem1.bias[:, None], 1)
    for conv in [model.stem2, *model.blocks]:
        stream = stream + sq(conv.weight, (1, 2, 3)) + sq(conv.weight, (0, 2, 3))
        stream = stream + conv.bias.detach().pow(2)
    head = model.head.weight.detach().view(N_CLASSES, -1, SIDE * SIDE)
    stream = stream + head.pow(2).sum((0, 2))
    stem = sq(model.stem0.weight, (1, 2, 3)) + model.stem0.bias.detach().pow(2)
    stem = stem + sq(model.stem1.weight, (0, 2, 3))
    return stream.sqrt(), stem.sqrt()


def prune_channels(model: ResCNN, fraction: float) -> ResCNN:
    """A narrower ResCNN: ``fraction`` of the residual-stream channels and of the stem channels
    with the smallest weight norms removed, every tensor sliced accordingly."""
    stream, stem = channel_scores(model)

    def keep(score: torch.Tensor) -> torch.Tensor:
        n = score.numel() - int(round(fraction * score.numel()))
        return torch.sort(torch.topk(score, max(n, 1)).indices).values

    ks, kt = keep(stream), keep(stem)
    new = ResCNN(len(ks), len(model.blocks), len(kt))
    with torch.no_grad():
        new.stem0.weight.copy_(model.stem0.weight[kt])
        new.stem0.bias.copy_(model.stem0.bias[kt])
        new.stem1.weight.copy_(model.stem1.weight[ks][:, kt])
        new.stem1.bias.copy_(model.stem1.bias[ks])
        for a, b in zip([new.stem2, *new.blocks], [model.stem2, *model.blocks]):
            a.weight.copy_(b.weight[ks][:, ks])
            a.bias.copy_(b.bias[ks])
        head = model.head.weight.view(N_CLASSES, -1, SIDE * SIDE)[:, ks]
        new.head.weight.copy_(head.reshape(N_CLASSES, -1))
        new.head.bias.copy_(model.head.bias)
    return new


# ---------------------------------------------------------------- families: low rank


def low_rank_conv(conv: nn.Conv2d, rank: int) -> nn.Sequential:
    """Truncated SVD of a convolution's (out, in*k*k) matrix: a rank-r k x k convolution
    (same stride and padding) followed by a 1x1 convolution carrying the bias."""
    out_c, in_c, k, _ = conv.weight.shape
    u, s, vh = torch.linalg.svd(conv.weight.detach().reshape(out_c, -1), full_matrices=False)
    root = s[:rank].sqrt()
    first = nn.Conv2d(in_c, rank, k, conv.stride, conv.padding, bias=False)
    second = nn.Conv2d(rank, out_c, 1)
    with torch.no_grad():
        first.weight.copy_((root[:, None] * vh[:rank]).reshape(rank, in_c, k, k))
        second.weight.copy_((u[:, :rank] * root).reshape(out_c, rank, 1, 1))
        second.bias.copy_(conv.bias.detach())
    return nn.Sequential(first, second)


def low_rank_model(model: ResCNN, ratio: float) -> int:
    """Factorise every square 3x3 convolution at rank round(ratio * width), in place; return
    the rank."""
    names = square_convs(model)
    width = model.stem2.weight.shape[0]
    rank = max(1, int(round(ratio * width)))
    for n in names:
        compress.set_module(model, n, low_rank_conv(compress.get_module(model, n), rank))
    return rank


# ---------------------------------------------------------------- families: quantisation


def weight_scale(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel symmetric scale max|w| / (2^(bits-1) - 1), broadcastable to w."""
    qmax = 2 ** (bits - 1) - 1
    s = w.detach().abs().amax(dim=tuple(range(1, w.dim())), keepdim=True) / qmax
    return torch.clamp(s, min=1e-8)


def quantise_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Fake-quantised weight on the per-channel symmetric grid (straight-through gradient)."""
    qmax = 2 ** (bits - 1) - 1
    s = weight_scale(w, bits)
    q = torch.clamp(torch.round(w / s), -qmax - 1, qmax) * s
    return w + (q - w).detach()


class FakeQuant(nn.Module):
    """Trains a conv or linear through quantisation noise: weights on the per-channel
    ``bits`` grid; with ``act``, inputs on a per-tensor 7-bit grid (per-batch range), as the
    static int8 kernels see them (``compress.ACT_QMAX``)."""

    def __init__(self, layer: nn.Module, bits: int, act: bool) -> None:
        super().__init__()
        self.layer, self.bits, self.act = layer, bits, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act:
            s, z = compress.qparams(x.detach().min(), x.detach().max(), 0, compress.ACT_QMAX)
            x = compress.fake_quant(x, s, z, 0, compress.ACT_QMAX)
        w = quantise_weight(self.layer.weight, self.bits)
        if isinstance(self.layer, nn.Conv2d):
            lay = self.layer
            return F.conv2d(x, w, lay.bias, lay.stride, lay.padding)
        return F.linear(x, w, self.layer.bias)


def to_fake_quant(model: nn.Module, bits: int, act: bool) -> None:
    """Wrap every conv and linear in :class:`FakeQuant` (QAT), in place."""
    for n in weight_layers(model):
        compress.set_module(model, n, FakeQuant(compress.get_module(model, n), bits, act))


def from_fake_quant(model: nn.Module) -> nn.Module:
    """The float model inside the FakeQuant wrappers, in place."""
    for n, m in list(model.named_modules()):
        if isinstance(m, FakeQuant):
            compress.set_module(model, n, m.layer)
    return model


def round_weights(model: nn.Module, bits: int) -> nn.Module:
    """Weights rounded to the per-channel ``bits`` grid, kept in float (4-bit weights run on
    float kernels: there is no int4 CPU kernel), in place."""
    with torch.no_grad():
        for n in weight_layers(model):
            w = compress.get_module(model, n).weight
            w.copy_(quantise_weight(w, bits))
    return model


def round_fp16(model: nn.Module) -> nn.Module:
    """Weights and biases rounded to fp16 and computed in fp32 (CPU fp16 convolutions are not
    faster), in place."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    return model


class RangeObserver(nn.Module):
    """Records the min and max of a layer's input and output during calibration."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer
        self.x_range = torch.tensor([math.inf, -math.inf])
        self.y_range = torch.tensor([math.inf, -math.inf])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layer(x)
        for r, t in ((self.x_range, x), (self.y_range, y)):
            r[0], r[1] = min(r[0], t.min()), max(r[1], t.max())
        return y


class StaticInt8Conv2d(nn.Module):
    """Static int8 convolution (fbgemm): input quantised with a calibrated per-tensor 7-bit
    scale, per-channel int8 weights, output requantised with a calibrated scale, then
    dequantised for the float residual additions and ReLUs around it."""

    def __init__(self, conv: nn.Conv2d, x_range: torch.Tensor, y_range: torch.Tensor) -> None:
        super().__init__()
        s_x, z_x = compress.qparams(x_range[0], x_range[1], 0, compress.ACT_QMAX)
        s_y, z_y = compress.qparams(y_range[0], y_range[1], 0, 255)
        self.in_scale, self.in_zero = float(s_x), int(z_x)
        out_c, in_c, k, _ = conv.weight.shape
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.qconv = nnq.Conv2d(
                in_c, out_c, k, stride=conv.stride, padding=conv.padding, dtype=torch.qint8
            )
            w = conv.weight.detach()
            scale = weight_scale(w, 8).flatten().double()
            zeros = torch.zeros(out_c, dtype=torch.long)
            qw = torch.quantize_per_channel(w, scale, zeros, 0, torch.qint8)
            self.qconv.set_weight_bias(qw, conv.bias.detach())
            self.qconv.scale, self.qconv.zero_point = float(s_y), int(z_y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the quantized kernels resize their output with an op PyTorch does not flag as
        # deterministic; the int8 arithmetic is exact, so the check is lifted for this call
        det = torch.are_deterministic_algorithms_enabled()
        warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
        torch.use_deterministic_algorithms(False)
        try:
            q = torch.quantize_per_tensor(x, self.in_scale, self.in_zero, torch.quint8)
            return self.qconv(q).dequantize()
        finally:
            torch.use_deterministic_algorithms(det, warn_only=warn_only)


def to_static_int8(model: nn.Module, calib_x: torch.Tensor) -> nn.Module:
    """Static int8 post-training quantisation of every conv and linear, in place: observe the
    activation ranges on ``calib_x``, then swap in int8 layers (per-channel weights)."""
    names = weight_layers(model)
    for n in names:
        compress.set_module(model, n, RangeObserver(compress.get_module(model, n)))
    model.eval()
    with torch.no_grad():
        for s in range(0, len(calib_x), 500):
            model(calib_x[s : s + 500])
    for n in names:
        obs = compress.get_module(model, n)
        if isinstance(obs.layer, nn.Conv2d):
            new = StaticInt8Conv2d(obs.layer, obs.x_range, obs.y_range)
        else:
            new = compress.StaticInt8Linear(obs.layer, obs.x_range, obs.y_range)
        compress.set_module(model, n, new)
    return model


# ---------------------------------------------------------------- sizes on disk


def saved_bytes(state: dict) -> int:
    """Bytes of the file ``torch.save(state)`` writes (measured on disk)."""
    with tempfile.NamedTemporaryFile(suffix=".pt") as f:
        torch.save(state, f.name)
        return os.path.getsize(f.name)


def _unique_tensors(state: object) -> dict[int, torch.Tensor]:
    """The distinct tensors of a (nested) state, by identity of their storage."""
    out: dict[int, torch.Tensor] = {}
    if isinstance(state, torch.Tensor):
        out[state.untyped_storage().data_ptr() if state.numel() else id(state)] = state
    elif isinstance(state, dict):
        for v in state.values():
            out.update(_unique_tensors(v))
    return out


def measure_file(state: dict) -> dict[str, float]:
    """Bytes of the saved file, its payload (bytes of the distinct tensors' numbers), the
    number of distinct tensors, and the container's bytes per tensor (file - payload) /
    tensors: names, pickled metadata and zip records padded to 64 bytes, a few hundred bytes
    whatever the tensor's size."""
    tensors = _unique_tensors(state)
    payload = sum(t.numel() * t.element_size() for t in tensors.values())
    nbytes = saved_bytes(state)
    return {
        "bytes": nbytes,
        "payload": payload,
        "tensors": len(tensors),
        "overhead": (nbytes - payload) / max(len(tensors), 1),
    }


def float_state(model: nn.Module, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The state dict in ``dtype``; a tensor shared by several layers (fusion) is stored once,
    as ``torch.save`` does for one storage under several names."""
    out, seen = {}, {}
    for k, v in model.state_dict().items():
        ptr = v.data_ptr()
        if ptr not in seen:
            seen[ptr] = v.to(dtype).clone()
        out[k] = seen[ptr]
    return out


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Signed 4-bit integers (-8..7) packed two per byte."""
    flat = (q.reshape(-1).to(torch.int16) & 0xF).to(torch.uint8)
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    return flat[0::2] | (flat[1::2] << 4)


def unpack_int4(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_int4` (the first ``n`` values, as int8)."""
    lo, hi = (packed & 0xF).to(torch.int16), (packed >> 4).to(torch.int16)
    both = torch.stack([lo, hi], 1).reshape(-1)[:n]
    return torch.where(both > 7, both - 16, both).to(torch.int8)


def quant_state(model: nn.Module, bits: int) -> dict[str, torch.Tensor]:
    """What an integer file holds: per conv/linear its weight as int8 (bits 8, from the int8
    kernels when the model has them) or packed int4 (bits 4), one fp32 scale per output
    channel, the fp32 bias and, for static int8, the input and output quantisation
    parameters."""
    out: dict[str, torch.Tensor] = {}
    for name, m in model.named_modules():
        if isinstance(m, StaticInt8Conv2d):
            qw, b = m.qconv.weight(), m.qconv.bias()
            out[f"{name}.weight_int8"] = qw.int_repr()
            out[f"{name}.weight_scale"] = qw.q_per_channel_scales().float()
            out[f"{name}.bias"] = b.detach()
            out[f"{name}.qparams"] = torch.tensor(
                [m.in_scale, m.in_zero, m.qconv.scale, m.qconv.zero_point]
            )
        elif isinstance(m, compress.StaticInt8Linear):
            qw, b = m.qlinear._weight_bias()
            out[f"{name}.weight_int8"] = qw.int_repr()
            out[f"{name}.weight_scale"] = qw.q_per_channel_scales().float()
            out[f"{name}.bias"] = b.detach()
            out[f"{name}.qparams"] = torch.tensor(
                [m.in_scale, m.in_zero, m.qlinear.scale, m.qlinear.zero_point]
            )
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            w = m.weight.detach()
            s = weight_scale(w, bits)
            q = torch.round(w / s).to(torch.int8)
            out[f"{name}.weight_int{bits}"] = q if bits == 8 else pack_int4(q)
            out[f"{name}.weight_scale"] = s.flatten().float()
            out[f"{name}.bias"] = m.bias.detach()
    return out


def model_state(model: nn.Module, fmt: str) -> dict:
    """The whole-model state written to disk in ``fmt``: ``fp32``/``fp16`` (the state dict;
    shared tensors once), ``sparse`` (bitmask + non-zero fp32 values,
    :func:`lib.core.compress.pack_state`), ``int8``/``int4`` (:func:`quant_state`)."""
    if fmt == "fp32":
        return float_state(model)
    if fmt == "fp16":
        return float_state(model, torch.float16)
    if fmt == "sparse":
        return compress.pack_state(model)
    if fmt in ("int8", "int4"):
        return quant_state(model, int(fmt[3:]))
    raise ValueError(f"unknown file format {fmt!r}")


def sparse_formula(model: nn.Module) -> int:
    """Payload bytes the bitmask format should take, from counts alone: per conv/linear weight
    one bit per entry (rounded up to bytes), 4 bytes per non-zero and its shape (int64 per
    dimension); every other tensor (biases) dense in fp32."""
    total = 0
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            w = m.weight
            total += (w.numel() + 7) // 8 + 4 * int((w != 0).sum()) + 8 * w.dim()
            total += 4 * m.bias.numel()
    return total


def file_bytes(model: nn.Module, fmt: str) -> int:
    """Bytes of the whole-model file in ``fmt`` (:func:`model_state`), measured on disk."""
    return saved_bytes(model_state(model, fmt))


def count_flops(model: nn.Module, example: torch.Tensor) -> int:
    """FLOPs of one image (hook count of :func:`lib.core.compress.flops`; an int8 model counts
    as the float model it came from, passed in its place)."""
    return compress.flops(model, example[:1])


# ---------------------------------------------------------------- one seed, every arm


@dataclass
class Arm:
    """One (family, level): the file format, how to build it from the dense CNN, and how it
    retrains (``None``: not retrained, scored at budget 0 only)."""

    family: str
    level: str
    fmt: str
    build: Callable[[ResCNN], nn.Module]
    kd: float = 0.0
    cc: float = 0.0
    from_scratch: bool = False
    retrains: bool = True
    after_build: Callable[[nn.Module], Callable[[int], None] | None] | None = None
    finish: Callable[[nn.Module], nn.Module] | None = None  # what is scored and stored


def arms(cfg: CnnConfig, calib_x: torch.Tensor) -> list[Arm]:
    """Every (family, level) of the testbed, in the order of the chapter's tables."""
    out = [Arm("dense", "1x", "fp32", clone)]
    for sd in (False, True):
        fam = "magnitude + self-distil" if sd else "magnitude"
        for s in cfg.sparsities:
            out.append(
                Arm(
                    fam,
                    f"{s:.0%}",
                    "sparse",
                    clone,
                    cc=cfg.cc_weight if sd else 0.0,
                    after_build=lambda m, s=s: MaskKeeper(m, s),
                )
            )
    for f in cfg.channel_fractions:
        out.append(Arm("channels", f"{f:.0%} removed", "fp32", lambda m, f=f: prune_channels(m, f)))
    ptq = (
        ("fp16", "fp16", round_fp16),
        ("int8", "int8", lambda m: to_static_int8(m, calib_x)),
        ("int4 weights", "int4", lambda m: round_weights(m, 4)),
    )
    for level, fmt, op in ptq:
        out.append(Arm("PTQ", level, fmt, lambda m, op=op: op(clone(m)), retrains=False))
    for bits in cfg.qat_bits:

        def qat_build(m: ResCNN, bits=bits) -> nn.Module:
            m = clone(m)
            to_fake_quant(m, bits, act=bits == 8)
            return m

        def qat_finish(m: nn.Module, bits=bits) -> nn.Module:
            m = from_fake_quant(clone(m))
            return to_static_int8(m, calib_x) if bits == 8 else round_weights(m, 4)

        level = "int8" if bits == 8 else "int4 weights"
        out.append(Arm("QAT", level, f"int{bits}", qat_build, finish=qat_finish))
    for r in cfg.rank_ratios:

        def lr_build(m: ResCNN, r=r) -> nn.Module:
            m = clone(m)
            low_rank_model(m, r)
            return m

        out.append(Arm("low rank", f"rank x{r:g}", "fp32", lr_build))
    for w in cfg.student_widths:
        width = max(1, int(round(w * cfg.width)))
        out.append(
            Arm(
                "distillation",
                f"width {width}",
                "fp32",
                lambda m, width=width: ResCNN(width, cfg.depth),
                kd=cfg.kd_weight,
                from_scratch=True,
            )
        )
    for k in cfg.fusion_removed:

        def fuse_build(m: ResCNN, k=k) -> nn.Module:
            m = clone(m)
            compress.fuse_layers(m, square_convs(m), k)
            return m

        out.append(Arm("layer fusion", f"{k} fused", "fp32", fuse_build))
    return out


@dataclass
class SeedResult:
    """Everything one seed produces: per (family, level, budget) the per-item correctness; per
    (family, level) the file bytes, FLOPs, parameters and non-zeros; the dense accuracy and
    its training time; the seed's models (for timing)."""

    seed: int
    hits: dict[tuple[str, str, float], np.ndarray] = field(default_factory=dict)
    classes: dict[tuple[str, str, float], int] = field(default_factory=dict)
    size: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    models: dict[tuple[str, str], nn.Module] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def run_seed(
    cfg: CnnConfig,
    seed: int,
    train_set: Split,
    test_set: Split,
    keep_models: bool = False,
    log: Callable[[str], None] | None = None,
) -> SeedResult:
    """Train the dense CNN for this seed (one-cycle, ``cfg.epochs``), then build every arm from
    it, retrain it at the constant rate and score it at every budget."""
    res = SeedResult(seed)
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    dense = ResCNN(cfg.width, cfg.depth)
    steps = steps_for(cfg.epochs, len(train_set), cfg.batch)
    train(dense, train_set, steps, cfg.batch, cfg.lr, seed, one_cycle=True)
    dense.requires_grad_(False)
    res.seconds["dense"] = time.perf_counter() - t0
    calib_x = train_set.x[: cfg.calib]
    example = test_set.x[:1]
    dense_flops = count_flops(dense, example)
    teacher = teacher_outputs(dense, train_set)
    budget_steps = {b: steps_for(b, len(train_set), cfg.retrain_batch) for b in cfg.budgets}
    for i, arm in enumerate(arms(cfg, calib_x)):
        t1 = time.perf_counter()
        torch.manual_seed(seed * 1000 + i)
        model = arm.build(dense)
        model.requires_grad_(True)
        keeper = arm.after_build(model) if arm.after_build else None
        key = (arm.family, arm.level)
        finish = arm.finish or (lambda m: m)

        def score(b: float, model=model, key=key, finish=finish) -> None:
            pred = predict(finish(model), test_set)
            res.hits[(*key, b)] = (pred == test_set.y).numpy()
            res.classes[(*key, b)] = int(pred.unique().numel())

        if not arm.retrains:
            score(0.0)
        else:
            marks: dict[int, Callable[[], None]] = {}
            for b, k in budget_steps.items():
                marks.setdefault(k, lambda b=b: None)
                prev = marks[k]
                marks[k] = lambda b=b, prev=prev: (prev(), score(b))
            train(
                model,
                train_set,
                max(budget_steps.values()),
                cfg.retrain_batch,
                cfg.lr if arm.from_scratch else cfg.retrain_lr,
                seed * 1000 + i,
                teacher=teacher,
                kd=arm.kd,
                cc=arm.cc,
                temperature=cfg.temperature,
                after_step=keeper,
                checkpoints=marks,
            )
        final = finish(model)
        final.eval()
        float_model = from_fake_quant(clone(model)) if arm.family == "QAT" else model
        if arm.family == "PTQ" and arm.level == "int8":
            float_model = dense
        res.size[key] = {
            **measure_file(model_state(final, arm.fmt)),
            "fp32_payload": measure_file(float_state(float_model))["payload"],
            "params": n_params(float_model),
            "nonzero": sum(int((p != 0).sum()) for p in float_model.parameters()),
            "flops": count_flops(float_model, example),
            "dense_flops": dense_flops,
            "sparsity": keeper.sparsity() if keeper is not None else 0.0,
            **shape_of(float_model),
        }
        if arm.fmt == "sparse":
            res.size[key]["sparse_formula"] = sparse_formula(final)
        if keep_models:
            res.models[key] = final
        res.seconds[f"{arm.family} {arm.level}"] = time.perf_counter() - t1
        if log:
            log(f"seed {seed} {arm.family} {arm.level}: {time.perf_counter() - t1:.1f} s")
    return res


# ---------------------------------------------------------------- latency


def time_models(
    models: dict[tuple[str, str], nn.Module], example: torch.Tensor, rounds: int, warmup: int
) -> dict[tuple[str, str, int], np.ndarray]:
    """Seconds per call of every model at batch 1 and 32, one thread, all models interleaved
    in shuffled order each round (:func:`lib.core.latency.time_interleaved`)."""
    out = {}
    for b in (1, 32):
        x = example[:b].contiguous()
        fns = {f"{k[0]}|{k[1]}": (lambda m=m: m(x)) for k, m in models.items()}
        got = latency.time_interleaved(fns, rounds=rounds, warmup=warmup, n_threads=1, seed=b)
        for name, t in got.items():
            fam, level = name.split("|")
            out[(fam, level, b)] = t
    return out


# ---------------------------------------------------------------- what the findings rest on

TOLERANCES = (1.0, 2.0)  # points of accuracy: the equal-accuracy table's two columns


def levels_of(results: list[SeedResult], family: str) -> list[str]:
    """Levels of a family in run order."""
    return list(dict.fromkeys(k[1] for k in results[0].size if k[0] == family))


def ratio_of(results: list[SeedResult], family: str, level: str) -> float:
    """Compression ratio: dense fp32 file bytes / this arm's file bytes (mean over seeds)."""
    return float(
        np.mean(
            [r.size[("dense", "1x")]["bytes"] / r.size[(family, level)]["bytes"] for r in results]
        )
    )


def curve_hits(
    results: list[SeedResult], family: str, budget: float
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(seeds x (1 + levels) x items correctness, ratios, level names) of one family at one
    budget; level 0 is the dense CNN retrained for as long (ratio 1), so drops are paired."""
    levels = levels_of(results, family)
    b_ref = budget if ("dense", "1x", budget) in results[0].hits else 0.0
    rows = []
    for r in results:
        ref = r.hits[("dense", "1x", b_ref)]
        rows.append(np.stack([ref] + [r.hits[(family, lv, budget)] for lv in levels]))
    ratios = np.array([1.0] + [ratio_of(results, family, lv) for lv in levels])
    return np.stack(rows), ratios, levels


def mean_drop_pts(acc: np.ndarray) -> np.ndarray:
    """Mean over seeds of each level's accuracy drop (points) against level 0 of the same seed
    (``acc``: seeds x levels)."""
    return 100 * (acc[:, :1] - acc).mean(0)


def ratio_within(acc: np.ndarray, ratios: np.ndarray, tol_pts: float) -> float:
    """Largest compression ratio whose mean drop is at most ``tol_pts`` points (1 when only
    the reference qualifies)."""
    return float(np.max(ratios[mean_drop_pts(acc) <= tol_pts]))


def drop_acceleration(acc: np.ndarray) -> float:
    """Largest second difference of the mean drop over successive levels (points): how
    sharply the curve bends at its inflection (NaN with under 3 levels)."""
    drop = mean_drop_pts(acc)
    return float(np.max(np.diff(drop, 2))) if len(drop) >= 3 else float("nan")


def bootstrap_curve(
    hits: np.ndarray, statistic: Callable[[np.ndarray], float], n_boot: int = 2000, seed: int = 0
) -> Estimate:
    """A statistic of the seeds x levels accuracy matrix with a 95 % two-level bootstrap
    interval: seeds resampled, then test items, the same items for every level and seed
    (paired). ``hits``: seeds x levels x items."""
    n_seeds, n_levels, n_items = hits.shape
    flat = hits.reshape(n_seeds * n_levels, n_items).astype(float)
    rng = np.random.default_rng(seed)
    seed_idx = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    boot = np.empty(n_boot)
    for start in range(0, n_boot, 64):
        b = min(64, n_boot - start)
        idx = rng.integers(0, n_items, size=(b, n_items))
        flat_idx = (np.arange(b)[:, None] * n_items + idx).ravel()
        counts = np.bincount(flat_idx, minlength=b * n_items).reshape(b, n_items).astype(float)
        acc = (flat @ counts.T / n_items).reshape(n_seeds, n_levels, b)
        for j in range(b):
            boot[start + j] = statistic(acc[seed_idx[start + j], :, j])
    boot = boot[np.isfinite(boot)]
    ci = tuple(float(q) for q in np.quantile(boot, [0.025, 0.975])) if len(boot) else None
    return Estimate(
        float(statistic(hits.mean(2))),
        ci,
        n_seeds,
        f"bootstrap over {n_seeds} seeds x {n_items} items (paired across levels)",
    )


def pts(est: Estimate) -> Estimate:
    """An estimate of a fraction in percentage points."""
    ci = None if est.ci is None else (100 * est.ci[0], 100 * est.ci[1])
    return Estimate(100 * est.value, ci, est.n_seeds, est.method)


def max_budget_of(results: list[SeedResult]) -> float:
    """The largest retraining budget scored."""
    return max(k[2] for k in results[0].hits)


def budget_table(results: list[SeedResult]) -> "pd.DataFrame":
    """One line per (family, level, budget): compression ratio, accuracy mean and std over
    seeds, and the mean drop (points) against the dense CNN retrained for as long."""
    import pandas as pd

    rows = []
    for fam, level, b in results[0].hits:
        b_ref = b if ("dense", "1x", b) in results[0].hits else 0.0
        acc = np.array([r.hits[(fam, level, b)].mean() for r in results])
        ref = np.array([r.hits[("dense", "1x", b_ref)].mean() for r in results])
        rows.append(
            {
                "family": fam,
                "level": level,
                "budget": b,
                "ratio": ratio_of(results, fam, level),
                "acc": acc.mean(),
                "acc_std": acc.std(ddof=1) if len(acc) > 1 else 0.0,
                "drop_pts": 100 * (ref - acc).mean(),
            }
        )
    return pd.DataFrame(rows)


def size_table(results: list[SeedResult]) -> "pd.DataFrame":
    """One line per (family, level): file bytes (mean over seeds), compression ratio,
    parameters, non-zeros, FLOPs and FLOPs ratio to the dense CNN."""
    import pandas as pd

    rows = []
    for key in results[0].size:
        s = [r.size[key] for r in results]
        rows.append(
            {
                "family": key[0],
                "level": key[1],
                "bytes": float(np.mean([x["bytes"] for x in s])),
                "ratio": ratio_of(results, *key),
                "params": float(np.mean([x["params"] for x in s])),
                "nonzero": float(np.mean([x["nonzero"] for x in s])),
                "flops": float(np.mean([x["flops"] for x in s])),
                "flops_x": float(np.mean([x["dense_flops"] / x["flops"] for x in s])),
            }
        )
    return pd.DataFrame(rows)


def family_budget(results: list[SeedResult], family: str, budget: float) -> float:
    """The budget a family is judged at: ``budget``, or 0 for families that do not retrain."""
    return budget if (family, levels_of(results, family)[0], budget) in results[0].hits else 0.0


def ratio_estimate(
    results: list[SeedResult], family: str, budget: float, tol_pts: float, n_boot: int = 2000
) -> tuple[Estimate, str]:
    """Largest compression ratio of ``family`` whose mean drop against the equally retrained
    dense CNN is at most ``tol_pts`` points, with its paired bootstrap interval, and the level
    it is reached at ("none" when no level qualifies: ratio 1)."""
    hits, ratios, levels = curve_hits(results, family, family_budget(results, family, budget))
    est = bootstrap_curve(hits, lambda a: ratio_within(a, ratios, tol_pts), n_boot=n_boot)
    drop = mean_drop_pts(hits.mean(2))
    ok = [i for i in range(1, len(ratios)) if drop[i] <= tol_pts]
    best = max(ok, key=lambda i: ratios[i]) if ok else None
    return est, ("none" if best is None else levels[best - 1])


def at_top_of_grid(results: list[SeedResult], family: str, level: str) -> bool:
    """Whether ``level`` is the family's most compressed level (then the grid cannot say how
    much further the family would stay within the tolerance)."""
    levels = levels_of(results, family)
    ratios = [ratio_of(results, family, lv) for lv in levels]
    return level != "none" and ratio_of(results, family, level) == max(ratios)


def drop_estimate(results: list[SeedResult], family: str, level: str, budget: float) -> Estimate:
    """Accuracy drop (points) of one arm against the equally retrained dense CNN, paired
    bootstrap over seeds and the same test items."""
    from lib.book import stats

    b = family_budget(results, family, budget)
    b_ref = b if ("dense", "1x", b) in results[0].hits else 0.0
    ref = np.stack([r.hits[("dense", "1x", b_ref)] for r in results])
    arm = np.stack([r.hits[(family, level, b)] for r in results])
    return pts(stats.bootstrap_items(ref, arm))


def judged(est: Estimate, tol_pts: float) -> str:
    """Whether a drop's interval lies within ``tol_pts`` ("yes"), beyond it ("no") or
    straddles it ("inconclusive")."""
    lo, hi = est.ci if est.ci is not None else (est.value, est.value)
    return "yes" if hi <= tol_pts else ("no" if lo > tol_pts else "inconclusive")


FAMILIES = (
    "magnitude",
    "magnitude + self-distil",
    "channels",
    "PTQ",
    "QAT",
    "low rank",
    "distillation",
    "layer fusion",
)


def equal_accuracy(
    results: list[SeedResult],
    times: dict[tuple[str, str, int], np.ndarray],
    budget: float,
    n_boot: int = 2000,
) -> "pd.DataFrame":
    """The table at equal accuracy: per family and tolerance (1 and 2 points), the largest
    compression ratio within it (95 % interval), the level, its drop with a paired interval
    and whether that interval clears the tolerance, and its latency at batch 1 and 32 (median
    and interquartile range, ms, one thread, interleaved)."""
    import pandas as pd

    rows = []
    for fam in FAMILIES:
        if not levels_of(results, fam):
            continue
        for tol in TOLERANCES:
            est, level = ratio_estimate(results, fam, budget, tol, n_boot)
            row = {
                "family": fam,
                "within_pts": tol,
                "budget": family_budget(results, fam, budget),
                "ratio": est.value,
                "ratio_ci": est.ci,
                "level": level,
            }
            if level != "none":
                d = drop_estimate(results, fam, level, budget)
                row.update(drop_pts=d.value, drop_ci=d.ci, within=judged(d, tol))
            key = ("dense", "1x") if level == "none" else (fam, level)
            for b in (1, 32):
                t = 1e3 * times[(*key, b)]
                row[f"lat{b}_ms"] = float(np.median(t))
                row[f"lat{b}_iqr"] = (float(np.percentile(t, 25)), float(np.percentile(t, 75)))
            rows.append(row)
    return pd.DataFrame(rows)


def speedup(
    times: dict[tuple[str, str, int], np.ndarray], key: tuple[str, str], b: int
) -> Estimate:
    """Dense / arm median latency at batch ``b`` with a bootstrap interval over the timed
    rounds (one model each)."""
    ratio, ci = latency.speedup(times[("dense", "1x", b)], times[(*key, b)])
    n = len(times[(*key, b)])
    return Estimate(ratio, ci, 1, f"bootstrap over {n} interleaved rounds per model")


def collapsed(results: list[SeedResult], keys: list[tuple[str, str, float]]) -> bool:
    """True when every seed of every given arm predicts one class for the whole test set."""
    return all(r.classes[k] <= 1 for r in results for k in keys)


def arm_hits(results: list[SeedResult], family: str, level: str, budget: float) -> np.ndarray:
    """Seeds x items correctness of one arm at one budget."""
    return np.stack([r.hits[(family, level, budget)] for r in results])


def identities(results: list[SeedResult], cfg: CnnConfig) -> dict[str, float]:
    """The accounting identities behind sizes and FLOPs (checks), from the first seed: file
    bytes against parameter bytes, fp16/int8/int4 against fp32, the bitmask formula, tying,
    and FLOPs against the architecture's formula."""
    s = results[0].size
    dense = s[("dense", "1x")]
    top = f"{max(cfg.sparsities):.0%}"
    sp = s[("magnitude", top)]
    fused_level = levels_of(results, "layer fusion")[-1]
    fused = s[("layer fusion", fused_level)]
    payload = lambda key: s[key]["payload"] / dense["payload"]  # noqa: E731
    out = {
        "cnn_file_overhead_per_tensor": max(
            v["overhead"] for r in results for v in r.size.values()
        ),
        "cnn_fp32_payload_over_params": dense["payload"] / (4 * dense["params"]),
        "cnn_fp16_payload_ratio": payload(("PTQ", "fp16")),
        "cnn_int8_payload_ratio": payload(("PTQ", "int8")),
        "cnn_int4_payload_ratio": payload(("PTQ", "int4 weights")),
        "cnn_sparse_payload_over_formula": sp["payload"] / sp["sparse_formula"],
        "cnn_pruned_flops_ratio": sp["flops"] / dense["flops"],
        "cnn_fused_flops_ratio": fused["flops"] / dense["flops"],
        "cnn_fused_payload_over_params": payload(("layer fusion", fused_level))
        / (fused["params"] / dense["params"]),
    }
    dev = [
        v["flops"] / flops_formula(v["width"], cfg.depth, v["stem"], v["rank"]) - 1
        for v in s.values()
    ]
    out["cnn_flops_formula_max_dev"] = float(np.max(np.abs(dev)))
    out["cnn_pruned_sparsity_error"] = max(
        abs(r.size[(fam, f"{sp:.0%}")]["sparsity"] - sp)
        for r in results
        for fam in ("magnitude", "magnitude + self-distil")
        for sp in cfg.sparsities
    )
    return out


def unresolved(
    results: list[SeedResult], family: str, level: str, est: Estimate, criterion: dict
) -> str | None:
    """A reason the grid cannot settle a ratio finding: the most compressed level tested is
    still within the tolerance while the interval does not yet clear the criterion's bound (a
    more compressed level is needed); else None."""
    bound = criterion.get("at_least")
    low = est.value if est.ci is None else est.ci[0]
    if at_top_of_grid(results, family, level) and bound is not None and low < bound:
        return f"the most compressed {family} level tested ({level}) is still within tolerance"
    return None


def show_equal(table: "pd.DataFrame") -> "pd.DataFrame":
    """The equal-accuracy table formatted for the page: intervals as [low, high]."""
    out = table.copy()

    def rng(ci, digits):
        return "" if not isinstance(ci, tuple) else f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"

    out["ratio"] = [f"{v:.2f} {rng(c, 2)}" for v, c in zip(table.ratio, table.ratio_ci)]
    if "drop_pts" in table:
        out["drop (pts)"] = [
            "" if np.isnan(v) else f"{v:+.2f} {rng(c, 2)}"
            for v, c in zip(table.drop_pts.astype(float), table.drop_ci)
        ]
    for b in (1, 32):
        out[f"latency b{b} (ms)"] = [
            f"{m:.3f} [{q[0]:.3f}, {q[1]:.3f}]"
            for m, q in zip(table[f"lat{b}_ms"], table[f"lat{b}_iqr"])
        ]
    keep = ["family", "within_pts", "budget", "ratio", "level", "drop (pts)", "within"]
    keep += ["latency b1 (ms)", "latency b32 (ms)"]
    return out[[c for c in keep if c in out]].fillna("")


def paper_vs_here(findings: list[dict], extra: list[dict] | None = None) -> "pd.DataFrame":
    """The chapter's paper-vs-here table: one line per recorded finding (the paper's value and
    source, the estimate with its interval and seeds, the computed verdict with its reason
    when inconclusive: which adequacy failed, or which bound the interval straddles), then
    ``extra`` lines for results that are not run here (each with claim, paper, source, here)."""
    import pandas as pd

    rows = []
    for f in findings:
        ci = f.get("ci")
        here = f"{f['value']:.3g}" + ("" if not ci else f" [{ci[0]:.3g}, {ci[1]:.3g}]")
        here += f", {f['n_seeds']} seeds" if f.get("n_seeds") else ""
        why = f" ({f['why']})" if f["verdict"] == "inconclusive" and f.get("why") else ""
        rows.append(
            {
                "claim": f["name"],
                "paper": f["paper_value"],
                "source": f["paper_source"],
                "here": here,
                "verdict": f["verdict"] + why,
            }
        )
    rows += list(extra or [])
    return pd.DataFrame(rows)


def most_compressed(results: list[SeedResult], family: str) -> tuple[str, str]:
    """(family, level) of the family's highest compression ratio."""
    levels = levels_of(results, family)
    return family, max(levels, key=lambda lv: ratio_of(results, family, lv))


def settling(
    results: list[SeedResult], criterion: dict, tol_pts: float, n_boot: int = 1000
) -> "pd.DataFrame":
    """For every family that retrains and every budget: the largest ratio within ``tol_pts``
    (95 % interval) and the verdict the declared ``criterion`` gives it at that budget
    (:func:`lib.book.verdicts.verdict`, adequacy aside): "reached" when the whole interval
    clears the bound, "straddles", or "not yet". The budget from which it stays reached is
    where that family's verdict settles."""
    import pandas as pd

    from lib.book import verdicts

    budgets = sorted({k[2] for k in results[0].hits})
    rows = []
    for fam in FAMILIES:
        if fam == "PTQ" or not levels_of(results, fam):
            continue
        row: dict[str, object] = {"family": fam}
        status = []
        for b in budgets:
            est, level = ratio_estimate(results, fam, b, tol_pts, n_boot)
            why = unresolved(results, fam, level, est, criterion)
            v, _ = verdicts.verdict(est.value, est.ci, criterion, unresolved=why)
            lo, hi = est.ci
            state = {"reproduced": "reached", "inconclusive": "straddles"}.get(v, "not yet")
            row[f"{b:g} ep"] = f"{est.value:.2f} [{lo:.2f}, {hi:.2f}] {state}"
            status.append(v == "reproduced")
        first = next((i for i in range(len(budgets)) if all(status[i:])), None)
        row["settles at (epochs)"] = "-" if first is None else f"{budgets[first]:g}"
        rows.append(row)
    return pd.DataFrame(rows)


NOT_RUN = [
    {
        "claim": "layer fusion on WikiText-2 (pretrained Transformers)",
        "paper": "20 % of the original size within 5 perplexity points",
        "source": "arXiv 2007.14917, abstract",
        "here": "not run: no pretrained GPT-2 and no WikiText-2 training split offline",
        "verdict": "not run here",
    },
    {
        "claim": "self-distilled pruning vs smaller and 6x larger distilled models",
        "paper": "beats equal-size smaller Transformers; competitive with 6x larger distilled ones",
        "source": "arXiv 2109.15014, abstract (GLUE, XGLUE)",
        "here": "multilingual setting: chapter 03; CNN analogue: budget curves above",
        "verdict": "see chapter 03",
    },
    {
        "claim": "int8 PTQ keeps accuracy, 2-3x faster; a half-depth distilled student keeps 97 %",
        "paper": "< 1 point; 2-3x; 97 % and 60 % faster",
        "source": "arXiv 2307.05972; PyTorch quantization notes; arXiv 1910.01108 (DistilBERT)",
        "here": "chapter 08 (compression_minilm: MiniLM on Rotten Tomatoes)",
        "verdict": "see chapter 08",
    },
    {
        "claim": "SDQ on XGLUE (XLM-R, InfoXLM; 8-bit weights)",
        "paper": "SDQ outperforms baselines, 8-bit weights keep performance",
        "source": "arXiv 2307.05972, abstract",
        "here": "chapter 07 (self-distilled quantisation across languages)",
        "verdict": "see chapter 07",
    },
]
