"""The one training loop of the book, with hooks, and the one per-item scorer.

Every chapter that trains a model by minibatch steps calls :func:`fit`; what differs between
chapters is passed in: how a batch is drawn, the loss, an extra loss term, a gradient hook
(run after ``backward``, before the update: gradient masking), an event before a step that
may rebuild the optimizer (layer fusion), a callback after each update (pruning masks), and
a filter of the parameters that train (BitFit, frozen embeddings).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

Batch = Any
LossOut = torch.Tensor | tuple[torch.Tensor, dict[str, float]]


def trainable(
    model: nn.Module, param_filter: Callable[[str, nn.Parameter], bool] | None = None
) -> list[nn.Parameter]:
    """Parameters that train: ``requires_grad`` and accepted by ``param_filter(name, p)``."""
    return [
        p
        for n, p in model.named_parameters()
        if p.requires_grad and (param_filter is None or param_filter(n, p))
    ]


def fit(
    model: nn.Module,
    next_batch: Callable[[int], Batch],
    loss_fn: Callable[[nn.Module, Batch], LossOut],
    steps: int,
    make_optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
    *,
    make_scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
    param_filter: Callable[[str, nn.Parameter], bool] | None = None,
    extra_loss: Callable[[nn.Module, Batch], torch.Tensor] | None = None,
    grad_hook: Callable[[nn.Module, int], None] | None = None,
    before_step: Callable[[int], bool] | None = None,
    after_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Run ``steps`` updates; return a log with the loss per step, logged terms and seconds.

    ``loss_fn(model, batch)`` returns the loss, or ``(loss, {name: float})`` to log more terms.
    ``before_step(t)`` returning True rebuilds the optimizer (and scheduler) before step t.
    """

    def build():
        opt = make_optimizer(trainable(model, param_filter))
        return opt, (make_scheduler(opt) if make_scheduler else None)

    opt, sched = build()
    log: dict[str, Any] = {"loss": []}
    model.train()
    t0 = time.perf_counter()
    for t in range(steps):
        if before_step is not None and before_step(t):
            opt, sched = build()
        batch = next_batch(t)
        out = loss_fn(model, batch)
        loss, terms = out if isinstance(out, tuple) else (out, {})
        if extra_loss is not None:
            loss = loss + extra_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_hook is not None:
            grad_hook(model, t)
        opt.step()
        if sched is not None:
            sched.step()
        if after_step is not None:
            after_step(t)
        log["loss"].append(float(loss.detach()))
        for k, v in terms.items():
            log.setdefault(k, []).append(float(v))
    log["seconds"] = time.perf_counter() - t0
    model.eval()
    return log


@torch.no_grad()
def correct_items(
    predict: Callable[[Batch], torch.Tensor],
    batches: Iterable[Batch],
    gold: Callable[[Batch], torch.Tensor],
    mask: Callable[[Batch], torch.Tensor] | None = None,
) -> np.ndarray:
    """Per-item correctness (bool array, in batch order) of ``predict(batch)`` against
    ``gold(batch)``, keeping only items where ``mask(batch)`` is true. Accuracy is its mean;
    the bootstrap intervals of :mod:`lib.book.stats` resample it."""
    out = []
    for b in batches:
        hit = predict(b) == gold(b)
        if mask is not None:
            hit = hit[mask(b)]
        out.append(hit.reshape(-1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=bool)


def warmup_decay(steps: int, warmup: float) -> Callable[[int], float]:
    """Learning-rate factor per step for ``LambdaLR``: linear warm-up over a ``warmup``
    fraction of the steps (at least one step), then linear decay to 0 at ``steps``."""
    warm = max(int(warmup * steps), 1)
    return lambda t: min((t + 1) / warm, max(0.0, (steps - t) / max(steps - warm, 1)))
