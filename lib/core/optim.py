"""Vectorised optimizers for many independent runs stacked in one set of tensors.

A learning-rate grid shares its data, so all grid points live in the same parameter
tensors along a *run axis*; one ``step`` updates every run with its own optimizer kind
and learning rate.  The update rules follow Kunstner et al. (2024), Appendix A.6:
heavy ball ``m_t = beta m_{t-1} + d_t``, ``x_{t+1} = x_t - lr m_t`` with the direction
``d`` = g (GD), sign(g) (sign descent) or g/||g|| (normalized GD), and Adam as in
``torch.optim.Adam`` (bias correction on).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# kind -> (direction, momentum beta); "adam*" kinds carry (beta1, beta2) instead.
KINDS: dict[str, tuple[str, float]] = {
    "gd": ("grad", 0.0),
    "gd_m": ("grad", 0.9),
    "sign": ("sign", 0.0),
    "sign_m": ("sign", 0.9),
    "normgd": ("norm", 0.0),
    "normgd_m": ("norm", 0.9),
    "adam": ("adam", 0.0),
    "adam_m": ("adam", 0.9),
}
LABELS = {
    "gd": "GD",
    "gd_m": "GD+m",
    "sign": "Sign",
    "sign_m": "Sign+m",
    "normgd": "NormGD",
    "normgd_m": "NormGD+m",
    "adam": "Adam",
    "adam_m": "Adam+m",
}
ADAM_BETA2, ADAM_EPS = 0.999, 1e-8


def contiguous_blocks(kinds: Sequence[str]) -> list[tuple[str, slice]]:
    """Split a per-run list of kinds into (kind, slice) blocks of equal neighbours."""
    blocks: list[tuple[str, slice]] = []
    start = 0
    for i in range(1, len(kinds) + 1):
        if i == len(kinds) or kinds[i] != kinds[start]:
            blocks.append((kinds[start], slice(start, i)))
            start = i
    return blocks


def _along(v: torch.Tensor, p: torch.Tensor, axis: int) -> torch.Tensor:
    """Reshape a per-run vector so it broadcasts along ``axis`` of ``p``."""
    shape = [1] * p.dim()
    shape[axis] = -1
    return v.reshape(shape)


def _run_view(p: torch.Tensor, axis: int, s: slice) -> torch.Tensor:
    """View of the runs ``s`` of ``p`` (no copy)."""
    return p.narrow(axis, s.start, s.stop - s.start)


class StackedOptimizer:
    """Update many runs (one per index of each parameter's run axis) in place, vectorised."""

    def __init__(
        self,
        params: Sequence[torch.Tensor],
        run_axes: Sequence[int],
        kinds: Sequence[str],
        lrs: Sequence[float],
    ) -> None:
        unknown = sorted(set(kinds) - set(KINDS))
        if unknown:
            raise ValueError(f"unknown optimizer kinds {unknown}; known: {sorted(KINDS)}")
        if len(kinds) != len(lrs):
            raise ValueError("one learning rate per run is needed")
        for p, ax in zip(params, run_axes):
            if p.shape[ax] != len(kinds):
                raise ValueError(
                    f"run axis {ax} of a parameter has {p.shape[ax]} runs, not {len(kinds)}"
                )
        self.params, self.axes = list(params), list(run_axes)
        self.blocks = contiguous_blocks(list(kinds))
        dev = self.params[0].device
        self.lrs = torch.as_tensor(list(lrs), dtype=self.params[0].dtype, device=dev)
        self.t = 0
        self.buf = [torch.zeros_like(p) for p in self.params]  # momentum or Adam first moment
        adam = any(KINDS[k][0] == "adam" for k, _ in self.blocks)
        self.sq = [torch.zeros_like(p) for p in self.params] if adam else None

    def _run_norms(self, grads: Sequence[torch.Tensor], s: slice) -> torch.Tensor:
        """Euclidean norm of the whole gradient (all parameters) of each run in ``s``."""
        total = 0.0
        for g, ax in zip(grads, self.axes):
            gs = _run_view(g, ax, s)
            dims = [d for d in range(g.dim()) if d != ax]
            total = total + gs.pow(2).sum(dim=dims)
        return total.sqrt()

    @torch.no_grad()
    def step(self, grads: Sequence[torch.Tensor]) -> None:
        """Apply one update to every run, given the gradients of all parameters."""
        self.t += 1
        for kind, s in self.blocks:
            direction, beta = KINDS[kind]
            norms = self._run_norms(grads, s) if direction == "norm" else None
            for i, (p, g, ax) in enumerate(zip(self.params, grads, self.axes)):
                ps, gs, bs = (_run_view(x, ax, s) for x in (p, g, self.buf[i]))
                lr = _along(self.lrs[s], p, ax)
                if direction == "adam":
                    self._adam(ps, gs, bs, _run_view(self.sq[i], ax, s), lr, beta)
                    continue
                if direction == "grad":
                    d = gs
                elif direction == "sign":
                    d = gs.sign()
                else:
                    d = gs / _along(norms, p, ax).clamp_min(torch.finfo(p.dtype).tiny)
                bs.mul_(beta).add_(d)
                ps.sub_(lr * bs)

    def _adam(
        self,
        p: torch.Tensor,
        g: torch.Tensor,
        m: torch.Tensor,
        v: torch.Tensor,
        lr: torch.Tensor,
        beta1: float,
    ) -> None:
        """Adam with bias correction, as torch.optim.Adam (eps added after the square root)."""
        m.mul_(beta1).add_(g, alpha=1 - beta1)
        v.mul_(ADAM_BETA2).addcmul_(g, g, value=1 - ADAM_BETA2)
        c1 = 1 - beta1**self.t
        c2 = 1 - ADAM_BETA2**self.t
        denom = (v / c2).sqrt_().add_(ADAM_EPS)
        p.sub_(lr / c1 * m / denom)
