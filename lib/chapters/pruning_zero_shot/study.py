"""The chapter's study: one dense English fine-tune (cached), then pruning arms that each
continue from it for the same budget, evaluated on English and zero-shot languages."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from lib.book import paths
from lib.core import data, pruning
from lib.core.pos_transfer import (
    Tagger,
    TrainConfig,
    baseline_accuracy,
    cache_key,
    encode_treebank,
    evaluate,
    freeze_embeddings,
    load_encoder,
    mean_pairwise_retrieval,
    spread_indices,
    subword_overlap,
    train_config_dict,
    train_tagger,
    trainable_state,
)

PUD = ("ar", "hi", "it")
CACHE_VERSION = 2  # bump when the training code changes what a cached dense model would contain  # the parallel treebanks (same sentences, same order)


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


def language_table(d: StudyData, tok) -> pd.DataFrame:
    """Per language: evaluated words, the two baselines, and subword overlap with English training text."""
    rows = []
    specials = (tok.bos, tok.eos, tok.pad, tok.unk)
    for lang, ex in d.test.items():
        b = baseline_accuracy(d.raw_train, d.raw_test[lang])
        rows.append(
            {
                "lang": lang,
                "sentences": len(ex),
                "words": sum(sum(y != -100 for y in ys) for _, ys in ex),
                "majority": b["majority"],
                "word_lookup": b["word_lookup"],
                "overlap": subword_overlap(ex, d.train, specials),
            }
        )
    return pd.DataFrame(rows).set_index("lang")


def build_tagger(source: str, layers: int | None, seed: int, device) -> tuple[Tagger, object]:
    """Encoder + fresh head (seeded), embeddings frozen."""
    encoder, tok = load_encoder(source, layers)
    torch.manual_seed(seed)
    tagger = Tagger(encoder).to(device)
    freeze_embeddings(tagger)
    return tagger, tok


def dense_finetune(
    tagger: Tagger,
    d: StudyData,
    cfg: TrainConfig,
    pad: int,
    key_parts: dict,
    device,
    use_cache: bool = True,
) -> tuple[dict, dict]:
    """Fine-tune densely on English or load the cached result; return (trainable state, log)."""
    key = cache_key(cfg=train_config_dict(cfg), version=CACHE_VERSION, **key_parts)
    file = paths.cache_dir() / "pruning_zero_shot" / f"dense-{key}.pt"
    if use_cache and file.exists():
        saved = torch.load(file, map_location=device)
        tagger.load_state_dict(saved["state"], strict=False)
        return saved["state"], {**saved["log"], "cached": True}
    log = train_tagger(tagger, d.train, cfg, pad, device=device)
    state = trainable_state(tagger)
    if use_cache:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(".tmp")
        torch.save({"state": state, "log": log}, tmp)
        tmp.replace(file)  # atomic: no half-written cache
    return state, {**log, "cached": False}


def evaluate_all(tagger: Tagger, d: StudyData, pad: int, device) -> dict:
    """Accuracy per language and PUD retrieval accuracy (mean over language pairs)."""
    out, vecs = {}, {}
    for lang, ex in d.test.items():
        acc, pooled = evaluate(tagger, ex, pad, device=device)
        out[f"acc_{lang}"] = acc
        if lang in PUD:
            vecs[lang] = pooled
    out["retrieval"] = mean_pairwise_retrieval(vecs) if len(vecs) >= 2 else float("nan")
    return out


def run_arm(
    tagger: Tagger,
    dense_state: dict,
    d: StudyData,
    cfg: TrainConfig,
    pad: int,
    device,
    teacher: Tagger | None = None,
) -> dict:
    """Reset to the dense fine-tuned weights, prune (with the arm's regularizer) while
    fine-tuning for ``cfg.steps``, then evaluate everywhere; one result row."""
    tagger.load_state_dict(dense_state, strict=False)
    ref = pruning.reference_weights(tagger.encoder) if cfg.reg in ("cos", "frob") else None
    t0 = time.perf_counter()
    log = train_tagger(tagger, d.train, cfg, pad, ref=ref, teacher=teacher, device=device)
    row = {
        "arm": cfg.reg if cfg.reg != "none" else "plain",
        "sparsity": cfg.sparsity,
        "seed": cfg.seed,
        "measured_sparsity": log["final_sparsity"],
        "train_s": log["seconds"],
        "final_loss": float(np.mean(log["loss"][-10:])),
    }
    row.update(evaluate_all(tagger, d, pad, device))
    row["seconds"] = time.perf_counter() - t0
    return row


def make_teacher(tagger: Tagger, dense_state: dict) -> Tagger:
    """A frozen copy of the dense fine-tuned tagger (for the self-distillation arm)."""
    teacher = copy.deepcopy(tagger)
    teacher.load_state_dict(dense_state, strict=False)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


def relative_drops(results: pd.DataFrame, langs: list[str]) -> pd.DataFrame:
    """Long table of relative accuracy drop (dense - pruned) / dense per arm, sparsity, seed and
    language, the dense reference being the same seed's 0 % run (same budget)."""
    dense = results[(results.sparsity == 0) & (results.arm == "plain")].set_index("seed")
    rows = []
    for _, r in results.iterrows():
        for lang in langs:
            base = dense.loc[r.seed, f"acc_{lang}"]
            rows.append(
                {
                    "arm": r.arm,
                    "sparsity": r.sparsity,
                    "seed": r.seed,
                    "lang": lang,
                    "acc": r[f"acc_{lang}"],
                    "drop": (base - r[f"acc_{lang}"]) / base,
                }
            )
    return pd.DataFrame(rows)


def arm_configs(
    base: TrainConfig,
    sparsities: list[float],
    seeds: list[int],
    reg_sparsities: list[float],
    regs: dict[str, float],
) -> list[TrainConfig]:
    """Plain pruning at every sparsity and seed; each regularizer (name -> lambda) at ``reg_sparsities``."""
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


def gap_table(drops: pd.DataFrame) -> pd.DataFrame:
    """Per arm, sparsity and seed: English relative drop, mean zero-shot relative drop, and
    their difference (the paper's supervised vs zero-shot discrepancy)."""
    en = drops[drops.lang == "en"].set_index(["arm", "sparsity", "seed"])["drop"]
    zs = drops[drops.lang != "en"].groupby(["arm", "sparsity", "seed"])["drop"].mean()
    out = pd.DataFrame({"en_drop": en, "zs_drop": zs})
    out["gap"] = out.zs_drop - out.en_drop
    return out.reset_index()


def regularizer_effect(gaps: pd.DataFrame, reg: str, sparsity: float) -> pd.DataFrame:
    """Per seed, at one sparsity: how much the regularizer lowers the zero-shot drop and the
    English drop relative to plain pruning (positive = the regularizer helps)."""
    key = ["seed"]
    plain = gaps[(gaps.arm == "plain") & np.isclose(gaps.sparsity, sparsity)].set_index(key)
    arm = gaps[(gaps.arm == reg) & np.isclose(gaps.sparsity, sparsity)].set_index(key)
    return pd.DataFrame(
        {"zs_reduction": plain.zs_drop - arm.zs_drop, "en_reduction": plain.en_drop - arm.en_drop}
    ).dropna()


def reset_tagger(tagger: Tagger, pretrained: dict, seed: int) -> None:
    """Back to the pretrained encoder with a freshly seeded head (start of one seed's dense fine-tune)."""
    tagger.load_state_dict(pretrained, strict=False)
    torch.manual_seed(seed)
    tagger.head.reset_parameters()


def exact_zero_fraction(tagger: Tagger) -> float:
    """Share of exact zeros among the prunable encoder weights (the 4-bit grid has a zero level)."""
    w = pruning.prunable_weights(tagger.encoder)
    return sum(int((p == 0).sum()) for p in w.values()) / sum(p.numel() for p in w.values())
