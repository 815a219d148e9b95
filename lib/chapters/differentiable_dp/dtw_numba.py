"""Compiled CPU kernel (numba) for the value and gradient of DTW_Omega, cell by cell.

The same recursions as the anti-diagonal torch code of :mod:`smooth_dp` (max form, score grid
theta, neighbours in the order left (i, j-1), diagonal (i-1, j-1), up (i-1, j)), written as
scalar loops that numba compiles once (``cache=True`` keeps the machine code on disk, so later
processes skip the compilation). The forward pass stores the three local weights q of every
cell; the backward pass accumulates the gradient from them in reverse row-major order, which
visits every cell after all of its children. The three max operators are closed forms over
three numbers: the first maximum (hard), log-sum-exp and softmax (entropy), and the sparsemax
projection of three numbers by a sorting network (l2).

Regulariser codes: 0 = hard, 1 = entropy, 2 = l2.
"""

from __future__ import annotations

import math

import numba
import numpy as np

REG_CODE = {"hard": 0, "entropy": 1, "l2": 2}


@numba.njit(cache=True, inline="always")
def _exp_neg(d):
    """exp(d) for d <= 0, exactly 1 at 0 and flushed to 0 below -700 (exp(-700) < 1e-304: no
    slow subnormal arithmetic downstream, and the weight is below any double's resolution)."""
    if d == 0.0:
        return 1.0
    if d < -700.0:
        return 0.0
    return math.exp(d)


@numba.njit(cache=True, inline="always")
def _max3(a, b, c, gamma, inv_gamma, reg):
    """Smoothed max of (a, b, c) and its gradient (q0, q1, q2)."""
    if reg == 0:
        if a >= b and a >= c:
            return a, 1.0, 0.0, 0.0
        if b >= c:
            return b, 0.0, 1.0, 0.0
        return c, 0.0, 0.0, 1.0
    if reg == 1:
        mx = max(a, max(b, c))
        ea = _exp_neg((a - mx) * inv_gamma)
        eb = _exp_neg((b - mx) * inv_gamma)
        ec = _exp_neg((c - mx) * inv_gamma)
        s = ea + eb + ec
        inv = 1.0 / s
        return mx + gamma * math.log(s), ea * inv, eb * inv, ec * inv
    # l2: sparsemax of (a, b, c) / gamma, sorted by a three-comparison network
    za, zb, zc = a * inv_gamma, b * inv_gamma, c * inv_gamma
    z1, z2, z3 = za, zb, zc
    if z1 < z2:
        z1, z2 = z2, z1
    if z2 < z3:
        z2, z3 = z3, z2
    if z1 < z2:
        z1, z2 = z2, z1
    tau = z1 - 1.0
    if 1.0 + z2 > z1:
        tau = (z1 + z2 - 1.0) * 0.5
        if 1.0 + 3.0 * z3 > z1 + z2 + z3:
            tau = (z1 + z2 + z3 - 1.0) / 3.0
    qa = max(za - tau, 0.0)
    qb = max(zb - tau, 0.0)
    qc = max(zc - tau, 0.0)
    val = -0.5 * gamma * (qa * qa + qb * qb + qc * qc)
    if qa > 0.0:
        val += qa * a
    if qb > 0.0:
        val += qb * b
    if qc > 0.0:
        val += qc * c
    return val, qa, qb, qc


@numba.njit(cache=True)
def dtw_batch(theta, gamma, reg, want_grad):
    """Values (B,) and, if want_grad, gradients (B, n, m) of DTW_Omega for grids theta (B, n, m).

    Only the weights q (n, m, 3) are kept between the passes; values and gradient accumulators
    live in two rows each, so the memory traffic is the weights, the grid and the gradient.
    Without want_grad the gradient array is empty (shape (0, 0, 0)) and no weights are kept.
    """
    bsz, n, m = theta.shape
    inv_gamma = 1.0 / gamma
    vals = np.empty(bsz, dtype=theta.dtype)
    grads = np.zeros((bsz, n, m) if want_grad else (0, 0, 0), dtype=theta.dtype)
    q = np.empty((n, m, 3) if want_grad else (0, 0, 3), dtype=theta.dtype)
    prev = np.empty(m + 1, dtype=theta.dtype)
    cur = np.empty(m + 1, dtype=theta.dtype)
    for b in range(bsz):
        prev[:] = -np.inf
        prev[0] = 0.0  # row 0: V[0, 0] = 0, the rest -inf
        for i in range(1, n + 1):
            cur[0] = -np.inf
            for j in range(1, m + 1):
                val, q0, q1, q2 = _max3(cur[j - 1], prev[j - 1], prev[j], gamma, inv_gamma, reg)
                cur[j] = theta[b, i - 1, j - 1] + val
                if want_grad:
                    q[i - 1, j - 1, 0] = q0
                    q[i - 1, j - 1, 1] = q1
                    q[i - 1, j - 1, 2] = q2
            prev, cur = cur, prev
        vals[b] = prev[m]
        if want_grad:
            e_row = prev  # accumulators of row i (reusing the buffers)
            e_up = cur  # and of row i - 1
            e_row[:] = 0.0
            e_row[m] = 1.0
            for i in range(n, 0, -1):
                e_up[:] = 0.0
                for j in range(m, 0, -1):
                    g = e_row[j]
                    grads[b, i - 1, j - 1] = g
                    if g != 0.0:
                        e_row[j - 1] += g * q[i - 1, j - 1, 0]
                        e_up[j - 1] += g * q[i - 1, j - 1, 1]
                        e_up[j] += g * q[i - 1, j - 1, 2]
                e_row, e_up = e_up, e_row
            prev, cur = e_row, e_up
    return vals, grads


def value_and_grad(theta: np.ndarray, gamma: float, reg: str, want_grad: bool = True):
    """Numpy front end: (values (B,), gradients (B, n, m) or None) for grids theta (B, n, m)."""
    if reg not in REG_CODE:
        raise ValueError(f"reg must be one of {tuple(REG_CODE)}, got {reg!r}")
    theta = np.ascontiguousarray(theta)
    vals, grads = dtw_batch(theta, theta.dtype.type(gamma), REG_CODE[reg], want_grad)
    return vals, (grads if want_grad else None)


def warm_up(dtypes=(np.float64,)) -> None:
    """Compile (or load from the on-disk cache) the kernel for the given dtypes."""
    for dtype in dtypes:
        for reg in REG_CODE:
            value_and_grad(np.zeros((1, 2, 2), dtype=dtype), 1.0, reg, True)
            value_and_grad(np.zeros((1, 2, 2), dtype=dtype), 1.0, reg, False)
