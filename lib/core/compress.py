"""Compression operators that change what is stored and run, and honest size/FLOP accounting.

Every operator acts on ``nn.Linear`` / ``nn.Conv2d`` modules of a model in place:
unstructured global magnitude pruning (exact zeros, via :mod:`lib.core.pruning`), structured
pruning of FFN neurons (tensors physically shrink), int8 dynamic and static quantisation
(PyTorch's fbgemm int8 kernels), fake quantisation with a straight-through estimator (for
QAT and SDQ), truncated SVD, and layer fusion (similar same-shape layers averaged and tied
to one shared tensor). Sizes are bytes of a file written to disk in the format described
by :func:`pack_state`; FLOPs are counted by forward hooks on the layers that do the work.
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lib.core import pruning

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import torch.ao.nn.quantized as nnq
    import torch.ao.nn.quantized.dynamic as nnqd
    from torch.ao.quantization import quantize_dynamic

QLINEAR_TYPES = (nnqd.Linear, nnq.Linear)


# ---------------------------------------------------------------- module plumbing


def get_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule at a dotted path."""
    return model.get_submodule(name) if name else model


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at a dotted path (how operators swap layer types)."""
    parent, _, child = name.rpartition(".")
    setattr(get_module(model, parent), child, new)


def linear_names(model: nn.Module, prefix: str = "") -> list[str]:
    """Dotted names of the float ``nn.Linear`` modules under ``prefix``, in model order."""
    return [
        n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith(prefix)
    ]


# ---------------------------------------------------------------- unstructured pruning


def prune_unstructured(
    model: nn.Module, sparsity: float, names: list[str]
) -> dict[str, torch.Tensor]:
    """Zero exactly round(sparsity * N) of the N weights of the named layers, smallest magnitude
    first over all of them at once (global), and return the keep-masks."""
    weights = {n: get_module(model, n).weight for n in names}
    masks = pruning.global_masks(weights, sparsity)
    with torch.no_grad():
        for n, w in weights.items():
            w.mul_(masks[n])
    return masks


# ---------------------------------------------------------------- structured pruning


def shrink_linear(layer: nn.Linear, keep: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear keeping only the output rows (dim 0) or input columns (dim 1) in ``keep``."""
    w = layer.weight.detach().index_select(dim, keep).clone()
    out_f, in_f = w.shape
    new = nn.Linear(in_f, out_f, bias=layer.bias is not None)
    with torch.no_grad():
        new.weight.copy_(w)
        if layer.bias is not None:
            new.bias.copy_(layer.bias.detach() if dim == 1 else layer.bias.detach()[keep])
    return new


def neuron_importance(fc_in: nn.Linear, fc_out: nn.Linear) -> torch.Tensor:
    """Score of each hidden unit between two Linears: ||incoming row|| * ||outgoing column||
    (+ |bias|); a unit whose weights are all zero scores exactly 0."""
    w_in = (
        torch.cat([fc_in.weight.detach(), fc_in.bias.detach()[:, None]], 1)
        if fc_in.bias is not None
        else fc_in.weight.detach()
    )
    return w_in.norm(dim=1) * fc_out.weight.detach().norm(dim=0)


def prune_neurons(model: nn.Module, pairs: list[tuple[str, str]], fraction: float) -> int:
    """Physically remove ``fraction`` of the hidden units of each (fc_in, fc_out) pair, the
    lowest-importance ones; return how many units were removed in total."""
    removed = 0
    for n_in, n_out in pairs:
        fc_in, fc_out = get_module(model, n_in), get_module(model, n_out)
        score = neuron_importance(fc_in, fc_out)
        n_keep = score.numel() - int(round(fraction * score.numel()))
        keep = torch.sort(torch.topk(score, n_keep).indices).values
        set_module(model, n_in, shrink_linear(fc_in, keep, 0))
        set_module(model, n_out, shrink_linear(fc_out, keep, 1))
        removed += score.numel() - n_keep
    return removed


