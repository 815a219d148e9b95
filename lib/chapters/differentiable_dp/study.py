"""The chapter's estimates: per-item results of smooth_dp and tagger turned into the numbers
its records carry, with their intervals (lib.book.stats), and the text that quotes verdicts.

Every interval here is a bootstrap over the items the result is measured on: random-walk
pairs (sparsity), Trace series (barycenters) or test sentences (tagger, tokens grouped by
sentence), and over seeds where there are several. Arms scored on the same items are paired.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lib.book import stats
from lib.book.stats import Estimate
from lib.chapters.differentiable_dp import smooth_dp as sd

STRUCTURED = ("entropy", "l2")


# ---------------------------------------------------------------------------- sparsity
def alignment_sparsity(cost, gamma: float, reg: str) -> Estimate:
    """Mean fraction of exact non-zeros of the DTW_Omega alignment over the pairs of ``cost``
    (B, n, m), with a bootstrap interval over the pairs (one data draw, so one "seed")."""
    return stats.bootstrap_items(sd.alignment_nonzeros(-cost, gamma, reg)[None])


def l2_never_denser(dens: pd.DataFrame) -> bool:
    """Whether l2's density is at most entropy's at every gamma of the grid, in every column
    (DTW alignments and Viterbi marginals) of the density table."""
    cols = [c for c in dens.columns if c not in ("gamma", "reg")]
    l2 = dens[dens.reg == "l2"].set_index("gamma")[cols]
    ent = dens[dens.reg == "entropy"].set_index("gamma")[cols]
    return bool((l2 <= ent).to_numpy().all())


# ---------------------------------------------------------------------------- barycenters
def barycenters_descend(bary: dict[str, dict]) -> bool:
    """Whether L-BFGS ended at or below its start (the Euclidean mean) for every class and
    both regularisers: the optimiser did its job."""
    return all(
        end <= start
        for res in bary.values()
        if res["objective"] is not None
        for start, end in res["objective"]
    )


def inertia_ratio(bary: dict[str, dict], name: str, ref: str = "Euclidean mean") -> Estimate:
    """DTW inertia of ``name``'s centroids over ``ref``'s (a ratio of means over the same
    training series), with a paired bootstrap over the series."""
    rows = np.stack([bary[name]["own"], bary[ref]["own"]], 1)
    est = stats.bootstrap_statistic(rows, lambda r: r[:, 0].mean() / r[:, 1].mean())
    return Estimate(est.value, est.ci, 1, est.method + " (paired training series)")


def accuracy_gain(bary: dict[str, dict], name: str, ref: str = "Euclidean mean") -> Estimate:
    """Nearest-centroid test accuracy of ``name`` minus ``ref``, paired over test series."""
    return stats.bootstrap_items(bary[name]["correct"][None], bary[ref]["correct"][None])


# ---------------------------------------------------------------------------- tagger
def correct(tag_runs: dict[str, list[dict]], kind: str) -> np.ndarray:
    """Per-token correctness of one loss, seeds x test tokens."""
    return np.stack([r["correct"] for r in tag_runs[kind]]).astype(float)


def final_accuracy(tag_runs: dict[str, list[dict]]) -> dict[str, np.ndarray]:
    """Final test accuracy per loss and seed."""
    return {k: correct(tag_runs, k).mean(1) for k in tag_runs}


def tag_difference(tag_runs: dict[str, list[dict]], a: str, b: str, groups) -> Estimate:
    """Test accuracy of loss ``a`` minus ``b`` in points, paired on the same tokens and seed
    index, with a bootstrap over seeds and over test sentences (tokens grouped)."""
    diff = 100 * (correct(tag_runs, a) - correct(tag_runs, b))
    est = stats.bootstrap_groups(diff, groups)
    return Estimate(est.value, est.ci, est.n_seeds, "paired difference, " + est.method)


def tag_marginal_density(tag_runs: dict[str, list[dict]], kind: str, groups) -> Estimate:
    """Fraction of the tags with an exactly non-zero marginal, per test token, averaged over
    tokens and seeds, with a bootstrap over seeds and sentences."""
    return stats.bootstrap_groups(np.stack([r["nonzeros"] for r in tag_runs[kind]]), groups)


def last_epoch_change(tag_runs: dict[str, list[dict]]) -> float:
    """Largest change, in points, of the seed-mean test accuracy over the last epoch among
    the structured losses (with one epoch, the change from the untrained model)."""
    changes = []
    for kind in STRUCTURED:
        curves = np.array([[r["acc0"], *r["acc"]] for r in tag_runs[kind]])
        changes.append(abs(100 * (curves[:, -1] - curves[:, -2]).mean()))
    return float(max(changes))


def majority_margin(tag_runs: dict[str, list[dict]], train_sents, test_sents) -> float:
    """Lowest final accuracy over structured losses and seeds minus the accuracy of always
    predicting the most frequent training tag, in points (a collapsed arm gives about 0)."""
    tags = [t for _, ts in train_sents for t in ts]
    top = max(set(tags), key=tags.count)
    base = np.mean([t == top for _, ts in test_sents for t in ts])
    acc = final_accuracy(tag_runs)
    return float(100 * (min(acc[k].min() for k in STRUCTURED) - base))


# ---------------------------------------------------------------------------- alignment
def align_difference(res: dict, kind: str, ref: str = "baseline") -> Estimate:
    """Mean onset error (frames) of ``kind`` minus ``ref``, paired on the same test pieces and
    seed index, with a bootstrap over seeds and pieces."""
    return stats.bootstrap_items(res["errors"][kind], res["errors"][ref])


def align_learned(res: dict) -> float:
    """Largest seed-mean onset error of any trained arm over the uniform-tempo null's (1 = no
    better than assuming a constant tempo)."""
    worst = max(float(e.mean(1).max()) for e in res["errors"].values())
    return worst / float(res["null"].mean())


def kernel_agreement(rng: np.random.Generator) -> float:
    """Largest absolute difference of value and gradient between the compiled kernel and the
    torch recursion, all three regularisers, random grids (4 pairs, 17 x 23, float64)."""
    import torch

    theta = -sd.sq_dists(sd.random_walks(rng, 4, 17, 2), sd.random_walks(rng, 4, 23, 2))
    theta = theta / theta.abs().mean()
    worst = 0.0
    for reg in sd.REGS:
        v_t, g_t = sd.dtw_value_and_grad(theta, 0.5, reg, backend="torch")
        v_n, g_n = sd.dtw_value_and_grad(theta, 0.5, reg, backend="numba")
        worst = max(worst, float(torch.max((v_t - v_n).abs().max(), (g_t - g_n).abs().max())))
    return worst


# ---------------------------------------------------------------------------- attention
def attn_l2_density(runs: dict) -> Estimate:
    """Fraction of exact non-zeros of the l2 DTW attention maps, per test sequence, with a
    bootstrap over seeds and sequences."""
    from lib.chapters.differentiable_dp import attention

    return stats.bootstrap_items(attention.per_item(runs, "l2", "nonzeros"))


def attn_difference(runs: dict, a: str, b: str) -> Estimate:
    """Token accuracy of ``a`` minus ``b`` in points, paired on test sequences and seed index."""
    from lib.chapters.differentiable_dp import attention

    acc = {k: 100 * attention.per_item(runs, k, "token_acc") for k in (a, b)}
    return stats.bootstrap_items(acc[a], acc[b])


def attn_lowest_accuracy(runs: dict) -> float:
    """Lowest mean test token accuracy over kinds and seeds."""
    return float(min(r["token_acc"].mean() for rs in runs.values() for r in rs))


# ---------------------------------------------------------------------------- prose
def verdict_phrase(findings: list[dict], name: str) -> str:
    """'verdict' of a recorded finding, with its estimate and interval, for glued prose."""
    r = next(f for f in findings if f["name"] == name)
    ci = "" if r["ci"] is None else f" [{r['ci'][0]:.3g}, {r['ci'][1]:.3g}]"
    return f"**{r['verdict']}** ({r['value']:.3g}{ci})"


def summary_texts(findings: list[dict]) -> dict[str, str]:
    """The glued Markdown snippets of the chapter's prose, each quoting recorded verdicts."""
    bary = [
        ("DTW inertia ratio", "bary_inertia_ratio"),
        ("accuracy gain", "bary_accuracy_soft_minus_euclid"),
    ]
    return {
        "headline_verdict": verdict_phrase(findings, "l2_alignment_sparse"),
        "tag_sparse": verdict_phrase(findings, "tag_l2_marginals_sparse"),
        "tag_summary": verdict_phrase(findings, "tag_l2_minus_entropy"),
        "bary_summary": ", ".join(f"{w} {verdict_phrase(findings, n)}" for w, n in bary),
        "align_summary": ", ".join(
            f"{w} {verdict_phrase(findings, n)}"
            for w, n in (
                ("negentropy", "align_entropy_minus_baseline"),
                ("squared l2", "align_l2_minus_baseline"),
            )
        ),
        "attn_summary": (
            f"l2 attention non-zeros {verdict_phrase(findings, 'attn_l2_sparse')}, "
            "accuracy l2 minus softmax (points) "
            + verdict_phrase(findings, "attn_l2_minus_softmax")
        ),
    }
