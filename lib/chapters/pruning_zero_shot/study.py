"""The chapter's study: one dense English fine-tune per seed (cached), then pruning arms that
each continue from it for the same budget, evaluated per sentence on English and the
zero-shot languages; then the statistics behind every finding (a two-level bootstrap over
seeds and test sentences, paired across arms, which all score the same sentences).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch
from scipy import stats as st

from lib.book import stats
from lib.core import cache, data, encoders, pruning
from lib.core.pos_transfer import (
    IGNORE,
    Tagger,
    TrainConfig,
    baseline_accuracy,
    encode_treebank,
    evaluate_items,
    freeze_embeddings,
    pairwise_retrieval_hits,
    spread_indices,
    subword_overlap,
    train_config_dict,
    train_tagger,
    trainable_state,
)

PUD = ("ar", "hi", "it")  # the parallel treebanks (same sentences, same order)
CACHE_VERSION = 2  # bump when the training code changes what a cached dense model would contain
DENSE = ("plain", 0.0)  # the same-budget dense arm every drop is measured against


@dataclass
class StudyData:
    """Encoded training and evaluation sets (ids + first-subword labels) and the raw sentences."""

    train: list
    test: dict[str, list]
    raw_train: list
    raw_test: dict[str, list]


def prepare(tok, langs: list[str], n_train: int, n_eval: int, max_len: int) -> StudyData:
    """English EWT dev for training; the test split of English and each language, ``n_eval``
    evenly spread sentences (the same PUD sentences in ar/hi/it), for evaluation."""
    en_dev = data.ud_sentences("en", "dev")
    raw_train = [en_dev[i] for i in spread_indices(len(en_dev), n_train)]
    raw_test = {}
    for lang in ["en"] + [x for x in langs if x != "en"]:
        s = data.ud_sentences(lang, "test")
        raw_test[lang] = [s[i] for i in spread_indices(len(s), n_eval)]
    return StudyData(
        encode_treebank(tok, raw_train, max_len),
        {k: encode_treebank(tok, v, max_len) for k, v in raw_test.items()},
        raw_train,
        raw_test,
    )


def check_design(sparsities: list[float], key_sparsity: float, reg_sparsities: list[float]) -> None:
    """The records need a 0 % arm (the same-budget dense reference), the key sparsity among
    the plain arms and the regularized arms at the key sparsity; say so if not."""
    if not any(math.isclose(s, 0.0) for s in sparsities):
        raise ValueError(f"sparsities {sparsities} must include 0.0 (the dense reference arm)")
    for name, levels in (("sparsities", sparsities), ("reg_sparsities", reg_sparsities)):
        if not any(math.isclose(s, key_sparsity) for s in levels):
            raise ValueError(f"key_sparsity {key_sparsity} must be one of {name} {levels}")


def language_table(d: StudyData, tok) -> pd.DataFrame:
    """Per language: evaluated words, the two baselines, and subword overlap with English
    training text."""
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


def build_tagger(source: str, layers: int | None, seed: int, device) -> tuple[Tagger, object]:
    """Encoder + fresh head (seeded), embeddings frozen."""
    encoder, tok = encoders.load(source, layers)
    torch.manual_seed(seed)
    tagger = Tagger(encoder).to(device)
    freeze_embeddings(tagger)
    return tagger, tok


def reset_tagger(tagger: Tagger, pretrained: dict, seed: int) -> None:
    """Back to the pretrained encoder with a freshly seeded head (start of one seed's dense
    fine-tune)."""
    tagger.load_state_dict(pretrained, strict=False)
    torch.manual_seed(seed)
    tagger.head.reset_parameters()


def dense_finetune(
    tagger: Tagger,
    d: StudyData,
    cfg: TrainConfig,
    pad: int,
    key_parts: dict,
    device,
    use_cache: bool = True,
) -> tuple[dict, dict]:
    """Fine-tune densely on English or load the cached result (:func:`lib.core.cache.cached`,
    same key and file as before the port); return (trainable state, log)."""
    config = {"cfg": train_config_dict(cfg), "version": CACHE_VERSION, **key_parts}

    def build() -> dict:
        log = train_tagger(tagger, d.train, cfg, pad, device=device)
        return {"state": trainable_state(tagger), "log": log}

    saved, loaded = cached(config, build, use_cache, device)
    if loaded:
        tagger.load_state_dict(saved["state"], strict=False)
    return saved["state"], {**saved["log"], "cached": loaded}


def cached(config: dict, build, use_cache: bool, device):
    """The chapter's cache space for dense fine-tunes."""
    return cache.cached(
        "pruning_zero_shot", "dense", config, build, use_cache=use_cache, map_location=device
    )


