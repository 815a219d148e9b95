"""One full-batch training step of the stacked linear model against a plain matmul.

The model is ``lib.chapters.heavy_tailed_imbalance.study``'s.

A step is forward (X W^T), loss, softmax gradient, backward (G^T X) and the optimizer update
for every stacked run.  Its useful work is 4 n d (runs c) FLOPs, the two matrix products.  The
reference is the same two products alone, timed in the same process, so the printed ratio is
the fraction of the machine's matmul rate that the whole step keeps.  Best of a few repeats,
one thread, interleaved so that background load hits both sides alike.

    python benchmarks/heavy_tail_step.py   # second grid: m = 8; the main grid: --m 7 --runs 26
    python benchmarks/heavy_tail_step.py --m 7 --runs 1 8 21 42
"""

from __future__ import annotations

import argparse
import time

import torch

from lib.chapters.heavy_tailed_imbalance import study as ht
from lib.core.optim import KINDS, StackedOptimizer


def best_time(fn, repeats: int) -> float:
    """Smallest wall time of ``repeats`` calls, in seconds (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench(m: int, runs: int, repeats: int, device: str) -> dict[str, float]:
    """Time one step with ``runs`` stacked runs (all optimizer kinds in turn) and the bare
    matmuls."""
    n, c, d = ht.sizes(m)
    x, y, (w0, b0) = ht.make_problem(m, 0, device)
    kinds = [list(KINDS)[i % len(KINDS)] for i in range(runs)]
    kinds.sort(key=list(KINDS).index)
    w, b = w0.repeat(runs, 1, 1), b0.repeat(runs, 1)
    opt = StackedOptimizer([w, b], [0, 0], kinds, [1e-4] * runs)
    g = torch.rand(n, runs * c, device=device)

    def step() -> None:
        _, gw, gb = ht.loss_and_grads(x, y, w, b)
        opt.step([gw, gb])

    def matmuls() -> None:
        torch.mm(x, w.view(runs * c, d).t())
        torch.mm(g.t(), x)

    t_step, t_mm = [], []
    for _ in range(repeats):  # interleave the two measurements
        t_step.append(best_time(step, 1))
        t_mm.append(best_time(matmuls, 1))
    flops = 4.0 * n * d * c * runs
    return {
        "step_s": min(t_step),
        "mm_s": min(t_mm),
        "step_gflops": flops / min(t_step) / 1e9,
        "mm_gflops": flops / min(t_mm) / 1e9,
    }


def main() -> None:
    """Print one row per number of stacked runs."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--m", type=int, default=8, help="tiers (book: 7 main, 8 second grid)")
    ap.add_argument("--runs", type=int, nargs="+", default=[1, 21], help="stacked runs")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(1)
    n, c, d = ht.sizes(args.m)
    print(f"m = {args.m}: X {n} x {d}, {c} classes; one thread; best of {args.repeats}")
    print(
        f"{'runs':>5} {'step ms':>9} {'matmul ms':>10} {'step GF/s':>10} {'mm GF/s':>9} "
        f"{'ratio':>6}"
    )
    for r in args.runs:
        res = bench(args.m, r, args.repeats, args.device)
        print(
            f"{r:>5} {res['step_s'] * 1e3:>9.1f} {res['mm_s'] * 1e3:>10.1f} "
            f"{res['step_gflops']:>10.1f} "
            f"{res['mm_gflops']:>9.1f} {res['step_gflops'] / res['mm_gflops']:>6.2f}"
        )


if __name__ == "__main__":
    main()
