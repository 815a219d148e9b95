"""The chapter's figures, in the book's house style (:mod:`lib.book.plotting`)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lib.book import plotting
from lib.chapters.pruning_zero_shot.study import Scores, drops


def accuracy_and_drop(sc: Scores, point: np.ndarray, levels: pd.DataFrame):
    """Left: accuracy of every language against sparsity (mean over seeds, band: min-max over
    seeds). Right: English and mean zero-shot relative drop with 95 % bootstrap intervals,
    and each zero-shot language's drop (thin lines)."""
    colors = plotting.family_colors(sc.langs)
    cols = [sc.arm("plain", s) for s in sc.plain_levels]
    x = 100 * np.array(sc.plain_levels)
    acc = 100 * point[0][:, cols, :]  # seeds x levels x languages
    rel = 100 * drops(point, sc)[0][:, cols, :].mean(0)  # levels x languages
    fig, axes = plotting.subplots(1, 2, width=5, height=3.6)
    ax = axes[0, 0]
    for j, lang in enumerate(sc.langs):
        lw, ls = (2.6, "-") if lang == "en" else (1.2, "--")
        a = acc[..., j]
        ax.plot(x, a.mean(0), ls, marker="o", lw=lw, color=colors[lang], label=lang)
        ax.fill_between(x, a.min(0), a.max(0), color=colors[lang], alpha=0.12)
    ax.set(xlabel="encoder sparsity (%)", ylabel="UPOS accuracy (%)", title="accuracy")
    ax.legend(ncol=2, fontsize=7)
    ax = axes[0, 1]
    for col, name, c in [
        ("en_drop", "English (supervised)", colors["en"]),
        ("zs_drop", "zero-shot mean", "black"),
    ]:
        err = [levels[col] - levels[f"{col}_lo"], levels[f"{col}_hi"] - levels[col]]
        ax.errorbar(x, levels[col], yerr=err, fmt="o-", color=c, capsize=3, label=name)
    for j, lang in enumerate(sc.langs[1:], start=1):
        ax.plot(x, rel[:, j], lw=0.7, alpha=0.5, color=colors[lang])
    ax.set(
        xlabel="encoder sparsity (%)",
        ylabel="relative accuracy drop (%)",
        title="drop vs the same-budget dense arm (95 % CI)",
    )
    ax.legend()
    return fig


def language_drops(
    lang_drop: pd.DataFrame, overlap: pd.Series, dense_acc: pd.Series, key_sparsity: float
):
    """Each zero-shot language's relative drop at the key sparsity (95 % interval) against its
    subword overlap with the English training text and against its dense accuracy."""
    colors = plotting.family_colors(["en", *dense_acc.index])  # the colours of the other figures
    fig, axes = plotting.subplots(1, 2, width=5, height=3.6)
    for ax, xval, xlabel in [
        (axes[0, 0], overlap, "subword overlap with English training text (%)"),
        (axes[0, 1], dense_acc, "dense accuracy (%)"),
    ]:
        for lang, r in lang_drop.iterrows():
            yerr = [[r["drop"] - r["lo"]], [r["hi"] - r["drop"]]]
            ax.errorbar(
                100 * xval[lang], r["drop"], yerr=yerr, fmt="o", color=colors[lang], capsize=2
            )
            ax.annotate(
                lang, (100 * xval[lang], r["drop"]), xytext=(4, 3), textcoords="offset points"
            )
        ax.set(xlabel=xlabel, ylabel=f"relative drop at {100 * key_sparsity:.0f} % sparsity (%)")
    return fig


def regularizers(sc: Scores, point: np.ndarray, reg_sparsities: list[float]):
    """English and mean zero-shot relative drop per arm at each regularized sparsity: bars are
    means over seeds, dots the seeds."""
    arms = ["plain"] + sorted({a for a, _ in sc.arms if a != "plain"})
    colors = plotting.family_colors(arms)
    d = 100 * drops(point, sc)[0]  # seeds x arms x languages
    per = {"English": d[..., 0], "zero-shot mean": d[..., 1:].mean(-1)}
    fig, axes = plotting.subplots(1, len(reg_sparsities), width=4.8, height=3.6)
    for j, sp in enumerate(reg_sparsities):
        ax = axes[0, j]
        for k, (group, vals) in enumerate(per.items()):
            for i, arm in enumerate(arms):
                v = vals[:, sc.arm(arm, sp)]
                x = k * (len(arms) + 1) + i
                ax.bar(x, v.mean(), color=colors[arm], label=arm if k == 0 else None)
                ax.plot([x] * len(v), v, "k.", ms=5)
        mid = (len(arms) - 1) / 2
        ax.set_xticks([mid, len(arms) + 1 + mid], list(per))
        ax.set(
            ylabel="relative accuracy drop (%)", title=f"{100 * sp:.0f} % sparsity (dots: seeds)"
        )
        ax.legend()
    return fig


def retrieval(results: pd.DataFrame, chance: float):
    """PUD retrieval accuracy against sparsity per arm (mean over seeds, bars: min-max)."""
    arms = ["plain"] + sorted(set(results.arm) - {"plain"})
    colors = plotting.family_colors(arms)
    ret = results.groupby(["arm", "sparsity"])["retrieval"].agg(["mean", "min", "max"])
    fig, axes = plotting.subplots(1, 1, width=5, height=3.4)
    ax = axes[0, 0]
    for arm in arms:
        r = ret.loc[arm].reset_index()
        ax.errorbar(
            100 * r.sparsity,
            100 * r["mean"],
            yerr=[100 * (r["mean"] - r["min"]), 100 * (r["max"] - r["mean"])],
            fmt="o-" if arm == "plain" else "s",
            color=colors[arm],
            capsize=3,
            label=arm,
        )
    ax.axhline(100 * chance, color="grey", ls=":", label="chance")
    ax.set(xlabel="encoder sparsity (%)", ylabel="PUD retrieval accuracy (%)")
    ax.legend()
    return fig
