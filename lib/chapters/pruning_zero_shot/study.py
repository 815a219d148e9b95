"""The chapter's study. Per seed: a dense English fine-tune on EWT train (cached, shared
through :func:`lib.core.pos_transfer.cached_dense_finetune`), then one pruning run that passes
through every sparsity with a recovery plateau at each (:mod:`.schedule`), evaluated per
sentence at the end of each plateau. At the key sparsity, arms branch from the run's state
before that stage: the alignment regularizers (:mod:`.regularizers`, lambda chosen on English
dev from a grid) and the other pruning criteria; and a same-budget dense control (the dense
tagger trained on, unpruned, for the steps the pruning run takes to the key). Then the
statistics: absolute, relative and headroom-normalised drops with a two-level bootstrap over
seeds and test sentences, paired across arms (every arm tags the same sentences).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy import stats as st

from lib.book import repro, stats
from lib.chapters.pruning_zero_shot import regularizers
from lib.chapters.pruning_zero_shot.schedule import Pruner, Stage, run_stage
from lib.core import pruning
from lib.core.pos_transfer import (
    IGNORE,
    TAG_ID,
    Tagger,
    TrainConfig,
    TransferData,
    baseline_accuracy,
    cached_dense_finetune,
    evaluate_items,
    majority_tag,
    pairwise_retrieval_hits,
    prepare_transfer,
    reset_tagger,
    subword_overlap,
    trainable_state,
)
from lib.core.transfer_scores import paired_bootstrap

PUD = ("ar", "hi", "it")  # the parallel treebanks (same sentences, same order)
CACHE_VERSION = 3  # bump when the training code changes what a cached dense model would contain
DENSE = ("plain", 0.0)  # the dense fine-tuned model every drop is measured against
SAME_BUDGET = ("same_budget", 0.0)  # dense, trained on for the pruning run's steps to the key
FLOOR = ("majority", 0.0)  # pseudo-arm: the majority English tag, per sentence
AXES = {  # the pruning-criterion arms: (criterion, layer-wise)
    "random": ("random", False),
    "layerwise": ("magnitude", True),
}


StudyData = TransferData  # the shared harness's data: English train/dev, test per language
prepare = prepare_transfer


def stages(levels: list[float], ramp: int, plateau: int) -> list[Stage]:
    """The schedule: each level in increasing order, ramp then plateau."""
    if sorted(levels) != list(levels) or not all(0 < s < 1 for s in levels):
        raise ValueError(f"levels must increase strictly inside (0, 1), got {levels}")
    return [Stage(s, ramp, plateau) for s in levels]


def check_design(levels: list[float], key: float, adequacy_level: float) -> None:
    """The key sparsity (where the arms branch) and the adequacy level must be levels."""
    for name, x in (("key_sparsity", key), ("adequacy_sparsity", adequacy_level)):
        if not any(math.isclose(s, x) for s in levels):
            raise ValueError(f"{name} {x} must be one of the levels {levels}")


def language_table(d: StudyData, tok) -> pd.DataFrame:
    """Per language: evaluated sentences and words, the two baselines (majority tag; most
    frequent tag of the word in English training), subword overlap with English training text."""
    rows = []
    specials = (tok.bos, tok.eos, tok.pad, tok.unk)
    for lang, ex in d.test.items():
        b = baseline_accuracy(d.raw_train, d.raw_test[lang])
        rows.append(
            {
                "lang": lang,
                "sentences": len(ex),
                "words": sum(sum(y != IGNORE for y in ys) for _, ys in ex),
                "majority": b["majority"],
                "word_lookup": b["word_lookup"],
                "overlap": subword_overlap(ex, d.train, specials),
            }
        )
    return pd.DataFrame(rows).set_index("lang")


def floor_items(d: StudyData) -> dict[str, np.ndarray]:
    """Per test sentence of each language, the tagged words whose gold tag is the majority
    English training tag (the majority-tag floor, scored on the same words as the tagger)."""
    maj = TAG_ID[majority_tag(d.raw_train)]
    return {
        lang: np.array([float(sum(y == maj for y in ys)) for _, ys in ex])
        for lang, ex in d.test.items()
    }


def evaluation_precision(device, bf16: bool, native: bool | None = None):
    """The context of every evaluation: bfloat16 autocast when ``bf16`` and the device computes
    bfloat16 natively (a GPU, or a CPU with AVX-512 BF16 or AMX: ``native``, read from the
    machine when None), else nothing (training stays float32). On a CPU without it, bfloat16
    is emulated and several times slower than float32."""
    dev = torch.device(device).type
    if native is None:
        native = dev != "cpu" or repro.native_bf16()
    return torch.autocast(dev, dtype=torch.bfloat16, enabled=bf16 and native)


def evaluate_all(
    tagger: Tagger, d: StudyData, pad: int, device, batch_size: int = 32, bf16: bool = False
):
    """Accuracy per language and PUD retrieval accuracy, and the per-sentence scores behind
    them: ``correct`` {lang: tags right per sentence} and ``retrieval`` (hits per PUD sentence,
    averaged over language pairs and directions). Batches of 32 length-sorted sentences: at
    one thread they ran 10 % faster than 64 and 25 % faster than 128 (measured on zh).
    ``bf16``: under bfloat16 autocast (:func:`evaluation_precision`)."""
    row, correct, vecs = {}, {}, {}
    for lang, ex in d.test.items():
        with evaluation_precision(device, bf16):
            out = evaluate_items(tagger, ex, pad, batch_size=batch_size, device=device)
        correct[lang] = out["correct"]
        row[f"acc_{lang}"] = float(out["correct"].sum() / max(out["words"].sum(), 1))
        if lang in PUD:
            vecs[lang] = out["pooled"]
    hits = pairwise_retrieval_hits(vecs) if len(vecs) >= 2 else np.zeros(0)
    row["retrieval"] = float(hits.mean()) if len(hits) else float("nan")
    return row, {"correct": correct, "retrieval": hits}


def dev_accuracy(tagger: Tagger, d: StudyData, pad: int, device, bf16: bool = False) -> float:
    """English dev accuracy (what lambda is chosen on)."""
    with evaluation_precision(device, bf16):
        out = evaluate_items(tagger, d.dev, pad, batch_size=32, device=device)
    return float(out["correct"].sum() / max(out["words"].sum(), 1))


def frozen_copy(tagger: Tagger) -> Tagger:
    """A frozen copy in eval mode (the dense teacher of the activation terms)."""
    teacher = copy.deepcopy(tagger)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


def encoder_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The prunable matrices of a tagger state, named as in the encoder's prunable weights."""
    pre = "encoder."
    return {
        k[len(pre) :]: v.detach().clone()
        for k, v in state.items()
        if k.startswith(pre + "encoder.layer.") and v.dim() == 2
    }


