"""Gradient masking for fine-tuning, as hooks of :func:`lib.core.train.fit`.

- :class:`ElementwiseDrop`: every gradient entry of the masked parameters is dropped with
  probability ``p`` (a fresh Bernoulli mask per step), optionally rescaled by ``1/(1-p)``;
  ``p`` may follow a schedule over the steps.
- :class:`LayerwiseDrop`: each encoder layer's whole gradient is dropped with probability ``p``.
- :class:`GradualUnfreezing`: top-down unfreezing (ULMFiT style): the head trains from the
  start, then one encoder layer more, from the top, every ``steps / (layers + 1)`` steps.
- :class:`SparseAdamW`: AdamW whose update skips entries with an exact zero gradient
  (parameter, first and second moment unchanged there): the "frozen" reading of masking, as
  opposed to plain AdamW on the masked gradient (the moments decay, and the parameter keeps
  moving with its momentum and weight decay: the "decay" reading).

All masking is in place: reusable buffers the size of the largest masked parameter hold the
random bits (16 an entry) and the mask, so a step allocates no new full-size tensor. The keep
probability is 1 - p rounded to a multiple of 2**-16 (16 random bits an entry are four times
cheaper to draw than a float Bernoulli sample); the counts are compared with that exact rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

STATES = ("frozen", "decay")


def layer_groups(tagger: nn.Module) -> list[list[nn.Parameter]]:
    """Trainable parameters of a :class:`~lib.core.pos_transfer.Tagger` grouped by depth,
    bottom to top: one group per encoder layer, then the head (the last group)."""
    layers = tagger.encoder.encoder.layer
    groups = [[p for p in layer.parameters() if p.requires_grad] for layer in layers]
    groups.append([p for p in tagger.head.parameters() if p.requires_grad])
    return groups


def linear_anneal(steps: int) -> Callable[[int], float]:
    """Multiplier of the drop rate at step t: 1 at the start, falling linearly to 0 at the end."""
    return lambda t: max(0.0, 1.0 - t / max(steps, 1))


class ElementwiseDrop:
    """Drop each gradient entry of ``params`` with probability ``p * schedule(t)`` (in place).

    ``state='frozen'`` sets dropped entries to exactly zero for :class:`SparseAdamW` to skip;
    ``'decay'`` does the same for plain AdamW (whose moments then decay there). ``rescale``
    divides kept entries by ``1 - p_t`` (an unbiased gradient). ``kept`` and ``seen`` count
    kept and masked entries over the run, ``expected_kept`` sums their expectation.
    """

    def __init__(
        self,
        params: Sequence[nn.Parameter],
        p: float,
        *,
        rescale: bool = True,
        schedule: Callable[[int], float] | None = None,
        generator: torch.Generator | None = None,
        track: bool = True,
    ) -> None:
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop rate p must be in [0, 1), got {p}")
        self.params = list(params)
        self.p, self.rescale, self.schedule = p, rescale, schedule
        self.generator, self.track = generator, track
        n = max((q.numel() for q in self.params), default=0)
        dev = self.params[0].device if self.params else "cpu"
        self.buffer = torch.empty(n, device=dev)  # the mask, as floats
        self.bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=dev)  # 16 bits an entry
        self.kept_bool = torch.empty(n, dtype=torch.bool, device=dev)
        self.kept = 0.0
        self.seen = 0
        self.expected_kept = 0.0
        self.var_kept = 0.0

    @staticmethod
    def keep_threshold(q: float) -> tuple[int, float]:
        """(threshold, exact keep probability): an entry is kept when its uniform 16-bit
        integer in [-2**15, 2**15) is below the threshold, so the keep probability is q
        rounded to a multiple of 2**-16."""
        k = round(q * 65536)
        return k - 32768, k / 65536

    def rate(self, t: int) -> float:
        """Drop rate at step t."""
        return self.p * (self.schedule(t) if self.schedule is not None else 1.0)

    def __call__(self, model: nn.Module | None, t: int) -> None:
        p = self.rate(t)
        if p <= 0.0:
            return
        threshold, q = self.keep_threshold(1.0 - p)
        for w in self.params:
            g = w.grad
            if g is None:
                continue
            n = g.numel()
            bits = self.bits[: (n + 3) // 4]
            bits.random_(-(2**63), 2**63 - 1, generator=self.generator)  # 64 random bits
            m, b = self.buffer[:n], self.kept_bool[:n]
            torch.lt(bits.view(torch.int16)[:n], threshold, out=b)  # True = kept
            m.copy_(b)
            if self.track:
                self.kept += float(m.sum())
                self.seen += n
                self.expected_kept += q * n
                self.var_kept += (1 - q) * q * n
            g.mul_(m.view_as(g))
            if self.rescale:
                g.mul_(1.0 / q)

    def drop_z(self) -> float:
        """(kept - expected) / binomial standard deviation over every masked entry so far."""
        return (self.kept - self.expected_kept) / math.sqrt(max(self.var_kept, 1e-12))

    def drop_fraction(self) -> float:
        """Share of masked entries dropped so far."""
        return 1.0 - self.kept / max(self.seen, 1)


class LayerwiseDrop:
    """Drop the whole gradient of each group (encoder layer) with probability ``p`` per step.

    ``state='frozen'`` removes the gradient (``grad = None``: AdamW skips the layer, its moments
    and weights stay); ``'decay'`` zeroes it. ``rescale`` divides kept layers by ``1 - p``.
    ``dropped`` records, per step, which groups were dropped.
    """

    def __init__(
        self,
        groups: Sequence[Sequence[nn.Parameter]],
        p: float,
        *,
        state: str = "frozen",
        rescale: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        if state not in STATES:
            raise ValueError(f"state must be one of {STATES}, got {state!r}")
        self.groups = [list(g) for g in groups]
        self.p, self.state, self.rescale, self.generator = p, state, rescale, generator
        self.dropped: list[list[int]] = []

    def __call__(self, model: nn.Module | None, t: int) -> None:
        u = torch.rand(len(self.groups), generator=self.generator)
        drop = (u < self.p).tolist()
        self.dropped.append([i for i, d in enumerate(drop) if d])
        for group, d in zip(self.groups, drop):
            for w in group:
                if w.grad is None:
                    continue
                if d:
                    if self.state == "frozen":
                        w.grad = None
                    else:
                        w.grad.zero_()
                elif self.rescale and self.p > 0:
                    w.grad.mul_(1.0 / (1.0 - self.p))


class GradualUnfreezing:
    """Top-down gradual unfreezing over ``steps``: ``groups`` bottom to top, the last one (the
    head) trains from step 0; encoder layer ``i`` (0 = bottom) of ``L`` starts training at
    step ``round((L - i) * steps / (L + 1))``. Frozen groups get ``grad = None`` (no update,
    no optimizer state). ``first_update`` records the first step each group was updated."""

    def __init__(self, groups: Sequence[Sequence[nn.Parameter]], steps: int) -> None:
        self.groups = [list(g) for g in groups]
        self.steps = steps
        self.first_update: dict[int, int] = {}

    def unfreeze_steps(self) -> list[int]:
        """Step at which each group (bottom to top, head last) starts training."""
        n_layers = len(self.groups) - 1
        return [round((n_layers - i) * self.steps / (n_layers + 1)) for i in range(n_layers)] + [0]

    def __call__(self, model: nn.Module | None, t: int) -> None:
        for i, (group, start) in enumerate(zip(self.groups, self.unfreeze_steps())):
            if t < start:
                for w in group:
                    w.grad = None
            elif i not in self.first_update and any(w.grad is not None for w in group):
                self.first_update[i] = t


class SparseAdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay, bias correction by the parameter's step count) that
    updates only the entries with a non-zero gradient: where the gradient is exactly zero the
    parameter and both moments are left as they are. Without zeros it is AdamW."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01) -> None:  # fmt: skip
        super().__init__(
            params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        )

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for w in group["params"]:
                g = w.grad
                if g is None:
                    continue
                st = self.state[w]
                if not st:
                    st["step"] = 0
                    st["exp_avg"] = torch.zeros_like(w)
                    st["exp_avg_sq"] = torch.zeros_like(w)
                st["step"] += 1
                m, v, k = st["exp_avg"], st["exp_avg_sq"], st["step"]
                keep, denom = self._scratch(w)
                torch.ne(g, 0, out=keep)  # 1 where the gradient is non-zero
                w.addcmul_(keep, w, value=-lr * wd)
                m.addcmul_(keep, m, value=-(1 - b1)).add_(g, alpha=1 - b1)
                v.addcmul_(keep, v, value=-(1 - b2)).addcmul_(g, g, value=1 - b2)
                c2 = math.sqrt(1 - b2**k)
                torch.sqrt(v, out=denom).add_(eps * c2).div_(keep)  # inf where masked
                w.addcdiv_(m, denom, value=-lr * c2 / (1 - b1**k))
        return None

    def _scratch(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Two reusable buffers shaped like ``w`` (sized once, for the largest parameter)."""
        n = w.numel()
        buf = getattr(self, "_buf", None)
        if buf is None or buf.numel() < 2 * n or buf.device != w.device:
            size = max(p.numel() for grp in self.param_groups for p in grp["params"])
            self._buf = buf = torch.empty(2 * size, dtype=w.dtype, device=w.device)
        return buf[:n].view_as(w), buf[n : 2 * n].view_as(w)
