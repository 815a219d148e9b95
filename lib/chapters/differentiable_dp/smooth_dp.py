"""Smoothed dynamic programming (Mensch & Blondel, ICML 2018): DTW and Viterbi.

The max in a DP recursion is replaced by max_Omega(x) = max_{q in simplex} <q, x> - Omega(q)
with Omega = gamma * negentropy ("entropy": log-sum-exp, dense) or gamma/2 * ||q||^2
("l2": sparsemax, sparse) or no regulariser ("hard": the ordinary max).  The DP value is then
differentiable and its gradient is the expected (entropy) or sparse (l2) path indicator.

Conventions (the paper's "max" form): DTW_Omega(theta) maximises <A, theta> over monotone
alignments A of an (n, m) grid; with theta = -D (a cost) and entropy it equals -soft-DTW(D).
Viterbi_Omega(theta) maximises over tag sequences y the score sum_t theta[t, y_t, y_{t-1}],
where position 0 reads only theta[0, :, 0]; with entropy and gamma = 1 it is the CRF log Z.

Forward recursions run over anti-diagonals (DTW) or time steps (Viterbi), each step vectorised
over cells, states and the batch; gradients come from the hand-written backward recursions of
the paper (gradient by reverse accumulation of the local argmax weights), never from autograd
through the loop.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import Tensor

REGS = ("hard", "entropy", "l2")


# ----------------------------------------------------------------------------------------------
# max operators over the last axis
# ----------------------------------------------------------------------------------------------


def sparsemax(z: Tensor) -> Tensor:
    """Euclidean projection of z onto the simplex along the last axis (entries -inf get 0)."""
    zs, _ = torch.sort(z, dim=-1, descending=True)
    k = torch.arange(1, z.shape[-1] + 1, dtype=z.dtype, device=z.device)
    cs = zs.cumsum(-1)
    support = (1 + k * zs) > cs
    kz = support.sum(-1, keepdim=True)
    tau = (cs.gather(-1, kz - 1) - 1) / kz.to(z.dtype)
    return torch.clamp(z - tau, min=0)


def max_op(x: Tensor, gamma: float, reg: str) -> tuple[Tensor, Tensor]:
    """Smoothed max over the last axis and its gradient q (a point of the simplex)."""
    if reg == "hard":
        val, idx = x.max(-1)
        return val, torch.nn.functional.one_hot(idx, x.shape[-1]).to(x.dtype)
    if reg == "entropy":
        m = x.max(-1, keepdim=True).values
        e = torch.exp((x - m) / gamma)
        s = e.sum(-1, keepdim=True)
        return (m + gamma * torch.log(s)).squeeze(-1), e / s
    if reg == "l2":
        q = sparsemax(x / gamma)
        qx = torch.where(q > 0, q * x, torch.zeros_like(x))
        return qx.sum(-1) - 0.5 * gamma * (q * q).sum(-1), q
    raise ValueError(f"reg must be one of {REGS}, got {reg!r}")


def omega_range(k: int, gamma: float, reg: str) -> tuple[float, float]:
    """(min, max) of Omega over the k-simplex: the per-node error range of max_Omega."""
    if reg == "entropy":
        return -gamma * math.log(k), 0.0
    if reg == "l2":
        return gamma / (2 * k), gamma / 2
    return 0.0, 0.0


# ----------------------------------------------------------------------------------------------
# DTW over anti-diagonals
# ----------------------------------------------------------------------------------------------


def _diag_rows(k: int, n: int, m: int) -> tuple[int, int]:
    """Rows i (1-based) of the grid cells (i, j = k - i) with 1 <= i <= n, 1 <= j <= m."""
    return max(1, k - m), min(n, k - 1)


def _skew(theta: Tensor) -> Tensor:
    """(B, n, m) grid -> (n+m+1, B, n+1) anti-diagonal layout S[i+j, :, i] = theta[:, i-1, j-1]."""
    b, n, m = theta.shape
    out = theta.new_zeros(n + m + 1, n + 1, b)
    i = torch.arange(1, n + 1, device=theta.device)[:, None]
    j = torch.arange(1, m + 1, device=theta.device)[None, :]
    out[i + j, i.expand(n, m)] = theta.permute(1, 2, 0)
    return out.permute(0, 2, 1).contiguous()


def _unskew(s: Tensor, n: int, m: int) -> Tensor:
    """Inverse of _skew: (n+m+1, B, n+1) anti-diagonal layout -> (B, n, m) grid."""
    i = torch.arange(1, n + 1, device=s.device)[:, None]
    j = torch.arange(1, m + 1, device=s.device)[None, :]
    return s.permute(0, 2, 1)[i + j, i.expand(n, m)].permute(2, 0, 1)


def dtw_forward(
    theta: Tensor, gamma: float, reg: str, keep: bool = True
) -> tuple[Tensor, Tensor | None]:
    """DTW_Omega values (B,) of score grids (B, n, m) and, if keep, the local weights (n+m+1, B,
    n+1, 3)."""
    b, n, m = theta.shape
    th = _skew(theta)
    neg = torch.full((b, n + 1), -math.inf, dtype=theta.dtype, device=theta.device)
    prev2, prev1 = neg.clone(), neg.clone()
    prev2[:, 0] = 0.0  # V[0, 0] = 0, every other boundary cell is -inf
    q_all = (
        theta.new_zeros(n + m + 1, b, n + 1, 3) if keep else None
    )  # one contiguous slab per diagonal
    for k in range(2, n + m + 1):
        lo, hi = _diag_rows(k, n, m)
        x = torch.stack((prev1[:, lo : hi + 1], prev2[:, lo - 1 : hi], prev1[:, lo - 1 : hi]), -1)
        val, q = max_op(x, gamma, reg)  # neighbours: left (i, j-1), diagonal, up (i-1, j)
        cur = neg.clone()
        cur[:, lo : hi + 1] = th[k, :, lo : hi + 1] + val
        if keep:
            q_all[k, :, lo : hi + 1] = q
        prev2, prev1 = prev1, cur
    return prev1[:, n], q_all


def dtw_backward(q_all: Tensor, n: int, m: int) -> Tensor:
    """Gradient (B, n, m) of DTW_Omega w.r.t. theta by the backward recursion over
    anti-diagonals."""
    g = q_all.new_zeros(q_all.shape[:3])
    g[n + m, :, n] = 1.0
    for k in range(n + m, 1, -1):
        lo, hi = _diag_rows(k, n, m)
        e = g[k, :, lo : hi + 1, None] * q_all[k, :, lo : hi + 1]
        g[k - 1, :, lo : hi + 1] += e[..., 0]
        g[k - 2, :, lo - 1 : hi] += e[..., 1]
        g[k - 1, :, lo - 1 : hi] += e[..., 2]
    return _unskew(g, n, m)


# ----------------------------------------------------------------------------------------------
# second order: Hessian-vector products by a directional (forward-mode) pass, then the
# differentiated backward recursion (the paper's approach: O(|E|) like the value)
# ----------------------------------------------------------------------------------------------


def max_op_jvp(q: Tensor, dx: Tensor, gamma: float, reg: str) -> Tensor:
    """Directional derivative J(x) dx of the max operator's gradient q = grad max_Omega(x).

    J depends on x only through q: (diag(q) - q q^T) / gamma for entropy, (diag(s) - s s^T /
    |s|) / gamma with s the support of q for l2 (the sparsemax Jacobian), and 0 for hard.
    """
    if reg == "hard":
        return torch.zeros_like(dx)
    if reg == "entropy":
        return (q * dx - q * (q * dx).sum(-1, keepdim=True)) / gamma
    if reg == "l2":
        s = (q > 0).to(dx.dtype)
        sdx = torch.where(s > 0, dx, torch.zeros_like(dx))  # -inf neighbours carry no weight
        mean = sdx.sum(-1, keepdim=True) / s.sum(-1, keepdim=True)
        return s * (sdx - mean) / gamma
    raise ValueError(f"reg must be one of {REGS}, got {reg!r}")


def dtw_hvp(q_all: Tensor, z: Tensor, gamma: float, reg: str) -> Tensor:
    """Hessian of DTW_Omega at theta times directions z (B, n, m), from the forward weights q_all
    of theta: a forward pass of directional derivatives dV, dq, then the backward recursion
    differentiated (de_parent += de q + e dq)."""
    b, n, m = z.shape
    zs = _skew(z)
    dv = z.new_zeros(n + m + 1, b, n + 1)
    dq_all = torch.zeros_like(q_all)
    for k in range(2, n + m + 1):
        lo, hi = _diag_rows(k, n, m)
        dx = torch.stack(
            (dv[k - 1, :, lo : hi + 1], dv[k - 2, :, lo - 1 : hi], dv[k - 1, :, lo - 1 : hi]), -1
        )
        q = q_all[k, :, lo : hi + 1]
        dv[k, :, lo : hi + 1] = zs[k, :, lo : hi + 1] + (q * dx).sum(-1)
        dq_all[k, :, lo : hi + 1] = max_op_jvp(q, dx, gamma, reg)
    g = q_all.new_zeros(q_all.shape[:3])
    dg = torch.zeros_like(g)
    g[n + m, :, n] = 1.0
    for k in range(n + m, 1, -1):
        lo, hi = _diag_rows(k, n, m)
        q, dq = q_all[k, :, lo : hi + 1], dq_all[k, :, lo : hi + 1]
        e = g[k, :, lo : hi + 1, None] * q
        de = dg[k, :, lo : hi + 1, None] * q + g[k, :, lo : hi + 1, None] * dq
        for arr, inc in ((g, e), (dg, de)):
            arr[k - 1, :, lo : hi + 1] += inc[..., 0]
            arr[k - 2, :, lo - 1 : hi] += inc[..., 1]
            arr[k - 1, :, lo - 1 : hi] += inc[..., 2]
    return _unskew(dg, n, m)


# ----------------------------------------------------------------------------------------------
# choosing the implementation: compiled CPU kernel or vectorised torch
# ----------------------------------------------------------------------------------------------

NUMBA_MAX_CELLS = 2**24  # CPU batches up to this many cells go to the compiled kernel


def use_numba(theta: Tensor) -> bool:
    """Whether the compiled kernel handles this batch: CPU tensors of float32/64 whose batch
    holds at most NUMBA_MAX_CELLS cells (larger batches, and GPUs, use the vectorised torch
    recursion, which amortises its per-diagonal overhead over the batch)."""
    return (
        theta.device.type == "cpu"
        and theta.dtype in (torch.float32, torch.float64)
        and theta.numel() <= NUMBA_MAX_CELLS
    )


def _numba_value_and_grad(theta: Tensor, gamma: float, reg: str, want_grad: bool):
    from lib.chapters.differentiable_dp import dtw_numba

    vals, grads = dtw_numba.value_and_grad(theta.detach().numpy(), gamma, reg, want_grad)
    return torch.from_numpy(vals), None if grads is None else torch.from_numpy(grads)


def dtw_value(theta: Tensor, gamma: float = 1.0, reg: str = "entropy", backend: str = "auto"):
    """DTW_Omega values (B,) of score grids (B, n, m), no gradient; backend 'auto', 'numba' or
    'torch'."""
    if backend == "numba" or (backend == "auto" and use_numba(theta)):
        return _numba_value_and_grad(theta, gamma, reg, False)[0]
    return dtw_forward(theta, gamma, reg, keep=False)[0]


def dtw_value_and_grad(
    theta: Tensor, gamma: float = 1.0, reg: str = "entropy", backend: str = "auto"
) -> tuple[Tensor, Tensor]:
    """DTW_Omega value (B,) and expected alignment (B, n, m) without building an autograd graph;
    backend 'auto' (compiled kernel on CPU, torch otherwise), 'numba' or 'torch'."""
    if backend == "numba" or (backend == "auto" and use_numba(theta)):
        return _numba_value_and_grad(theta, gamma, reg, True)
    val, q_all = dtw_forward(theta, gamma, reg, keep=True)
    return val, dtw_backward(q_all, theta.shape[1], theta.shape[2])


class _DTWGrad(torch.autograd.Function):
    """The gradient of DTW_Omega as a function of theta; its backward is the Hessian-vector
    product (the Hessian is symmetric), so that double backward through :func:`dtw` works."""

    @staticmethod
    def forward(ctx, theta: Tensor, gamma: float, reg: str) -> Tensor:
        _, q_all = dtw_forward(theta.detach(), gamma, reg, keep=True)
        ctx.save_for_backward(q_all)
        ctx.args = gamma, reg
        return dtw_backward(q_all, theta.shape[1], theta.shape[2])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, z: Tensor):
        (q_all,) = ctx.saved_tensors
        return dtw_hvp(q_all, z, *ctx.args), None, None


class _DTW(torch.autograd.Function):
    """Value in the forward pass (with the gradient, which the kernel gets almost for free);
    backward returns the saved gradient, or, when a graph of the backward is asked for
    (create_graph), the differentiable gradient of :class:`_DTWGrad`."""

    @staticmethod
    def forward(ctx, theta: Tensor, gamma: float, reg: str, backend: str) -> Tensor:
        val, grad = dtw_value_and_grad(theta.detach(), gamma, reg, backend)
        ctx.save_for_backward(theta, grad)
        ctx.args = gamma, reg
        return val

    @staticmethod
    def backward(ctx, gv: Tensor):
        theta, grad = ctx.saved_tensors
        if torch.is_grad_enabled():  # double backward: keep the gradient differentiable
            grad = _DTWGrad.apply(theta, *ctx.args)
        return gv[:, None, None] * grad, None, None, None


def dtw_grad(theta: Tensor, gamma: float = 1.0, reg: str = "entropy") -> Tensor:
    """The alignment grad DTW_Omega(theta) (B, n, m) as a differentiable function of theta (its
    backward is the Hessian-vector product): DTW_Omega attention."""
    return _DTWGrad.apply(theta, gamma, reg)


def dtw(theta: Tensor, gamma: float = 1.0, reg: str = "entropy", backend: str = "auto") -> Tensor:
    """Differentiable DTW_Omega of score grids (B, n, m) -> (B,), twice differentiable: its
    gradient is the backward recursion, its Hessian-vector products :func:`dtw_hvp`."""
    if theta.dim() == 2:
        return _DTW.apply(theta[None], gamma, reg, backend)[0]
    return _DTW.apply(theta, gamma, reg, backend)


def sq_dists(x: Tensor, y: Tensor) -> Tensor:
    """Pairwise squared Euclidean distances (B, n, m) between series x (B, n, d), y (B, m, d)."""
    return ((x[:, :, None, :] - y[:, None, :, :]) ** 2).sum(-1)


def soft_dtw(x: Tensor, y: Tensor, gamma: float = 1.0, reg: str = "entropy") -> Tensor:
    """Soft-DTW discrepancy (min form, as tslearn): -DTW_Omega(-D) for series (B, n, d), (B, m,
    d)."""
    return -dtw(-sq_dists(x, y), gamma, reg)


def dtw_bounds(n: int, m: int, gamma: float, reg: str) -> tuple[float, float]:
    """(low, high) offsets with low <= DTW_Omega - DTW_hard <= high (max form), from per-node
    bounds."""
    lo_om, hi_om = omega_range(3, gamma, reg)
    if reg == "entropy":  # -Omega in [0, gamma log 3] at each of at most n+m-1 nodes on a path
        return 0.0, -lo_om * (n + m - 1)
    if reg == "l2":  # -Omega in [-gamma/2, -gamma/6]; paths visit between max(n, m) and n+m-1 nodes
        return -hi_om * (n + m - 1), -lo_om * max(n, m)
    return 0.0, 0.0


# ----------------------------------------------------------------------------------------------
# Viterbi over time steps
# ----------------------------------------------------------------------------------------------


def viterbi_forward(
    theta: Tensor, gamma: float, reg: str, mask: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Vit_Omega values (B,) of potentials (B, T, S, S), local weights (B, T, S, S) and final q (B,
    S)."""
    b, t_len, s, _ = theta.shape
    v = theta[:, 0, :, 0]
    q_all = theta.new_zeros(b, t_len, s, s)
    for t in range(1, t_len):
        val, q = max_op(theta[:, t] + v[:, None, :], gamma, reg)
        if mask is None:
            v = val
        else:
            v = torch.where(mask[:, t, None], val, v)
        q_all[:, t] = q
    value, q_end = max_op(v, gamma, reg)
    return value, q_all, q_end