def stationarity_at_pruning(tagger: Tagger, sparsity: float, ref: dict) -> dict[str, float]:
    """Gradient norm of each weight term at the moment of pruning the dense fine-tuned tagger
    (its current weights) to ``sparsity``: the frozen fine-tuned reference gives zero (the
    masked weights are already its optimum on the surviving entries), the pretrained one not."""
    w = pruning.prunable_weights(tagger.encoder)
    masks = pruning.global_masks(w, sparsity)
    dense = {n: p.detach().clone() for n, p in w.items()}
    out = {}
    for name, reference in (("w_cos", dense), ("w_frob", dense), ("pre_cos", ref)):
        x = {n: p.detach().clone().requires_grad_(True) for n, p in w.items()}
        fn = regularizers.relative_frobenius if name == "w_frob" else regularizers.unit_cosine
        grads = torch.autograd.grad(fn(x, reference, masks), list(x.values()))
        out[name] = float(torch.sqrt(sum((g**2).sum() for g in grads)))
    return out


def stage_seed(seed: int, k: int) -> int:
    """The data-order seed of stage ``k`` of seed ``seed`` (shared by every arm of that stage)."""
    return 1000 * (seed + 1) + k


@dataclass
class Design:
    """What one seed runs (the chapter's parameters, gathered)."""

    levels: list[float]
    ramp: int
    plateau: int
    key: float
    lr: float
    batch_size: int
    every: int
    grids: dict[str, list[float]]  # regularizer -> its lambda grid (empty: arm off)
    axes: list[str]  # pruning-criterion arms at the key stage
    eval_bf16: bool = False  # evaluate under bfloat16 autocast

    @property
    def schedule(self) -> list[Stage]:
        return stages(self.levels, self.ramp, self.plateau)

    @property
    def key_stage(self) -> int:
        return next(k for k, s in enumerate(self.levels) if math.isclose(s, self.key))


