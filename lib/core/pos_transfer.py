"""Zero-shot cross-lingual UPOS tagging: fine-tune a multilingual encoder on English, test
elsewhere.

The tag of each word goes on its first subword (the usual recipe for subword encoders);
other subwords and the special tokens are ignored by the loss and the score. Also here:
the two reference baselines (majority tag; most frequent tag per word, learned from
English), a subword-overlap measure of distance from English, and parallel-sentence
retrieval accuracy on the PUD treebanks (same sentences in several languages).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lib.core import data, encoders, pruning
from lib.core.data import UPOS
from lib.core.train import correct_items, fit, warmup_decay

TAG_ID = {t: i for i, t in enumerate(UPOS)}
IGNORE = -100


# ----------------------------------------------------------------------- tokenisation


def align_first_subword(
    pieces: list[list[int]],
    tags: list[int],
    bos: int,
    eos: int,
    max_len: int,
    skip: int | None = None,
) -> tuple[list[int], list[int]]:
    """<s> + subwords + </s> and a label per position: the word's tag on its first subword,
    IGNORE elsewhere. A leading bare word-boundary piece (``skip``, the lone metaspace that
    precedes e.g. every Chinese word) does not count as the first subword. Words that do not
    fit in ``max_len`` are dropped whole."""
    ids, labels = [bos], [IGNORE]
    for p, t in zip(pieces, tags):
        if len(ids) + len(p) > max_len - 1:
            break
        first = 1 if (len(p) > 1 and p[0] == skip) else 0
        ids += p
        labels += [IGNORE] * first + [t] + [IGNORE] * (len(p) - 1 - first)
    return ids + [eos], labels + [IGNORE]


def encode_treebank(
    tok, sentences: list[tuple[list[str], list[str]]], max_len: int
) -> list[tuple[list[int], list[int]]]:
    """Token ids and first-subword labels of every sentence (all words tokenised in one batch)."""
    words = [w for ws, _ in sentences for w in ws]
    pieces = tok.word_ids(words)
    out, k = [], 0
    for ws, ts in sentences:
        p = pieces[k : k + len(ws)]
        k += len(ws)
        out.append(
            align_first_subword(
                p, [TAG_ID[t] for t in ts], tok.bos, tok.eos, max_len, getattr(tok, "space", None)
            )
        )
    return out


def pad_batch(examples: list[tuple[list[int], list[int]]], pad: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` for a batch of examples."""
    T = max(len(ids) for ids, _ in examples)
    ids = torch.tensor([x + [pad] * (T - len(x)) for x, _ in examples])
    labels = torch.tensor([y + [IGNORE] * (T - len(y)) for _, y in examples])
    mask = (torch.arange(T)[None, :] < torch.tensor([len(x) for x, _ in examples])[:, None]).long()
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def spread_indices(n_total: int, n: int) -> np.ndarray:
    """``n`` evenly spread indices into ``n_total`` items (the same subset whatever the seed;
    for the parallel PUD treebanks the same sentences in every language)."""
    if n >= n_total:
        return np.arange(n_total)
    return np.unique(np.linspace(0, n_total - 1, n).round().astype(int))


@dataclass
class TransferData:
    """English training and dev sets and every language's test set, encoded (ids and
    first-subword labels), with the raw sentences the baselines need."""

    train: list
    dev: list
    test: dict[str, list]
    raw_train: list
    raw_test: dict[str, list]


