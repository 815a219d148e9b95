"""Smoothed DTW (lib.chapters.differentiable_dp.smooth_dp) against tslearn's soft-DTW, side by
side, one thread.

Value + gradient (the expected alignment) of random-walk pairs, distances included, best of a
few repeats. Ours is the compiled CPU kernel (numba, chosen automatically on the CPU) for the
three regularisers; the vectorised torch recursion (entropy) is timed too where it is cheap.
Both compiled kernels (ours and tslearn's) are compiled before any timing. Prints milliseconds,
the ratios to tslearn, and as its last line the worst ratio (our time / tslearn's soft-DTW time,
worst of the three regularisers) over every size and batch it ran:

    python benchmarks/dtw.py                           # L = 100 ... 1600, batches of 1 and 16
    python benchmarks/dtw.py --sizes 100 200 --batches 1
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

from lib.chapters.differentiable_dp import dtw_numba
from lib.chapters.differentiable_dp import smooth_dp as sd


def main() -> None:
    """Run the benchmark, one row per (batch, L), then the worst ratio."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 200, 400, 800, 1600])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--gamma", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--torch-cells", type=float, default=2e6, help="time the torch path up to this many cells"
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    dtw_numba.warm_up()
    rng = np.random.default_rng(0)
    print(f"gamma {args.gamma}, best of {args.repeats}; times in ms for value + gradient")
    print(
        f"{'batch':>5} {'L':>5} {'hard':>9} {'entropy':>9} {'l2':>9} {'torch ent':>9} "
        f"{'tslearn':>9} | {'ent/tsl':>7} {'l2/tsl':>7} {'hard/tsl':>8} {'torch/tsl':>9}"
    )
    worst = 0.0
    for batch in args.batches:
        for n in args.sizes:
            x, y = sd.random_walks(rng, batch, n), sd.random_walks(rng, batch, n)
            best = dict.fromkeys((*sd.REGS, "torch", "tslearn"), math.inf)
            run_torch = batch * n * n <= args.torch_cells
            for _ in range(args.repeats):  # interleaved, so that load bursts hit all alike
                for reg in sd.REGS:
                    best[reg] = min(best[reg], sd.time_dtw(x, y, args.gamma, reg, 1, "numba"))
                if run_torch:
                    t = sd.time_dtw(x, y, args.gamma, "entropy", 1, "torch")
                    best["torch"] = min(best["torch"], t)
                best["tslearn"] = min(best["tslearn"], sd.time_tslearn(x, y, args.gamma, 1))
            r = {k: v / best["tslearn"] for k, v in best.items()}
            worst = max(worst, r["hard"], r["entropy"], r["l2"])
            torch_ms = f"{1e3 * best['torch']:9.1f}" if run_torch else f"{'-':>9}"
            torch_r = f"{r['torch']:9.2f}" if run_torch else f"{'-':>9}"
            print(
                f"{batch:>5} {n:>5} {1e3 * best['hard']:9.1f} {1e3 * best['entropy']:9.1f} "
                f"{1e3 * best['l2']:9.1f} {torch_ms} {1e3 * best['tslearn']:9.1f} | "
                f"{r['entropy']:7.2f} {r['l2']:7.2f} {r['hard']:8.2f} {torch_r}",
                flush=True,
            )
    print(f"worst_ratio_vs_tslearn={worst:.3f}")


if __name__ == "__main__":
    main()