def branch_arm(
    tagger: Tagger,
    branch: dict,
    d: StudyData,
    des: Design,
    seed: int,
    pad: int,
    device,
    *,
    reg=None,
    lam: float = 0.0,
    all_layers: bool = False,
    criterion: str = "magnitude",
    layerwise: bool = False,
) -> tuple[Pruner, dict]:
    """The key stage again from the run's state before it (weights and masks), with a
    regularizer or another pruning criterion; the same batches as the plain run's stage."""
    tagger.load_state_dict(branch["state"], strict=False)
    masks = {n: m.clone() for n, m in branch["masks"].items()}
    pruner = Pruner(tagger.encoder, criterion, layerwise, seed=seed, masks=masks)
    k = des.key_stage
    log = run_stage(
        tagger,
        pruner,
        d.train,
        branch["start"],
        des.schedule[k],
        lr=des.lr,
        batch_size=des.batch_size,
        seed=stage_seed(seed, k),
        pad=pad,
        every=des.every,
        reg=reg,
        lam=lam,
        all_layers=all_layers,
        device=device,
    )
    return pruner, log


def same_budget(tagger: Tagger, dense_state: dict, d: StudyData, des: Design, seed, pad, device):
    """The same-budget dense control: from the dense tagger, every stage up to and including
    the key one again (same batches, learning rate and steps as the pruning run), with
    nothing pruned. Returns the stages' logs."""
    tagger.load_state_dict(dense_state, strict=False)
    unpruned = Pruner(tagger.encoder)  # all-ones masks, target 0: never prunes
    logs = []
    for k in range(des.key_stage + 1):
        st = des.schedule[k]
        logs.append(
            run_stage(
                tagger,
                unpruned,
                d.train,
                0.0,
                Stage(0.0, st.ramp, st.plateau),
                lr=des.lr,
                batch_size=des.batch_size,
                seed=stage_seed(seed, k),
                pad=pad,
                every=des.every,
                device=device,
            )
        )
    if unpruned.mask_sparsity() != 0.0:
        raise RuntimeError("the same-budget dense control pruned weights")
    return logs


def sparsity_row(arm: str, level: float, seed: int, pruner: Pruner, log: dict, des: Design):
    """Bookkeeping of one evaluated stage: targets, masks and exact zeros."""
    held = log["target"][des.ramp :]
    return {
        "arm": arm,
        "sparsity": level,
        "seed": seed,
        "mask_sparsity": pruner.mask_sparsity(),
        "zeros": pruner.zero_fraction(),
        "plateau_steps_at_level": int(sum(math.isclose(t, level) for t in held)),
        "plateau_off_level": float(max((abs(t - level) for t in held), default=0.0)),
        "final_ce": float(np.mean(log["ce"][-10:])),
        "train_s": log["seconds"],
    }


