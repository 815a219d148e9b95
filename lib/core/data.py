"""Real data sets, read from one data directory (never downloaded at run time).

The directory is ``$REPRO_DATA`` or, when that is unset, ``~/.cache/repro-book/data``.
Every loader goes through :func:`path`, which names the missing file and where to get
it instead of failing somewhere deep in a parser.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

ENV_VAR = "REPRO_DATA"
DEFAULT_DIR = Path.home() / ".cache" / "repro-book" / "data"

# Where each data set comes from, for the error message of a missing file.
SOURCES = {
    "ud": "Universal Dependencies treebanks (CoNLL-U, CC BY-SA): "
    "https://universaldependencies.org, one folder per treebank, e.g. ud/UD_English-EWT/",
    "wikitext-2": "WikiText-2 v1 word-level (Merity et al. 2016, CC BY-SA 3.0): the files "
    "wiki.valid.tokens / wiki.test.tokens saved as wikitext-2/valid.txt and test.txt",
}

# Treebank folder and file prefix for each language code.
UD_TREEBANKS = {
    "en": ("UD_English-EWT", "en_ewt"),
    "de": ("UD_German-GSD", "de_gsd"),
    "fr": ("UD_French-GSD", "fr_gsd"),
    "es": ("UD_Spanish-GSD", "es_gsd"),
    "it": ("UD_Italian-PUD", "it_pud"),
    "pt": ("UD_Portuguese-Bosque", "pt_bosque"),
    "nl": ("UD_Dutch-Alpino", "nl_alpino"),
    "ru": ("UD_Russian-GSD", "ru_gsd"),
    "tr": ("UD_Turkish-BOUN", "tr_boun"),
    "fi": ("UD_Finnish-TDT", "fi_tdt"),
    "zh": ("UD_Chinese-GSD", "zh_gsd"),
    "hi": ("UD_Hindi-PUD", "hi_pud"),
    "ar": ("UD_Arabic-PUD", "ar_pud"),
}

Sentence = tuple[list[str], list[str]]


class DataMissing(FileNotFoundError):
    """A data file the chapter needs is not in the data directory."""


def data_dir() -> Path:
    """The data directory: ``$REPRO_DATA`` or the per-user cache folder."""
    return Path(os.environ.get(ENV_VAR) or DEFAULT_DIR).expanduser()


def path(dataset: str, *parts: str) -> Path:
    """Path of a file of ``dataset`` in the data directory; raise DataMissing if absent."""
    if dataset not in SOURCES:
        raise KeyError(f"unknown data set {dataset!r}; known: {', '.join(sorted(SOURCES))}")
    p = data_dir().joinpath(dataset, *parts)
    if not p.exists():
        raise DataMissing(
            f"missing data file {p}\n"
            f"  data set {dataset!r}: {SOURCES[dataset]}\n"
            f"  put it there, or point ${ENV_VAR} at a directory that holds {dataset}/"
            f"{'/'.join(parts)} (now: {data_dir()})"
        )
    return p


def dataset_files(dataset: str) -> list[Path]:
    """All files of a data set, sorted (for the runner's cache key)."""
    root = path(dataset)
    return sorted(p for p in root.rglob("*") if p.is_file())


def read_conllu(file: Path) -> list[Sentence]:
    """Words and UPOS tags of each sentence of a CoNLL-U file (multiword-token and empty-node lines skipped)."""
    sentences: list[Sentence] = []
    words: list[str] = []
    tags: list[str] = []
    for line in file.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            if words:
                sentences.append((words, tags))
                words, tags = [], []
            continue
        if line.startswith("#"):
            continue
        cols = line.split("\t")
        if not cols[0].isdigit():  # "3-4" multiword tokens, "5.1" empty nodes
            continue
        words.append(cols[1])
        tags.append(cols[3])
    if words:
        sentences.append((words, tags))
    return sentences


@lru_cache(maxsize=None)
def _ud_cached(lang: str, split: str) -> tuple[Sentence, ...]:
    folder, prefix = UD_TREEBANKS[lang]
    return tuple(read_conllu(path("ud", folder, f"{prefix}-ud-{split}.conllu")))


def ud_sentences(lang: str, split: str) -> list[Sentence]:
    """UD sentences of one language and split ("dev" or "test") as (words, UPOS tags) pairs."""
    if lang not in UD_TREEBANKS:
        raise KeyError(f"no UD treebank for {lang!r}; known: {', '.join(UD_TREEBANKS)}")
    if split not in ("dev", "test"):
        raise ValueError(f"split must be 'dev' or 'test', not {split!r}")
    return [(list(w), list(t)) for w, t in _ud_cached(lang, split)]


def wikitext_tokens(split: str) -> list[str]:
    """WikiText-2 tokens of a split, with ``<eos>`` closing every line (the papers' convention)."""
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', not {split!r}")
    text = path("wikitext-2", f"{split}.txt").read_text(encoding="utf-8")
    tokens: list[str] = []
    for line in text.splitlines():  # as reading the file line by line does
        tokens.extend(line.split())
        tokens.append("<eos>")
    return tokens
