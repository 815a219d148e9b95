"""Scores of taggers on the UD transfer harness (:mod:`lib.core.pos_transfer`), per test
sentence, and the paired bootstrap behind every interval of a chapter that compares arms on
the same sentences: each replicate draws every language's sentences with replacement (the
same draw for every arm and seed) and then the seeds (the same for every arm and language).

Used by the GradDrop chapter and chapter 07 (compression across languages).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from lib.book import stats
from lib.core.pos_transfer import IGNORE, TransferData, baseline_accuracy


def words(examples: list) -> np.ndarray:
    """Tagged words per sentence."""
    return np.array([sum(y != IGNORE for y in ys) for _, ys in examples])


def language_table(d: TransferData) -> pd.DataFrame:
    """Per language: test sentences, tagged words and the two baselines (majority tag; most
    frequent tag per word), learned from the English training sentences."""
    rows = []
    for lang, ex in d.test.items():
        b = baseline_accuracy(d.raw_train, d.raw_test[lang])
        rows.append(
            {
                "lang": lang,
                "sentences": len(ex),
                "words": int(words(ex).sum()),
                "majority": b["majority"],
                "word_lookup": b["word_lookup"],
            }
        )
    return pd.DataFrame(rows).set_index("lang")


@dataclass
class Scores:
    """Per-sentence tags right, ``correct[lang]``: seeds x arms x sentences; ``words[lang]``:
    tagged words per sentence; ``arms``: labels; ``langs``: English first."""

    arms: list[str]
    seeds: list[int]
    langs: list[str]
    correct: dict[str, np.ndarray]
    words: dict[str, np.ndarray]

    @classmethod
    def from_runs(cls, runs: dict, d: TransferData) -> Scores:
        """From {(arm label, seed): {'test': {lang: tags right per sentence}}}."""
        arms = list(dict.fromkeys(a for a, _ in runs))
        seeds = sorted({s for _, s in runs})
        langs = list(d.test)
        correct = {
            lang: np.array([[runs[(a, s)]["test"][lang] for a in arms] for s in seeds], float)
            for lang in langs
        }
        return cls(arms, seeds, langs, correct, {k: words(v) for k, v in d.test.items()})

    def arm(self, label: str) -> int:
        return self.arms.index(label)

    def accuracy(self) -> np.ndarray:
        """Accuracy, 1 x seeds x arms x languages."""
        acc = [self.correct[lang].sum(-1) / self.words[lang].sum() for lang in self.langs]
        return np.stack(acc, -1)[None]

    def bootstrap(self, n_boot: int = stats.N_BOOT, seed: int = 0) -> np.ndarray:
        """Resampled accuracy, n_boot x seeds x arms x languages (paired, see the module)."""
        return paired_bootstrap(self.correct, self.words, self.langs, n_boot, seed)


def paired_bootstrap(
    correct: dict[str, np.ndarray],
    words: dict[str, np.ndarray],
    langs: list[str],
    n_boot: int = stats.N_BOOT,
    seed: int = 0,
) -> np.ndarray:
    """Resampled accuracy, n_boot x seeds x arms x languages, from the tags right per sentence
    (``correct[lang]``: seeds x arms x sentences) and the tagged words per sentence: each
    replicate draws every language's sentences (the same draw for every seed and arm), then
    the seeds (the same for every arm and language)."""
    rng = np.random.default_rng(seed)
    n_seeds, n_arms = correct[langs[0]].shape[:2]
    out = np.empty((n_boot, n_seeds, n_arms, len(langs)))
    for j, lang in enumerate(langs):
        n = len(words[lang])
        idx = rng.integers(0, n, size=(n_boot, n))
        counts = np.zeros((n_boot, n))
        np.add.at(counts, (np.arange(n_boot)[:, None], idx), 1.0)
        w = counts @ words[lang]
        out[..., j] = np.einsum("san,bn->bsa", correct[lang], counts) / w[:, None, None]
    seed_idx = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    return np.take_along_axis(out, seed_idx[:, :, None, None], axis=1)


def interval(point: float, boot: np.ndarray, n_seeds: int, what: str) -> stats.Estimate:
    """An estimate with the 95 % percentile interval of its bootstrap replicates."""
    lo, hi = np.quantile(boot, [(1 - stats.LEVEL) / 2, (1 + stats.LEVEL) / 2])
    return stats.Estimate(float(point), (float(lo), float(hi)), n_seeds, what)


def gains(acc: np.ndarray, sc: Scores, arm: str, ref: str) -> np.ndarray:
    """Accuracy points of ``arm`` minus ``ref``, mean over seeds: replicates x languages."""
    return 100 * (acc[:, :, sc.arm(arm), :] - acc[:, :, sc.arm(ref), :]).mean(1)


def zs_gain(sc: Scores, point, boot, arm: str, ref: str) -> stats.Estimate:
    """Mean zero-shot accuracy points of ``arm`` minus ``ref``, paired interval."""
    what = f"paired bootstrap over {len(sc.seeds)} seeds x test sentences of {len(sc.langs)} langs"
    return interval(
        gains(point, sc, arm, ref)[0, 1:].mean(),
        gains(boot, sc, arm, ref)[:, 1:].mean(1),
        len(sc.seeds),
        what,
    )


def en_gain(sc: Scores, point, boot, arm: str, ref: str) -> stats.Estimate:
    """English accuracy points of ``arm`` minus ``ref``, paired interval."""
    what = f"paired bootstrap over {len(sc.seeds)} seeds x English test sentences"
    return interval(
        gains(point, sc, arm, ref)[0, 0], gains(boot, sc, arm, ref)[:, 0], len(sc.seeds), what
    )


def mean_accuracy(point: np.ndarray, sc: Scores, arm: str) -> pd.Series:
    """An arm's accuracy per language, mean over seeds (fraction)."""
    return pd.Series(point[0, :, sc.arm(arm), :].mean(0), index=sc.langs)


def beats_baselines(table: pd.DataFrame, acc: pd.Series) -> float:
    """Share of the languages (English included) where ``acc`` beats both baselines."""
    best = table[["majority", "word_lookup"]].max(axis=1)
    return float((acc.loc[table.index] > best).mean())
