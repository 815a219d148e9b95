"""Figures of the compression chapter, drawn with the book's style (:mod:`lib.book.plotting`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FuncFormatter, NullFormatter

from lib.book import plotting
from lib.chapters.compression.study import pareto_mask

if TYPE_CHECKING:
    import pandas as pd


def fusion_curve(
    curve: pd.DataFrame, inflection: float, paper_ratio: float, tol_pts: float
) -> plt.Figure:
    """CNN accuracy against compression ratio (mean and std over seeds), with the paper's
    ratio, the tolerance line below the unfused CNN and the inflection measured here."""
    fig, axes = plotting.subplots(1, 1, width=4.6, height=3.2)
    ax = axes[0, 0]
    ax.errorbar(
        curve.ratio,
        100 * curve.acc,
        yerr=100 * curve.acc_std.fillna(0),
        fmt="o-",
        capsize=3,
        color=plotting.palette(3)[2],
        label="layer fusion + retraining",
    )
    ref = 100 * curve.acc.iloc[0] - tol_pts
    ax.axhline(ref, ls="--", color="grey", label=f"unfused - {tol_pts:g} points")
    ax.axvline(paper_ratio, ls=":", color="black", label=f"paper: {paper_ratio:g}x")
    if np.isfinite(inflection):
        ax.axvline(inflection, ls="-.", color="tab:red", alpha=0.6, label="inflection (here)")
    ax.set(xlabel="compression ratio (dense / stored parameters)", ylabel="test accuracy (%)")
    ax.legend(fontsize=7)
    return fig


def pareto(table: pd.DataFrame) -> plt.Figure:
    """Accuracy against size on disk and against batch-32 latency, one colour and marker per
    family; filled markers are on the Pareto front; error bars are the std over seeds."""
    fams = list(dict.fromkeys(table.family))
    colors = plotting.family_colors(fams)
    markers = dict(zip(fams, "osD^vP*Xhp<>"))
    fig, axes = plotting.subplots(1, 2, width=4.2, height=3.4)
    for ax, xcol, xlabel in (
        (axes[0, 0], "bytes", "size on disk (MB, embeddings excluded)"),
        (axes[0, 1], "lat32_ms", "latency, batch 32, 1 thread (ms, median)"),
    ):
        sub = table.dropna(subset=[xcol])
        x = sub[xcol].to_numpy() / (1e6 if xcol == "bytes" else 1)
        acc, std = 100 * sub.acc.to_numpy(), 100 * sub.acc_std.to_numpy()
        fam_of = sub.family.to_numpy()
        front = pareto_mask(x, acc)
        for fam in fams:
            for on in (True, False):
                s = (fam_of == fam) & (front == on)
                if s.any():
                    face = colors[fam] if on else "white"
                    ax.errorbar(
                        x[s],
                        acc[s],
                        yerr=std[s],
                        fmt=markers[fam],
                        capsize=2,
                        color=colors[fam],
                        mfc=face,
                        ms=6,
                    )
        order = np.argsort(x)
        on_front = order[front[order]]
        ax.plot(x[on_front], acc[on_front], "-", color="grey", lw=0.8, zorder=0)
        ax.set(xlabel=xlabel, ylabel="test accuracy (%)", xscale="log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    handles = [plt.Line2D([], [], ls="", marker=markers[f], color=colors[f], label=f) for f in fams]
    fig.legend(
        handles=handles,
        loc="center left",
        bbox_to_anchor=(1.0, 0.5),
        fontsize=7,
        title="filled: on the Pareto front",
        title_fontsize=7,
    )
    return fig


def paired_bars(panels: list[tuple[str, dict[str, np.ndarray]]]) -> plt.Figure:
    """One panel per comparison: a bar per arm at its mean accuracy over seeds, and one dot
    per seed. ``panels``: (title, {arm label: accuracy per seed})."""
    fig, axes = plotting.subplots(1, len(panels), width=3.6, height=3.0)
    for ax, (title, arms) in zip(axes[0], panels):
        pal = plotting.palette(len(arms))
        for i, a in enumerate(arms.values()):
            ax.bar(i, 100 * a.mean(), color=pal[i], alpha=0.7)
            ax.plot(np.full(len(a), i), 100 * a, "k.", ms=6)
        ax.set_xticks(range(len(arms)), [k.replace(" + ", "\n+ ") for k in arms], fontsize=7)
        lo = min(100 * a.min() for a in arms.values())
        ax.set(ylabel="test accuracy (%)", title=title, ylim=(max(lo - 5, 0), None))
    return fig
