"""Figures of the chapter `heavy_tailed_imbalance`, in the book's house style.

Each function draws one figure from results computed in the notebook and returns it; the
notebook calls ``plt.show()``. Colours: one per optimizer (``family_colors``), one per
frequency tier (``palette``, dark = most frequent); dashed lines = no momentum.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np

from lib.book import plotting
from lib.chapters.heavy_tailed_imbalance.study import Trace
from lib.core.optim import LABELS


def _style(kind: str) -> str:
    return "-" if kind.endswith("_m") else "--"


def selection_scores(traces: Sequence[Trace], chosen: dict, colors: dict, steps: int):
    """Worst-seed final loss per learning rate (the selection score), seed range shaded."""
    init_loss = float(np.mean([t.loss[0, 0] for t in traces]))
    fig, axes = plotting.subplots(1, 1, width=6.0, height=3.6)
    ax = axes[0, 0]
    finals = np.stack([t.loss[-1] for t in traces])  # (seeds, runs)
    for kind, v in chosen.items():
        lo, hi = (np.minimum(f(finals[:, v["runs"]], 0), 3 * init_loss) for f in (np.min, np.max))
        ax.fill_between(v["exps"], lo, hi, color=colors[kind], alpha=0.15, lw=0)
        ax.plot(v["exps"], v["worst"], "o", ls=_style(kind), color=colors[kind], label=LABELS[kind])
        ax.plot(v["exp"], v["worst"][v["best"]], "*", ms=14, color=colors[kind], mec="k")
    ax.axhline(init_loss, color="grey", lw=1, ls=":", label="initial loss")
    ax.set(
        xlabel="learning rate (log$_{10}$)",
        ylabel=f"final training loss (nats), step {steps}",
        yscale="log",
        title="Selection score: worst seed, diverged = initial loss (star = chosen)",
    )
    ax.legend(ncol=2, fontsize=8, loc="lower left")
    return fig


def tier_panels(trace: Trace, chosen: dict, colors: dict, m: int):
    """Overall loss of every optimizer, then one panel per optimizer with the loss per tier."""
    kinds, tier_colors = list(chosen), plotting.palette(m)
    init_loss = float(trace.loss[0, 0])
    nrow = int(np.ceil((len(kinds) + 1) / 4))
    fig, axes = plotting.subplots(nrow, 4, width=2.6, height=2.2, sharex=True)
    ax = axes.flat[0]
    for kind in kinds:
        ax.plot(
            trace.steps,
            trace.loss[:, chosen[kind]["run"]],
            color=colors[kind],
            label=LABELS[kind],
            ls=_style(kind),
        )
    ax.set(title="overall", ylim=(0, 1.6 * init_loss))
    ax.legend(fontsize=6)
    for ax, kind in zip(axes.flat[1:], kinds):
        r = chosen[kind]["run"]
        for i in range(m):
            lab = f"tier {i}" if kind == kinds[0] else None
            ax.plot(trace.steps, trace.group_loss[:, r, i], color=tier_colors[i], label=lab)
        lr = f"lr $10^{{{chosen[kind]['exp']:+.1f}}}$"
        ax.set(title=f"{LABELS[kind]} ({lr})", ylim=(0, 1.6 * init_loss))
    axes.flat[1].legend(fontsize=6, title="tier (0 = frequent)", title_fontsize=6)
    for ax in axes.flat[len(kinds) + 1 :]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("step")
    for row in axes:
        row[0].set_ylabel("training loss (nats)")
    return fig


def theory(times, pi, exact_gd, sim_gd, scaled, sim_sign, exact_sign):
    """Gradient flow vs small-step GD, pi t loss bounded, and sign descent's single curve."""
    k_classes = len(pi)
    show = [k for k in (0, 3, 15, 63, 255, 1023) if k < k_classes]
    cols = plotting.palette(len(show))
    fig, axes = plotting.subplots(1, 3, width=3.0, height=2.6)
    a0, a1, a2 = axes[0]
    for j, k in enumerate(show):
        lab = f"class {k + 1} ($\\pi$={pi[k]:.3f})"
        a0.plot(times[1:], exact_gd[1:, k], color=cols[j], label=lab)
        a0.plot(times[1::4], sim_gd[1::4, k], "o", ms=3, color=cols[j])
        a1.plot(times[1:], scaled[1:, k], color=cols[j])
        a2.plot(times[1:], sim_sign[1:, k], "o", ms=3, color=cols[j])
    a2.plot(times[1:], exact_sign[1:, 0], "k-", lw=1, label="$\\log(1+(c-1)e^{-2t})$")
    for bound in ((k_classes - 1) / (2 * k_classes), k_classes - 1):
        a1.axhline(bound, color="grey", ls=":")
    common = {"xscale": "log", "yscale": "log", "xlabel": "time $t$"}
    a0.set(
        title="gradient flow (line) vs GD (dots)",
        ylabel="per-class loss $\\ell_k(t)$ (nats)",
        **common,
    )
    a1.set(title="$\\pi_k\\, t\\, \\ell_k(t)$ stays bounded", ylabel="$\\pi_k t \\ell_k$", **common)
    a2.set(
        title="sign descent: one curve", ylabel="per-class loss (nats)", ylim=(1e-12, 10), **common
    )
    a0.legend(fontsize=6)
    a2.legend(fontsize=6)
    return fig


