"""Alignment terms added to the tagging loss while a stage prunes, on one harness.

Every term is ``R(model, batch, ctx, pruner)`` and is scaled by its own lambda. Weight terms
compare each pruned matrix ``M * W`` (rows = units) with a frozen reference matrix; activation
terms compare the pruned model's hidden units with those of a frozen dense teacher on the same
batch. Which reference and which side (weights or activations) are the axes of the
reconstructions; see the chapter for what the paper states and what is reconstructed.

- ``w_cos``: mean over matrices of the mean over units of 1 - cos(m_i * w_i, w0_i), W0 the
  dense fine-tuned weights (the form of the paper's "cosine" regularizer as read here);
- ``w_frob``: mean over matrices of ||M * W - W0||_F^2 / ||W0||_F^2 (its "Frobenius" one);
- ``pre_cos``: ``w_cos`` with W0 the pretrained weights (reference reconstructed);
- ``act_cos``: mean over layers and hidden units of 1 - cos over the batch's tokens between
  the pruned and the dense model's activations of that unit (weights -> activations);
- ``cc``: the cross-correlation objective of self-distilled pruning on the last layer
  (standardised over tokens; (1 - C_ii)^2 summed, off-diagonal C_ij^2 weighted 5e-3), divided
  by the width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lib.core import pruning

WEIGHT_TERMS = ("w_cos", "w_frob", "pre_cos")
ACTIVATION_TERMS = ("act_cos", "cc")
TERMS = WEIGHT_TERMS + ACTIVATION_TERMS


def unit_cosine(
    pruned: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Mean over matrices of the mean over rows of 1 - cos(mask * w_row, ref_row)."""
    terms = [
        1.0 - F.cosine_similarity(pruned[n] * masks[n], ref[n], dim=1, eps=1e-8).mean() for n in ref
    ]
    return torch.stack(terms).mean()


def relative_frobenius(
    pruned: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Mean over matrices of ||mask * W - W0||_F^2 / ||W0||_F^2."""
    terms = [
        (pruned[n] * masks[n] - ref[n]).pow(2).sum() / ref[n].pow(2).sum().clamp_min(1e-12)
        for n in ref
    ]
    return torch.stack(terms).mean()


def activation_cosine(
    student: tuple[torch.Tensor, ...], teacher: tuple[torch.Tensor, ...], mask: torch.Tensor
) -> torch.Tensor:
    """Mean over layers and hidden units of 1 - cos between a unit's activations over the real
    tokens of the batch in the pruned (student) and the dense (teacher) model."""
    m = mask.bool()
    terms = [
        1.0 - F.cosine_similarity(s[m], t[m].detach(), dim=0, eps=1e-8).mean()
        for s, t in zip(student, teacher)
    ]
    return torch.stack(terms).mean()


def make(
    kind: str,
    dense_ref: dict[str, torch.Tensor] | None = None,
    pretrained_ref: dict[str, torch.Tensor] | None = None,
    teacher: torch.nn.Module | None = None,
):
    """The regularizer ``R(model, batch, ctx, pruner)`` of one kind, with its frozen references
    (names as in :func:`lib.core.pruning.prunable_weights` of the encoder)."""
    if kind not in TERMS:
        raise ValueError(f"unknown regularizer {kind!r}; one of {TERMS}")
    if kind in WEIGHT_TERMS:
        ref = pretrained_ref if kind == "pre_cos" else dense_ref
        if ref is None:
            raise ValueError(f"{kind} needs its reference weights")
        ref = {n: w.detach() for n, w in ref.items()}
        fn = relative_frobenius if kind == "w_frob" else unit_cosine

        def weight_term(model, b, ctx, pruner) -> torch.Tensor:
            return fn(pruner.weights, ref, pruner.masks)

        return weight_term
    if teacher is None:
        raise ValueError(f"{kind} needs the frozen dense teacher")

    def activation_term(model, b, ctx, pruner) -> torch.Tensor:
        with torch.no_grad():
            out = teacher.encoder(
                input_ids=b["input_ids"],
                attention_mask=b["attention_mask"],
                output_hidden_states=kind == "act_cos",
            )
        if kind == "act_cos":
            return activation_cosine(
                ctx["hidden"], tuple(out.hidden_states[1:]), b["attention_mask"]
            )
        m = b["attention_mask"].bool()
        h = ctx["hidden"][-1]
        return pruning.cross_correlation_loss(out.last_hidden_state[m], h[m]) / h.shape[-1]

    return activation_term


def needs_all_layers(kind: str) -> bool:
    """Whether the term reads every layer's hidden states (the forward pass must return them)."""
    return kind == "act_cos"