def dense_models(
    tagger: Tagger,
    pretrained: dict,
    d: StudyData,
    seeds: list[int],
    base: TrainConfig,
    pad: int,
    key_parts: dict,
    device,
    use_cache: bool = True,
) -> dict[int, dict]:
    """One dense English fine-tune per seed (fresh head, data order from the seed); prints
    one line per seed and returns {seed: trainable state}."""
    dense = {}
    for s in seeds:
        reset_tagger(tagger, pretrained, s)
        cfg = replace(base, seed=s)
        dense[s], log = dense_finetune(tagger, d, cfg, pad, key_parts, device, use_cache)
        how = "loaded from cache" if log["cached"] else "trained"
        print(
            f"seed {s}: dense fine-tune {how} ({log['seconds']:.0f} s when trained), "
            f"final loss {np.mean(log['loss'][-10:]):.3f}"
        )
    return dense


def evaluate_all(tagger: Tagger, d: StudyData, pad: int, device) -> tuple[dict, dict]:
    """Accuracy per language and PUD retrieval accuracy (mean over language pairs), and the
    per-sentence scores behind them: ``correct`` {lang: tags right per sentence} and
    ``retrieval`` (hits per PUD sentence, averaged over language pairs and directions)."""
    row, correct, vecs = {}, {}, {}
    for lang, ex in d.test.items():
        out = evaluate_items(tagger, ex, pad, device=device)
        correct[lang] = out["correct"]
        row[f"acc_{lang}"] = float(out["correct"].sum() / max(out["words"].sum(), 1))
        if lang in PUD:
            vecs[lang] = out["pooled"]
    hits = pairwise_retrieval_hits(vecs) if len(vecs) >= 2 else np.zeros(0)
    row["retrieval"] = float(hits.mean()) if len(hits) else float("nan")
    return row, {"correct": correct, "retrieval": hits}


def run_arm(
    tagger: Tagger,
    dense_state: dict,
    d: StudyData,
    cfg: TrainConfig,
    pad: int,
    device,
    teacher: Tagger | None = None,
) -> tuple[dict, dict]:
    """Reset to the dense fine-tuned weights, prune (with the arm's regularizer) while
    fine-tuning for ``cfg.steps``, then evaluate everywhere: (result row, per-sentence items)."""
    tagger.load_state_dict(dense_state, strict=False)
    ref = pruning.reference_weights(tagger.encoder) if cfg.reg in ("cos", "frob") else None
    t0 = time.perf_counter()
    log = train_tagger(tagger, d.train, cfg, pad, ref=ref, teacher=teacher, device=device)
    row = {
        "arm": cfg.reg if cfg.reg != "none" else "plain",
        "sparsity": cfg.sparsity,
        "seed": cfg.seed,
        "measured_sparsity": log["final_sparsity"],
        "reg_at_start": log["reg"][0],
        "train_s": log["seconds"],
        "final_loss": float(np.mean(log["loss"][-10:])),
    }
    scores, items = evaluate_all(tagger, d, pad, device)
    row.update(scores)
    row["seconds"] = time.perf_counter() - t0
    return row, items


def make_teacher(tagger: Tagger, dense_state: dict) -> Tagger:
    """A frozen copy of the dense fine-tuned tagger (for the self-distillation arm)."""
    teacher = copy.deepcopy(tagger)
    teacher.load_state_dict(dense_state, strict=False)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