def viterbi_backward(q_all: Tensor, q_end: Tensor, mask: Tensor | None = None) -> Tensor:
    """Gradient (B, T, S, S) of Vit_Omega w.r.t. theta: the (sparse) pairwise marginals, by
    recursion."""
    b, t_len, s, _ = q_all.shape
    grad = q_all.new_zeros(q_all.shape)
    g = q_end
    for t in range(t_len - 1, 0, -1):
        e = g[:, :, None] * q_all[:, t]
        back = e.sum(1)
        if mask is not None:
            on = mask[:, t]
            e = e * on[:, None, None].to(e.dtype)
            back = torch.where(on[:, None], back, g)
        grad[:, t] = e
        g = back
    grad[:, 0, :, 0] = g
    return grad


def viterbi_hvp(
    q_all: Tensor, q_end: Tensor, z: Tensor, gamma: float, reg: str, mask: Tensor | None = None
) -> Tensor:
    """Hessian of Vit_Omega at theta times directions z (B, T, S, S), from the forward weights of
    theta: directional derivatives dv, dq forward, then the backward recursion differentiated."""
    b, t_len, s, _ = q_all.shape
    dv = z[:, 0, :, 0]
    dq_all = torch.zeros_like(q_all)
    for t in range(1, t_len):
        dx = z[:, t] + dv[:, None, :]
        q = q_all[:, t]
        new = (q * dx).sum(-1)
        dv = new if mask is None else torch.where(mask[:, t, None], new, dv)
        dq_all[:, t] = max_op_jvp(q, dx, gamma, reg)
    g, dg = q_end, max_op_jvp(q_end, dv, gamma, reg)
    out = torch.zeros_like(q_all)
    for t in range(t_len - 1, 0, -1):
        e = g[:, :, None] * q_all[:, t]
        de = dg[:, :, None] * q_all[:, t] + g[:, :, None] * dq_all[:, t]
        back, dback = e.sum(1), de.sum(1)
        if mask is not None:
            on = mask[:, t]
            de = de * on[:, None, None].to(de.dtype)
            back, dback = torch.where(on[:, None], back, g), torch.where(on[:, None], dback, dg)
        out[:, t] = de
        g, dg = back, dback
    out[:, 0, :, 0] = dg
    return out


