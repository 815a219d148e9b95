"""Figures of the MiniLM compression chapter, drawn with the book's style
(:mod:`lib.book.plotting`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np

from lib.book import plotting
from lib.chapters.compression_minilm.study import pareto_mask

if TYPE_CHECKING:
    import pandas as pd


def pareto(table: pd.DataFrame, majority: float) -> plt.Figure:
    """Accuracy against the whole-model file (embeddings included) and against batch-32
    latency, one colour and marker per family; filled markers are on the Pareto front, crosses
    mark collapsed arms (kept off the front); error bars are the std over seeds; the dotted line
    is the majority-class floor."""
    fams = list(dict.fromkeys(table.family))
    colors = plotting.family_colors(fams)
    markers = dict(zip(fams, "osD^vP*Xhp<>"))
    fig, axes = plotting.subplots(1, 2, width=4.2, height=3.4)
    for ax, xcol, xlabel in (
        (axes[0, 0], "bytes", "file size (MB, fp32 or int8 state dict, embeddings included)"),
        (axes[0, 1], "lat32_median", "latency, batch 32, 1 thread (ms, median)"),
    ):
        sub = table.dropna(subset=[xcol])
        x = sub[xcol].to_numpy() / (1e6 if xcol == "bytes" else 1)
        acc, std = 100 * sub.acc.to_numpy(), 100 * sub.acc_std.to_numpy()
        fam_of, gone = sub.family.to_numpy(), sub.collapsed.to_numpy(bool)
        front = np.zeros(len(x), bool)
        front[~gone] = pareto_mask(x[~gone], acc[~gone])
        for fam in fams:
            for on in (True, False):
                s = (fam_of == fam) & (front == on) & ~gone
                if s.any():
                    face = colors[fam] if on else "white"
                    ax.errorbar(x[s], acc[s], yerr=std[s], fmt=markers[fam], capsize=2,
                                color=colors[fam], mfc=face, ms=6)  # fmt: skip
            s = (fam_of == fam) & gone
            if s.any():
                ax.plot(x[s], acc[s], "x", color=colors[fam], ms=7)
        order = np.argsort(x)
        on_front = order[front[order]]
        ax.plot(x[on_front], acc[on_front], "-", color="grey", lw=0.8, zorder=0)
        ax.axhline(100 * majority, ls=":", color="black", lw=1)
        ax.set(xlabel=xlabel, ylabel="test accuracy (%)")  # linear: the arms span < 10x
    handles = [plt.Line2D([], [], ls="", marker=markers[f], color=colors[f], label=f) for f in fams]
    handles += [
        plt.Line2D([], [], ls=":", color="black", label="majority class"),
        plt.Line2D([], [], ls="", marker="x", color="grey", label="collapsed"),
    ]
    fig.legend(
        handles=handles,
        loc="center left",
        bbox_to_anchor=(1.0, 0.5),
        fontsize=7,
        title="filled: on the Pareto front",
        title_fontsize=7,
    )
    return fig


def paired_diffs(
    paired: pd.DataFrame, floor_pts: float, tolerances: tuple[float, ...]
) -> plt.Figure:
    """Each arm minus its reference (points, paired bootstrap 95 % interval), with the
    tolerance lines of the equal-accuracy table and the majority-class floor (the difference a
    model predicting one class would show against the dense model)."""
    fig, axes = plotting.subplots(1, 1, width=6.0, height=0.32 * len(paired) + 1.2)
    ax = axes[0, 0]
    y = np.arange(len(paired))[::-1]
    lo = paired.diff_pts - paired.ci_low
    hi = paired.ci_high - paired.diff_pts
    colors = np.where(paired.collapsed, "tab:red", "black")
    for yi, d, below, above, c in zip(y, paired.diff_pts, lo, hi, colors):
        ax.errorbar(d, yi, xerr=[[below], [above]], fmt="o", color=c, capsize=3, ms=4)
    for tol in tolerances:
        ax.axvline(-tol, ls="--", color="grey", lw=0.8)
    ax.axvline(0, color="black", lw=0.8)
    ax.axvline(floor_pts, ls=":", color="black", lw=1, label="majority-class floor")
    labels = [f"{a} ({lv}) vs {v}" for a, lv, v in zip(paired.arm, paired.level, paired.vs)]
    ax.set_yticks(y, labels, fontsize=7)
    ax.set(xlabel="accuracy difference (points, arm minus reference)")
    ax.legend(fontsize=7, loc="lower left")
    return fig
