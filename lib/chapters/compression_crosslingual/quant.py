"""Weight quantisation to b bits for the UD tagger: the quantiser, training through it, the
stored file, and the quantisation error of every sublayer.

Weights are quantised per output row, symmetric: ``q = clamp(round(w / s), -Q, Q)`` with
``Q = 2**(b-1) - 1`` and ``s = max|w_row| / Q`` (``2**b - 1`` levels, zero exact). Training
goes through :func:`lib.core.compress.fake_quant` (straight-through gradient); activations
stay in float (weight-only quantisation). The word-embedding matrix (frozen on this harness)
can be quantised the same way, once, by rounding (it never trains).
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lib.core.compress import fake_quant, get_module, set_module

# the six Linear sublayers of a BERT layer, in forward order: short name -> module path
SUBLAYERS = {
    "Q": "attention.self.query",
    "K": "attention.self.key",
    "V": "attention.self.value",
    "attn out": "attention.output.dense",
    "FFN in": "intermediate.dense",
    "FFN out": "output.dense",
}
EMBEDDING = "encoder.embeddings.word_embeddings"


def qmax(bits: int) -> int:
    """Largest integer code of a symmetric ``bits``-bit grid (codes -qmax..qmax)."""
    if not 2 <= bits <= 16:
        raise ValueError(f"bits must be in 2..16, got {bits}")
    return 2 ** (bits - 1) - 1


def row_scale(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-row scale max|w_row| / qmax (rows x 1), never zero."""
    w = w.detach()
    top = torch.maximum(w.amax(1, keepdim=True), -w.amin(1, keepdim=True))  # max |w|, no copy
    return torch.clamp(top / qmax(bits), min=1e-12)


def fake_quant_rows(w: torch.Tensor, bits: int) -> torch.Tensor:
    """``w`` on its per-row symmetric ``bits``-bit grid; gradient straight through."""
    m = qmax(bits)
    return fake_quant(w, row_scale(w, bits), torch.zeros((), device=w.device), -m, m)