class _ViterbiGrad(torch.autograd.Function):
    """The gradient (marginals) of Vit_Omega as a function of theta; backward: Hessian-vector
    product, so that double backward through :func:`viterbi` works."""

    @staticmethod
    def forward(ctx, theta: Tensor, gamma: float, reg: str, mask: Tensor | None) -> Tensor:
        _, q_all, q_end = viterbi_forward(theta.detach(), gamma, reg, mask)
        ctx.save_for_backward(q_all, q_end)
        ctx.args = gamma, reg, mask
        return viterbi_backward(q_all, q_end, mask)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, z: Tensor):
        q_all, q_end = ctx.saved_tensors
        return viterbi_hvp(q_all, q_end, z, *ctx.args), None, None, None


class _Viterbi(torch.autograd.Function):
    """Autograd wrapper: Viterbi forward recursion, gradient by the backward recursion (made
    differentiable by :class:`_ViterbiGrad` when a graph of the backward is asked for)."""

    @staticmethod
    def forward(ctx, theta: Tensor, gamma: float, reg: str, mask: Tensor | None) -> Tensor:
        val, q_all, q_end = viterbi_forward(theta.detach(), gamma, reg, mask)
        ctx.save_for_backward(theta, q_all, q_end)
        ctx.args = gamma, reg, mask
        return val

    @staticmethod
    def backward(ctx, gv: Tensor):
        theta, q_all, q_end = ctx.saved_tensors
        if torch.is_grad_enabled():
            grad = _ViterbiGrad.apply(theta, *ctx.args)
        else:
            grad = viterbi_backward(q_all, q_end, ctx.args[2])
        return gv[:, None, None, None] * grad, None, None, None