def grad_hessian(pi, class_tier, stats_at, snap, slopes, colors, m: int):
    """Per-class gradient norm and Hessian trace against pi_k (GD, last snapshot), gradient
    norm against Hessian trace (the paper's scatter; GD and Adam+m), and slopes over time."""
    tier_colors, last = plotting.palette(m), snap[-1]
    fig, axes = plotting.subplots(1, 4, width=2.7, height=2.6)
    for j, what in enumerate(["gradient norm", "Hessian trace"]):
        ax, vals = axes[0, j], stats_at["gd", last][j]
        for i in range(m):
            ax.loglog(pi[class_tier == i], vals[class_tier == i], "o", ms=3, color=tier_colors[i])
        ax.loglog(pi, np.exp(np.mean(np.log(vals / pi))) * pi, "k--", lw=1, label="slope 1")
        ax.set(
            xlabel="class frequency $\\pi_k$",
            ylabel=f"{what} (a.u.)",
            title=f"GD, step {last}: slope {slopes['gd', last][j]:.2f}",
        )
        ax.legend(fontsize=7)
    ax = axes[0, 2]
    for kind, marker in (("gd", "o"), ("adam_m", "s")):
        g, h = stats_at[kind, last]
        ax.loglog(h, g, marker, ms=3, color=colors[kind], label=f"{LABELS[kind]}, step {last}")
    g0, h0 = stats_at["gd", snap[0]]
    ax.loglog(h0, g0, "x", ms=3, color="grey", label=f"step {snap[0]}")
    ax.set(xlabel="Hessian trace (a.u.)", ylabel="gradient norm (a.u.)", title="per class")
    ax.legend(fontsize=6)
    ax = axes[0, 3]
    for kind in ("gd", "adam_m"):
        for j, (mk, ls, what) in enumerate((("o", "-", "gradient"), ("s", "--", "Hessian"))):
            ax.plot(
                snap,
                [slopes[kind, t][j] for t in snap],
                marker=mk,
                ls=ls,
                color=colors[kind],
                label=f"{LABELS[kind]} {what}",
            )
    ax.axhline(1, color="grey", ls=":")
    ax.set(xscale="symlog", xlabel="step", ylabel="log-log slope vs $\\pi_k$", title="slopes")
    ax.legend(fontsize=6)
    for ax in axes[0, :3]:
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.yaxis.set_minor_formatter(plt.NullFormatter())
    return fig


