"""The chapter's figures, in the book's house style (lib.book.plotting). Each function draws
one figure from the results the notebook computed and returns it; the notebook shows it."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lib.book import plotting
from lib.chapters.differentiable_dp import smooth_dp as sd

REGS = ("entropy", "l2")
IMPLS = ("hard", "entropy", "l2", "entropy (torch)", "tslearn")


def exactness(tsl: pd.DataFrame, crf: dict):
    """Errors against tslearn's soft-DTW per gamma, and Vit_Omega against pytorch-crf's log Z."""
    fig, axes = plotting.subplots(1, 2, width=4.2, height=3.2)
    ax = axes[0, 0]
    tiny = 1e-17  # exact zeros drawn at the floor of the log axis
    pos = np.arange(len(tsl))
    cols = plotting.palette(2)
    ax.bar(pos - 0.2, np.maximum(tsl.value_rel_err, tiny), 0.4, color=cols[0], label="value (rel.)")
    ax.bar(pos + 0.2, np.maximum(tsl.grad_max_err, tiny), 0.4, color=cols[1], label="alignment")
    ax.set(
        yscale="log",
        xticks=pos,
        xticklabels=[f"{g:g}" for g in tsl.gamma],
        xlabel="smoothing $\\gamma$",
        ylabel="error vs tslearn soft-DTW",
        title="DTW, entropy",
    )
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    ax.scatter(crf["crf"].numpy(), crf["ours"].numpy(), s=18, color=cols[0])
    lim = [float(crf["crf"].min()) - 1, float(crf["crf"].max()) + 1]
    ax.plot(lim, lim, "--", color="grey", lw=1)
    ax.set(
        xlabel="log Z, pytorch-crf (nats)",
        ylabel="Vit$_\\Omega$, entropy, $\\gamma=1$ (nats)",
        title="Viterbi = CRF log-partition",
    )
    return fig


def bounds(fine, curves: dict, hard_one: float, table: pd.DataFrame, sizes: list[int]):
    """One instance's smoothed values against gamma with the bound bands, and the normalised
    gaps over all instances."""
    fig, axes = plotting.subplots(1, 3, width=3.6, height=3.0)
    fam = plotting.family_colors(list(REGS))
    ax = axes[0, 0]
    for reg in REGS:
        lo, hi = np.array([sd.dtw_bounds(20, 20, g, reg) for g in fine]).T
        ax.fill_between(fine, hard_one + lo, hard_one + hi, color=fam[reg], alpha=0.2, lw=0)
        ax.plot(fine, curves[reg], color=fam[reg], label=f"{reg} (band: bound)")
    ax.axhline(hard_one, color="k", lw=1, ls="--", label="hard DTW")
    ax.set(
        xscale="log",
        xlabel="smoothing $\\gamma$",
        ylabel="DTW$_\\Omega(-D)$ (squared distance units)",
        title="one 20x20 instance",
    )
    ax.legend(fontsize=7)
    pal = dict(zip(sizes, plotting.palette(len(sizes))))
    for ax, problem in zip(axes[0, 1:], ("DTW", "Viterbi")):
        for (reg, size), grp in table[table.problem == problem].groupby(["reg", "size"]):
            scale = grp.gamma * (2 * size - 1 if problem == "DTW" else size)
            style = "-" if reg == "entropy" else ":"
            ax.plot(grp.gamma, grp.gap_max / scale, style, marker="o", ms=3, color=pal[size],
                    label=f"{reg}, size {size}")  # fmt: skip
            ax.plot(grp.gamma, grp.gap_min / scale, style, marker="v", ms=3, color=pal[size])
        top = np.log(3) if problem == "DTW" else np.log(8)
        for level in (top, 0.0, -0.5):
            ax.axhline(level, color="grey", lw=0.8, ls="--")
        ax.set(
            xscale="log",
            xlabel="smoothing $\\gamma$",
            ylabel="(smoothed - hard) / ($\\gamma$ x path nodes)",
            title=f"{problem}: min and max over instances",
        )
    axes[0, 2].legend(fontsize=6, ncol=2)
    return fig


def alignments(aligns: dict, show_g: list[float]):
    """The alignment matrices of one pair, per regulariser and gamma; exact zeros in white."""
    fig, axes = plotting.subplots(2, 3, width=2.6, height=2.4, sharex=True, sharey=True)
    for r, reg in enumerate(REGS):
        for c, g in enumerate(show_g):
            a = aligns[(reg, g)].numpy()
            ax = axes[r, c]
            ax.imshow(np.ma.masked_where(a <= 0, a), cmap="viridis", vmin=0, vmax=1, aspect="auto")
            ax.set(
                title=f"{reg}, $\\gamma$={g:g}: {np.mean(a > 0):.1%} non-zero",
                xlabel="time step of y",
                ylabel="time step of x",
            )
            ax.title.set_fontsize(8)
    return fig


def densities(dens: pd.DataFrame):
    """Fraction of exact non-zeros against gamma, DTW alignments and Viterbi marginals."""
    fig, axes = plotting.subplots(1, 2, width=3.6, height=2.8)
    fam = plotting.family_colors(list(REGS))
    for ax, col in zip(axes[0], ("DTW alignment", "Viterbi unary marginals")):
        for reg in REGS:
            d = dens[dens.reg == reg]
            ax.plot(d.gamma, d[col], "o-", ms=3, color=fam[reg], label=reg)
        ax.set(xscale="log", xlabel="smoothing $\\gamma$", ylabel="fraction of non-zero entries",
               title=col)  # fmt: skip
        ax.legend(fontsize=7)
    return fig


def cost(rows: pd.DataFrame):
    """Time of value + gradient against cells (log-log), and throughput against length."""
    fig, axes = plotting.subplots(1, 2, width=3.8, height=3.0)
    impl = plotting.family_colors(list(IMPLS))
    ax = axes[0, 0]
    for k in IMPLS:
        label = k if k in ("tslearn", "entropy (torch)") else f"{k} (kernel)"
        ax.loglog(rows.cells, rows[k], "o-", ms=3, color=impl[k], label=label)
    ref = rows.entropy.iloc[-1] * rows.cells / rows.cells.iloc[-1]
    ax.loglog(rows.cells, ref, "--", color="grey", lw=1, label="slope 1")
    ax.set(xlabel="cells per call (batch x n x m)", ylabel="time, value + gradient (s)")
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    for k in IMPLS:
        ax.plot(rows.L, rows.cells / rows[k] / 1e6, "o-", ms=3, color=impl[k], label=k)
    ax.set(xscale="log", xlabel="series length L (n = m)", ylabel="throughput (million cells / s)")
    ax.legend(fontsize=7)
    return fig


def barycenters(bary: dict, x_tr, y_tr, stride: int):
    """Training series of each Trace class in grey with the centroids of every method."""
    classes = np.unique(y_tr)
    fig, axes = plotting.subplots(1, len(classes), width=2.6, height=2.4, sharey=True)
    meth = plotting.family_colors(list(bary))
    for c, ax in enumerate(axes[0]):
        for s in x_tr[y_tr == classes[c]][:, :, 0]:
            ax.plot(s.numpy(), color="lightgrey", lw=0.5)
        for name, res in bary.items():
            ax.plot(res["centroids"][c, :, 0].numpy(), color=meth[name], lw=1.5, label=name)
        ax.set(title=f"class {classes[c]}", xlabel=f"time step (x{stride})")
    axes[0, 0].set_ylabel("normalised signal (a.u.)")
    axes[0, -1].legend(fontsize=6)
    return fig


def tagging(tag_runs: dict, nonzero: dict):
    """Test accuracy per epoch (seed mean, min-max band) and the tag marginals' density."""
    fig, axes = plotting.subplots(1, 2, width=3.8, height=3.0)
    col = plotting.family_colors(list(tag_runs))
    ax = axes[0, 0]
    for k, runs in tag_runs.items():
        curve = 100 * np.array([r["acc"] for r in runs])
        ep = np.arange(1, curve.shape[1] + 1)
        ax.plot(ep, curve.mean(0), "o-", ms=3, color=col[k], label=k)
        ax.fill_between(ep, curve.min(0), curve.max(0), color=col[k], alpha=0.2, lw=0)
    ax.set(xlabel="epoch", ylabel="test token accuracy (%)", title="UD English POS")
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    ax.bar(list(nonzero), list(nonzero.values()), color=[col[k] for k in nonzero])
    ax.set(ylabel="fraction of non-zero tag marginals", title="marginal sparsity on test")
    return fig


