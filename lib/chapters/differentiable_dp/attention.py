"""Structured attention at toy scale: a small sequence-to-sequence model on a task whose
alignment is monotone, with softmax attention or DTW_Omega attention (the paper's sequential
attention, reconstructed; its NMT setting is out of reach here).

Task ("stretch"): the input is n tokens from a vocabulary of V; the tokens of the upper half of
the vocabulary are doubled in the output, the others copied once, so the output has m = n + k
tokens when k input tokens are doubled. Every sequence has exactly k doubled tokens, so that all
grids are m x n and batch together. Output position i reads input position a(i), a monotone
map: the alignment is a DTW path.

Model: an embedding and a bidirectional GRU encode the input into values h_j and keys k_j; the
decoder is non-autoregressive (the output length is known): a learned embedding of output
position i gives the query q_i. Scores theta_ij = <q_i, k_j> / sqrt(d). Attention is either
softmax over j for each i, or the alignment grad DTW_Omega(theta) over the whole grid (negentropy
or squared l2), differentiated through its Hessian-vector products. The context c_i = sum_j
alpha_ij h_j and the query give the output token.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import Tensor, nn

from lib.chapters.differentiable_dp import smooth_dp as sd

KINDS = ("softmax", "entropy", "l2")


def make_batch(gen: torch.Generator, size: int, n: int, k: int, vocab: int):
    """Inputs (size, n), outputs (size, n + k) and the true alignments (size, n + k, n) of the
    stretch task: k random positions carry a token of the upper half (doubled)."""
    half = vocab // 2
    low = torch.randint(0, half, (size, n), generator=gen)
    high = torch.randint(half, vocab, (size, n), generator=gen)
    doubled = torch.rand(size, n, generator=gen).argsort(1) < k
    x = torch.where(doubled, high, low)
    reps = 1 + doubled.long()
    src = torch.stack([torch.repeat_interleave(torch.arange(n), r) for r in reps])
    y = torch.gather(x, 1, src)
    align = torch.nn.functional.one_hot(src, n).double()
    return x, y, align


class Seq2Seq(nn.Module):
    """Encoder (embedding + bidirectional GRU), position queries, one attention, output MLP."""

    def __init__(self, vocab: int, m: int, dim: int, kind: str, gamma: float) -> None:
        super().__init__()
        self.kind, self.gamma = kind, gamma
        self.emb = nn.Embedding(vocab, dim)
        self.enc = nn.GRU(dim, dim, batch_first=True, bidirectional=True)
        self.key = nn.Linear(2 * dim, dim)
        self.pos = nn.Embedding(m, dim)
        self.query = nn.Linear(dim, dim)
        self.out = nn.Sequential(nn.Linear(3 * dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, vocab))

    def attention(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Attention weights (B, m, n) and the encoder values (B, n, 2 dim)."""
        h, _ = self.enc(self.emb(x))
        q = self.query(self.pos.weight)  # (m, dim)
        theta = torch.einsum("md,bnd->bmn", q, self.key(h)) / math.sqrt(q.shape[1])
        if self.kind == "softmax":
            return torch.softmax(theta, -1), h
        return sd.dtw_grad(theta, self.gamma, self.kind), h

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Output logits (B, m, V) and attention weights (B, m, n)."""
        alpha, h = self.attention(x)
        ctx = alpha @ h
        pos = self.pos.weight.expand(x.shape[0], -1, -1)
        return self.out(torch.cat([ctx, pos], -1)), alpha


def train_and_test(
    kind: str,
    seed: int,
    n: int,
    k: int,
    vocab: int,
    dim: int,
    steps: int,
    batch: int,
    lr: float,
    gamma: float,
    test: tuple[Tensor, Tensor, Tensor],
) -> dict:
    """Train one model on fresh batches (generator seeded by ``seed``); score it on ``test``:
    per test sequence the token accuracy, per test sequence whether all tokens are right, and
    the attention maps' fraction of exact non-zeros and their mass on the true alignment."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = Seq2Seq(vocab, n + k, dim, kind, gamma).double()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    t0 = time.perf_counter()
    for _ in range(steps):
        x, y, _ = make_batch(gen, batch, n, k, vocab)
        logits, _ = model(x)
        loss = nn.functional.cross_entropy(logits.reshape(-1, vocab), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - t0
    x, y, align = test
    with torch.no_grad():
        logits, alpha = model(x)
    right = (logits.argmax(-1) == y).double()
    return {
        "token_acc": right.mean(1).numpy(),
        "seq_acc": (right.min(1).values).numpy(),
        "nonzeros": (alpha > 0).double().mean((1, 2)).numpy(),
        "on_path": (alpha * align).sum((1, 2)).numpy() / align.shape[1],
        "seconds": seconds,
        "example": alpha[0].numpy(),
    }


def study(
    seed: int,
    repeats: int,
    n: int,
    k: int,
    vocab: int,
    dim: int,
    steps: int,
    batch: int,
    lr: float,
    gamma: float,
    n_test: int,
) -> dict[str, list[dict]]:
    """Every kind trained with seeds seed, seed + 1, ...; one test set (from ``seed``) shared by
    all, so that kinds are paired on test sequences and seed index."""
    test = make_batch(torch.Generator().manual_seed(10_000 + seed), n_test, n, k, vocab)
    runs = {kind: [] for kind in KINDS}
    for r in range(repeats):
        for kind in KINDS:
            runs[kind].append(
                train_and_test(kind, seed + r, n, k, vocab, dim, steps, batch, lr, gamma, test)
            )
    return runs


def per_item(runs: dict[str, list[dict]], kind: str, key: str) -> np.ndarray:
    """One per-test-sequence score, seeds x sequences."""
    return np.stack([r[key] for r in runs[kind]])
