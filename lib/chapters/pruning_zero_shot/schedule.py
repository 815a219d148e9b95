"""Staged pruning with recovery: one run per seed passes through a list of sparsities; at
each it ramps from the previous level to the next along a cubic curve, then holds the level
for a declared plateau of recovery steps before it is evaluated.

Pruning criteria: magnitude or a fixed random score per weight, over all encoder matrices at
once (global) or within each matrix (layer-wise). The masks only grow (a pruned weight is a
zero, whose magnitude is the smallest; a random score is drawn once per run), so each level
contains the previous one. The alignment terms that a stage can add to the loss are in
:mod:`lib.chapters.pruning_zero_shot.regularizers`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lib.core import pruning
from lib.core.pos_transfer import IGNORE, Tagger, bucketed_batches, pad_batch
from lib.core.train import fit

CRITERIA = ("magnitude", "random")


@dataclass(frozen=True)
class Stage:
    """One level of the schedule: reach ``target`` over ``ramp`` steps, then hold it for
    ``plateau`` steps of recovery."""

    target: float
    ramp: int
    plateau: int

    @property
    def steps(self) -> int:
        return self.ramp + self.plateau


def stage_sparsity(step: int, start: float, stage: Stage) -> float:
    """Target sparsity after ``step`` updates of a stage (0 = before the first): the cubic
    curve of Zhu and Gupta from ``start`` to ``stage.target`` over the ramp, then flat."""
    if stage.ramp <= 0 or step >= stage.ramp:
        return stage.target
    return pruning.cubic_sparsity(step, stage.target, 0, stage.ramp, initial=start)


def layerwise_masks(scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """Keep-masks that prune exactly round(sparsity * n) of each matrix's n weights, the ones of
    lowest score within that matrix."""
    out = {}
    for name, s in scores.items():
        out.update(pruning.global_masks({name: s}, sparsity))
    return out


class Pruner:
    """Masks of the prunable encoder matrices of a model, by one criterion and scope."""

    def __init__(
        self,
        model: torch.nn.Module,
        criterion: str = "magnitude",
        layerwise: bool = False,
        seed: int = 0,
        masks: dict[str, torch.Tensor] | None = None,
    ):
        if criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
        self.weights = pruning.prunable_weights(model)
        self.criterion, self.layerwise = criterion, layerwise
        g = torch.Generator().manual_seed(seed)
        self.random = (
            {n: torch.rand(w.shape, generator=g) for n, w in self.weights.items()}
            if criterion == "random"
            else None
        )
        self.masks = masks or {
            n: torch.ones_like(w, dtype=torch.bool) for n, w in self.weights.items()
        }
        self.target = self.mask_sparsity()

    def scores(self) -> dict[str, torch.Tensor]:
        """What the criterion ranks: |w|, or the fixed random score (pruned weights lowest)."""
        if self.random is None:
            return {n: w.detach().abs() for n, w in self.weights.items()}
        return {n: torch.where(self.masks[n], self.random[n], -1.0) for n in self.weights}

    def prune_to(self, sparsity: float) -> None:
        """New masks at ``sparsity`` (never fewer pruned weights than now), applied at once."""
        if sparsity > self.target:
            make = layerwise_masks if self.layerwise else pruning.global_masks
            scores = self.scores()
            if self.random is not None:  # global_masks ranks |score|: shift the scores above 0
                scores = {n: s + 1.0 for n, s in scores.items()}
            new = make(scores, sparsity)
            # a global or random level contains the previous one; a layer-wise level is exact
            # per matrix, so it may restore (at zero) a weight of a matrix pruned beyond it
            self.masks = new if self.layerwise else {n: m & self.masks[n] for n, m in new.items()}
            self.target = sparsity
        self.apply()

    @torch.no_grad()
    def apply(self) -> None:
        for n, w in self.weights.items():
            w.mul_(self.masks[n])

    def mask_sparsity(self) -> float:
        """Share of masked-out weights (what the schedule sets)."""
        return 1.0 - sum(int(m.sum()) for m in self.masks.values()) / sum(
            m.numel() for m in self.masks.values()
        )

    def zero_fraction(self) -> float:
        """Share of exact zeros among the prunable weights (measured)."""
        return sum(int((w == 0).sum()) for w in self.weights.values()) / sum(
            w.numel() for w in self.weights.values()
        )


Regularizer = Callable[[Tagger, dict, dict, "Pruner"], torch.Tensor]


def tagging_forward(
    tagger: Tagger, b: dict[str, torch.Tensor], all_layers: bool
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """(tag logits, hidden states): every layer's output when ``all_layers``, else the last."""
    out = tagger.encoder(
        input_ids=b["input_ids"],
        attention_mask=b["attention_mask"],
        output_hidden_states=all_layers,
    )
    h = out.last_hidden_state
    hidden = tuple(out.hidden_states[1:]) if all_layers else (h,)
    return tagger.head(tagger.drop(h)), hidden


def run_stage(
    tagger: Tagger,
    pruner: Pruner,
    train: list[tuple[list[int], list[int]]],
    start: float,
    stage: Stage,
    *,
    lr: float,
    batch_size: int,
    seed: int,
    pad: int,
    every: int = 2,
    reg: Regularizer | None = None,
    lam: float = 0.0,
    all_layers: bool = False,
    device: torch.device | str = "cpu",
) -> dict:
    """One stage: ``stage.steps`` AdamW steps (fresh optimizer, constant ``lr`` after a short
    warm-up) on length-bucketed batches drawn from ``seed`` alone, so that arms branching from
    the same state see the same batches; the masks follow :func:`stage_sparsity`, recomputed
    every ``every`` steps of the ramp and at its end, and are multiplied in after every update.
    Returns a log: ``ce``, ``reg`` (the regularizer per step), ``target`` and ``seconds``."""
    g = np.random.default_rng(seed)
    torch.manual_seed(seed)
    batches = bucketed_batches(np.array([len(x) for x, _ in train]), batch_size, stage.steps, g)
    if stage.ramp == 0:
        pruner.prune_to(stage.target)
    pruner.apply()
    regs: list[float] = []
    targets: list[float] = []

    def next_batch(t: int) -> dict[str, torch.Tensor]:
        return {k: v.to(device) for k, v in pad_batch([train[i] for i in batches[t]], pad).items()}

    def loss_fn(model: Tagger, b: dict[str, torch.Tensor]):
        logits, hidden = tagging_forward(model, b, all_layers)
        ce = F.cross_entropy(logits.flatten(0, 1), b["labels"].flatten(), ignore_index=IGNORE)
        if reg is None or lam == 0:
            return ce, {"ce": ce.detach()}
        r = reg(model, b, {"hidden": hidden}, pruner)
        regs.append(float(r.detach()))
        return ce + lam * r, {"ce": ce.detach()}

    def after_step(t: int) -> None:
        done = t + 1
        due = done <= stage.ramp and (done % every == 0 or done == stage.ramp)
        if due:
            pruner.prune_to(stage_sparsity(done, start, stage))
        pruner.apply()
        targets.append(pruner.target)

    warm = max(1, min(5, stage.steps // 5))
    log = fit(
        tagger,
        next_batch,
        loss_fn,
        stage.steps,
        lambda params: torch.optim.AdamW(params, lr=lr, weight_decay=0.01),
        make_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(
            opt, lambda t: min(1.0, (t + 1) / warm)
        ),
        after_step=after_step,
    )
    return {"ce": log["ce"], "reg": regs, "target": targets, "seconds": log["seconds"]}
