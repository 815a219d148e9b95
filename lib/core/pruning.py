"""Global magnitude pruning with a gradual schedule, and the weight-alignment regularizers.

Pruning (Zhu & Gupta 2017 style): one threshold over all prunable matrices at once, the
sparsity raised along a cubic schedule during fine-tuning, masks multiplied into the
weights so that pruned entries are exact zeros. Regularizers (reconstructions of
O'Neill, Dutta & Assem 2022, "Aligned Weight Regularizers"): keep each pruned unit
(row of a weight matrix) aligned with the same unit of a dense reference model, by
cosine or by relative Frobenius distance. The cross-correlation loss is the
self-distillation term of O'Neill et al. "Self-distilled pruning" (Barlow-Twins form).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def prunable_weights(model: nn.Module, prefix: str = "encoder.layer.") -> dict[str, nn.Parameter]:
    """The encoder's weight matrices (2-D, inside the transformer layers): embeddings,
    LayerNorms, biases and task heads are left dense."""
    return {n: p for n, p in model.named_parameters() if n.startswith(prefix) and p.dim() == 2}


def global_masks(weights: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """Boolean keep-masks that zero exactly round(sparsity * N) of all N weights, the
    smallest in magnitude across every matrix (ties broken by position, so exact)."""
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    flat = torch.cat([w.detach().abs().reshape(-1) for w in weights.values()])
    k = int(round(sparsity * flat.numel()))
    keep = torch.ones_like(flat, dtype=torch.bool)
    if k > 0:
        thr = torch.kthvalue(flat, k).values
        below = flat < thr
        keep[below] = False
        ties = torch.nonzero(flat == thr).squeeze(1)
        keep[ties[: k - int(below.sum())]] = False
    out, start = {}, 0
    for name, w in weights.items():
        out[name] = keep[start : start + w.numel()].view_as(w)
        start += w.numel()
    return out


def cubic_sparsity(step: int, final: float, start: int, end: int, initial: float = 0.0) -> float:
    """Zhu & Gupta's gradual schedule: s = final + (initial - final) * (1 - progress)^3,
    held at ``initial`` before ``start`` and at ``final`` from ``end`` on."""
    if end <= start:
        return final if step >= start else initial
    p = min(max((step - start) / (end - start), 0.0), 1.0)
    return final + (initial - final) * (1.0 - p) ** 3


class MagnitudePruner:
    """Gradual global magnitude pruning of a model's encoder matrices."""

    def __init__(
        self,
        model: nn.Module,
        final: float,
        start: int,
        end: int,
        every: int = 1,
        prefix: str = "encoder.layer.",
    ):
        self.weights = prunable_weights(model, prefix)
        self.final, self.start, self.end, self.every = final, start, end, max(int(every), 1)
        self.masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in self.weights.items()}
        self.target = 0.0

    def step(self, step: int) -> float:
        """Recompute the masks when the schedule says so (every ``every`` steps and at the end),
        then zero the pruned weights; return the current target sparsity."""
        due = step >= self.start and ((step - self.start) % self.every == 0 or step >= self.end)
        s = cubic_sparsity(step, self.final, self.start, self.end)
        if due and s > self.target:
            self.target = s
            self.masks = global_masks(self.weights, s)
        self.apply()
        return self.target

    @torch.no_grad()
    def apply(self) -> None:
        """Multiply the masks into the weights (pruned entries become exact zeros)."""
        for n, w in self.weights.items():
            w.mul_(self.masks[n])

    def sparsity(self) -> float:
        """Fraction of exact zeros over all prunable weights (measured, not assumed)."""
        zeros = sum(int((w == 0).sum()) for w in self.weights.values())
        return zeros / sum(w.numel() for w in self.weights.values())


def cosine_alignment(pruned: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> torch.Tensor:
    """R_cos: mean over matrices of the mean over units (rows) of 1 - cos(pruned row, dense row).
    Zero when every pruned unit points the way its dense unit does."""
    terms = [
        1.0 - F.cosine_similarity(pruned[n], ref[n].detach(), dim=1, eps=1e-8).mean() for n in ref
    ]
    return torch.stack(terms).mean()


def frobenius_alignment(
    pruned: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]
) -> torch.Tensor:
    """R_F: mean over matrices of ||W_pruned - W_dense||_F^2 / ||W_dense||_F^2."""
    terms = [
        (pruned[n] - ref[n].detach()).pow(2).sum() / ref[n].detach().pow(2).sum().clamp_min(1e-12)
        for n in ref
    ]
    return torch.stack(terms).mean()


def masked(
    weights: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """M * W for each matrix (so a regularizer's gradient never flows into pruned entries)."""
    return {n: w * masks[n] for n, w in weights.items()}


def cross_correlation_loss(
    teacher: torch.Tensor, student: torch.Tensor, off_diag: float = 5e-3
) -> torch.Tensor:
    """Self-distillation loss: standardise both [N, D] feature sets over N, form the D x D
    cross-correlation C, and penalise (1 - C_ii)^2 plus off_diag * C_ij^2 (i != j)."""

    def standardise(z: torch.Tensor) -> torch.Tensor:
        z = z - z.mean(0)
        return z / z.norm(dim=0).clamp_min(1e-8)

    c = standardise(teacher.detach()).T @ standardise(student)
    diag = torch.diagonal(c)
    off = c.pow(2).sum() - diag.pow(2).sum()
    return (1.0 - diag).pow(2).sum() + off_diag * off


def reference_weights(model: nn.Module, prefix: str = "encoder.layer.") -> dict[str, torch.Tensor]:
    """Frozen copies of the prunable matrices (the dense model the regularizers align to)."""
    return {n: w.detach().clone() for n, w in prunable_weights(model, prefix).items()}
