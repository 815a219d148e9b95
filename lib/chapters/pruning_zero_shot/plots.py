"""The chapter's figures, in the book's house style (:mod:`lib.book.plotting`)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lib.book import plotting


def _band(ax, x, t: pd.DataFrame, col: str, color, label: str, lw: float = 2.0) -> None:
    err = [t[col] - t[f"{col}_lo"], t[f"{col}_hi"] - t[col]]
    ax.errorbar(x, t[col], yerr=err, fmt="o-", color=color, lw=lw, capsize=3, label=label)


def levels(levels_table: pd.DataFrame, plateau: int):
    """Left: English and mean zero-shot accuracy against sparsity, each after its recovery
    plateau. Middle and right: their relative and headroom-normalised drops. 95 % intervals
    (bootstrap over seeds and test sentences)."""
    colors = plotting.family_colors(["en", "zero-shot"])
    t = levels_table
    fig, axes = plotting.subplots(1, 3, width=4.2, height=3.4)
    x = 100 * t.index.to_numpy()
    ax = axes[0, 0]
    _band(ax, x, t, "en_acc", colors["en"], "English (supervised)")
    _band(ax, x, t, "zs_acc", colors["zero-shot"], "zero-shot mean")
    ax.set(
        xlabel="encoder sparsity (%)",
        ylabel="UPOS accuracy (%)",
        title=f"after {plateau} recovery steps",
    )
    ax.legend()
    p = t[t.index > 0]
    xp = 100 * p.index.to_numpy()
    for ax, m, title in [
        (axes[0, 1], "rel", "relative drop (%)"),
        (axes[0, 2], "head", "drop of the headroom above the floor (%)"),
    ]:
        _band(ax, xp, p, f"en_{m}", colors["en"], "English")
        _band(ax, xp, p, f"zs_{m}", colors["zero-shot"], "zero-shot mean")
        ax.set(xlabel="encoder sparsity (%)", ylabel=title)
        ax.legend()
    return fig


def language_drops(lang_table: pd.DataFrame):
    """Each language's headroom-normalised drop against sparsity (95 % intervals; English
    thick)."""
    langs = list(dict.fromkeys(lang_table.lang))
    colors = plotting.family_colors(langs)
    fig, axes = plotting.subplots(1, 1, width=6, height=3.8)
    ax = axes[0, 0]
    n = len(langs)
    for j, lang in enumerate(langs):
        r = lang_table[lang_table.lang == lang]
        x = 100 * r.sparsity.to_numpy() + (j - (n - 1) / 2) * 0.6  # dodge the intervals
        err = [r["drop"] - r["lo"], r["hi"] - r["drop"]]
        lw = 2.6 if lang == "en" else 1.2
        ax.errorbar(
            x, r["drop"], yerr=err, fmt="o-", lw=lw, color=colors[lang], capsize=2, label=lang
        )
    ax.set(
        xlabel="encoder sparsity (%)",
        ylabel="drop of the headroom above the floor (%)",
        title="per language, 95 % intervals",
    )
    ax.legend(ncol=2, fontsize=8)
    return fig


CONTROLS = ("random", "layerwise", "same_budget")  # the arms that are not alignment terms


def arms(arm_table: pd.DataFrame, key: float):
    """Every arm at the key sparsity: English and mean zero-shot accuracy minus plain
    pruning's (points), 95 % paired intervals; the alignment terms left, the pruning criteria
    and the same-budget dense control right (their scales differ)."""
    t = arm_table.drop(index="plain", errors="ignore")
    groups = [
        ("alignment terms", t[[a not in CONTROLS for a in t.index]]),
        ("criteria and same-budget dense", t[[a in CONTROLS for a in t.index]]),
    ]
    groups = [(title, g) for title, g in groups if len(g)]
    colors = plotting.family_colors(["en", "zero-shot"])
    fig, axes = plotting.subplots(1, len(groups), width=4.2, height=3.4)
    for ax, (title, g) in zip(axes[0], groups):
        x = np.arange(len(g))
        for k, (col, label) in enumerate([("en", "English"), ("zs", "zero-shot mean")]):
            v = g[f"{col}_vs_plain"]
            err = [v - g[f"{col}_vs_plain_lo"], g[f"{col}_vs_plain_hi"] - v]
            ax.errorbar(
                x + (k - 0.5) * 0.2,
                v,
                yerr=err,
                fmt="o",
                capsize=3,
                color=colors["en" if col == "en" else "zero-shot"],
                label=label,
            )
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(x, list(g.index))
        ax.set(ylabel="accuracy minus plain pruning (points)", title=title)
    axes[0, 0].legend()
    fig.suptitle(f"arms at {100 * key:.0f} % sparsity (95 % paired intervals)")
    return fig