def run_seed(
    tagger: Tagger,
    pretrained: dict,
    d: StudyData,
    des: Design,
    seed: int,
    dense_cfg: TrainConfig,
    key: dict,
    pad: int,
    device,
    lams: dict[str, float] | None = None,
    use_cache: bool = True,
) -> dict:
    """Everything one seed runs. ``lams`` fixes each regularizer's lambda; None chooses it
    here on English dev from its grid (the first seed). Returns ``items`` {(arm, sparsity,
    seed): per-sentence scores}, ``rows`` (bookkeeping), ``dev`` {(regularizer, lambda): dev
    accuracy}, ``lams`` (the lambdas used) and ``stationary`` (weight-term gradient norms at the
    moment of pruning the dense model to the key sparsity)."""
    t0 = time.perf_counter()
    reset_tagger(tagger, pretrained, seed)
    cfg = TrainConfig(**{**dense_cfg.__dict__, "seed": seed})
    dense_state, dlog = cached_dense_finetune(
        tagger, d.train, cfg, pad, key, space="pos_transfer", device=device, use_cache=use_cache
    )
    items, rows, dev = {}, [], {}
    row, items[(*DENSE, seed)] = evaluate_all(tagger, d, pad, device, bf16=des.eval_bf16)
    dense_dev = dev_accuracy(tagger, d, pad, device, des.eval_bf16)
    pre_ref = encoder_weights(pretrained)
    dense_ref = encoder_weights(dense_state)
    stationary = stationarity_at_pruning(tagger, des.key, pre_ref)
    teacher = (
        frozen_copy(tagger) if any(k in regularizers.ACTIVATION_TERMS for k in des.grids) else None
    )
    how = "loaded" if dlog["cached"] else f"trained in {dlog['seconds']:.0f} s"
    print(f"seed {seed}: dense ({how}) en {row['acc_en']:.3f}, dev {dense_dev:.3f}")
    pruner, start, branch = Pruner(tagger.encoder), 0.0, None
    for k, stage in enumerate(des.schedule):
        if k == des.key_stage:
            branch = {
                "state": trainable_state(tagger),
                "masks": {n: m.clone() for n, m in pruner.masks.items()},
                "start": start,
            }
        log = run_stage(
            tagger,
            pruner,
            d.train,
            start,
            stage,
            lr=des.lr,
            batch_size=des.batch_size,
            seed=stage_seed(seed, k),
            pad=pad,
            every=des.every,
            device=device,
        )
        rows.append(sparsity_row("plain", stage.target, seed, pruner, log, des))
        r, items[("plain", stage.target, seed)] = evaluate_all(
            tagger, d, pad, device, bf16=des.eval_bf16
        )
        if k == des.key_stage:
            dev[("plain", 0.0)] = dev_accuracy(tagger, d, pad, device, des.eval_bf16)
        start = stage.target
        print(
            f"  plain {stage.target:.2f}: en {r['acc_en']:.3f}, zero-shot mean "
            f"{np.mean([v for x, v in r.items() if x.startswith('acc_') and x != 'acc_en']):.3f}"
        )
    chosen = dict(lams or {})
    for kind, grid in des.grids.items():
        reg = regularizers.make(kind, dense_ref, pre_ref, teacher)
        run = {"reg": reg, "all_layers": regularizers.needs_all_layers(kind)}
        if kind in chosen:
            pruner, log = branch_arm(
                tagger, branch, d, des, seed, pad, device, lam=chosen[kind], **run
            )
        else:
            best = None
            for lam in grid:
                pruner, log = branch_arm(tagger, branch, d, des, seed, pad, device, lam=lam, **run)
                dev[(kind, lam)] = dev_accuracy(tagger, d, pad, device, des.eval_bf16)
                if best is None or dev[(kind, lam)] > best[0]:
                    best = (dev[(kind, lam)], lam, trainable_state(tagger), pruner, log)
            _, chosen[kind], state, pruner, log = best
            tagger.load_state_dict(state, strict=False)
        rows.append(sparsity_row(kind, des.key, seed, pruner, log, des))
        rows[-1]["reg_first"] = log["reg"][0] if log["reg"] else 0.0
        _, items[(kind, des.key, seed)] = evaluate_all(tagger, d, pad, device, bf16=des.eval_bf16)
    for axis in des.axes:
        criterion, layerwise = AXES[axis]
        pruner, log = branch_arm(
            tagger, branch, d, des, seed, pad, device, criterion=criterion, layerwise=layerwise
        )
        rows.append(sparsity_row(axis, des.key, seed, pruner, log, des))
        _, items[(axis, des.key, seed)] = evaluate_all(tagger, d, pad, device, bf16=des.eval_bf16)
    same_budget(tagger, dense_state, d, des, seed, pad, device)
    r, items[(*SAME_BUDGET, seed)] = evaluate_all(tagger, d, pad, device, bf16=des.eval_bf16)
    print(f"  same-budget dense: en {r['acc_en']:.3f}")
    floor = floor_items(d)
    items[(*FLOOR, seed)] = {
        "correct": floor,
        "retrieval": np.zeros_like(items[(*DENSE, seed)]["retrieval"]),
    }
    print(f"  seed {seed} done in {time.perf_counter() - t0:.0f} s")
    return {
        "items": items,
        "rows": rows,
        "dev": dev,
        "lams": chosen,
        "stationary": stationary,
        "dense_dev": dense_dev,
    }


def run_all(tagger, pretrained, d, des, seeds, dense_cfg, key, pad, device, use_cache=True):
    """Every seed; lambda chosen on the first seed's English dev and kept for the others.
    Returns (items, bookkeeping table, dev table, chosen lambdas, stationarity table)."""
    items, rows, dev, stat, lams = {}, [], [], [], None
    for s in seeds:
        out = run_seed(tagger, pretrained, d, des, s, dense_cfg, key, pad, device, lams, use_cache)
        items.update(out["items"])
        rows += out["rows"]
        dev += [
            {"seed": s, "arm": a, "lam": lam, "dev_acc": v} for (a, lam), v in out["dev"].items()
        ]
        dev.append({"seed": s, "arm": "dense", "lam": 0.0, "dev_acc": out["dense_dev"]})
        stat.append({"seed": s, **out["stationary"]})
        lams = out["lams"]
    return items, pd.DataFrame(rows), pd.DataFrame(dev), lams, pd.DataFrame(stat)


def at_grid_edge(lams: dict[str, float], grids: dict[str, list[float]]) -> dict[str, str | None]:
    """For each regularizer, why its chosen lambda cannot settle the question (None if it can):
    a choice at either end of its grid means the best value may lie outside it."""
    out = {}
    for kind, lam in lams.items():
        g = sorted(grids[kind])
        edge = len(g) < 3 or math.isclose(lam, g[0]) or math.isclose(lam, g[-1])
        out[kind] = f"lambda {lam:g} at the edge of its grid {g}" if edge else None
    return out


# ----------------------------------------------------------------------- statistics


