"""Smoothed DTW (lib.chapters.differentiable_dp.smooth_dp, anti-diagonal torch) against tslearn's
soft-DTW, side by side.

Value + gradient (the expected alignment) of random-walk pairs, best of a few repeats, one thread.
Prints milliseconds, cells per second, the ratio to tslearn and to our own hard DTW, the time
of the same gradient when torch.autograd records the forward loop instead of running the
hand-written backward recursion, and the log-log slope of time against n*m.

    python benchmarks/dtw.py                      # single pairs, L = 100 ... 1600
    python benchmarks/dtw.py --batch 16 --sizes 64 128 256 512
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from lib.chapters.differentiable_dp import smooth_dp as sd


def main() -> None:
    """Run the benchmark and print one row per size."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 200, 400, 800, 1600])
    ap.add_argument("--batch", type=int, default=1, help="pairs per call (vectorised batch)")
    ap.add_argument("--gamma", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    print(
        f"batch {args.batch}, gamma {args.gamma}, best of {args.repeats}; "
        "times in ms for value + gradient"
    )
    print(
        f"{'L':>6} {'hard':>9} {'entropy':>9} {'l2':>9} {'tslearn':>9} | {'ours Mc/s':>9} "
        f"{'tsl Mc/s':>9} {'ours/tsl':>8} {'ent/hard':>8} {'l2/hard':>8} "
        f"{'autograd':>9} {'ad/ours':>7}"
    )
    cells, t_ent = [], []
    for n in args.sizes:
        x, y = sd.random_walks(rng, args.batch, n), sd.random_walks(rng, args.batch, n)
        t = {r: sd.time_dtw(x, y, args.gamma, r, args.repeats) for r in sd.REGS}
        t_tsl = sd.time_tslearn(x, y, args.gamma, args.repeats)
        t_ad = sd.time_autograd(x, y, args.gamma, "entropy", args.repeats)
        c = args.batch * n * n
        cells.append(c)
        t_ent.append(t["entropy"])
        print(
            f"{n:>6} {1e3 * t['hard']:9.1f} {1e3 * t['entropy']:9.1f} {1e3 * t['l2']:9.1f} "
            f"{1e3 * t_tsl:9.1f} | "
            f"{c / t['entropy'] / 1e6:9.2f} {c / t_tsl / 1e6:9.2f} {t['entropy'] / t_tsl:8.2f} "
            f"{t['entropy'] / t['hard']:8.2f} {t['l2'] / t['hard']:8.2f} {1e3 * t_ad:9.1f} "
            f"{t_ad / t['entropy']:7.2f}"
        )
    slope = np.polyfit(np.log(cells), np.log(t_ent), 1)[0]
    print(
        f"log-log slope of entropy time against n*m: {slope:.2f} "
        "(1 = linear in the number of cells)"
    )


if __name__ == "__main__":
    main()