def arm_configs(
    base: TrainConfig,
    sparsities: list[float],
    seeds: list[int],
    reg_sparsities: list[float],
    regs: dict[str, float],
) -> list[TrainConfig]:
    """Plain pruning at every sparsity and seed; each regularizer (name -> lambda) at
    ``reg_sparsities``."""
    cfgs = [
        replace(base, sparsity=s, seed=sd, reg="none", lam=0.0) for sd in seeds for s in sparsities
    ]
    cfgs += [
        replace(base, sparsity=s, seed=sd, reg=r, lam=lam)
        for sd in seeds
        for r, lam in regs.items()
        for s in reg_sparsities
    ]
    return cfgs


def run_arms(
    tagger: Tagger,
    dense: dict[int, dict],
    d: StudyData,
    base: TrainConfig,
    sparsities: list[float],
    reg_sparsities: list[float],
    regs: dict[str, float],
    pad: int,
    device,
) -> tuple[pd.DataFrame, dict]:
    """Every arm of every seed (one printed line each): the results table and the
    per-sentence items keyed by (arm, sparsity, seed)."""
    rows, items = [], {}
    zs = [x for x in d.test if x != "en"]
    for s, state in dense.items():
        teacher = make_teacher(tagger, state) if "cc" in regs else None
        for cfg in arm_configs(base, sparsities, [s], reg_sparsities, regs):
            r, it = run_arm(tagger, state, d, cfg, pad, device, teacher=teacher)
            rows.append(r)
            items[(r["arm"], r["sparsity"], s)] = it
            print(
                f"seed {s} {r['arm']:>5} sparsity {r['sparsity']:.2f} "
                f"(measured {r['measured_sparsity']:.4f}): en {r['acc_en']:.3f}, "
                f"zero-shot mean {np.mean([r['acc_' + x] for x in zs]):.3f}, "
                f"retrieval {r['retrieval']:.3f} [{r['seconds']:.0f} s]"
            )
    return pd.DataFrame(rows), items


def exact_zero_fraction(tagger: Tagger) -> float:
    """Share of exact zeros among the prunable encoder weights (the 4-bit grid has a zero
    level)."""
    w = pruning.prunable_weights(tagger.encoder)
    return sum(int((p == 0).sum()) for p in w.values()) / sum(p.numel() for p in w.values())


def sparsity_error(results: pd.DataFrame) -> float:
    """Largest |measured - target| sparsity over the pruned arms (0 when none is pruned)."""
    pruned = results[results.sparsity > 0]
    return float((pruned.measured_sparsity - pruned.sparsity).abs().max()) if len(pruned) else 0.0


def reg_at_start(results: pd.DataFrame) -> float:
    """Largest |regularizer| at the first step of the regularized arms: zero when the arm
    starts from the very weights it aligns to (the dense fine-tuned model)."""
    regd = results[results.arm.isin(["cos", "frob"])]
    return float(regd.reg_at_start.abs().max()) if len(regd) else 0.0


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
        rng = np.random.default_rng(seed)
        out = np.empty((n_boot, len(self.seeds), len(self.arms), len(self.langs)))
        for j, lang in enumerate(self.langs):
            n = len(self.words[lang])
            idx = rng.integers(0, n, size=(n_boot, n))
            counts = np.zeros((n_boot, n))
            np.add.at(counts, (np.arange(n_boot)[:, None], idx), 1.0)
            words = counts @ self.words[lang]
            out[..., j] = (
                np.einsum("san,bn->bsa", self.correct[lang], counts) / words[:, None, None]
            )
        seed_idx = rng.integers(0, len(self.seeds), size=(n_boot, len(self.seeds)))
        return np.take_along_axis(out, seed_idx[:, :, None, None], axis=1)


def drops(acc: np.ndarray, sc: Scores) -> np.ndarray:
    """Relative accuracy drop (dense - pruned) / dense against the same seed's 0 % arm,
    for every arm and language: same layout as ``acc`` (.. x seeds x arms x languages)."""
    dense = acc[:, :, [sc.arm(*DENSE)], :]
    return (dense - acc) / dense


def gap(acc: np.ndarray, sc: Scores) -> np.ndarray:
    """Mean zero-shot relative drop minus English's, in percentage points, mean over seeds:
    replicates x arms."""
    d = drops(acc, sc)
    return 100 * (d[..., 1:].mean(-1) - d[..., 0]).mean(1)