def prepare_transfer(
    tok, langs: list[str], n_train: int, n_dev: int, n_eval: int, max_len: int
) -> TransferData:
    """English-EWT train (``n_train`` evenly spread sentences) for fine-tuning, EWT dev
    (``n_dev``) for selection, and the test split of English and of every other language in
    ``langs`` (``n_eval`` each) for the report; 0 or more than there are means all. Evenly
    spread subsets are the same whatever the seed (the same PUD sentences in ar/hi/it)."""

    def pick(s: list, n: int) -> list:
        return s if n <= 0 or n >= len(s) else [s[i] for i in spread_indices(len(s), n)]

    raw_train = pick(data.ud_sentences("en", "train"), n_train)
    raw_dev = pick(data.ud_sentences("en", "dev"), n_dev)
    raw_test = {
        lang: pick(data.ud_sentences(lang, "test"), n_eval)
        for lang in ["en"] + [x for x in langs if x != "en"]
    }
    return TransferData(
        encode_treebank(tok, raw_train, max_len),
        encode_treebank(tok, raw_dev, max_len),
        {k: encode_treebank(tok, v, max_len) for k, v in raw_test.items()},
        raw_train,
        raw_test,
    )


# ----------------------------------------------------------------------- model


class Tagger(nn.Module):
    """A pretrained encoder with a linear UPOS head on its last hidden states."""

    def __init__(self, encoder: nn.Module, n_tags: int = len(UPOS), dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, n_tags)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(tag logits [B, T, n_tags], last hidden states [B, T, H])."""
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(self.drop(h)), h


def freeze_embeddings(tagger: Tagger) -> None:
    """Freeze the encoder's embedding layer (word, position, type, LayerNorm): the 250k-row
    matrix is 3/4 of e5-small's weights, is never pruned, and training it on English only
    would move English rows away from the rest of the vocabulary."""
    for p in tagger.encoder.embeddings.parameters():
        p.requires_grad_(False)


def build_tagger(source: str, layers: int | None, seed: int, device) -> tuple[Tagger, object]:
    """Encoder + fresh head (seeded), embeddings frozen."""
    encoder, tok = encoders.load(source, layers)
    torch.manual_seed(seed)
    tagger = Tagger(encoder).to(device)
    freeze_embeddings(tagger)
    return tagger, tok


def reset_tagger(tagger: Tagger, pretrained: dict, seed: int) -> None:
    """Back to the pretrained encoder with a freshly seeded head."""
    tagger.load_state_dict(pretrained, strict=False)
    torch.manual_seed(seed)
    tagger.head.reset_parameters()


# ----------------------------------------------------------------------- training


@dataclass
class TrainConfig:
    """What one fine-tuning phase does (also the cache key of the dense model). The learning
    rate and batch size are the chapter's YAML parameters: no default is repeated here."""

    steps: int
    lr: float
    batch_size: int
    warmup: float = 0.1
    seed: int = 0
    sparsity: float = 0.0
    prune_end: float = 0.6  # fraction of the steps by which the final sparsity is reached
    prune_every: int = 5
    reg: str = "none"  # none | cos | frob | cc
    lam: float = 0.0
    bucket: bool = False  # batches of similar-length sentences (see bucketed_batches)


def bucketed_batches(
    lengths: np.ndarray, batch_size: int, steps: int, rng: np.random.Generator, pool: int = 50
) -> list[np.ndarray]:
    """``steps`` batches of sentence indices, each of similar lengths so that little padding is
    computed. Every epoch visits each sentence once: it is shuffled, cut into pools of ``pool``
    batches, each pool sorted by length and cut into batches, and the epoch's batches are
    shuffled (so short and long batches alternate, and a batch is still a random draw)."""
    lengths = np.asarray(lengths)
    out: list[np.ndarray] = []
    while len(out) < steps:
        perm = rng.permutation(len(lengths))
        epoch = []
        for start in range(0, len(perm), pool * batch_size):
            chunk = perm[start : start + pool * batch_size]
            chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
            epoch += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
        out += [epoch[i] for i in rng.permutation(len(epoch))]
    return out[:steps]


def lr_lambda(cfg: TrainConfig):
    """The learning-rate factor per step of every fine-tune on this harness
    (:func:`lib.core.train.warmup_decay` over ``cfg.steps`` with ``cfg.warmup``)."""
    return warmup_decay(cfg.steps, cfg.warmup)


