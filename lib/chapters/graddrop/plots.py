"""The chapter's figures, in the book's house style (:mod:`lib.book.plotting`)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lib.book import plotting


def gains_by_language(gt: pd.DataFrame, arms: list[str], langs: list[str]):
    """Gain (points) of each arm over standard fine-tuning, per language and for the zero-shot
    mean, with paired 95 % bootstrap intervals (``gt``: :func:`study.gain_table`)."""
    cols = [*langs, "zero-shot mean"]
    colors = plotting.family_colors(arms)
    fig, axes = plotting.subplots(1, 1, width=10, height=3.6)
    ax = axes[0, 0]
    width = 0.8 / max(len(arms), 1)
    for k, a in enumerate(arms):
        r = gt[gt.arm == a].set_index("lang").loc[cols]
        x = np.arange(len(cols)) + (k - (len(arms) - 1) / 2) * width
        err = [r["gain"] - r["lo"], r["hi"] - r["gain"]]
        ax.errorbar(x, r["gain"], yerr=err, fmt="o", ms=4, capsize=2, color=colors[a], label=a)
    ax.axhline(0, color="grey", lw=0.8)
    ax.axvline(0.5, color="grey", lw=0.6, ls=":")
    ax.axvline(len(cols) - 1.5, color="grey", lw=0.6, ls=":")
    ax.set_xticks(np.arange(len(cols)), [*langs, "zero-shot\nmean"])
    ax.set(ylabel="accuracy gain over standard (points)", title="paired 95 % intervals")
    ax.legend(fontsize=7, ncol=3)
    return fig


def gain_vs_resource(gt: pd.DataFrame, arm: str, size: pd.Series, langs: list[str]):
    """Each zero-shot language's gain (95 % interval) against its CC-100 size (log scale)."""
    r = gt[gt.arm == arm].set_index("lang").loc[langs]
    fig, axes = plotting.subplots(1, 1, width=5, height=3.6)
    ax = axes[0, 0]
    x = size.loc[langs].to_numpy(float)
    err = [r["gain"] - r["lo"], r["hi"] - r["gain"]]
    ax.errorbar(x, r["gain"], yerr=err, fmt="o", capsize=2, color="black")
    for xi, yi, lang in zip(x, r["gain"], langs):
        ax.annotate(lang, (xi, yi), textcoords="offset points", xytext=(4, 3), fontsize=8)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set(
        xlabel="CC-100 size (GiB, log scale; Conneau et al. 2020, Table 6)",
        ylabel="gain over standard (points)",
        title=arm,
    )
    return fig


def selection(sel: pd.DataFrame):
    """English dev accuracy of the selection runs: standard fine-tuning against the learning
    rate, element-wise GradDrop against the drop rate."""
    fig, axes = plotting.subplots(1, 2, width=3.6, height=3.0)
    std = sel[sel.arm == "standard"].sort_values("lr")
    axes[0, 0].plot(std.lr, std.dev_acc, "o-")
    axes[0, 0].set(xscale="log", xlabel="peak learning rate", ylabel="English dev accuracy (%)",
                   title="standard fine-tuning")  # fmt: skip
    gd = sel[sel.arm.str.startswith("elementwise")].copy()
    gd["p"] = gd.arm.str.extract(r"p=([0-9.]+)")[0].astype(float)
    gd = gd.sort_values("p")
    axes[0, 1].plot(gd.p, gd.dev_acc, "o-")
    axes[0, 1].set(xlabel="drop rate p", ylabel="English dev accuracy (%)",
                   title="element-wise GradDrop")  # fmt: skip
    return fig