def ablations(ablation_traces: dict, abl_runs: dict, m: int, init_loss: float):
    """Loss per tier of GD and Adam+m in each ablation (first seed)."""
    tier_colors = plotting.palette(m)
    fig, axes = plotting.subplots(1, 4, width=2.6, height=2.3, sharey=True)
    panels = [(name, kind) for name in ablation_traces for kind in ("gd", "adam_m")]
    for ax, (name, kind) in zip(axes[0], panels):
        tr, r = ablation_traces[name][0], abl_runs[name, kind]
        for i in range(m):
            ax.plot(tr.steps, tr.group_loss[:, r, i], color=tier_colors[i])
        ax.plot(tr.steps, tr.loss[:, r], "k--", lw=1, label="overall")
        ax.set(title=f"{name}: {LABELS[kind]}", xlabel="step", ylim=(0, 1.6 * init_loss))
    axes[0, 0].set_ylabel("training loss (nats)")
    axes[0, 0].legend(fontsize=7)
    return fig


def bigram(lm: Trace, lm_sel: dict, groups: np.ndarray, counts: np.ndarray, n_groups: int):
    """Rank-frequency plot of the capped vocabulary and the loss per next-token group."""
    fig, axes = plotting.subplots(1, 5, width=2.5, height=2.4)
    ax, group_cols = axes[0, 0], plotting.palette(n_groups)
    rank, known = np.arange(1, len(counts)), counts[:-1]
    for gi in range(n_groups):
        ax.loglog(
            rank[groups[:-1] == gi], known[groups[:-1] == gi], ".", ms=2, color=group_cols[gi]
        )
    share = counts[-1] / counts.sum()
    ax.axhline(counts[-1], color="grey", ls=":", label=f"unknown ({share:.0%})")
    ax.set(xlabel="frequency rank", ylabel="count in text", title="capped vocabulary")
    ax.legend(fontsize=6)
    for ax, kind in zip(axes[0, 1:], lm_sel):
        r = lm_sel[kind]["run"]
        for gi in range(n_groups):
            ax.plot(lm.steps, lm.group_loss[:, r, gi], color=group_cols[gi])
        ax.plot(lm.steps, lm.group_loss[:, r, -1], color="grey", ls=":", label="unknown")
        ax.plot(lm.steps, lm.loss[:, r], "k--", lw=1, label="overall")
        ax.set(
            title=f"{LABELS[kind]} (lr $10^{{{lm_sel[kind]['exp']:+.1f}}}$)",
            xlabel="step",
            ylim=(0, 1.5 * np.log(len(counts))),
        )
    axes[0, 1].set_ylabel("loss on the whole text (nats)")
    axes[0, 1].legend(fontsize=6)
    return fig


def gd_step_sizes(trace: Trace, best_adam: int, budgets: Sequence[int], color, m: int):
    """GD at every step size of the main grid (overall and rarest tier; first seed), the
    Adam+m run chosen at the full budget dashed, the budgets dotted."""
    gd_runs = [i for i, k in enumerate(trace.kinds) if k == "gd"]
    cols = plotting.palette(len(gd_runs), "rocket")
    fig, axes = plotting.subplots(1, 2, width=3.6, height=2.8)
    for j, i in enumerate(gd_runs):
        lab = f"GD, lr $10^{{{np.log10(trace.lrs[i]):+.1f}}}$"
        axes[0, 0].plot(trace.steps, trace.loss[:, i], color=cols[j], label=lab)
        axes[0, 1].plot(trace.steps, trace.group_loss[:, i, -1], color=cols[j])
    for ax, vals in zip(axes[0], (trace.loss[:, best_adam], trace.group_loss[:, best_adam, -1])):
        ax.plot(trace.steps, vals, "--", color=color, label="Adam+m (chosen)")
        for bud in budgets:
            ax.axvline(bud, color="grey", lw=0.8, ls=":")
        ax.set(xscale="symlog", yscale="log", xlabel="step", xlim=(0, trace.steps[-1]))
    axes[0, 0].set(ylabel="training loss (nats)", title=f"m = {m}: overall")
    axes[0, 1].set(ylabel="rarest-tier loss (nats)", title="rarest tier")
    axes[0, 0].legend(fontsize=6)
    return fig


