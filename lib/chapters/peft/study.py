"""The accuracy experiment: each method fine-tunes a pretrained encoder on Rotten Tomatoes
sentiment (sequence classification) and UD English POS tagging (token classification),
with its own learning-rate grid selected on a dev split at an equal number of steps, then
more seeds at the chosen rate; scores are per test item, so every method is paired with
full fine-tuning on the same items. Also the summaries that the notebook records.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lib.book import stats
from lib.chapters.peft import methods
from lib.core import data, pos_transfer
from lib.core.train import correct_items, fit, warmup_decay

TASKS = ("rt", "pos")
TASK_LABELS = {"rt": "Rotten Tomatoes sentiment", "pos": "UD English POS"}


# ----------------------------------------------------------------------- tokenisers


class BertWordTokenizer:
    """A WordPiece tokenizer (MiniLM's) with the word-level interface of the POS harness:
    ``word_ids``, ``bos`` ([CLS]), ``eos`` ([SEP]) and ``pad``."""

    def __init__(self, hf_tok) -> None:
        self.hf = hf_tok
        self.bos, self.eos, self.pad = hf_tok.cls_token_id, hf_tok.sep_token_id, hf_tok.pad_token_id
        self.unk = hf_tok.unk_token_id

    def word_ids(self, words: list[str]) -> list[list[int]]:
        ids = self.hf(list(words), add_special_tokens=False)["input_ids"]
        return [x if x else [self.unk] for x in ids]


def word_tokenizer(source: str, tok):
    """The POS harness's tokenizer for an encoder source (e5's already has the interface)."""
    return BertWordTokenizer(tok) if source == "minilm" else tok


def encode_texts(tok, texts: list[str], max_len: int) -> list[list[int]]:
    """Token ids (with the special tokens) of each text, at most ``max_len``."""
    if hasattr(tok, "ids"):  # lib.core.e5.E5Tokenizer
        return tok.ids(texts, max_len)
    return tok(list(texts), truncation=True, max_length=max_len)["input_ids"]


def pad_ids(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and the attention mask."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


def pad_id(tok) -> int:
    return tok.pad if hasattr(tok, "ids") else tok.pad_token_id


# ----------------------------------------------------------------------- data


@dataclass
class TaskData:
    """Encoded train, dev and test examples of one task for one encoder."""

    task: str
    train: list
    dev: list
    test: list
    pad: int
    majority: float  # accuracy of the majority class (tag) on test
    lexical: float  # accuracy of a lexical baseline on test (POS: most frequent tag per word)


def split_indices(n: int, n_dev: int, n_test: int, seed: int) -> tuple[np.ndarray, ...]:
    """Disjoint train, dev and test indices of ``n`` items, drawn with ``seed``."""
    if n_dev + n_test >= n:
        raise ValueError(f"dev {n_dev} + test {n_test} leave no training items of {n}")
    p = np.random.default_rng(seed).permutation(n)
    return p[n_dev + n_test :], p[:n_dev], p[n_dev : n_dev + n_test]


def rt_data(tok, n_dev: int, n_test: int, max_len: int, seed: int) -> TaskData:
    """Rotten Tomatoes: (ids, label) examples; dev and test drawn from the one file."""
    texts, y = data.rotten_tomatoes()
    ids = encode_texts(tok, texts, max_len)
    tr, dv, te = split_indices(len(texts), n_dev, n_test, seed)
    ex = [(ids[i], int(y[i])) for i in range(len(texts))]
    major = int(np.bincount(y[tr]).argmax())
    return TaskData(
        "rt",
        [ex[i] for i in tr],
        [ex[i] for i in dv],
        [ex[i] for i in te],
        pad_id(tok),
        float(np.mean(y[te] == major)),
        float("nan"),
    )


def pos_data(tok, n_train: int, n_dev: int, n_test: int, max_len: int, seed: int) -> TaskData:
    """UD English-EWT: train on (a seeded sample of) its train split, select on (a sample of)
    dev, test on (a sample of) test; 0 means all sentences."""
    g = np.random.default_rng(seed)

    def sample(split: str, n: int):
        s = data.ud_sentences("en", split)
        return [s[i] for i in sorted(g.choice(len(s), n, replace=False))] if 0 < n < len(s) else s

    tr, dv, te = sample("train", n_train), sample("dev", n_dev), sample("test", n_test)
    base = pos_transfer.baseline_accuracy(tr, te)
    return TaskData(
        "pos",
        pos_transfer.encode_treebank(tok, tr, max_len),
        pos_transfer.encode_treebank(tok, dv, max_len),
        pos_transfer.encode_treebank(tok, te, max_len),
        tok.pad,
        base["majority"],
        base["word_lookup"],
    )


# ----------------------------------------------------------------------- models


class SeqClassifier(nn.Module):
    """Encoder, mean pooling over the real tokens, a linear head."""

    def __init__(self, encoder: nn.Module, n_classes: int = 2) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, n_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1))


def build(task: str, base: nn.Module, method: str, sizes: methods.Sizes, seed: int) -> nn.Module:
    """A fresh model for ``task``: a copy of ``base`` prepared for ``method``, and a head
    (adapters and head initialised from ``seed``)."""
    torch.manual_seed(seed)
    enc = methods.wrap(copy.deepcopy(base), method, sizes)
    if task == "rt":
        return SeqClassifier(enc)
    return pos_transfer.Tagger(enc)


# ----------------------------------------------------------------------- training


@dataclass(frozen=True)
class Budget:
    """How every run trains: the same for every method (only the learning rate differs)."""

    steps: int
    batch: int
    warmup: float = 0.1


def _batch(task: str, examples: list, pad: int) -> dict[str, torch.Tensor]:
    if task == "pos":
        return pos_transfer.pad_batch(examples, pad)
    ids, mask = pad_ids([x for x, _ in examples], pad)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": torch.tensor([y for _, y in examples]),
    }


def train(
    model: nn.Module, task: TaskData, method: str, lr: float, budget: Budget, seed: int, device
) -> dict:
    """``budget.steps`` AdamW steps (linear warm-up and decay) through the book's training
    loop, on length-bucketed batches drawn with ``seed`` (the POS harness's); BitFit passes
    its filter."""
    g = np.random.default_rng(seed)
    lengths = np.array([len(x) for x, _ in task.train])
    batches = pos_transfer.bucketed_batches(lengths, budget.batch, budget.steps, g)
    model.to(device)

    def next_batch(t: int):
        b = _batch(task.task, [task.train[i] for i in batches[t]], task.pad)
        return {k: v.to(device) for k, v in b.items()}

    def loss_fn(m: nn.Module, b) -> torch.Tensor:
        out = m(b["input_ids"], b["attention_mask"])
        logits = out[0] if isinstance(out, tuple) else out
        return F.cross_entropy(
            logits.flatten(0, -2), b["labels"].flatten(), ignore_index=pos_transfer.IGNORE
        )

    torch.manual_seed(seed)  # dropout
    return fit(
        model,
        next_batch,
        loss_fn,
        budget.steps,
        lambda ps: torch.optim.AdamW(ps, lr=lr, weight_decay=0.0),
        make_scheduler=lambda o: torch.optim.lr_scheduler.LambdaLR(
            o, warmup_decay(budget.steps, budget.warmup)
        ),
        param_filter=methods.is_bias if method == "bitfit" else None,
    )


@torch.no_grad()
def item_scores(model: nn.Module, task: TaskData, examples: list, device, batch: int = 64):
    """Per-item scores whose mean is the accuracy: RT 0/1 per snippet (input order); POS per
    sentence, its correct tags times (sentences / tagged words), so that the mean over
    sentences is the token accuracy and a bootstrap resamples whole sentences."""
    model.eval()
    if task.task == "pos":
        out = pos_transfer.evaluate_items(model, examples, task.pad, batch, device)
        return out["correct"] * len(examples) / max(out["words"].sum(), 1)
    order = np.argsort([len(x) for x, _ in examples], kind="stable")

    def batches():
        for i in range(0, len(order), batch):
            b = _batch("rt", [examples[j] for j in order[i : i + batch]], task.pad)
            yield {k: v.to(device) for k, v in b.items()}

    hits = correct_items(
        lambda b: model(b["input_ids"], b["attention_mask"]).argmax(-1),
        batches(),
        lambda b: b["labels"],
    )
    out = np.empty(len(examples))
    out[order] = hits
    return out


def frozen_change(model: nn.Module, base: nn.Module) -> float:
    """Largest absolute change of a backbone weight that the method should not train (all
    weights but the biases for BitFit; every backbone parameter for the adapter methods)."""
    ref = dict(base.named_parameters())
    worst = 0.0
    for n, p in model.named_parameters():
        if p.requires_grad:
            continue
        key = (
            n.split("encoder.net.", 1)[-1]
            .replace("base_model.model.", "")
            .replace(".base_layer", "")
        )
        key = key.replace("base_model.", "")
        if key in ref and ref[key].shape == p.shape:
            worst = max(worst, float((p.detach().cpu() - ref[key].detach()).abs().max()))
    return worst


def run_method(
    task: TaskData,
    base: nn.Module,
    method: str,
    grid: list[float],
    seeds: list[int],
    budget: Budget,
    sizes: methods.Sizes,
    device,
) -> dict:
    """Grid at ``seeds[0]`` (dev accuracy per rate), then the chosen rate at the other seeds;
    test scores (seeds x items) at the chosen rate."""
    dev, models, secs = [], [], []
    for lr in grid:
        m = build(task.task, base, method, sizes, seeds[0])
        log = train(m, task, method, lr, budget, seeds[0], device)
        secs.append(log["seconds"])
        dev.append(float(item_scores(m, task, task.dev, device).mean()))
        models.append(m)
    k = int(np.argmax(dev))
    chosen = models[k]
    del models
    t0 = time.perf_counter()
    test = [item_scores(chosen, task, task.test, device)]
    eval_s = time.perf_counter() - t0
    frozen = frozen_change(chosen, base) if method != "full" else 0.0
    for s in seeds[1:]:
        m = build(task.task, base, method, sizes, s)
        secs.append(train(m, task, method, grid[k], budget, s, device)["seconds"])
        test.append(item_scores(m, task, task.test, device))
        frozen = max(frozen, frozen_change(m, base) if method != "full" else 0.0)
    words = None
    if task.task == "pos":  # tagged words per test sentence, for the token-level interval
        words = np.array([sum(t != pos_transfer.IGNORE for t in y) for _, y in task.test])
    return {
        "words": words,
        "grid": list(grid),
        "dev": dev,
        "lr": grid[k],
        "edge": len(grid) < 3 or k in (0, len(grid) - 1),
        "test": np.stack(test),
        "train_s": float(np.mean(secs)),
        "eval_s": eval_s,
        "frozen_change": frozen,
        "trainable": sum(p.numel() for p in chosen.parameters() if p.requires_grad),
    }


def run_all(
    base: nn.Module,
    source: str,
    tasks: dict[str, TaskData],
    method_list: list[str],
    grids: dict[str, dict[str, list[float]]],
    seeds: list[int],
    budget: Budget,
    sizes: methods.Sizes,
    device,
    log=print,
) -> dict[str, dict[str, dict]]:
    """``{task: {method: run_method(...)}}`` for one pretrained encoder ``base``; ``grids``
    holds each task's learning-rate grid per method."""
    out: dict[str, dict[str, dict]] = {}
    for t, td in tasks.items():
        out[t] = {}
        for m in method_list:
            r = run_method(td, base, m, grids[t][m], seeds, budget, sizes, device)
            out[t][m] = r
            log(
                f"{source} {t:3s} {m:7s} lr {r['lr']:.0e} dev {max(r['dev']):.3f} "
                f"test {r['test'].mean():.3f} ({r['train_s']:.1f} s per training)"
            )
    return out


# ----------------------------------------------------------------------- summaries


def gap(runs: dict[str, dict], method: str) -> stats.Estimate:
    """Test accuracy of ``method`` minus full fine-tuning, points, paired over seeds and items."""
    e = stats.bootstrap_items(runs[method]["test"], runs["full"]["test"])
    return stats.Estimate(100 * e.value, (100 * e.ci[0], 100 * e.ci[1]), e.n_seeds, e.method)


def unresolved(runs: dict[str, dict], method: str) -> str | None:
    """Why a gap cannot be read: a chosen learning rate at the edge of its grid."""
    edge = [m for m in (method, "full") if runs[m]["edge"]]
    if not edge:
        return None
    return "chosen learning rate at the edge of its grid: " + ", ".join(
        f"{m} {runs[m]['lr']:g}" for m in edge
    )


def token_accuracy(scores: np.ndarray, words: np.ndarray) -> stats.Estimate:
    """Token accuracy from per-sentence scores (``item_scores``' POS scores: correct tags
    times sentences / words) with a bootstrap that resamples whole sentences and divides by
    the resampled word count (the per-sentence scores alone would treat the word count as
    fixed and give a far wider interval)."""
    s = np.atleast_2d(scores)
    n, total = len(words), int(words.sum())
    correct = np.rint(s * total / n).astype(int)  # seeds x sentences
    groups = np.repeat(np.arange(n), words)
    within = np.arange(total) - np.repeat(np.cumsum(words) - words, words)
    tokens = (within[None, :] < np.repeat(correct, words, axis=1)).astype(float)
    return stats.bootstrap_groups(tokens, groups)


def accuracy_table(runs: dict[str, dict[str, dict]]) -> list[dict]:
    """One row per task and method: chosen rate, accuracy with its interval, gap to full."""
    rows = []
    for t, by in runs.items():
        for m, r in by.items():
            w = r.get("words")
            acc = stats.bootstrap_items(r["test"]) if w is None else token_accuracy(r["test"], w)
            row = {
                "task": t,
                "method": m,
                "lr": r["lr"],
                "edge": r["edge"],
                "accuracy": 100 * acc.value,
                "acc_lo": 100 * acc.ci[0],
                "acc_hi": 100 * acc.ci[1],
                "trainable": r["trainable"],
            }
            if m != "full" and "full" in by:
                g = gap(by, m)
                row.update(gap=g.value, gap_lo=g.ci[0], gap_hi=g.ci[1])
            rows.append(row)
    return rows


def memory_savings(rows: list[dict], method: str) -> dict[tuple[int, int], np.ndarray]:
    """Per shape, 1 - peak(method) / peak(full fine-tuning), one value per repeat (paired)."""
    peak = {(r["hidden"], r["layers"], r["method"], r["repeat"]): r["peak_mb"] for r in rows}
    shapes = sorted({(r["hidden"], r["layers"]) for r in rows})
    reps = sorted({r["repeat"] for r in rows})
    return {
        s: np.array([1 - peak[(*s, method, k)] / peak[(*s, "full", k)] for k in reps])
        for s in shapes
    }


def saving_growth(rows: list[dict], method: str) -> stats.Estimate:
    """Saving at the largest shape minus at the smallest, t interval over paired repeats."""
    sv = memory_savings(rows, method)
    shapes = sorted(sv, key=lambda s: s[0] * s[1])
    return stats.t_interval(sv[shapes[-1]] - sv[shapes[0]])


def below_full_share(rows: list[dict]) -> float:
    """Share of (shape, PEFT method, repeat) whose peak is below full fine-tuning's."""
    full = {
        (r["hidden"], r["layers"], r["repeat"]): r["peak_mb"] for r in rows if r["method"] == "full"
    }
    other = [r for r in rows if r["method"] != "full"]
    return float(
        np.mean([r["peak_mb"] < full[(r["hidden"], r["layers"], r["repeat"])] for r in other])
    )


def step_time_ratio(rows: list[dict], method: str) -> float:
    """Median seconds per step of ``method`` / full fine-tuning at the largest shape."""
    big = max({(r["hidden"], r["layers"]) for r in rows}, key=lambda s: s[0] * s[1])
    sel = [r for r in rows if (r["hidden"], r["layers"]) == big]
    t = {m: np.median([r["step_s"] for r in sel if r["method"] == m]) for m in (method, "full")}
    return float(t[method] / t["full"])


def parameter_table(configs: dict, sizes: methods.Sizes, n_classes: int = 2) -> list[dict]:
    """Per encoder configuration and method: parameters counted on the ``peft``-wrapped model
    (built on the meta device: shapes only, no memory), the method's equation, and the
    trainable share of the pretrained model in percent (the task head included)."""
    from transformers import BertModel

    rows = []
    for name, config in configs.items():
        for m in methods.METHODS:
            with torch.device("meta"):
                enc = methods.wrap(BertModel(config, add_pooling_layer=False), m, sizes)
            c = methods.counted(enc)
            head = config.hidden_size * n_classes + n_classes
            rows.append(
                {
                    "model": name,
                    "method": m,
                    "counted": c["trainable"],
                    "analytic": methods.analytic_count(m, config, sizes),
                    "backbone": c["backbone"],
                    "percent": 100 * (c["trainable"] + head) / c["backbone"],
                }
            )
    return rows


@torch.no_grad()
def identity_at_init(base: nn.Module, tok, texts: list[str], sizes: methods.Sizes) -> float:
    """Largest |output - base output| of LoRA, LoHa and (IA)3 right after wrapping: each is
    the identity at initialisation (B = 0; one Hadamard factor zero; unit scales)."""
    ids, mask = pad_ids(encode_texts(tok, texts, 64), pad_id(tok))
    base.eval()
    ref = base(input_ids=ids, attention_mask=mask).last_hidden_state
    worst = 0.0
    for m in ("lora", "loha", "ia3"):
        enc = methods.wrap(copy.deepcopy(base), m, sizes).eval()
        out = enc(ids, mask).last_hidden_state
        worst = max(worst, float((out - ref).abs().max()))
    return worst


def verdict_phrase(findings: list[dict], name: str) -> str:
    """'verdict' of a recorded finding, with its estimate and interval, for glued prose."""
    r = next(f for f in findings if f["name"] == name)
    ci = "" if r["ci"] is None else f" [{r['ci'][0]:.3g}, {r['ci'][1]:.3g}]"
    return f"**{r['verdict']}** ({r['value']:.3g}{ci})"


def collapsed(runs: dict[str, dict], method: str, majority: float, margin: float = 2.0) -> bool:
    """A method whose seed-mean test accuracy is within ``margin`` points of the majority
    class learned nothing: its gap to full fine-tuning says nothing about the method."""
    return bool(100 * (runs[method]["test"].mean() - majority) < margin)


def _md(head: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(out + ["| " + " | ".join(r) + " |" for r in rows])


def fractions_markdown(params) -> str:
    """Trainable share (percent, head included) per method and encoder, as a Markdown table."""
    models = list(dict.fromkeys(params.model))
    rows = []
    for m in methods.METHODS:
        sub = params[params.method == m].set_index("model").percent
        rows.append([methods.LABELS[m], *[f"{sub[k]:.3g} %" for k in models]])
    return _md(["method", *models], rows)


def memory_markdown(rows: list[dict]) -> str:
    """Per shape and method: parameters, peak memory, saving against full fine-tuning with
    its t interval over repeats, seconds per step; a Markdown table."""
    import pandas as pd

    df = pd.DataFrame(rows)
    out = []
    for (h, L), sub in df.groupby(["hidden", "layers"]):
        for m in dict.fromkeys(sub.method):
            s = sub[sub.method == m]
            sv = "-"
            if m != "full":
                e = stats.t_interval(memory_savings(rows, m)[(h, L)])
                sv = f"{e.value:.3f} [{e.ci[0]:.3f}, {e.ci[1]:.3f}]"
            out.append(
                [
                    f"{h} x {L}",
                    f"{s.total.iloc[0] / 1e6:.1f} M",
                    methods.LABELS[m],
                    f"{s.peak_mb.mean():.0f}",
                    sv,
                    f"{s.step_s.median():.3f}",
                ]
            )
    head = ["hidden x layers", "parameters", "method", "peak MiB", "saving [95 % CI]", "s / step"]
    return _md(head, out)


def accuracy_markdown(table) -> str:
    """Per task and method: chosen rate, test accuracy and gap to full fine-tuning, both with
    95 % intervals (points); a Markdown table."""
    out = []
    for r in table.itertuples():
        gap = "-" if r.method == "full" else f"{r.gap:+.1f} [{r.gap_lo:+.1f}, {r.gap_hi:+.1f}]"
        edge = " (grid edge)" if r.edge else ""
        out.append(
            [
                TASK_LABELS[r.task],
                methods.LABELS[r.method],
                f"{r.lr:g}{edge}",
                f"{r.accuracy:.1f} [{r.acc_lo:.1f}, {r.acc_hi:.1f}]",
                gap,
            ]
        )
    return _md(["task", "method", "learning rate", "test accuracy %", "minus full, points"], out)