# ---------------------------------------------------------------- quantisation


# Activations of the static int8 layers take 7 bits (0..127): fbgemm's int8 kernels on CPUs
# without VNNI (AVX2 only) add pairs of uint8 x int8 products in int16, which saturates with
# 8-bit activations; PyTorch's x86 qconfig reduces the range for the same reason. Used on every
# machine, so that results do not depend on the CPU.
ACT_QMAX = 127


def qparams(
    lo: torch.Tensor, hi: torch.Tensor, qmin: int, qmax: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Affine scale and integer zero point mapping [lo, hi] (widened to contain 0) onto [qmin,
    qmax]."""
    lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
    scale = torch.clamp((hi - lo) / (qmax - qmin), min=1e-8)
    zero = torch.clamp(qmin - torch.round(lo / scale), qmin, qmax)
    return scale, zero


def fake_quant(
    x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmin: int, qmax: int
) -> torch.Tensor:
    """Quantise-dequantise with a straight-through gradient: forward is the int grid, backward the
    identity."""
    q = torch.clamp(torch.round(x / scale) + zero, qmin, qmax)
    y = (q - zero) * scale
    return x + (y - x).detach()


def quantize_dynamic_int8(model: nn.Module, names: list[str]) -> nn.Module:
    """Replace the named Linears by int8 dynamic-quantised Linears (fbgemm kernels), in place."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for n in names:
            holder = nn.Sequential(get_module(model, n))
            set_module(model, n, quantize_dynamic(holder, {nn.Linear}, dtype=torch.qint8)[0])
    return model


class RangeObserver(nn.Module):
    """Wraps a Linear during calibration and records the min/max of its inputs and outputs."""

    def __init__(self, layer: nn.Linear) -> None:
        super().__init__()
        self.layer = layer
        self.register_buffer("x_range", torch.tensor([np.inf, -np.inf]))
        self.register_buffer("y_range", torch.tensor([np.inf, -np.inf]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layer(x)
        for buf, t in ((self.x_range, x), (self.y_range, y)):
            buf[0] = torch.minimum(buf[0], t.detach().min())
            buf[1] = torch.maximum(buf[1], t.detach().max())
        return y


class StaticInt8Linear(nn.Module):
    """Static int8 Linear: input quantised with a calibrated 7-bit scale (``ACT_QMAX``), int8
    product in fbgemm, output requantised with a calibrated scale, then dequantised for the
    float ops around it."""

    def __init__(self, layer: nn.Linear, x_range: torch.Tensor, y_range: torch.Tensor) -> None:
        super().__init__()
        s_x, z_x = qparams(x_range[0], x_range[1], 0, ACT_QMAX)
        s_y, z_y = qparams(y_range[0], y_range[1], 0, 255)
        self.in_scale, self.in_zero = float(s_x), int(z_x)
        # the input scale and zero point travel in the state dict (a saved file is complete)
        self.register_buffer("in_qparams", torch.tensor([self.in_scale, float(self.in_zero)]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.qlinear = nnq.Linear(layer.in_features, layer.out_features, dtype=torch.qint8)
            w = layer.weight.detach()
            w_scale = torch.clamp(w.abs().amax(1) * 2 / 255, min=1e-8)
            qw = torch.quantize_per_channel(
                w, w_scale.double(), torch.zeros(w.shape[0], dtype=torch.long), 0, torch.qint8
            )
            self.qlinear.set_weight_bias(qw, None if layer.bias is None else layer.bias.detach())
            self.qlinear.scale, self.qlinear.zero_point = float(s_y), int(z_y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # quantized::linear resizes its output with an op that PyTorch does not flag as
        # deterministic; the int8 GEMM itself is exact, so the check is lifted for this call only
        det, warn_only = (
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
        )
        torch.use_deterministic_algorithms(False)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                q = torch.quantize_per_tensor(x, self.in_scale, self.in_zero, torch.quint8)
                return self.qlinear(q).dequantize()
        finally:
            torch.use_deterministic_algorithms(det, warn_only=warn_only)


def quantize_static_int8(model: nn.Module, names: list[str], calibrate) -> nn.Module:
    """Static int8: observe activation ranges while ``calibrate(model)`` runs, then swap the named
    Linears for StaticInt8Linear (per-channel int8 weights, per-tensor uint8 activations)."""
    for n in names:
        set_module(model, n, RangeObserver(get_module(model, n)))
    with torch.no_grad():
        calibrate(model)
    for n in names:
        obs = get_module(model, n)
        set_module(model, n, StaticInt8Linear(obs.layer, obs.x_range, obs.y_range))
    return model


# ---------------------------------------------------------------- low rank


def low_rank(layer: nn.Linear, rank: int) -> nn.Sequential:
    """Truncated SVD W ~ (U_r sqrt(S_r)) (sqrt(S_r) V_r^T) as two Linears (rank r, bias on the
    second)."""
    u, s, vh = torch.linalg.svd(layer.weight.detach(), full_matrices=False)
    root = s[:rank].sqrt()
    first = nn.Linear(layer.in_features, rank, bias=False)
    second = nn.Linear(rank, layer.out_features, bias=layer.bias is not None)
    with torch.no_grad():
        first.weight.copy_(root[:, None] * vh[:rank])
        second.weight.copy_(u[:, :rank] * root)
        if layer.bias is not None:
            second.bias.copy_(layer.bias.detach())
    return nn.Sequential(first, second)


def low_rank_model(model: nn.Module, names: list[str], ratio: float) -> None:
    """Replace each named Linear by its rank-(ratio * min(m, n)) factorisation, in place."""
    for n in names:
        layer = get_module(model, n)
        rank = max(1, int(round(ratio * min(layer.weight.shape))))
        set_module(model, n, low_rank(layer, rank))


# ---------------------------------------------------------------- layer fusion


def weight_distance(weights: torch.Tensor) -> torch.Tensor:
    """Pairwise distance between same-shape layers: 1 - cosine similarity of the flattened
    weights."""
    flat = F.normalize(weights.detach().reshape(weights.shape[0], -1), dim=1)
    return 1.0 - flat @ flat.T


def fusion_groups(dist: torch.Tensor, n_remove: int) -> list[list[int]]:
    """Greedy agglomeration: merge the closest pair of groups (single linkage) ``n_remove`` times,
    so m layers end up as m - n_remove groups that each keep one tensor."""
    m = dist.shape[0]
    if not 0 <= n_remove < m:
        raise ValueError(f"can remove 0..{m - 1} of {m} layers, not {n_remove}")
    label = list(range(m))
    d = dist.clone().fill_diagonal_(float("inf"))
    for _ in range(n_remove):
        i, j = divmod(int(torch.argmin(d)), m)
        old, new = label[j], label[i]
        label = [new if g == old else g for g in label]
        same = torch.tensor([a == b for a in label for b in label]).view(m, m)
        d[same] = float("inf")
    groups: dict[int, list[int]] = {}
    for idx, g in enumerate(label):
        groups.setdefault(g, []).append(idx)
    return sorted(groups.values())


def fuse_layers(model: nn.Module, names: list[str], n_remove: int) -> list[list[str]]:
    """Layer fusion: among same-shape layers ``names``, average the most similar ones into one
    shared Parameter (weight and bias), so each group is stored once and trained tied."""
    layers = [get_module(model, n) for n in names]
    groups = fusion_groups(weight_distance(torch.stack([lay.weight for lay in layers])), n_remove)
    for group in groups:
        if len(group) == 1:
            continue
        w = nn.Parameter(torch.stack([layers[i].weight.detach() for i in group]).mean(0))
        has_bias = layers[group[0]].bias is not None
        b = (
            nn.Parameter(torch.stack([layers[i].bias.detach() for i in group]).mean(0))
            if has_bias
            else None
        )
        for i in group:
            layers[i].weight = w
            if has_bias:
                layers[i].bias = b
    return [[names[i] for i in g] for g in groups]


# ---------------------------------------------------------------- size accounting


def pack_tensor(t: torch.Tensor) -> dict[str, torch.Tensor]:
    """A tensor in the smaller of two formats: dense, or bitmask (1 bit per entry) + non-zero
    values."""
    flat = t.detach().reshape(-1)
    nz = flat != 0
    sparse_bytes = (flat.numel() + 7) // 8 + int(nz.sum()) * flat.element_size()
    if sparse_bytes >= flat.numel() * flat.element_size():
        return {"dense": t.detach().contiguous()}
    bits = torch.from_numpy(np.packbits(nz.numpy()))
    return {"mask": bits, "values": flat[nz].clone(), "shape": torch.tensor(t.shape)}


def unpack_tensor(packed: dict[str, torch.Tensor]) -> torch.Tensor:
    """Inverse of :func:`pack_tensor`."""
    if "dense" in packed:
        return packed["dense"]
    shape = tuple(int(s) for s in packed["shape"])
    n = int(np.prod(shape))
    nz = torch.from_numpy(np.unpackbits(packed["mask"].numpy())[:n].astype(bool))
    out = torch.zeros(n, dtype=packed["values"].dtype)
    out[nz] = packed["values"]
    return out.view(shape)


def _module_tensors(name: str, module: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors that define one leaf module; int8 layers give int8 weights plus their scales."""
    if isinstance(module, StaticInt8Linear):
        extra = {"in_qparams": module.in_qparams}
        module = module.qlinear
    else:
        extra = {}
    if isinstance(module, QLINEAR_TYPES):
        w, b = module._weight_bias()
        out = {"weight_int8": w.int_repr()}
        if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            out["weight_scale"] = w.q_per_channel_scales().float()
            out["weight_zero"] = w.q_per_channel_zero_points().to(torch.int8)
        else:
            out["weight_scale"] = torch.tensor([w.q_scale()], dtype=torch.float32)
            out["weight_zero"] = torch.tensor([w.q_zero_point()], dtype=torch.int8)
        if b is not None:
            out["bias"] = b.detach()
        if isinstance(module, nnq.Linear):
            out["out_qparams"] = torch.tensor([module.scale, module.zero_point])
        return {f"{name}.{k}": v for k, v in {**out, **extra}.items()}
    own = {
        **dict(module.named_parameters(recurse=False)),
        **dict(module.named_buffers(recurse=False)),
    }
    return {f"{name}.{k}": v for k, v in own.items() if not k.endswith("_range")}


def pack_state(model: nn.Module, skip: tuple[str, ...] = ()) -> dict[str, object]:
    """What is written to disk: every tensor of every leaf module (except names starting with
    ``skip``), each in dense or bitmask+values form; a tensor shared by several layers is
    stored once and the others hold a reference to its name."""
    out: dict[str, object] = {}
    seen: dict[tuple, str] = {}
    alive: list[
        torch.Tensor
    ] = []  # hold every tensor, so a freed temporary's address is never reused
    whole = (StaticInt8Linear, *QLINEAR_TYPES)
    done: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(d + ".") for d in done) or any(name.startswith(s) for s in skip):
            continue
        if isinstance(module, whole):
            done.append(name)
        elif list(module.children()):
            continue
        for key, t in _module_tensors(name, module).items():
            alive.append(t)
            ptr = (t.data_ptr() if not t.is_quantized else id(t), t.dtype, tuple(t.shape))
            if ptr in seen and t.numel() > 0:
                out[key] = seen[ptr]
                continue
            seen[ptr] = key
            out[key] = pack_tensor(t)
    return out


def file_bytes(model: nn.Module, skip: tuple[str, ...] = (), path: str | Path | None = None) -> int:
    """Size in bytes of the file that :func:`pack_state` writes with ``torch.save`` (measured on
    disk)."""
    return saved_bytes(pack_state(model, skip), path)


def nonzero_params(model: nn.Module, skip: tuple[str, ...] = ()) -> int:
    """Non-zero stored parameters (shared tensors counted once; int8 weights included)."""
    total = 0
    for key, v in pack_state(model, skip).items():
        if isinstance(v, dict) and not key.endswith(("_scale", "_zero", "qparams")):
            t = unpack_tensor(v)
            total += int((t != 0).sum())
    return total


# ---------------------------------------------------------------- FLOPs


def flops(model: nn.Module, *inputs, **kw) -> int:
    """Multiply-accumulates x 2 of every Linear, int8 Linear and Conv2d in one forward pass
    (dense count: zeros are multiplied too, as dense kernels do)."""
    total = [0]

    def linear_hook(mod, args, out):
        total[0] += 2 * out.numel() * mod.in_features

    def conv_hook(mod, args, out):
        k = mod.weight.shape[1] * mod.weight.shape[2] * mod.weight.shape[3]
        total[0] += 2 * out.numel() * k

    handles = []
    for m in model.modules():
        if isinstance(m, (nn.Linear, *QLINEAR_TYPES)):
            handles.append(m.register_forward_hook(linear_hook))
        elif isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
    try:
        with torch.no_grad():
            model(*inputs, **kw)
    finally:
        for h in handles:
            h.remove()
    return total[0]


def state_bytes(state: dict) -> int:
    """Bytes of ``torch.save(state)`` in memory (for quick checks without touching disk)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getbuffer().nbytes


# ---------------------------------------------------------------- standard files (state dicts)
#
# What a practitioner ships: ``torch.save`` of a state dict, measured on disk. Four forms:
# fp32 (as trained), fp16 (every floating tensor halved), int8 (a quantised model's own state
# dict: int8 weights, their scales and zero points, fp32 biases and everything that is not
# quantised) and sparse (2-D floating tensors as torch sparse CSR with int32 indices, where
# that is smaller than dense). Tensors shared by several modules (layer fusion) are stored
# once by ``torch.save``, and the casts below keep them shared.


def _keep_shared(state: dict[str, object], cast) -> dict[str, object]:
    """``cast`` applied to every tensor of ``state``, once per distinct tensor (same storage,
    offset, shape and dtype), so that tensors shared before stay shared after."""
    done: dict[tuple, torch.Tensor] = {}
    out: dict[str, object] = {}
    for key, t in state.items():
        if not isinstance(t, torch.Tensor) or t.is_quantized or t.layout != torch.strided:
            out[key] = t
            continue
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if ident not in done:
            done[ident] = cast(t)
        out[key] = done[ident]
    return out


def fp32_state(model: nn.Module) -> dict[str, object]:
    """The model's state dict as trained (fp32; int8 modules keep their own packed form)."""
    return dict(model.state_dict())


def fp16_state(model: nn.Module) -> dict[str, object]:
    """The state dict with every floating tensor in half precision."""
    return _keep_shared(fp32_state(model), lambda t: t.half() if t.is_floating_point() else t)


def to_csr(t: torch.Tensor) -> torch.Tensor:
    """A 2-D tensor in torch's sparse CSR layout with int32 row pointers and column indices."""
    with warnings.catch_warnings():  # "sparse CSR support is in beta" notices
        warnings.simplefilter("ignore")
        csr = t.detach().to_sparse_csr()
        return torch.sparse_csr_tensor(
            csr.crow_indices().to(torch.int32),
            csr.col_indices().to(torch.int32),
            csr.values(),
            tuple(t.shape),
            check_invariants=False,
        )


def csr_bytes(t: torch.Tensor) -> int:
    """Payload bytes of :func:`to_csr`: one value and one int32 column index per non-zero,
    and rows + 1 int32 row pointers."""
    nnz = int((t != 0).sum())
    return nnz * (t.element_size() + 4) + (t.shape[0] + 1) * 4


def sparse_state(model: nn.Module) -> dict[str, object]:
    """The state dict with each 2-D floating tensor in CSR form where that is smaller than
    dense (pruned weights); everything else as in :func:`fp32_state`."""

    def cast(t: torch.Tensor) -> torch.Tensor:
        dense = t.numel() * t.element_size()
        if t.dim() == 2 and t.is_floating_point() and csr_bytes(t) < dense:
            return to_csr(t)
        return t

    return _keep_shared(fp32_state(model), cast)


def dense_tensor(t: object) -> object:
    """A tensor back in the strided layout (what loading a sparse file gives the model)."""
    if isinstance(t, torch.Tensor) and t.layout == torch.sparse_csr:
        return t.to_dense()
    return t


def without(state: dict[str, object], prefixes: tuple[str, ...]) -> dict[str, object]:
    """The state dict without the entries whose names start with one of ``prefixes``."""
    return {k: v for k, v in state.items() if not k.startswith(prefixes)}


def saved_bytes(state: dict[str, object], path: str | Path | None = None) -> int:
    """Bytes on disk of ``torch.save(state)`` (written to ``path``, or to a temporary file)."""
    if path is not None:
        torch.save(state, path)
        return os.path.getsize(path)
    with tempfile.NamedTemporaryFile(suffix=".pt") as f:
        torch.save(state, f.name)
        return os.path.getsize(f.name)


def payload_bytes(state: dict[str, object]) -> int:
    """Bytes of the tensors that ``torch.save(state)`` writes, counted from their shapes (each
    distinct storage once; int8 packed weights as int8 plus their scales): what
    :func:`saved_bytes` should equal up to the file's small pickle overhead."""
    seen: set[int] = set()
    total = 0

    def add(t: torch.Tensor) -> None:
        nonlocal total
        if t.layout == torch.sparse_csr:
            for part in (t.crow_indices(), t.col_indices(), t.values()):
                add(part)
            return
        if t.is_quantized:
            total += t.numel() * t.element_size()
            if t.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
                add(t.q_per_channel_scales())
                add(t.q_per_channel_zero_points())
            return
        st = t.untyped_storage()
        if st.data_ptr() in seen:
            return
        seen.add(st.data_ptr())
        total += st.nbytes()

    def walk(v: object) -> None:
        if isinstance(v, torch.Tensor):
            add(v)
        elif isinstance(v, (tuple, list)):
            for x in v:
                walk(x)

    for v in state.values():
        walk(v)
    return total


def expected_bytes(
    model: nn.Module, skip: tuple[str, ...] = (), int8: list[str] = (), sparse: bool = False
) -> int:
    """Payload bytes a file of ``model`` should hold, from shapes alone: every state-dict tensor
    (names starting with ``skip`` left out, shared tensors once) at its element size, except
    the weights of the Linears named in ``int8`` (1 byte per weight) and, with ``sparse``,
    2-D floating tensors at the smaller of dense and :func:`csr_bytes`. The independent side of
    the size checks: a float model predicts its own fp32 and sparse files and the file of its
    int8-quantised copy."""
    quantised = {f"{n}.weight" for n in int8}
    seen: set[tuple] = set()
    total = 0
    for key, t in model.state_dict().items():
        if key.startswith(skip):
            continue
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if ident in seen:
            continue
        seen.add(ident)
        dense = t.numel() * t.element_size()
        if key in quantised:
            total += t.numel()
        elif sparse and t.dim() == 2 and t.is_floating_point():
            total += min(dense, csr_bytes(t))
        else:
            total += dense
    return total