@dataclass
class Scores:
    """Per-sentence tags right, stacked: ``correct[lang]`` is seeds x arms x sentences,
    ``words[lang]`` the tagged words per sentence, ``retrieval`` arms-keyed seeds x sentences.
    ``arms`` lists (arm, sparsity); ``langs`` puts English first."""

    arms: list[tuple[str, float]]
    seeds: list[int]
    langs: list[str]
    correct: dict[str, np.ndarray]
    words: dict[str, np.ndarray]
    retrieval: dict[tuple[str, float], np.ndarray]

    @classmethod
    def from_items(cls, items: dict, d: StudyData) -> Scores:
        arms = sorted({(a, s) for a, s, _ in items}, key=lambda x: (x[0] != "plain", x[0], x[1]))
        seeds = sorted({sd for _, _, sd in items})
        langs = list(d.test)
        correct = {
            lang: np.array([[items[(a, s, sd)]["correct"][lang] for a, s in arms] for sd in seeds])
            for lang in langs
        }
        words = {
            lang: np.array([sum(y != IGNORE for y in ys) for _, ys in ex])
            for lang, ex in d.test.items()
        }
        retrieval = {
            (a, s): np.array([items[(a, s, sd)]["retrieval"] for sd in seeds]) for a, s in arms
        }
        return cls(arms, seeds, langs, correct, words, retrieval)

    def arm(self, name: str, sparsity: float) -> int:
        """Column of an arm in the accuracy arrays."""
        for i, (a, s) in enumerate(self.arms):
            if a == name and math.isclose(s, sparsity):
                return i
        raise KeyError(f"no arm {name!r} at sparsity {sparsity}")

    @property
    def plain_levels(self) -> list[float]:
        return [s for a, s in self.arms if a == "plain"]

    def accuracy(self) -> np.ndarray:
        """Accuracy, 1 x seeds x arms x languages (the point estimate's layout)."""
        acc = [self.correct[lang].sum(-1) / self.words[lang].sum() for lang in self.langs]
        return np.stack(acc, -1)[None]

    def bootstrap(self, n_boot: int = stats.N_BOOT, seed: int = 0) -> np.ndarray:
        """Resampled accuracy, n_boot x seeds x arms x languages: each replicate draws the test
        sentences of every language with replacement (the same draw for every seed and arm:
        paired), then the seeds with replacement."""
        return paired_bootstrap(self.correct, self.words, self.langs, n_boot, seed)


METRICS = ("abs", "rel", "head")
METRIC_TEXT = {
    "abs": "absolute drop (points)",
    "rel": "relative drop (%)",
    "head": "headroom-normalised drop (%)",
}


def drops(acc: np.ndarray, sc: Scores, metric: str = "rel", ref=DENSE) -> np.ndarray:
    """Drop of every arm and language against the same seed's dense model, same layout as
    ``acc`` (.. x seeds x arms x languages): ``abs`` = 100 (dense - acc) points; ``rel`` =
    100 (dense - acc) / dense; ``head`` = 100 (dense - acc) / (dense - floor), the share of
    the dense tagger's accuracy above the language's majority-tag floor that is lost.
    ``ref`` names the arm the drops are measured from (the dense tagger by default)."""
    dense = acc[..., [sc.arm(*ref)], :]
    lost = dense - acc
    if metric == "abs":
        return 100 * lost
    if metric == "rel":
        return 100 * lost / dense
    if metric == "head":
        return 100 * lost / (dense - acc[..., [sc.arm(*FLOOR)], :])
    raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


def en_drop(acc, sc, metric="rel"):
    """English drop, mean over seeds: replicates x arms."""
    return drops(acc, sc, metric)[..., 0].mean(1)


def zs_drop(acc, sc, metric="rel"):
    """Mean zero-shot drop, mean over seeds: replicates x arms."""
    return drops(acc, sc, metric)[..., 1:].mean(-1).mean(1)


def gap(acc, sc, metric="rel", ref=DENSE):
    """Mean zero-shot drop minus English's, mean over seeds: replicates x arms."""
    d = drops(acc, sc, metric, ref)
    return (d[..., 1:].mean(-1) - d[..., 0]).mean(1)


def zs_accuracy(acc, sc):
    """Mean zero-shot accuracy (%), mean over seeds: replicates x arms."""
    return 100 * acc[..., 1:].mean(-1).mean(1)


def en_accuracy(acc, sc):
    """English accuracy (%), mean over seeds: replicates x arms."""
    return 100 * acc[..., 0].mean(1)


