"""A small POS tagger trained with a per-token softmax or a smoothed-Viterbi structured loss.

Unary scores come from a window (convolutional) network over word, suffix and word-shape
embeddings; the structured models add a tag-transition matrix and train with the loss
Vit_Omega(theta) - <theta, Y_gold> (the CRF negative log-likelihood when Omega is the negative
entropy, a sparse analogue when Omega is the squared l2 norm), as in Mensch & Blondel (2018).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from lib.chapters.differentiable_dp import smooth_dp
from lib.core.data import UPOS
from lib.core.train import correct_items, fit

Sentence = tuple[list[str], list[str]]
KINDS = ("softmax", "entropy", "l2")


@dataclass
class Vocab:
    """Index maps for words, 3-letter suffixes and tags (index 0 = padding, 1 = unknown)."""

    words: dict[str, int]
    suffixes: dict[str, int]
    tags: list[str]


def build_vocab(train: list[Sentence], tags: list[str], min_count: int = 2) -> Vocab:
    """Vocabulary from training sentences; rare words map to 'unknown' so that it gets trained."""
    counts = Counter(w.lower() for words, _ in train for w in words)
    words = {w: i + 2 for i, w in enumerate(sorted(w for w, c in counts.items() if c >= min_count))}
    sufs = sorted({w.lower()[-3:] for words, _ in train for w in words})
    return Vocab(words, {s: i + 2 for i, s in enumerate(sufs)}, sorted(tags))


def _shape(word: str) -> int:
    """Word-shape class: 0 pad, then capitalised / all caps / digit / punctuation / hyphen /
    other."""
    if word.isupper() and len(word) > 1:
        return 2
    if word[:1].isupper():
        return 1
    if any(c.isdigit() for c in word):
        return 3
    if not any(c.isalnum() for c in word):
        return 4
    if "-" in word:
        return 5
    return 6


@dataclass
class Batch:
    """Padded index tensors of one batch of sentences."""

    words: Tensor
    suffixes: Tensor
    shapes: Tensor
    tags: Tensor
    mask: Tensor


def encode(sents: list[Sentence], vocab: Vocab, device: torch.device | str = "cpu") -> Batch:
    """Pad a list of sentences into index tensors (B, T) with a boolean mask."""
    t_max = max(len(w) for w, _ in sents)
    arr = np.zeros((5, len(sents), t_max), dtype=np.int64)
    tag_ix = {t: i for i, t in enumerate(vocab.tags)}
    for b, (words, tags) in enumerate(sents):
        n = len(words)
        arr[0, b, :n] = [vocab.words.get(w.lower(), 1) for w in words]
        arr[1, b, :n] = [vocab.suffixes.get(w.lower()[-3:], 1) for w in words]
        arr[2, b, :n] = [_shape(w) for w in words]
        arr[3, b, :n] = [tag_ix[t] for t in tags]
        arr[4, b, :n] = 1
    ten = torch.as_tensor(arr, device=device)
    return Batch(ten[0], ten[1], ten[2], ten[3], ten[4].bool())


def batches(
    sents: list[Sentence], size: int, rng: np.random.Generator | None
) -> list[list[Sentence]]:
    """Length-sorted batches (little padding), in random order when rng is given."""
    order = sorted(range(len(sents)), key=lambda i: len(sents[i][0]))
    groups = [[sents[i] for i in order[k : k + size]] for k in range(0, len(order), size)]
    if rng is not None:
        groups = [groups[i] for i in rng.permutation(len(groups))]
    return groups


class WindowTagger(nn.Module):
    """Window network for unary tag scores, plus tag transitions for the structured losses."""

    def __init__(
        self, vocab: Vocab, dim: int = 64, hidden: int = 128, window: int = 3, dropout: float = 0.25
    ) -> None:
        super().__init__()
        s = len(vocab.tags)
        self.word = nn.Embedding(len(vocab.words) + 2, dim, padding_idx=0)
        self.suffix = nn.Embedding(len(vocab.suffixes) + 2, dim // 2, padding_idx=0)
        self.shape = nn.Embedding(7, 8, padding_idx=0)
        self.conv = nn.Conv1d(dim + dim // 2 + 8, hidden, window, padding=window // 2)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, s)
        self.trans = nn.Parameter(torch.zeros(s, s))  # trans[i, j]: tag j at t-1 -> tag i at t
        self.start = nn.Parameter(torch.zeros(s))

    def unaries(self, batch: Batch) -> Tensor:
        """Per-token tag scores (B, T, S)."""
        x = torch.cat(
            [self.word(batch.words), self.suffix(batch.suffixes), self.shape(batch.shapes)], -1
        )
        h = torch.relu(self.conv(self.drop(x).transpose(1, 2))).transpose(1, 2)
        return self.out(h)

    def potentials(self, batch: Batch) -> Tensor:
        """Viterbi potentials theta (B, T, S, S) = unary[t, i] + trans[i, j] (start scores at t =
        0)."""
        u = self.unaries(batch)
        theta = u[:, :, :, None] + self.trans[None, None]
        first = (u[:, 0] + self.start)[:, :, None].expand(-1, -1, theta.shape[-1])
        return torch.cat([first[:, None], theta[:, 1:]], 1)


def gold_score(theta: Tensor, tags: Tensor, mask: Tensor) -> Tensor:
    """<theta, Y_gold> (B,): the score of the gold tag sequence under the potentials."""
    prev = torch.cat([torch.zeros_like(tags[:, :1]), tags[:, :-1]], 1)
    s = theta.shape[-1]
    flat = theta.reshape(*theta.shape[:2], s * s)
    picked = flat.gather(-1, (tags * s + prev)[..., None]).squeeze(-1)
    return (picked * mask.to(picked.dtype)).sum(1)


def loss_fn(model: WindowTagger, batch: Batch, kind: str, gamma: float) -> Tensor:
    """Mean training loss: 'softmax' (per-token cross-entropy) or 'entropy' / 'l2' (Vit_Omega
    loss)."""
    if kind == "softmax":
        u = model.unaries(batch)
        return nn.functional.cross_entropy(u[batch.mask], batch.tags[batch.mask])
    theta = model.potentials(batch)
    value = smooth_dp.viterbi(theta, gamma, kind, batch.mask)
    return (value - gold_score(theta, batch.tags, batch.mask)).mean()


@torch.no_grad()
def predict(model: WindowTagger, batch: Batch, kind: str) -> Tensor:
    """Predicted tags (B, T): per-token argmax for 'softmax', hard Viterbi decoding otherwise."""
    if kind == "softmax":
        return model.unaries(batch).argmax(-1)
    return smooth_dp.viterbi_decode(model.potentials(batch), batch.mask)


@torch.no_grad()
def marginal_nonzeros(model: WindowTagger, batch: Batch, kind: str, gamma: float) -> np.ndarray:
    """Per real token, the fraction of tags whose unary marginal is exactly non-zero (sparsity
    of Vit_Omega's gradient), in the order of :func:`correct_tokens`."""
    theta = model.potentials(batch).double()  # float64 so that tiny marginals do not underflow
    _, marg = smooth_dp.viterbi_marginals(theta, gamma, kind, batch.mask)
    return (marg.sum(-1) > 0).double().mean(-1)[batch.mask].cpu().numpy()


def correct_tokens(model: WindowTagger, test: list[Batch], kind: str) -> np.ndarray:
    """Per-token correctness (bool) over padded test batches, sentence by sentence."""
    return correct_items(
        lambda b: predict(model, b, kind), test, lambda b: b.tags, lambda b: b.mask
    )


def test_batches(test_sents: list[Sentence], vocab: Vocab, device="cpu") -> list[Batch]:
    """The test set as padded batches of 256 length-sorted sentences (a fixed order)."""
    return [encode(g, vocab, device) for g in batches(test_sents, 256, None)]


def token_sentences(test_sents: list[Sentence]) -> np.ndarray:
    """Sentence id of every test token, in the order of :func:`correct_tokens` (for the
    bootstrap over sentences)."""
    order = sorted(range(len(test_sents)), key=lambda i: len(test_sents[i][0]))
    return np.repeat(np.array(order), [len(test_sents[i][0]) for i in order])


def train(
    train_sents: list[Sentence],
    test_sents: list[Sentence],
    vocab: Vocab,
    kind: str,
    gamma: float,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    device: torch.device | str = "cpu",
) -> dict[str, object]:
    """Train one tagger with :func:`lib.core.train.fit` (Adam, shuffled length-sorted batches,
    the test accuracy after every epoch); return the accuracy before training and after each
    epoch, the per-token correctness of the final model, its marginal non-zeros per token
    (structured losses) and the wall time."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = WindowTagger(vocab).to(device)
    test = test_batches(test_sents, vocab, device)
    n_batches = -(-len(train_sents) // batch_size)
    epoch: list[list[Sentence]] = []
    accs: list[float] = []

    def next_batch(t: int) -> Batch:
        if t % n_batches == 0:  # a new epoch: shuffle the batches (same draws as before)
            epoch[:] = batches(train_sents, batch_size, rng)
        return encode(epoch[t % n_batches], vocab, device)

    def after_step(t: int) -> None:
        if (t + 1) % n_batches == 0:  # end of an epoch: score on test, then train on
            model.eval()
            accs.append(float(correct_tokens(model, test, kind).mean()))
            model.train()

    model.eval()
    acc0 = float(correct_tokens(model, test, kind).mean())  # the untrained start (epoch 0)
    log = fit(
        model,
        next_batch,
        lambda m, b: loss_fn(m, b, kind, gamma),
        epochs * n_batches,
        lambda params: torch.optim.Adam(params, lr=lr),
        after_step=after_step,
    )
    nonzeros = (
        None
        if kind == "softmax"
        else np.concatenate([marginal_nonzeros(model, b, kind, gamma) for b in test])
    )
    return {
        "acc0": acc0,
        "acc": accs,
        "correct": correct_tokens(model, test, kind),
        "nonzeros": nonzeros,
        "seconds": log["seconds"],
    }


def study(
    train_sents: list[Sentence],
    test_sents: list[Sentence],
    gamma: float,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    repeats: int,
    device: torch.device | str = "cpu",
) -> dict[str, list[dict]]:
    """Train every loss kind `repeats` times (seeds seed, seed+1, ...) on the same data; every
    arm is scored on the same test tokens, so comparisons between arms are paired."""
    vocab = build_vocab(train_sents, UPOS)
    return {
        kind: [
            train(
                train_sents,
                test_sents,
                vocab,
                kind,
                gamma,
                epochs,
                lr,
                batch_size,
                seed + r,
                device,
            )
            for r in range(repeats)
        ]
        for kind in KINDS
    }
