"""CPU latency and peak memory of a callable, measured the same way for every model.

Latency: a fixed number of intra-op threads for the whole measurement, warm-up calls that
are not recorded, then at least 100 timed calls (``time.perf_counter``), reported as
median and 90th percentile; several models are compared with :func:`time_interleaved`, one
call of each per round in a shuffled order. Peak memory: the largest number of bytes held at once by
tensors (model weights plus live activations), tracked at the PyTorch dispatcher during
one call, so it does not depend on what else the process or the machine is doing.
"""

from __future__ import annotations

import time
import weakref
from contextlib import contextmanager
from typing import Callable

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


@contextmanager
def threads(n: int):
    """Run the block with ``n`` intra-op threads, restoring the previous setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def time_calls(
    fn: Callable[[], object], runs: int = 100, warmup: int = 10, n_threads: int = 1
) -> np.ndarray:
    """Seconds taken by each of ``runs`` calls of ``fn`` after ``warmup`` untimed calls, at
    ``n_threads``."""
    if runs < 1 or warmup < 0:
        raise ValueError("runs must be >= 1 and warmup >= 0")
    out = np.empty(runs)
    with threads(n_threads), torch.inference_mode():
        for _ in range(warmup):
            fn()
        for i in range(runs):
            t0 = time.perf_counter()
            fn()
            out[i] = time.perf_counter() - t0
    return out


def summary(times: np.ndarray) -> dict[str, float]:
    """Median and 90th percentile in milliseconds, and the number of timed runs."""
    return {
        "median_ms": float(np.median(times) * 1e3),
        "p90_ms": float(np.percentile(times, 90) * 1e3),
        "runs": int(len(times)),
    }


def measure(
    fn: Callable[[], object], runs: int = 100, warmup: int = 10, n_threads: int = 1
) -> dict[str, float]:
    """:func:`time_calls` summarised (median, p90 in ms)."""
    return summary(time_calls(fn, runs, warmup, n_threads))


def time_interleaved(
    fns: dict[str, Callable[[], object]],
    rounds: int = 100,
    warmup: int = 10,
    n_threads: int = 1,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Seconds per call of every function, timed once per round over ``rounds`` rounds in a
    freshly shuffled order each round, after ``warmup`` untimed rounds.

    Interleaving spreads slow phases of the machine (other processes, frequency changes) over
    every model alike, where timing each model in one burst would charge them to whichever
    model happened to run then."""
    if rounds < 1 or warmup < 0:
        raise ValueError("rounds must be >= 1 and warmup >= 0")
    if not fns:
        raise ValueError("nothing to time")
    names = list(fns)
    out = {name: np.empty(rounds) for name in names}
    order = np.random.default_rng(seed)
    with threads(n_threads), torch.inference_mode():
        for _ in range(warmup):
            for name in names:
                fns[name]()
        for r in range(rounds):
            for i in order.permutation(len(names)):
                t0 = time.perf_counter()
                fns[names[i]]()
                out[names[i]][r] = time.perf_counter() - t0
    return out


def interleaved_summary(times: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Median and interquartile range (25th, 75th percentile) in milliseconds per model."""
    return {
        name: {
            "median_ms": float(np.median(t) * 1e3),
            "q25_ms": float(np.percentile(t, 25) * 1e3),
            "q75_ms": float(np.percentile(t, 75) * 1e3),
            "runs": int(len(t)),
        }
        for name, t in times.items()
    }


def _storage_key(t: torch.Tensor) -> tuple[int, int] | None:
    """Identity and size of a tensor's memory, or None for tensors without plain storage."""
    try:
        st = t.untyped_storage()
        return st.data_ptr(), st.nbytes()
    except (RuntimeError, NotImplementedError, TypeError):
        if t.is_quantized:
            return id(t), t.numel() * t.element_size()
        return None


class LiveBytes(TorchDispatchMode):
    """Counts the bytes of every tensor produced by an operator while it is alive; keeps the
    peak."""

    def __init__(self, base: int = 0) -> None:
        super().__init__()
        self.current = self.peak = base
        self.live: dict[int, int] = {}

    def _release(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            info = _storage_key(t)
            if info is None or info[0] in self.live or info[1] == 0:
                continue
            key, nbytes = info
            self.live[key] = nbytes
            self.current += nbytes
            self.peak = max(self.peak, self.current)
            weakref.finalize(t, self._release, key)
        return out


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's tensors as held in memory (shared tensors once; int8 packed weights
    included)."""
    seen, total = set(), 0
    tensors = list(model.parameters()) + list(model.buffers())
    for m in model.modules():
        if hasattr(m, "_weight_bias"):
            w, b = m._weight_bias()
            tensors += [w] + ([b] if b is not None else [])
    for t in tensors:
        info = _storage_key(t)
        if info and info[0] not in seen:
            seen.add(info[0])
            total += info[1]
    return total


def peak_bytes(fn: Callable[[], object], base: int = 0) -> int:
    """Peak bytes of tensors alive at once during one call of ``fn``, on top of ``base``."""
    with torch.inference_mode():
        mode = LiveBytes(base)
        with mode:
            result = fn()
        del result
    return mode.peak


def speedup(
    base: np.ndarray, other: np.ndarray, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, tuple[float, float]]:
    """Speed-up of ``other`` over ``base`` as the ratio of median call times (base / other),
    with a percentile bootstrap interval: each sample of timed calls resampled on its own."""
    base, other = np.asarray(base, float), np.asarray(other, float)
    if len(base) < 1 or len(other) < 1:
        raise ValueError("need at least one timed call on each side")
    rng = np.random.default_rng(seed)
    b = np.median(base[rng.integers(0, len(base), (n_boot, len(base)))], axis=1)
    o = np.median(other[rng.integers(0, len(other), (n_boot, len(other)))], axis=1)
    lo, hi = np.quantile(b / o, [(1 - level) / 2, (1 + level) / 2])
    return float(np.median(base) / np.median(other)), (float(lo), float(hi))
