"""Figures of the compression chapter (the CNN testbed), drawn with the book's style
(:mod:`lib.book.plotting`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter, NullFormatter

from lib.book import plotting

if TYPE_CHECKING:
    import pandas as pd


def budget_curves(table: pd.DataFrame, floors: dict[str, float]) -> plt.Figure:
    """CNN test error against retraining budget, one panel per family, one line per level
    (mean over seeds, error bars the std), with the dense CNN retrained for as long and the
    floors (majority class, linear classifier) drawn; error on a log axis so that the floors
    and a few tenths of a point show together. Budgets are evenly spaced categories."""
    fams = [f for f in dict.fromkeys(table.family) if f not in ("dense", "PTQ")]
    budgets = sorted(table.budget.unique())
    pos = {b: i for i, b in enumerate(budgets)}
    ncols = 4
    nrows = -(-len(fams) // ncols)
    fig, axes = plotting.subplots(nrows, ncols, width=2.6, height=2.4, sharex=True, sharey=True)
    dense = table[table.family == "dense"].sort_values("budget")
    for ax, fam in zip(axes.flat, fams):
        sub = table[table.family == fam]
        levels = list(dict.fromkeys(sub.level))
        pal = plotting.palette(len(levels))
        for c, level in zip(pal, levels):
            s = sub[sub.level == level].sort_values("budget")
            ax.errorbar(
                [pos[b] for b in s.budget],
                100 * (1 - s.acc),
                yerr=100 * s.acc_std,
                fmt="o-",
                ms=3,
                capsize=2,
                color=c,
                label=f"{level} ({s.ratio.iloc[0]:.1f}x)",
            )
        ax.plot([pos[b] for b in dense.budget], 100 * (1 - dense.acc), "k--", lw=1, label="dense")
        for name, acc in floors.items():
            ax.axhline(100 * (1 - acc), color="grey", ls=":", lw=1)
            ax.text(0, 100 * (1 - acc), name, fontsize=6, va="bottom", color="grey")
        ax.set(title=fam, yscale="log")
        ax.legend(fontsize=6, loc="upper right")
    for ax in axes.flat[len(fams) :]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xticks(range(len(budgets)), [f"{b:g}" for b in budgets])
        ax.set_xlabel("retraining (epochs)")
    for ax in axes[:, 0]:
        ax.set_ylabel("test error (%, log)")
    for ax in axes.flat:
        ax.set_yticks([1, 2, 5, 10, 20, 50, 100])
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    return fig


def drop_vs_ratio(
    table: pd.DataFrame, budget: float, tolerances: tuple[float, ...], paper_ratio: float
) -> plt.Figure:
    """Accuracy drop against the equally retrained dense CNN versus compression ratio, one
    line per family at ``budget`` (post-training quantisation at 0), with the tolerances and
    the fusion paper's ratio."""
    fams = [f for f in dict.fromkeys(table.family) if f != "dense"]
    colors = plotting.family_colors(fams)
    fig, axes = plotting.subplots(1, 1, width=5.5, height=3.6)
    ax = axes[0, 0]
    for fam in fams:
        sub = table[table.family == fam]
        b = budget if (sub.budget == budget).any() else 0.0
        s = sub[sub.budget == b].sort_values("ratio")
        ax.plot(s.ratio, s.drop_pts, "o-", color=colors[fam], ms=4, label=fam)
    for tol in tolerances:
        ax.axhline(tol, color="grey", ls="--", lw=0.8)
    ax.axhline(0, color="black", lw=0.6)
    ax.axvline(paper_ratio, color="black", ls=":", label=f"fusion paper: {paper_ratio:g}x")
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xticks([1, 1.5, 2, 3, 5, 10, 20])
    ax.set_yticks([-5, -2, -1, 0, 1, 2, 5, 10, 20, 50])
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set(
        xlabel="compression ratio (dense fp32 file / compressed file)",
        ylabel="accuracy drop (points, symlog)",
        title=f"after {budget:g} epoch(s) of retraining",
    )
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig
