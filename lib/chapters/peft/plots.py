"""The chapter's figures, in the book's house style (lib.book.plotting)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lib.book import plotting, stats
from lib.chapters.peft import methods, study


def _colors():
    return plotting.family_colors(list(methods.METHODS))


def fractions(params: pd.DataFrame):
    """Trainable share of the pretrained model per method, MiniLM and e5-small (log scale)."""
    fig, axes = plotting.subplots(1, 1, width=6.0, height=3.0)
    ax = axes[0, 0]
    models = list(dict.fromkeys(params.model))
    pos = np.arange(len(methods.METHODS))
    w = 0.8 / len(models)
    for i, m in enumerate(models):
        sub = params[params.model == m].set_index("method").loc[list(methods.METHODS)]
        ax.bar(pos + (i - (len(models) - 1) / 2) * w, sub.percent, w, label=m)
    ax.axhline(1.0, ls="--", color="grey", lw=1, label="1 %")
    ax.set(
        yscale="log",
        xticks=pos,
        xticklabels=[methods.LABELS[m] for m in methods.METHODS],
        ylabel="trainable parameters (% of model)",
    )
    ax.tick_params(axis="x", labelrotation=30)
    ax.legend(fontsize=7)
    return fig


def memory(rows: list[dict]):
    """Peak training memory against model size per method (left), and each method's saving
    against full fine-tuning with its interval over repeats (right)."""
    df = pd.DataFrame(rows)
    df["params_m"] = df.total / 1e6
    fig, axes = plotting.subplots(1, 2, width=4.0, height=3.2)
    cols = _colors()
    for m, sub in df.groupby("method", sort=False):
        g = sub.groupby("params_m").peak_mb.mean()
        axes[0, 0].plot(g.index, g.values, "o-", color=cols[m], label=methods.LABELS[m])
    axes[0, 0].set(
        xscale="log",
        yscale="log",
        xlabel="model parameters (millions, random weights)",
        ylabel="peak training memory (MiB)",
    )
    axes[0, 0].legend(fontsize=6)
    size = df[df.method == "full"].groupby(["hidden", "layers"]).params_m.first()
    for m in [m for m in dict.fromkeys(df.method) if m != "full"]:
        sv = study.memory_savings(rows, m)
        xs = [size[s] for s in sv]
        est = [stats.t_interval(v) for v in sv.values()]
        mid = np.array([e.value for e in est])
        err = np.array([[e.value - e.ci[0], e.ci[1] - e.value] for e in est]).T
        axes[0, 1].errorbar(xs, mid, yerr=err, fmt="o-", color=cols[m], capsize=2, ms=3)
    axes[0, 1].set(
        xscale="log",
        xlabel="model parameters (millions, random weights)",
        ylabel="saving vs full fine-tuning (fraction)",
    )
    return fig


def accuracy(table: pd.DataFrame, majority: dict[str, float]):
    """Test accuracy per method and task with 95 % intervals; the majority class dashed."""
    tasks = list(dict.fromkeys(table.task))
    fig, axes = plotting.subplots(1, len(tasks), width=3.6, height=3.0)
    cols = _colors()
    for ax, t in zip(axes[0], tasks):
        sub = table[table.task == t]
        for i, r in enumerate(sub.itertuples()):
            ax.errorbar(
                i,
                r.accuracy,
                yerr=[[r.accuracy - r.acc_lo], [r.acc_hi - r.accuracy]],
                fmt="o",
                color=cols[r.method],
                capsize=3,
            )
        ax.axhline(100 * majority[t], ls="--", color="grey", lw=1, label="majority")
        ax.set(
            xticks=range(len(sub)),
            xticklabels=[methods.LABELS[m] for m in sub.method],
            ylabel="test accuracy (%)",
            title=study.TASK_LABELS[t],
        )
        ax.tick_params(axis="x", labelrotation=35)
        ax.legend(fontsize=7)
    return fig