def alignment(res: dict, piece_idx: int = 0):
    """Onset errors per method (seed means, with each seed as a dot) against the uniform-tempo
    null, and one test piece: the true note of every frame."""
    errors, null = res["errors"], res["null"]
    fig, axes = plotting.subplots(1, 2, width=3.8, height=3.0)
    col = plotting.family_colors(list(errors))
    ax = axes[0, 0]
    for i, (k, e) in enumerate(errors.items()):
        per_seed = e.mean(1)
        ax.bar(i, per_seed.mean(), color=col[k], alpha=0.7)
        ax.scatter(np.full(len(per_seed), i), per_seed, color="black", s=8, zorder=3)
    ax.axhline(null.mean(), ls="--", color="grey", lw=1, label="uniform tempo")
    ax.set(
        xticks=range(len(errors)),
        xticklabels=list(errors),
        ylabel="mean onset error (frames)",
        title="test pieces",
    )
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    p = res["test"][piece_idx]
    ax.imshow(p.frames.numpy().T, aspect="auto", cmap="coolwarm", interpolation="nearest")
    onsets = np.searchsorted(p.note_of_frame.numpy(), np.arange(len(p.pitches)))
    for t in onsets:
        ax.axvline(t - 0.5, color="black", lw=0.6)
    ax.set(xlabel="frame", ylabel="feature", title="one performance, true onsets")
    return fig


def attention_maps(runs: dict):
    """The first test sequence's attention map (output x input position) of each kind, seed 0."""
    fig, axes = plotting.subplots(1, len(runs), width=2.6, height=2.6)
    for ax, (kind, rs) in zip(axes[0], runs.items()):
        a = rs[0]["example"]
        ax.imshow(np.where(a > 0, a, np.nan), cmap="viridis", vmin=0, vmax=1, aspect="auto")
        title = kind if kind == "softmax" else f"DTW, {kind}"
        ax.set(title=title, xlabel="input position", ylabel="output position")
    return fig