def zs_drop(acc: np.ndarray, sc: Scores) -> np.ndarray:
    """Mean zero-shot relative drop (%), mean over seeds: replicates x arms."""
    return 100 * drops(acc, sc)[..., 1:].mean(-1).mean(1)


def en_drop_points(acc: np.ndarray, sc: Scores) -> np.ndarray:
    """English accuracy lost (points) against the same seed's dense arm: replicates x arms."""
    return 100 * (acc[:, :, [sc.arm(*DENSE)], 0] - acc[..., 0]).mean(1)


def gap_slope(acc: np.ndarray, sc: Scores) -> np.ndarray:
    """Least-squares slope of the gap over every plain sparsity level (0 % included, where the
    gap is 0 by construction), in points of gap per 10 points of sparsity: replicates."""
    cols = [sc.arm("plain", s) for s in sc.plain_levels]
    x = 10 * np.array(sc.plain_levels)
    y = gap(acc, sc)[:, cols]
    xc = x - x.mean()
    return (y - y.mean(1, keepdims=True)) @ xc / (xc @ xc)


def estimate(fn, sc: Scores, point: np.ndarray, boot: np.ndarray, what: str) -> stats.Estimate:
    """A statistic ``fn(acc) -> replicates`` with its 95 % percentile interval."""
    b = fn(boot)
    lo, hi = np.quantile(b, [(1 - stats.LEVEL) / 2, (1 + stats.LEVEL) / 2])
    n = len(sc.seeds)
    method = f"{what}bootstrap over {n} seeds x test sentences ({len(b)} replicates)"
    return stats.Estimate(float(fn(point)[0]), (float(lo), float(hi)), n, method)


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


def language_drops(acc: np.ndarray, sc: Scores, sparsity: float) -> np.ndarray:
    """Relative drop (%) of each language at one plain sparsity, mean over seeds:
    replicates x languages."""
    return 100 * drops(acc, sc)[:, :, sc.arm("plain", sparsity), :].mean(1)


def collapsed_levels(acc: np.ndarray, sc: Scores, majority: pd.Series) -> list[float]:
    """Plain sparsity levels where every language collapsed: its accuracy (mean over seeds)
    is closer to its majority-tag floor than to the dense arm's accuracy, i.e. the pruned
    tagger kept less than half of what the dense one had above the floor."""
    mean = acc[0].mean(0)  # arms x languages
    dense = mean[sc.arm(*DENSE)]
    floor = majority.loc[sc.langs].to_numpy()
    return [
        s
        for s in sc.plain_levels
        if s > 0 and np.all(mean[sc.arm("plain", s)] < (dense + floor) / 2)
    ]


def en_drop(acc: np.ndarray, sc: Scores) -> np.ndarray:
    """English relative drop (%), mean over seeds: replicates x arms."""
    return 100 * drops(acc, sc)[..., 0].mean(1)


def level_table(sc: Scores, point: np.ndarray, boot: np.ndarray) -> pd.DataFrame:
    """Per plain sparsity: English relative drop, mean zero-shot relative drop and their gap
    (all %), each with its 95 % bootstrap interval."""
    rows = []
    for s in sc.plain_levels:
        i = sc.arm("plain", s)
        row = {"sparsity": s}
        for name, fn in (("en_drop", en_drop), ("zs_drop", zs_drop), ("gap", gap)):
            e = estimate(lambda a, fn=fn: fn(a, sc)[:, i], sc, point, boot, "")
            row.update({name: e.value, f"{name}_lo": e.ci[0], f"{name}_hi": e.ci[1]})
        rows.append(row)
    return pd.DataFrame(rows).set_index("sparsity")


def share_beating_baselines(table: pd.DataFrame, dense_acc: pd.Series, zs: list[str]) -> float:
    """Share of the zero-shot languages where the dense tagger beats both baselines."""
    best = table[["majority", "word_lookup"]].max(axis=1)
    return float(np.mean([dense_acc[x] > best[x] for x in zs]))


def rank_correlation(x: pd.Series, y: pd.Series) -> float:
    """Spearman rank correlation of two per-language series (over their common languages)."""
    common = x.index.intersection(y.index)
    return float(st.spearmanr(x[common], y[common]).statistic)