def rare_ratio(
    traces: Sequence[Trace],
    selections: dict,
    budgets: Sequence[int],
    num: str = "gd_m",
    den: str = "adam_m",
):
    """Rarest-tier loss of ``num`` over ``den`` along training, per seed, at the learning rates
    chosen for each budget: it grows without bound as Adam's loss goes to 0 (not drawn where
    Adam's loss is exactly 0)."""
    cols = plotting.palette(len(budgets), "rocket")
    fig, axes = plotting.subplots(1, 1, width=5.0, height=3.0)
    ax = axes[0, 0]
    for j, bud in enumerate(budgets):
        g, a = selections[bud][num]["run"], selections[bud][den]["run"]
        for s, t in enumerate(traces):
            top, bottom = t.group_loss[:, g, -1], t.group_loss[:, a, -1]
            ratio = np.full(top.shape, np.nan)  # undefined once Adam's loss is exactly 0
            np.divide(top, bottom, out=ratio, where=bottom > 0)
            lab = f"rates chosen at {bud} steps" if s == 0 else None
            ax.plot(t.steps, ratio, color=cols[j], lw=1, alpha=0.8, label=lab)
    ax.axhline(1, color="grey", ls=":")
    ax.set(
        xscale="symlog",
        yscale="log",
        xlim=(0, traces[0].steps[-1]),
        xlabel="step",
        ylabel=f"rarest-tier loss, {LABELS[num]} / {LABELS[den]}",
        title="Ratio of rarest-tier losses (one line per seed)",
    )
    ax.legend(fontsize=7)
    return fig


def cnn_groups(traces: Sequence[Trace], selections: dict, colors: dict, n_classes: Sequence[int]):
    """The paper's Fig. 3 on barcoded Fashion-MNIST, one row per budget (``selections``:
    budget -> chosen runs): overall training loss of every optimizer, then one panel per
    optimizer with the loss of the frequent and of the barcoded classes at the learning rate
    chosen for that budget (line: mean over seeds; band: seed range; dotted: the budget)."""
    budgets = list(selections)
    kinds = list(selections[budgets[0]])
    group_cols = plotting.palette(2)
    names = [f"{n_classes[0]} frequent classes", f"{n_classes[1]} barcoded classes"]
    init_loss = float(np.mean([t.loss[0, 0] for t in traces]))
    steps = traces[0].steps
    fig, axes = plotting.subplots(
        len(budgets), len(kinds) + 1, width=2.6, height=2.3, sharey=True, sharex=True
    )
    for row, budget in zip(axes, budgets):
        chosen = selections[budget]
        for kind in kinds:
            vals = np.stack([t.loss[:, chosen[kind]["run"]] for t in traces])
            row[0].fill_between(steps, vals.min(0), vals.max(0), color=colors[kind], alpha=0.2)
            row[0].plot(
                steps, vals.mean(0), color=colors[kind], ls=_style(kind), label=LABELS[kind]
            )
        row[0].set(title=f"overall (rates for {budget} steps)", ylim=(0, 1.6 * init_loss))
        row[0].set_ylabel("training loss (nats)")
        for ax, kind in zip(row[1:], kinds):
            r = chosen[kind]["run"]
            for g in range(2):
                vals = np.stack([t.group_loss[:, r, g] for t in traces])
                ax.fill_between(steps, vals.min(0), vals.max(0), color=group_cols[g], alpha=0.2)
                ax.plot(steps, vals.mean(0), color=group_cols[g], label=names[g])
            ax.set(title=f"{LABELS[kind]} (lr $10^{{{chosen[kind]['exp']:+.1f}}}$)")
        for ax in row:
            ax.axvline(budget, color="grey", lw=0.8, ls=":")
    axes[0, 0].legend(fontsize=7)
    axes[0, 1].legend(fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("step")
    return fig