def gap_slope(acc: np.ndarray, sc: Scores, metric: str = "head") -> np.ndarray:
    """Least-squares slope of the gap over the plain sparsity levels (the dense model left
    out: its gap is 0 by construction), points of gap per 10 points of sparsity: replicates."""
    levels = [s for s in sc.plain_levels if s > 0]
    cols = [sc.arm("plain", s) for s in levels]
    x = 10 * np.array(levels)
    y = gap(acc, sc, metric)[:, cols]
    xc = x - x.mean()
    return (y - y.mean(1, keepdims=True)) @ xc / (xc @ xc)


def estimate(fn, sc: Scores, point: np.ndarray, boot: np.ndarray, what: str) -> stats.Estimate:
    """A statistic ``fn(acc) -> replicates`` with its 95 % percentile interval."""
    b = fn(boot)
    lo, hi = np.quantile(b, [(1 - stats.LEVEL) / 2, (1 + stats.LEVEL) / 2])
    n = len(sc.seeds)
    method = f"{what}bootstrap over {n} seeds x test sentences ({len(b)} replicates)"
    return stats.Estimate(float(fn(point)[0]), (float(lo), float(hi)), n, method)


def level_table(sc: Scores, point: np.ndarray, boot: np.ndarray) -> pd.DataFrame:
    """Per plain level (0 = dense): English and mean zero-shot accuracy (%), and each of the
    three drops for English and the zero-shot mean, each with its 95 % interval (``_lo``,
    ``_hi``)."""
    rows = []
    fns = {"en_acc": en_accuracy, "zs_acc": zs_accuracy}
    for m in METRICS:
        fns[f"en_{m}"] = lambda a, s, m=m: en_drop(a, s, m)
        fns[f"zs_{m}"] = lambda a, s, m=m: zs_drop(a, s, m)
        fns[f"gap_{m}"] = lambda a, s, m=m: gap(a, s, m)
    for s in sc.plain_levels:
        i = sc.arm("plain", s)
        row = {"sparsity": s}
        for name, fn in fns.items():
            if s == 0 and name not in ("en_acc", "zs_acc"):
                continue
            e = estimate(lambda a, fn=fn: fn(a, sc)[:, i], sc, point, boot, "")
            row.update({name: e.value, f"{name}_lo": e.ci[0], f"{name}_hi": e.ci[1]})
        rows.append(row)
    return pd.DataFrame(rows).set_index("sparsity")


def language_drops(acc, sc, arm: str, sparsity: float, metric: str = "head") -> np.ndarray:
    """Each language's drop at one arm, mean over seeds: replicates x languages."""
    return drops(acc, sc, metric)[:, :, sc.arm(arm, sparsity), :].mean(1)


def language_drop_table(sc, point, boot, metric: str = "head") -> pd.DataFrame:
    """Per language and plain level: the drop with its 95 % interval (long format)."""
    rows = []
    for s in sc.plain_levels:
        if s == 0:
            continue
        p = language_drops(point, sc, "plain", s, metric)[0]
        b = language_drops(boot, sc, "plain", s, metric)
        lo, hi = np.quantile(b, [(1 - stats.LEVEL) / 2, (1 + stats.LEVEL) / 2], axis=0)
        rows += [
            {"lang": lang, "sparsity": s, "drop": p[j], "lo": lo[j], "hi": hi[j]}
            for j, lang in enumerate(sc.langs)
        ]
    return pd.DataFrame(rows)


def arm_table(sc, point, boot, key: float) -> pd.DataFrame:
    """Every arm at the key sparsity: English and mean zero-shot accuracy (%), and the
    paired difference of each from plain pruning (points), with 95 % intervals."""
    rows = []
    plain = sc.arm("plain", key)
    for a, s in sc.arms:
        if not math.isclose(s, key) and (a, s) != SAME_BUDGET:
            continue
        i = sc.arm(a, s)
        row = {"arm": a}
        for name, fn in (("en", en_accuracy), ("zs", zs_accuracy)):
            e = estimate(lambda x, fn=fn: fn(x, sc)[:, i], sc, point, boot, "")
            d = estimate(
                lambda x, fn=fn: fn(x, sc)[:, i] - fn(x, sc)[:, plain], sc, point, boot, ""
            )
            row.update(
                {
                    name: e.value,
                    f"{name}_vs_plain": d.value,
                    f"{name}_vs_plain_lo": d.ci[0],
                    f"{name}_vs_plain_hi": d.ci[1],
                }
            )
        rows.append(row)
    return pd.DataFrame(rows).set_index("arm")