def viterbi(
    theta: Tensor, gamma: float = 1.0, reg: str = "entropy", mask: Tensor | None = None
) -> Tensor:
    """Differentiable Vit_Omega of potentials (B, T, S, S) -> (B,); mask (B, T) marks real
    positions."""
    return _Viterbi.apply(theta, gamma, reg, mask)


def viterbi_marginals(
    theta: Tensor, gamma: float = 1.0, reg: str = "entropy", mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Vit_Omega value (B,) and pairwise marginals (B, T, S, S); with reg='hard' the best path."""
    val, q_all, q_end = viterbi_forward(theta, gamma, reg, mask)
    return val, viterbi_backward(q_all, q_end, mask)


def viterbi_decode(theta: Tensor, mask: Tensor | None = None) -> Tensor:
    """Highest-scoring tag sequence (B, T), read off the gradient of the hard Viterbi value."""
    _, marg = viterbi_marginals(theta, 1.0, "hard", mask)
    return marg.sum(-1).argmax(-1)


def viterbi_bounds(t_len: int, s: int, gamma: float, reg: str) -> tuple[float, float]:
    """(low, high) offsets with low <= Vit_Omega - Vit_hard <= high: T max_Omega nodes over S
    options."""
    lo_om, hi_om = omega_range(s, gamma, reg)
    return -hi_om * t_len, -lo_om * t_len


def crf_potentials(emissions: Tensor, trans: Tensor, start: Tensor, end: Tensor) -> Tensor:
    """Linear-chain CRF scores (B, T, S) + (S, S) transitions i->j -> Viterbi potentials (B, T, S,
    S)."""
    theta = emissions[:, :, :, None] + trans.T[None, None]
    theta = theta.clone()
    theta[:, 0, :, 0] = emissions[:, 0] + start
    theta[:, -1] = theta[:, -1] + end[None, :, None]
    return theta


# ----------------------------------------------------------------------------------------------
# averaging time series under (smoothed) DTW
# ----------------------------------------------------------------------------------------------


def dtw_cdist(
    x: Tensor, y: Tensor, gamma: float = 1.0, reg: str = "hard", chunk: int = 256
) -> Tensor:
    """(Soft-)DTW discrepancies (N, K) between series x (N, n, d) and y (K, m, d), value only."""
    nx, ny = x.shape[0], y.shape[0]
    ix = torch.arange(nx).repeat_interleave(ny)
    iy = torch.arange(ny).repeat(nx)
    out = []
    for s in range(0, nx * ny, chunk):
        a, b = ix[s : s + chunk], iy[s : s + chunk]
        out.append(-dtw_value(-sq_dists(x[a], y[b]), gamma, reg))
    return torch.cat(out).reshape(nx, ny)


def barycenter(
    series: Tensor, gamma: float, reg: str, init: Tensor, max_iter: int = 50
) -> tuple[Tensor, int]:
    """Series z minimising the mean soft-DTW_Omega(z, x_k) over the set (L-BFGS); returns (z,
    iterations)."""
    from scipy.optimize import minimize

    shape = init.shape

    def fun(flat):
        z = torch.tensor(flat, dtype=series.dtype).reshape(shape).requires_grad_(True)
        zs = z[None].expand(series.shape[0], *shape)
        loss = soft_dtw(zs, series, gamma, reg).mean()
        loss.backward()
        return float(loss.detach()), z.grad.double().numpy().ravel()

    res = minimize(
        fun,
        init.double().numpy().ravel(),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": max_iter},
    )
    return torch.tensor(res.x, dtype=series.dtype).reshape(shape), int(res.nit)


# ----------------------------------------------------------------------------------------------
# timing (best of a few repeats; the machine is shared, so the minimum is the fairest)
# ----------------------------------------------------------------------------------------------


def random_walks(rng: np.random.Generator, batch: int, length: int, dim: int = 1) -> Tensor:
    """Batch of random-walk time series (batch, length, dim) in float64."""
    return torch.tensor(np.cumsum(rng.normal(size=(batch, length, dim)), axis=1))


def time_dtw(
    x: Tensor, y: Tensor, gamma: float, reg: str, repeats: int = 3, backend: str = "auto"
) -> float:
    """Best wall time (s) of value + gradient of DTW_Omega on a batch of pairs (this module,
    distances included, as in tslearn's timing); the compiled kernel is warmed up first."""
    if backend != "torch":
        from lib.chapters.differentiable_dp import dtw_numba

        dtw_numba.warm_up((x.numpy().dtype,))
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        dtw_value_and_grad(-sq_dists(x, y), gamma, reg, backend)
        best = min(best, time.perf_counter() - t0)
    return best


def time_autograd(x: Tensor, y: Tensor, gamma: float, reg: str, repeats: int = 3) -> float:
    """Best wall time (s) of value + gradient when autograd records the forward loop (the
    baseline)."""
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        theta = (-sq_dists(x, y)).requires_grad_(True)
        val, _ = dtw_forward(theta, gamma, reg, keep=False)
        torch.autograd.grad(val.sum(), theta)
        best = min(best, time.perf_counter() - t0)
    return best


def time_tslearn(x: Tensor, y: Tensor, gamma: float, repeats: int = 3) -> float:
    """Best wall time (s) of tslearn's soft_dtw_alignment (value + gradient) over the same pairs."""
    from tslearn.metrics import soft_dtw_alignment

    xs, ys = x.numpy(), y.numpy()
    soft_dtw_alignment(xs[0, :8], ys[0, :8], gamma=gamma)  # compile numba outside the timing
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        for a, b in zip(xs, ys):
            soft_dtw_alignment(a, b, gamma=gamma)
        best = min(best, time.perf_counter() - t0)
    return best


# ----------------------------------------------------------------------------------------------
# checks used by the chapter (each returns numbers; the notebook records them as claims)
# ----------------------------------------------------------------------------------------------


def density(a: Tensor, tol: float = 0.0) -> float:
    """Fraction of entries larger than tol (by default the exact non-zeros of an alignment or
    marginals)."""
    return float((a > tol).double().mean())


def fd_relative_error(value_fn, theta: Tensor, grad: Tensor, eps: float = 1e-6) -> float:
    """Relative error |grad - fd| / |fd| of a gradient against central finite differences.

    All 2 * theta.numel() perturbed copies go through value_fn as one batch (value_fn maps
    a batch (K, *shape) to values (K,)).
    """
    k = theta.numel()
    eye = torch.eye(k, dtype=theta.dtype, device=theta.device).reshape(k, *theta.shape)
    vals = value_fn(torch.cat([theta + eps * eye, theta - eps * eye]))
    fd = ((vals[:k] - vals[k:]) / (2 * eps)).reshape(theta.shape)
    return float((grad - fd).norm() / fd.norm())


def tslearn_agreement(x: Tensor, y: Tensor, gammas: list[float]) -> list[dict[str, float]]:
    """Per gamma: relative value error and max alignment error of entropy DTW_Omega vs tslearn."""
    from tslearn.metrics import soft_dtw_alignment

    rows = []
    for g in gammas:
        align, ref = soft_dtw_alignment(x.numpy(), y.numpy(), gamma=g)
        val, grad = dtw_value_and_grad(-sq_dists(x[None], y[None]), g, "entropy")
        rows.append(
            {
                "gamma": g,
                "value": -float(val),
                "tslearn": float(ref),
                "value_rel_err": abs(-float(val) - ref) / abs(ref),
                "grad_max_err": float((grad[0] - torch.as_tensor(align)).abs().max()),
            }
        )
    return rows


def crf_agreement(batch: int, t_len: int, s: int, seed: int) -> dict[str, object]:
    """Entropy Vit_Omega (gamma=1) vs pytorch-crf: log-partition, unary marginals, decoding."""
    import warnings

    import torchcrf

    torch.manual_seed(seed)
    crf = torchcrf.CRF(s, batch_first=True).double()
    em = torch.randn(batch, t_len, s, dtype=torch.float64, requires_grad=True)
    full = torch.ones(t_len, batch, dtype=torch.bool)
    with warnings.catch_warnings():  # torchcrf builds a uint8 mask internally; harmless here
        warnings.simplefilter("ignore", UserWarning)
        log_z = crf._compute_normalizer(em.transpose(0, 1), full)
        crf_paths = crf.decode(em.detach())
    unary_ref = torch.autograd.grad(log_z.sum(), em)[0]
    log_z = log_z.detach()
    with torch.no_grad():
        theta = crf_potentials(em, crf.transitions, crf.start_transitions, crf.end_transitions)
        val, marg = viterbi_marginals(theta, 1.0, "entropy")
        same_path = viterbi_decode(theta).tolist() == crf_paths
    return {
        "ours": val,
        "crf": log_z,
        "logz_max_err": float((val - log_z).abs().max()),
        "marg_max_err": float((marg.sum(-1) - unary_ref).abs().max()),
        "same_decoding": same_path,
    }


def dtw_gaps(theta: Tensor, gammas: list[float], reg: str) -> Tensor:
    """DTW_Omega(theta) - DTW_hard(theta) for each gamma: (len(gammas), B)."""
    hard = dtw_value(theta, 1.0, "hard")
    return torch.stack([dtw_value(theta, g, reg) - hard for g in gammas])


def viterbi_gaps(theta: Tensor, gammas: list[float], reg: str) -> Tensor:
    """Vit_Omega(theta) - Vit_hard(theta) for each gamma: (len(gammas), B)."""
    hard = viterbi_forward(theta, 1.0, "hard")[0]
    return torch.stack([viterbi_forward(theta, g, reg)[0] - hard for g in gammas])


def gradient_check_errors(rng: np.random.Generator, gamma: float = 0.5) -> dict[str, float]:
    """Relative finite-difference errors of the backward recursions, DTW (6x5) and Viterbi (T=5,
    S=4)."""
    theta_d = torch.as_tensor(rng.normal(size=(6, 5)))
    theta_v = torch.as_tensor(rng.normal(size=(5, 4, 4)))
    out = {}
    for reg in ("entropy", "l2"):
        _, g = dtw_value_and_grad(theta_d[None], gamma, reg)
        out[f"DTW {reg}"] = fd_relative_error(
            lambda t: dtw_forward(t, gamma, reg, keep=False)[0], theta_d, g[0]
        )
        _, g = viterbi_marginals(theta_v[None], gamma, reg)
        out[f"Viterbi {reg}"] = fd_relative_error(
            lambda t: viterbi_forward(t, gamma, reg)[0], theta_v, g[0]
        )
    return out


def paper_bounds(num_nodes: int, gamma: float, reg: str) -> tuple[float, float]:
    """(low, high) offsets of DP_Omega - DP from the paper's general-DAG bound (as recalled):
    DP - (N - 1) U_{Omega,N} <= DP_Omega <= DP - (N - 1) L_{Omega,N}, with N the number of nodes
    of the DAG and [L, U] the range of Omega on the N-simplex."""
    lo_om, hi_om = omega_range(num_nodes, gamma, reg)
    return -hi_om * (num_nodes - 1), -lo_om * (num_nodes - 1)


def dtw_nodes(n: int, m: int) -> int:
    """Nodes of the DTW DAG: the n * m cells and the source (0, 0)."""
    return n * m + 1


def viterbi_nodes(t_len: int, s: int) -> int:
    """Nodes of the Viterbi DAG: T * S (time, state) nodes, a source and a sink."""
    return t_len * s + 2


def hvp_check_errors(rng: np.random.Generator, gamma: float = 0.5) -> dict[str, float]:
    """Relative error of Hessian-vector products (double backward through dtw / viterbi) against
    central finite differences of the gradient, along a random direction; DTW (6x5), Viterbi
    (T=5, S=4), entropy and l2."""
    theta_d, z_d = (torch.as_tensor(rng.normal(size=(1, 6, 5))) for _ in range(2))
    theta_v, z_v = (torch.as_tensor(rng.normal(size=(1, 5, 4, 4))) for _ in range(2))
    out = {}
    for reg in ("entropy", "l2"):
        for name, fn, grad_fn, th, z in (
            ("DTW", dtw, lambda t: dtw_value_and_grad(t, gamma, reg)[1], theta_d, z_d),
            ("Viterbi", viterbi, lambda t: viterbi_marginals(t, gamma, reg)[1], theta_v, z_v),
        ):
            t = th.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(fn(t, gamma, reg).sum(), t, create_graph=True)
            (hz,) = torch.autograd.grad((g * z).sum(), t)
            fd = (grad_fn(th + 1e-6 * z) - grad_fn(th - 1e-6 * z)) / 2e-6
            out[f"{name} {reg}"] = float((hz - fd).norm() / fd.norm())
    return out


def _inside(gap: Tensor, lo: float, hi: float) -> Tensor:
    """Whether each gap lies in [lo, hi], up to rounding relative to the bounds."""
    return (gap >= lo - 1e-9 * (1 + abs(lo))) & (gap <= hi + 1e-9 * (1 + abs(hi)))


def bound_study(
    rng: np.random.Generator,
    sizes: list[int],
    instances: int,
    gammas: list[float],
    n_states: int = 8,
) -> list[dict[str, object]]:
    """Gaps DTW_Omega - DTW and Vit_Omega - Vit on random instances, with the bounds, per size and
    reg.

    DTW grids are n = m = size with theta = -squared distances of random walks; Viterbi has
    T = size and n_states states with standard normal potentials times 3.
    """
    rows = []
    for size in sizes:
        theta_d = -sq_dists(random_walks(rng, instances, size), random_walks(rng, instances, size))
        theta_v = 3 * torch.as_tensor(rng.normal(size=(instances, size, n_states, n_states)))
        for reg in ("entropy", "l2"):
            for kind, gaps, bound, nodes in (
                (
                    "DTW",
                    dtw_gaps(theta_d, gammas, reg),
                    lambda g: dtw_bounds(size, size, g, reg),
                    dtw_nodes(size, size),
                ),
                (
                    "Viterbi",
                    viterbi_gaps(theta_v, gammas, reg),
                    lambda g: viterbi_bounds(size, n_states, g, reg),
                    viterbi_nodes(size, n_states),
                ),
            ):
                for g, gap in zip(gammas, gaps):
                    lo, hi = bound(g)
                    p_lo, p_hi = paper_bounds(nodes, g, reg)
                    ok = _inside(gap, lo, hi)
                    rows.append(
                        {
                            "problem": kind,
                            "reg": reg,
                            "size": size,
                            "gamma": g,
                            "low": lo,
                            "high": hi,
                            "gap_min": float(gap.min()),
                            "gap_mean": float(gap.mean()),
                            "gap_max": float(gap.max()),
                            "inside": float(ok.double().mean()),
                            "paper_low": p_lo,
                            "paper_high": p_hi,
                            "inside_paper": float(_inside(gap, p_lo, p_hi).double().mean()),
                        }
                    )
    return rows


def cost_table(
    rng: np.random.Generator, sizes: list[int], batch: int, gamma: float, repeats: int
) -> list[dict[str, float]]:
    """Best times (s) of value + gradient for hard / entropy / l2 DTW here (compiled kernel),
    hard and entropy DTW by the vectorised torch recursion ("... (torch)") and tslearn's soft-DTW.

    The implementations are timed in turn within each repeat, so that a burst of load from
    other processes hits all of them alike; the best of the repeats is kept for each.
    """
    rows = []
    for n in sizes:
        x, y = random_walks(rng, batch, n), random_walks(rng, batch, n)
        best = dict.fromkeys((*REGS, "hard (torch)", "entropy (torch)", "tslearn"), math.inf)
        for _ in range(repeats):
            for reg in REGS:
                best[reg] = min(best[reg], time_dtw(x, y, gamma, reg, 1, "numba"))
            for reg in ("hard", "entropy"):
                t_torch = time_dtw(x, y, gamma, reg, 1, "torch")
                best[f"{reg} (torch)"] = min(best[f"{reg} (torch)"], t_torch)
            best["tslearn"] = min(best["tslearn"], time_tslearn(x, y, gamma, 1))
        rows.append({"L": n, "cells": batch * n * n, **best})
    return rows


def trace_dataset(stride: int = 1) -> tuple[Tensor, np.ndarray, Tensor, np.ndarray]:
    """UCR Trace (bundled in the tslearn wheel, no download): train/test series (N, L, 1) and
    labels."""
    from tslearn.datasets import CachedDatasets

    x_tr, y_tr, x_te, y_te = CachedDatasets().load_dataset("Trace")
    return torch.as_tensor(x_tr[:, ::stride]), y_tr, torch.as_tensor(x_te[:, ::stride]), y_te


def barycenter_study(
    x_tr: Tensor, y_tr, x_te: Tensor, y_te, gamma: float, iters: int
) -> dict[str, dict]:
    """Class centroids by Euclidean mean and by entropy / l2 soft-DTW barycenters, and how they
    score.

    Scores: the DTW inertia (mean hard DTW discrepancy of training series to their class
    centroid; per series in ``own``) and the test accuracy of a nearest-centroid classifier
    under hard DTW (per test series in ``correct``). For the barycenters, ``objective`` holds
    per class the mean soft-DTW objective at the start (the Euclidean mean) and at the end.
    """
    classes = np.unique(y_tr)
    euclid = torch.stack([x_tr[y_tr == c].mean(0) for c in classes])
    cents = {"Euclidean mean": euclid}
    objective = {}
    for reg in ("entropy", "l2"):
        name = f"soft-DTW ({reg})"
        cents[name] = torch.stack(
            [
                barycenter(x_tr[y_tr == c], gamma, reg, euclid[i], iters)[0]
                for i, c in enumerate(classes)
            ]
        )
        objective[name] = [
            [barycenter_objective(x_tr[y_tr == c], z[i], gamma, reg) for z in (euclid, cents[name])]
            for i, c in enumerate(classes)
        ]
    own = np.searchsorted(classes, y_tr)
    out = {}
    for name, cent in cents.items():
        d_tr, d_te = dtw_cdist(x_tr, cent), dtw_cdist(x_te, cent)
        per_series = d_tr[np.arange(len(y_tr)), own].numpy()
        correct = classes[d_te.argmin(1).numpy()] == y_te
        out[name] = {
            "centroids": cent,
            "own": per_series,
            "inertia": float(per_series.mean()),
            "correct": correct,
            "accuracy": float(correct.mean()),
            "objective": objective.get(name),
        }
    return out


def barycenter_objective(series: Tensor, z: Tensor, gamma: float, reg: str) -> float:
    """Mean soft-DTW_Omega(z, x_k) over a set of series: what :func:`barycenter` minimises."""
    return float(soft_dtw(z[None].expand(series.shape[0], -1, -1), series, gamma, reg).mean())


def alignment_nonzeros(theta: Tensor, gamma: float, reg: str) -> np.ndarray:
    """Per pair of a batch of grids (B, n, m): the fraction of exactly non-zero entries of the
    DTW_Omega alignment (the gradient)."""
    _, grad = dtw_value_and_grad(theta, gamma, reg)
    return (grad > 0).double().mean((1, 2)).numpy()