def train_tagger(
    tagger: Tagger,
    train: list[tuple[list[int], list[int]]],
    cfg: TrainConfig,
    pad: int,
    ref: dict[str, torch.Tensor] | None = None,
    teacher: Tagger | None = None,
    device: torch.device | str = "cpu",
) -> dict:
    """Fine-tune on ``train`` for ``cfg.steps`` AdamW steps with gradual global magnitude
    pruning to ``cfg.sparsity`` and an optional alignment regularizer; return a log.

    Runs on :func:`lib.core.train.fit`: the regularizer is its extra loss term, pruning its
    after-step callback (masks for step t+1 are set after update t, so the weights every
    forward pass sees, and the final weights, are pruned). The random numbers drawn (data
    order from ``cfg.seed``, dropout after ``torch.manual_seed(cfg.seed)``) are those of the
    loop this replaced, so its results are unchanged (a unit test compares the two).
    Log: ``loss`` (task loss per step), ``reg`` (regularizer value), ``total``, ``sparsity``
    (target before each step), ``final_sparsity`` (measured exact zeros), ``seconds``.
    """
    g = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)  # dropout draws depend on this phase's seed only
    pruner = (
        pruning.MagnitudePruner(
            tagger.encoder,
            cfg.sparsity,
            start=0,
            end=int(cfg.prune_end * cfg.steps),
            every=cfg.prune_every,
        )
        if cfg.sparsity > 0
        else None
    )
    if cfg.bucket:
        batches = bucketed_batches(
            np.array([len(x) for x, _ in train]), cfg.batch_size, cfg.steps, g
        )
    else:
        order = np.concatenate(
            [g.permutation(len(train)) for _ in range(cfg.steps * cfg.batch_size // len(train) + 1)]
        )
        batches = [order[t * cfg.batch_size : (t + 1) * cfg.batch_size] for t in range(cfg.steps)]
    hidden: dict[str, torch.Tensor] = {}
    regs: list[float] = []
    sparsity = [pruner.step(0)] if pruner is not None else []

    def next_batch(step: int) -> dict[str, torch.Tensor]:
        return {
            k: v.to(device) for k, v in pad_batch([train[i] for i in batches[step]], pad).items()
        }

    def loss_fn(model: Tagger, b: dict[str, torch.Tensor]):
        logits, hidden["h"] = model(b["input_ids"], b["attention_mask"])
        loss = F.cross_entropy(logits.flatten(0, 1), b["labels"].flatten(), ignore_index=IGNORE)
        return loss, {"ce": loss.detach()}

    def extra_loss(model: Tagger, b: dict[str, torch.Tensor]) -> torch.Tensor:
        r = _regularizer(model, pruner, cfg, ref, teacher, b, hidden["h"])
        regs.append(float(r.detach()))
        return cfg.lam * r

    def after_step(step: int) -> None:
        if pruner is not None:
            s = pruner.step(step + 1)  # the last call sets the final masks
            if step + 1 < cfg.steps:
                sparsity.append(s)

    regularized = cfg.reg != "none" and cfg.lam != 0
    fitted = fit(
        tagger,
        next_batch,
        loss_fn,
        cfg.steps,
        lambda params: torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01),
        make_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg)),
        extra_loss=extra_loss if regularized else None,
        after_step=after_step,
    )
    return {
        "loss": fitted["ce"],
        "reg": regs if regularized else [0.0] * cfg.steps,
        "total": fitted["loss"],
        "sparsity": sparsity,
        "final_sparsity": pruner.sparsity() if pruner is not None else 0.0,
        "seconds": fitted["seconds"],
    }