def verdicts(records, names: list[str]) -> dict[str, str]:
    """The computed verdict of each named finding (for the prose that quotes it)."""
    return {r["name"]: r["verdict"] for r in records.findings if r["name"] in names}


def arm_accuracy(point: np.ndarray, sc: Scores, arm: str = "plain", sparsity: float = 0.0):
    """Accuracy of one arm per language, mean over seeds (a Series indexed by language)."""
    return pd.Series(point[0, :, sc.arm(arm, sparsity)].mean(0), index=sc.langs)


def language_drop_table(
    sc: Scores, point: np.ndarray, boot: np.ndarray, sparsity: float
) -> pd.DataFrame:
    """Each zero-shot language's relative drop (%) at one sparsity with its 95 % interval,
    most hurt first."""
    p, b = language_drops(point, sc, sparsity)[0], language_drops(boot, sc, sparsity)
    lo, hi = np.quantile(b, [(1 - stats.LEVEL) / 2, (1 + stats.LEVEL) / 2], axis=0)
    t = pd.DataFrame({"drop": p, "lo": lo, "hi": hi}, index=sc.langs).iloc[1:]
    return t.sort_values("drop", ascending=False)


def key_findings(
    sc: Scores, point: np.ndarray, boot: np.ndarray, key: float
) -> tuple[dict[str, stats.Estimate], dict[str, str | None]]:
    """The estimates of the chapter's findings (names as in its YAML), and for each the reason
    it cannot be settled by this design (None when it can)."""
    plain = sc.arm("plain", key)

    def reduction(reg: str):
        return lambda a: zs_drop(a, sc)[:, plain] - zs_drop(a, sc)[:, sc.arm(reg, key)]

    est = {
        "zs_minus_en_drop_at_key": estimate(lambda a: gap(a, sc)[:, plain], sc, point, boot, ""),
        "gap_slope": estimate(lambda a: gap_slope(a, sc), sc, point, boot, ""),
        "cos_reduces_zs_drop": estimate(reduction("cos"), sc, point, boot, "paired "),
        "frob_reduces_zs_drop": estimate(reduction("frob"), sc, point, boot, "paired "),
    }
    why: dict[str, str | None] = dict.fromkeys(est)
    zs_point, zs_boot = language_drops(point, sc, key)[0, 1:], language_drops(boot, sc, key)[:, 1:]
    est["language_dependence"], _ = heterogeneity(zs_point, zs_boot, len(sc.seeds))
    why["language_dependence"] = (
        None if len(zs_point) >= 3 else "fewer than 3 zero-shot languages: no interval for H"
    )
    dense_hits, key_hits = sc.retrieval[DENSE], sc.retrieval[("plain", key)]
    if dense_hits.shape[-1]:
        est["retrieval_change_at_key"] = stats.bootstrap_items(100 * key_hits, 100 * dense_hits)
        why["retrieval_change_at_key"] = None
    else:  # nothing measured: 0 stands in (records hold finite numbers); the reason says why
        est["retrieval_change_at_key"] = stats.Estimate(0.0, None, len(sc.seeds), "no PUD pair")
        why["retrieval_change_at_key"] = "fewer than 2 PUD languages: no retrieval measured"
    return est, why


def is_collapsed(level: float, collapsed: list[float]) -> bool:
    """Whether ``level`` is one of the collapsed sparsity levels."""
    return any(math.isclose(level, c) for c in collapsed)


def english_lost(sc: Scores, point: np.ndarray, boot: np.ndarray, key: float) -> stats.Estimate:
    """English accuracy points lost by plain pruning at ``key`` against the dense arm."""
    i = sc.arm("plain", key)
    return estimate(lambda a: en_drop_points(a, sc)[:, i], sc, point, boot, "paired ")


def adequacy_text(records, name: str) -> str:
    """'met' or 'not met' for a recorded adequacy condition, with its criterion."""
    row = next(r for r in records.entries["adequacy"] if r["name"] == name)
    return f"{'met' if row['holds'] else 'not met'} ({row['criterion']} points)"