def heterogeneity(
    point: np.ndarray, boot: np.ndarray, n_seeds: int = 1, level: float = stats.LEVEL
) -> tuple[stats.Estimate, float]:
    """Do the languages differ beyond sampling noise? Higgins & Thompson's (2002) H for
    per-language estimates ``point`` (languages) with standard errors from ``boot``
    (replicates x languages): H = sqrt(Q / (k - 1)), Cochran's Q with inverse-variance
    weights; H = 1 when the spread is what noise alone gives. Returns (H with its interval,
    the p-value of Q against chi-square(k - 1)); no interval for k = 2 languages. The seeds a
    replicate draws are shared by all languages, so the standard errors include a common
    seed effect that does not separate languages: the test is conservative."""
    k = len(point)
    if k < 2:
        raise ValueError(f"heterogeneity needs at least 2 languages, got {k}")
    se2 = np.maximum(boot.var(axis=0, ddof=1), 1e-12)  # no noise at all: Q very large
    w = 1 / se2
    q = float((w * (point - (w * point).sum() / w.sum()) ** 2).sum())
    h = math.sqrt(q / (k - 1))
    p = float(st.chi2.sf(q, k - 1))
    if k < 3:  # Higgins and Thompson's interval needs k >= 3
        return stats.Estimate(h, None, n_seeds, f"Q = {q:.1f}, no interval (k = 2)"), p
    if q > k:
        se = 0.5 * (math.log(q) - math.log(k - 1)) / (math.sqrt(2 * q) - math.sqrt(2 * k - 3))
    else:
        se = math.sqrt(1 / (2 * (k - 2)) * (1 - 1 / (3 * (k - 2) ** 2)))
    z = st.norm.ppf(0.5 + level / 2)
    ci = (h * math.exp(-z * se), h * math.exp(z * se))
    return stats.Estimate(h, ci, n_seeds, f"Higgins-Thompson interval, Q = {q:.1f}"), p


def gain(kind: str, sc: Scores, key: float):
    """Mean zero-shot accuracy of arm ``kind`` minus plain pruning's at ``key`` (points)."""
    i, plain = sc.arm(kind, key), sc.arm("plain", key)
    return lambda a: zs_accuracy(a, sc)[:, i] - zs_accuracy(a, sc)[:, plain]


def key_findings(
    sc: Scores, point: np.ndarray, boot: np.ndarray, key: float, kinds: list[str]
) -> tuple[dict[str, stats.Estimate], dict[str, str | None]]:
    """The estimates of the chapter's findings (names as in its YAML), and for each the reason
    it cannot be settled by this design (None when it can)."""
    plain = sc.arm("plain", key)
    est = {
        "gap_relative_at_key": estimate(lambda a: gap(a, sc, "rel")[:, plain], sc, point, boot, ""),
        "gap_headroom_at_key": estimate(
            lambda a: gap(a, sc, "head")[:, plain], sc, point, boot, ""
        ),
        "gap_slope": estimate(lambda a: gap_slope(a, sc, "head"), sc, point, boot, ""),
    }
    for kind in kinds:
        est[f"{kind}_gain"] = estimate(gain(kind, sc, key), sc, point, boot, "paired ")
    why: dict[str, str | None] = dict.fromkeys(est)
    controls = {  # finding: (the arm it needs, the statistic)
        "gap_relative_vs_same_budget": (SAME_BUDGET, lambda a: gap(a, sc, "rel", SAME_BUDGET)),
        "gap_relative_layerwise": (("layerwise", key), lambda a: gap(a, sc, "rel")),
    }
    for name, (arm, fn) in controls.items():
        if arm in {(a, s) for a, s in sc.arms if math.isclose(s, arm[1])}:
            col = plain if arm == SAME_BUDGET else sc.arm(*arm)
            est[name] = estimate(lambda a, fn=fn, col=col: fn(a)[:, col], sc, point, boot, "")
            why[name] = None
        else:  # the arm did not run: 0 stands in (records hold finite numbers)
            est[name] = stats.Estimate(0.0, None, len(sc.seeds), f"no {arm[0]} arm")
            why[name] = f"the {arm[0]} arm did not run"
    zp = language_drops(point, sc, "plain", key)[0, 1:]
    zb = language_drops(boot, sc, "plain", key)[:, 1:]
    est["language_dependence"], _ = heterogeneity(zp, zb, len(sc.seeds))
    why["language_dependence"] = (
        None if len(zp) >= 3 else "fewer than 3 zero-shot languages: no interval for H"
    )
    dense_hits, key_hits = sc.retrieval[DENSE], sc.retrieval[("plain", key)]
    if dense_hits.shape[-1]:
        est["retrieval_change_at_key"] = stats.bootstrap_items(100 * key_hits, 100 * dense_hits)
        why["retrieval_change_at_key"] = None
    else:  # nothing measured: 0 stands in (records hold finite numbers); the reason says why
        est["retrieval_change_at_key"] = stats.Estimate(0.0, None, len(sc.seeds), "no PUD pair")
        why["retrieval_change_at_key"] = "fewer than 2 PUD languages: no retrieval measured"
    return est, why