def _regularizer(tagger, pruner, cfg, ref, teacher, b, h) -> torch.Tensor:
    """The chosen alignment term for this batch (a zero tensor for the plain arm)."""
    if cfg.reg == "none" or cfg.lam == 0:
        return torch.zeros((), device=h.device)
    if cfg.reg in ("cos", "frob"):
        w = pruning.prunable_weights(tagger.encoder)
        w = pruning.masked(w, pruner.masks) if pruner is not None else w
        fn = pruning.cosine_alignment if cfg.reg == "cos" else pruning.frobenius_alignment
        return fn(w, ref)
    if cfg.reg == "cc":
        with torch.no_grad():
            _, ht = teacher(b["input_ids"], b["attention_mask"])
        m = b["attention_mask"].bool()
        return pruning.cross_correlation_loss(ht[m], h[m]) / h.shape[-1]
    raise ValueError(f"unknown regularizer {cfg.reg!r}")


# ----------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_items(
    tagger: Tagger,
    examples: list[tuple[list[int], list[int]]],
    pad: int,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> dict[str, np.ndarray]:
    """Per sentence (input order): first-subword tags right (``correct``), tagged words
    (``words``) and the mean-pooled last-layer vector (``pooled``). Sentences are batched
    by length (little padding); the per-word scoring is :func:`lib.core.train.correct_items`.
    """
    tagger.eval()
    order = np.argsort([len(x) for x, _ in examples], kind="stable")
    pooled = torch.zeros(len(examples), tagger.encoder.config.hidden_size)
    sentence_of_word: list[np.ndarray] = []

    def batches():
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            b = {k: v.to(device) for k, v in pad_batch([examples[j] for j in idx], pad).items()}
            b["sentence"] = torch.as_tensor(idx)[:, None].expand(b["labels"].shape)
            yield b

    def predict(b: dict[str, torch.Tensor]) -> torch.Tensor:
        logits, h = tagger(b["input_ids"], b["attention_mask"])
        m = b["attention_mask"].unsqueeze(-1).float()
        pooled[b["sentence"][:, 0]] = ((h * m).sum(1) / m.sum(1)).cpu()
        sentence_of_word.append(b["sentence"][(b["labels"] != IGNORE).cpu()].numpy())
        return logits.argmax(-1)

    hits = correct_items(predict, batches(), lambda b: b["labels"], lambda b: b["labels"] != IGNORE)
    sent = np.concatenate(sentence_of_word) if sentence_of_word else np.zeros(0, dtype=int)
    n = len(examples)
    return {
        "correct": np.bincount(sent, weights=hits.astype(float), minlength=n),
        "words": np.bincount(sent, minlength=n),
        "pooled": pooled.numpy(),
    }


