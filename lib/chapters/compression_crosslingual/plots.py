"""Figures of the chapter (house style from :mod:`lib.book.plotting`)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lib.book import plotting


def accuracy_by_arm(table: pd.DataFrame, floor_en: float, floor_zs: float):
    """English and mean zero-shot accuracy per arm with 95 % intervals; the majority-tag
    floor as a dashed line."""
    fig, axes = plotting.subplots(1, 2, width=4.2, height=3.0, sharey=False)
    y = np.arange(len(table))
    for ax, col, floor, title in (
        (axes[0, 0], "en", floor_en, "English (supervised)"),
        (axes[0, 1], "zs", floor_zs, "zero-shot mean"),
    ):
        err = [table[col] - table[f"{col}_lo"], table[f"{col}_hi"] - table[col]]
        ax.errorbar(table[col], y, xerr=err, fmt="o", capsize=3)
        ax.axvline(100 * floor, ls="--", color="grey", lw=1, label="majority tag")
        ax.set(yticks=y, yticklabels=list(table.index), xlabel="accuracy (%)", title=title)
        ax.invert_yaxis()
    axes[0, 0].legend(loc="lower left")
    return fig


def sublayer_errors(tables: dict[str, pd.DataFrame]):
    """Relative quantisation error per sublayer (x) and layer (one line each), one panel per
    table (e.g. accumulated error at 8 and at 4 bits)."""
    fig, axes = plotting.subplots(1, len(tables), width=3.8, height=3.0)
    for ax, (title, rel) in zip(axes[0], tables.items()):
        x = np.arange(rel.shape[1])
        colors = plotting.palette(len(rel))
        for (i, row), c in zip(rel.iterrows(), colors):
            ax.plot(x, row.to_numpy(), "o-", color=c, label=f"layer {i}")
        ax.plot(x, rel.mean(axis=0).to_numpy(), "k--", lw=2, label="mean")
        ax.set(xticks=x, title=title, ylabel="relative error of the output")
        ax.set_xticklabels(list(rel.columns), rotation=30)
        ax.set_yscale("log")
    axes[0, -1].legend(fontsize=7)
    return fig