def magnitude_minus_random(sc: Scores, point, boot, key: float) -> stats.Estimate:
    """Mean zero-shot accuracy of global magnitude minus random pruning at ``key`` (points)."""
    i, plain = sc.arm("random", key), sc.arm("plain", key)
    fn = lambda a: zs_accuracy(a, sc)[:, plain] - zs_accuracy(a, sc)[:, i]  # noqa: E731
    return estimate(fn, sc, point, boot, "paired ")


def english_lost(sc: Scores, point: np.ndarray, boot: np.ndarray, level: float) -> stats.Estimate:
    """English accuracy points lost by plain pruning at ``level`` against the dense model."""
    i = sc.arm("plain", level)
    return estimate(lambda a: en_drop(a, sc, "abs")[:, i], sc, point, boot, "paired ")


def sparsity_error(rows: pd.DataFrame) -> float:
    """Largest |mask sparsity - target| and |exact zeros - mask sparsity| over the evaluated
    stages and arms."""
    a = (rows.mask_sparsity - rows.sparsity).abs().max()
    b = (rows.zeros - rows.mask_sparsity).abs().max()
    return float(max(a, b))


def plateau_shortfall(rows: pd.DataFrame, plateau: int) -> int:
    """Steps missing from the declared plateau at the level, worst stage (0 = every stage held
    its level for every plateau step)."""
    return int(plateau - rows.plateau_steps_at_level.min())


def share_beating_baselines(table: pd.DataFrame, dense_acc: pd.Series, zs: list[str]) -> float:
    """Share of the zero-shot languages where the dense tagger beats both baselines."""
    best = table[["majority", "word_lookup"]].max(axis=1)
    return float(np.mean([dense_acc[x] > best[x] for x in zs]))


def arm_accuracy(point: np.ndarray, sc: Scores, arm: str = "plain", sparsity: float = 0.0):
    """Accuracy of one arm per language, mean over seeds (a Series indexed by language)."""
    return pd.Series(point[0, :, sc.arm(arm, sparsity)].mean(0), index=sc.langs)


def verdicts(records, names: list[str]) -> dict[str, str]:
    """The computed verdict of each named finding (for the prose that quotes it)."""
    return {r["name"]: r["verdict"] for r in records.findings if r["name"] in names}


def adequacy_text(records, name: str) -> str:
    """'met' or 'not met' for a recorded adequacy condition, with its criterion."""
    row = next(r for r in records.entries["adequacy"] if r["name"] == name)
    return f"{'met' if row['holds'] else 'not met'} ({row['criterion']} points)"


def fmt(e: stats.Estimate, sign: bool = True) -> str:
    """An estimate as 'v [lo, hi]' with one decimal."""
    f = "{:+.1f}" if sign else "{:.1f}"
    return f.format(e.value) + (f" [{f.format(e.ci[0])}, {f.format(e.ci[1])}]" if e.ci else "")


def levels_text(lv: pd.DataFrame) -> str:
    """'level %: English a [lo, hi], zero-shot b [lo, hi]' for every level, one line."""
    parts = []
    for s, r in lv.iterrows():
        parts.append(
            f"{100 * s:.0f} %: English {r.en_acc:.1f} [{r.en_acc_lo:.1f}, {r.en_acc_hi:.1f}], "
            f"zero-shot {r.zs_acc:.1f} [{r.zs_acc_lo:.1f}, {r.zs_acc_hi:.1f}]"
        )
    return "; ".join(parts)


def extra_training(sc: Scores, point, boot, lang: str = "zs") -> stats.Estimate:
    """Accuracy (points) of the same-budget dense control minus the dense tagger's, mean
    zero-shot (``zs``) or English (``en``): what training on for the pruning run's steps
    does without pruning."""
    fn = zs_accuracy if lang == "zs" else en_accuracy
    i, j = sc.arm(*SAME_BUDGET), sc.arm(*DENSE)
    return estimate(lambda a: fn(a, sc)[:, i] - fn(a, sc)[:, j], sc, point, boot, "paired ")


def lambdas_text(lams: dict[str, float], grids: dict[str, list[float]], edge: dict) -> str:
    """'kind λ (of grid; at its edge)' for every regularizer."""
    return "; ".join(
        f"{k} {lam:g} of {sorted(grids[k])}" + (" (edge)" if edge.get(k) else " (interior)")
        for k, lam in lams.items()
    )