def evaluate(
    tagger: Tagger,
    examples: list[tuple[list[int], list[int]]],
    pad: int,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> tuple[float, np.ndarray]:
    """First-subword tagging accuracy and mean-pooled last-layer sentence vectors (input order)."""
    out = evaluate_items(tagger, examples, pad, batch_size, device)
    return float(out["correct"].sum() / max(out["words"].sum(), 1)), out["pooled"]


def retrieval_hits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Parallel-sentence retrieval per sentence: row i of ``a`` and of ``b`` are translations;
    1 if sentence i's nearest neighbour (cosine) on the other side is its translation, in
    both directions; 0.5 if in one; 0 if in none."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True).clip(1e-12)
    b = b / np.linalg.norm(b, axis=1, keepdims=True).clip(1e-12)
    s = a @ b.T
    gold = np.arange(len(a))
    return ((s.argmax(1) == gold).astype(float) + (s.argmax(0) == gold)) / 2


def retrieval_accuracy(a: np.ndarray, b: np.ndarray) -> float:
    """Retrieval accuracy averaged over both directions (the mean of :func:`retrieval_hits`)."""
    return float(retrieval_hits(a, b).mean())


def pairwise_retrieval_hits(vectors: dict[str, np.ndarray]) -> np.ndarray:
    """Per sentence, :func:`retrieval_hits` averaged over all pairs of languages in ``vectors``
    (an empty array with fewer than two languages)."""
    langs = sorted(vectors)
    hits = [
        retrieval_hits(vectors[x], vectors[y]) for i, x in enumerate(langs) for y in langs[i + 1 :]
    ]
    return np.mean(hits, axis=0) if hits else np.zeros(0)


def mean_pairwise_retrieval(vectors: dict[str, np.ndarray]) -> float:
    """Average retrieval accuracy over all pairs of languages in ``vectors``."""
    hits = pairwise_retrieval_hits(vectors)
    return float(hits.mean()) if len(hits) else float("nan")


# ----------------------------------------------------------------------- baselines and distance


def majority_tag(train: list[tuple[list[str], list[str]]]) -> str:
    """The most frequent tag in the training sentences."""
    return Counter(t for _, ts in train for t in ts).most_common(1)[0][0]


def word_tag_lookup(train: list[tuple[list[str], list[str]]]) -> dict[str, str]:
    """Most frequent tag of each (lower-cased) training word."""
    counts: dict[str, Counter] = {}
    for ws, ts in train:
        for w, t in zip(ws, ts):
            counts.setdefault(w.lower(), Counter())[t] += 1
    return {w: c.most_common(1)[0][0] for w, c in counts.items()}


def baseline_accuracy(
    train: list[tuple[list[str], list[str]]], test: list[tuple[list[str], list[str]]]
) -> dict[str, float]:
    """Accuracy of the majority tag and of most-frequent-tag-per-word (unknown words get the
    majority tag)."""
    maj = majority_tag(train)
    lookup = word_tag_lookup(train)
    gold = [t for _, ts in test for t in ts]
    words = [w.lower() for ws, _ in test for w in ws]
    pred = [lookup.get(w, maj) for w in words]
    return {
        "majority": float(np.mean([g == maj for g in gold])),
        "word_lookup": float(np.mean([p == g for p, g in zip(pred, gold)])),
    }


def subword_overlap(
    examples: list[tuple[list[int], list[int]]],
    english: list[tuple[list[int], list[int]]],
    specials: tuple[int, ...],
) -> float:
    """Share of a language's subword tokens whose id also occurs in the English training text."""
    en_vocab = np.unique(np.concatenate([np.asarray(x) for x, _ in english]))
    toks = np.concatenate([np.asarray(x) for x, _ in examples])
    toks = toks[~np.isin(toks, specials)]
    return float(np.isin(toks, en_vocab).mean())


# ----------------------------------------------------------------------- encoders and caching


def trainable_state(tagger: Tagger) -> dict[str, torch.Tensor]:
    """The parameters fine-tuning changes (everything but the frozen embeddings)."""
    return {n: p.detach().clone() for n, p in tagger.named_parameters() if p.requires_grad}


def train_config_dict(cfg: TrainConfig) -> dict:
    """The config as a plain dict (for cache keys and logs)."""
    return asdict(cfg)


def cached_dense_finetune(
    tagger: Tagger,
    train: list[tuple[list[int], list[int]]],
    cfg: TrainConfig,
    pad: int,
    key: dict,
    *,
    space: str,
    name: str = "dense",
    device: torch.device | str = "cpu",
    use_cache: bool = True,
) -> tuple[dict[str, torch.Tensor], dict]:
    """Dense fine-tune of ``tagger`` on ``train`` with ``cfg`` (:func:`train_tagger`, no
    pruning), or the saved result of the same configuration (:func:`lib.core.cache.cached`
    under ``<build>/cache/<space>/``). ``key`` must name everything else the result depends on
    (encoder, layers, data, max_len, a code version). The tagger ends holding the fine-tuned
    weights; returns (trainable state, training log with ``cached``)."""
    from lib.core import cache

    config = {"cfg": train_config_dict(cfg), **key}

    def build() -> dict:
        log = train_tagger(tagger, train, cfg, pad, device=device)
        return {"state": trainable_state(tagger), "log": log}

    saved, loaded = cache.cached(
        space, name, config, build, use_cache=use_cache, map_location=device
    )
    if loaded:
        tagger.load_state_dict(saved["state"], strict=False)
    return saved["state"], {**saved["log"], "cached": loaded}