def codes(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(integer codes as int8, per-row scales as float32) of ``w``."""
    s = row_scale(w, bits)
    m = qmax(bits)
    q = torch.clamp(torch.round(w.detach() / s), -m, m)
    return q.to(torch.int8), s.squeeze(1).float()


class QuantLinear(nn.Linear):
    """A Linear whose forward uses its weight on the ``bits``-bit grid (training: STE)."""

    bits: int = 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, fake_quant_rows(self.weight, self.bits), self.bias)


def encoder_linears(tagger: nn.Module) -> list[str]:
    """Dotted names of the sublayer Linears of every encoder layer, layer by layer."""
    n = len(tagger.encoder.encoder.layer)
    return [f"encoder.encoder.layer.{i}.{p}" for i in range(n) for p in SUBLAYERS.values()]


def to_quant(model: nn.Module, names: list[str], bits: int) -> None:
    """Swap the named Linears for QuantLinears sharing their parameters (QAT and SDQ)."""
    for n in names:
        old = get_module(model, n)
        new = QuantLinear.__new__(QuantLinear)
        new.__dict__ = old.__dict__
        new.bits = bits
        set_module(model, n, new)


def from_quant(model: nn.Module) -> None:
    """QuantLinears back to plain Linears (their float weights untouched)."""
    for n, m in list(model.named_modules()):
        if isinstance(m, QuantLinear):
            new = nn.Linear.__new__(nn.Linear)
            new.__dict__ = {k: v for k, v in m.__dict__.items() if k != "bits"}
            set_module(model, n, new)


@torch.no_grad()
def round_weights(model: nn.Module, names: list[str], bits: int) -> None:
    """Post-training quantisation in place: each named module's weight onto its grid (after
    this a plain forward pass is the quantised model's). The same float operations as
    :func:`codes` followed by code x scale, done in place (the embedding matrix is large)."""
    m = qmax(bits)
    for n in names:
        w = get_module(model, n).weight
        s = row_scale(w, bits)
        w.div_(s).round_().clamp_(-m, m).mul_(s)


def quantized_names(tagger: nn.Module, embedding: bool) -> list[str]:
    """What a quantised model stores on the grid: the encoder Linears (and the word
    embeddings when ``embedding``)."""
    return encoder_linears(tagger) + ([EMBEDDING] if embedding else [])


# ----------------------------------------------------------------------- the stored file


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """Codes in -7..7 (int8) as two per byte (uint8; an odd count gets a zero pad)."""
    u = (q.reshape(-1) + 8).to(torch.uint8)  # 1..15
    if u.numel() % 2:
        u = torch.cat([u, torch.full((1,), 8, dtype=torch.uint8)])
    return u[0::2] | (u[1::2] << 4)


def unpack_nibbles(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_nibbles`: the first ``n`` codes as int8."""
    lo, hi = packed & 0x0F, packed >> 4
    u = torch.stack([lo, hi], 1).reshape(-1)[:n]
    return u.to(torch.int8) - 8


def pack_model(model: nn.Module, names: list[str], bits: int | None) -> dict[str, object]:
    """What is written to disk: every parameter in float32, except the weights of ``names``,
    stored as integer codes (int8 for 8 bits, two per byte for 4) with one float32 scale per
    row (``bits`` None: everything float32, the dense file)."""
    out: dict[str, object] = {}
    quant = {f"{n}.weight" for n in names} if bits else set()
    for key, p in model.state_dict().items():
        if key in quant:
            q, s = codes(p, bits)
            stored = q if bits == 8 else pack_nibbles(q) if bits == 4 else q
            out[key] = {"codes": stored, "scale": s, "shape": torch.tensor(p.shape), "bits": bits}
        else:
            out[key] = p.detach()
    return out


def unpack_model(packed: dict[str, object]) -> dict[str, torch.Tensor]:
    """The float state dict a packed file stands for."""
    out = {}
    for key, v in packed.items():
        if isinstance(v, dict):
            shape = tuple(int(x) for x in v["shape"])
            n = int(np.prod(shape))
            q = unpack_nibbles(v["codes"], n) if v["bits"] == 4 else v["codes"]
            out[key] = q.reshape(shape).float() * v["scale"][:, None]
        else:
            out[key] = v
    return out


def tensor_bytes(packed: dict[str, object], prefix: str = "") -> dict[str, int]:
    """Bytes of the stored tensors (keys starting with ``prefix``): ``quantized`` (codes and
    scales), ``quantized_weights`` (their count), ``float``."""
    qb = nq = fb = 0
    for key, v in packed.items():
        if not key.startswith(prefix):
            continue
        if isinstance(v, dict):
            qb += v["codes"].numel() * v["codes"].element_size() + v["scale"].numel() * 4
            nq += int(np.prod([int(x) for x in v["shape"]]))
        else:
            fb += v.numel() * v.element_size()
    return {"quantized": qb, "quantized_weights": nq, "float": fb}


def file_bytes(packed: dict[str, object]) -> int:
    """Size of the file ``torch.save(packed)`` writes (in a memory-backed folder when there
    is one: the size of a file does not depend on where it lies)."""
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(dir=shm) as tmp:
        path = os.path.join(tmp, "model.pt")
        torch.save(packed, path)
        return os.path.getsize(path)


# ----------------------------------------------------------------------- sublayer errors


class SublayerTap:
    """Forward hooks on the six sublayer Linears of every encoder layer: keeps each output
    (and input) of the last forward pass, by (layer, sublayer)."""

    def __init__(self, tagger: nn.Module, keep_inputs: bool = False):
        self.out: dict[tuple[int, str], torch.Tensor] = {}
        self.inp: dict[tuple[int, str], torch.Tensor] = {}
        self.handles = []
        for i, layer in enumerate(tagger.encoder.encoder.layer):
            for short, path in SUBLAYERS.items():
                self.handles.append(
                    layer.get_submodule(path).register_forward_hook(
                        self._hook((i, short), keep_inputs)
                    )
                )

    def _hook(self, key, keep_inputs: bool):
        def hook(mod, args, out):
            self.out[key] = out
            if keep_inputs:
                self.inp[key] = args[0]

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@torch.no_grad()
def sublayer_errors(
    reference: nn.Module,
    quantized: nn.Module,
    batches,
    n_sentences: int,
    bits: int,
) -> dict[str, np.ndarray]:
    """Quantisation error of every sublayer output, per sentence: ``acc_err`` (squared error
    of the quantised model's sublayer output against the reference model's, on the same
    sentence: the error accumulated through all layers below), ``local_err`` (squared error
    of the reference model's sublayer when only its own weight is rounded to ``bits``, its
    input exact) and ``ref`` (squared norm of the reference output); each sentences x layers
    x sublayers, summed over a sentence's real tokens. ``batches`` yields (sentence indices,
    input ids, attention mask)."""
    layers = len(reference.encoder.encoder.layer)
    shape = (n_sentences, layers, len(SUBLAYERS))
    out = {k: np.zeros(shape) for k in ("acc_err", "local_err", "ref")}
    ta, tb = SublayerTap(reference, keep_inputs=True), SublayerTap(quantized)
    names = list(SUBLAYERS)
    try:
        for idx, ids, mask in batches:
            reference(ids, mask)
            quantized(ids, mask)
            m = mask.unsqueeze(-1).float()
            for (i, short), y in ta.out.items():
                j = names.index(short)
                lin = reference.encoder.encoder.layer[i].get_submodule(SUBLAYERS[short])
                dw = fake_quant_rows(lin.weight, bits) - lin.weight
                local = F.linear(ta.inp[(i, short)], dw)
                acc = tb.out[(i, short)] - y
                for k, t in (("acc_err", acc), ("local_err", local), ("ref", y)):
                    out[k][idx, i, j] = (t.pow(2) * m).sum((1, 2)).double().numpy()
    finally:
        ta.remove()
        tb.remove()
    return out


def relative_error(err: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Relative error sqrt(sum err / sum ref) over sentences: layers x sublayers (inputs are
    sentences x layers x sublayers, or replicates x ... summed over axis -3)."""
    return np.sqrt(err.sum(-3) / np.maximum(ref.sum(-3), 1e-30))
