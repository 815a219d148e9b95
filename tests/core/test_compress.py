"""Compression operators on tiny models: exact sparsity, quantisation error bounds, SVD,
shared storage after fusion, shapes after structured pruning, and bytes on disk."""

import pytest
import torch
from torch import nn

from lib.core import compress


def mlp(seed: int = 0, d: int = 16, h: int = 32, depth: int = 3) -> nn.Sequential:
    torch.manual_seed(seed)
    layers = [nn.Linear(d, h), nn.ReLU()]
    for _ in range(depth - 2):
        layers += [nn.Linear(h, h), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(h, 4))


@pytest.mark.parametrize("sparsity", [0.5, 0.7, 0.9])
def test_unstructured_pruning_is_exact(sparsity):
    model = mlp(depth=4)
    names = compress.linear_names(model)
    compress.prune_unstructured(model, sparsity, names)
    ws = [compress.get_module(model, n).weight for n in names]
    n = sum(w.numel() for w in ws)
    zeros = sum(int((w == 0).sum()) for w in ws)
    assert zeros == round(sparsity * n)
    # global: the largest pruned magnitude is below the smallest kept one (up to ties)
    kept = torch.cat([w[w != 0].abs() for w in ws])
    assert kept.numel() == n - zeros


def test_fake_quant_error_within_half_step_and_straight_through():
    x = torch.linspace(-3, 5, 1001, requires_grad=True)
    s, z = compress.qparams(x.min(), x.max(), 0, 255)
    y = compress.fake_quant(x, s, z, 0, 255)
    assert float((y - x).detach().abs().max()) <= float(s.detach()) / 2 + 1e-6
    assert len(torch.unique(y.detach())) <= 256
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_dynamic_int8_matches_float_within_bound_and_uses_int8():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64))
    x = torch.randn(8, 64)
    ref = model(x).detach()
    w = model[0].weight.detach().clone()
    q = compress.quantize_dynamic_int8(model, ["0"])
    assert isinstance(q[0], compress.nnqd.Linear)
    w_q, _ = q[0]._weight_bias()
    assert w_q.dtype == torch.qint8
    # weight error is at most half a quantisation step
    assert float((w_q.dequantize() - w).abs().max()) <= w_q.q_scale() / 2 + 1e-7
    err = (q(x) - ref).abs().max()
    assert float(err) < 0.05 * float(ref.abs().max())


def test_static_int8_is_close_after_calibration():
    torch.manual_seed(0)
    model = mlp()
    x = torch.randn(64, 16)
    ref = model(x).detach()
    names = compress.linear_names(model)
    compress.quantize_static_int8(model, names, lambda m: m(x))
    assert all(isinstance(compress.get_module(model, n), compress.StaticInt8Linear) for n in names)
    torch.use_deterministic_algorithms(True)
    try:
        out = model(x)
        assert torch.equal(model(x), out)  # exact under the deterministic flag, which is restored
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
    assert float((out - ref).abs().max()) < 0.05 * float(ref.abs().max()) + 0.02


def test_svd_rank_and_eckart_young_error():
    torch.manual_seed(0)
    layer = nn.Linear(20, 12)
    seq = compress.low_rank(layer, 5)
    a, b = seq[0].weight, seq[1].weight
    approx = b @ a
    assert torch.linalg.matrix_rank(approx) == 5
    s = torch.linalg.svdvals(layer.weight.detach())
    err = torch.linalg.norm(approx - layer.weight.detach())
    assert torch.isclose(err, s[5:].pow(2).sum().sqrt(), rtol=1e-4)
    x = torch.randn(3, 20)
    assert torch.allclose(seq(x), x @ approx.T + layer.bias, atol=1e-5)
    full = compress.low_rank(layer, 12)
    assert torch.allclose(full(x), layer(x), atol=1e-5)


def test_fused_layers_share_storage_and_shrink_file():
    model = mlp(depth=6)
    names = [
        n
        for n in compress.linear_names(model)
        if compress.get_module(model, n).weight.shape == (32, 32)
    ]
    assert len(names) == 4
    before = compress.file_bytes(model)
    groups = compress.fuse_layers(model, names, 2)
    assert sorted(len(g) for g in groups) in ([1, 3], [2, 2])
    for g in groups:
        ptrs = {compress.get_module(model, n).weight.data_ptr() for n in g}
        assert len(ptrs) == 1
    unique = {compress.get_module(model, n).weight.data_ptr() for n in names}
    assert len(unique) == 2
    after = compress.file_bytes(model)
    saved = 2 * (32 * 32 + 32) * 4
    assert before - after >= saved * 0.95
    # gradients of a shared tensor sum over the layers that use it
    model(torch.randn(4, 16)).sum().backward()
    assert compress.get_module(model, groups[0][0]).weight.grad is not None


def test_fusion_groups_merge_closest_first():
    d = torch.tensor([[0, 1, 5, 5], [1, 0, 5, 5], [5, 5, 0, 2], [5, 5, 2, 0]], dtype=torch.float)
    assert compress.fusion_groups(d, 1) == [[0, 1], [2], [3]]
    assert compress.fusion_groups(d, 2) == [[0, 1], [2, 3]]
    assert compress.fusion_groups(d, 3) == [[0, 1, 2, 3]]


def test_structured_pruning_shrinks_shapes_and_keeps_outputs_for_zero_units():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 20), nn.GELU(), nn.Linear(20, 8))
    with torch.no_grad():  # five dead units: all their weights (in and out) are zero
        model[0].weight[:5] = 0
        model[0].bias[:5] = 0
        model[2].weight[:, :5] = 0
    x = torch.randn(6, 8)
    ref = model(x)
    removed = compress.prune_neurons(model, [("0", "2")], 0.25)
    assert removed == 5
    assert model[0].weight.shape == (15, 8) and model[0].bias.shape == (15,)
    assert model[2].weight.shape == (8, 15)
    assert torch.allclose(model(x), ref, atol=1e-6)


def test_pack_roundtrip_and_bitmask_bytes():
    torch.manual_seed(0)
    w = torch.randn(64, 64)
    w[torch.rand(64, 64) < 0.9] = 0
    packed = compress.pack_tensor(w)
    assert "mask" in packed
    assert torch.equal(compress.unpack_tensor(packed), w)
    nnz = int((w != 0).sum())
    assert packed["mask"].numel() == 64 * 64 // 8 and packed["values"].numel() == nnz
    dense = torch.randn(10, 10)
    assert "dense" in compress.pack_tensor(dense)


def test_file_bytes_is_what_is_on_disk_and_counts_formats(tmp_path):
    model = nn.Sequential(nn.Linear(256, 256, bias=False))
    dense = compress.file_bytes(model, path=tmp_path / "d.pt")
    assert dense == (tmp_path / "d.pt").stat().st_size
    assert 256 * 256 * 4 <= dense < 256 * 256 * 4 + 4096
    compress.prune_unstructured(model, 0.9, ["0"])
    sparse = compress.file_bytes(model)
    expect = 256 * 256 // 8 + round(0.1 * 256 * 256) * 4
    assert expect <= sparse < expect + 4096
    assert compress.nonzero_params(model) == 256 * 256 - round(0.9 * 256 * 256)
    q = compress.quantize_dynamic_int8(nn.Sequential(nn.Linear(256, 256, bias=False)), ["0"])
    qb = compress.file_bytes(q)
    assert 256 * 256 <= qb < 256 * 256 + 4096


def test_flops_of_linear_and_conv():
    model = nn.Sequential(nn.Linear(10, 7), nn.Linear(7, 3))
    assert compress.flops(model, torch.randn(5, 10)) == 2 * 5 * (10 * 7 + 7 * 3)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    assert compress.flops(conv, torch.randn(2, 3, 8, 8)) == 2 * 2 * 4 * 8 * 8 * 3 * 9


def test_packing_int8_layers_never_mistakes_a_freed_temporary_for_a_shared_tensor():
    # Distinct int8 layers unpack their weights into fresh temporaries; a freed temporary's
    # address can come back for the next one, which must not be stored as a reference.
    model = mlp(depth=6, h=64)
    names = compress.linear_names(model)
    compress.prune_unstructured(model, 0.9, names)  # sparse int8 weights take the bitmask path
    q = compress.quantize_dynamic_int8(model, names)
    refs = [k for k, v in compress.pack_state(q).items() if isinstance(v, str)]
    assert refs == []
    assert len({compress.state_bytes(compress.pack_state(q)) for _ in range(20)}) == 1


# ---------------------------------------------------------------- standard state-dict files


def test_fp16_file_halves_floats_and_keeps_tied_tensors_shared():
    model = mlp(depth=4)
    compress.fuse_layers(model, ["2", "4"], 1)  # the two hidden Linears tied
    fp32, fp16 = compress.fp32_state(model), compress.fp16_state(model)
    assert fp16["2.weight"] is fp16["4.weight"] and fp16["2.weight"].dtype == torch.float16
    b32, b16 = compress.saved_bytes(fp32), compress.saved_bytes(fp16)
    # the tied tensor is stored once in both files: payload from shapes, once per tensor
    assert compress.payload_bytes(fp32) == compress.expected_bytes(model)
    assert compress.payload_bytes(fp16) == compress.payload_bytes(fp32) // 2
    assert b32 >= compress.payload_bytes(fp32) and b16 >= compress.payload_bytes(fp16)
    assert abs(b16 - b32 / 2) < 2000  # only the pickle overhead is not halved


def test_sparse_file_is_csr_with_int32_indices_and_loads_back(tmp_path):
    model = mlp(depth=4, h=64)
    names = compress.linear_names(model)
    compress.prune_unstructured(model, 0.8, names)
    state = compress.sparse_state(model)
    csr = [k for k, v in state.items() if v.layout == torch.sparse_csr]
    assert csr and all(state[k].col_indices().dtype == torch.int32 for k in csr)
    for k in csr:
        w = model.state_dict()[k]
        assert compress.csr_bytes(w) < w.numel() * 4
    f = tmp_path / "m.pt"
    n = compress.saved_bytes(state, f)
    assert n == f.stat().st_size
    assert compress.payload_bytes(state) == compress.expected_bytes(model, sparse=True)
    loaded = {k: compress.dense_tensor(v) for k, v in torch.load(f, weights_only=True).items()}
    fresh = mlp(depth=4, h=64)
    fresh.load_state_dict(loaded)
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    # a dense model gains nothing from CSR: the sparse file is the fp32 file
    assert compress.payload_bytes(compress.sparse_state(mlp())) == compress.expected_bytes(mlp())


def test_int8_file_holds_one_byte_per_weight_and_embeddings_can_be_left_out():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(100, 32), nn.Linear(32, 64), nn.Linear(64, 8))
    names = ["1", "2"]
    expect_all = compress.expected_bytes(model, int8=names)
    expect_noemb = compress.expected_bytes(model, skip=("0.",), int8=names)
    assert expect_all - expect_noemb == 100 * 32 * 4  # the fp32 embedding table
    assert expect_noemb == (32 * 64 + 64 * 8) + 4 * (64 + 8)
    q = compress.quantize_dynamic_int8(model, names)
    state = compress.fp32_state(q)
    # plus each quantised Linear's output scale (fp32) and zero point (int64) entries
    assert compress.payload_bytes(state) == expect_all + 2 * (4 + 8)
    no_emb = compress.without(state, ("0.",))
    assert not any(k.startswith("0.") for k in no_emb)
    assert compress.saved_bytes(no_emb) < compress.saved_bytes(state) - 100 * 32 * 4 + 200


def test_static_int8_state_dict_carries_its_input_quantisation():
    torch.manual_seed(0)
    model = mlp()
    x = torch.randn(64, 16)
    compress.quantize_static_int8(model, ["0"], lambda m: m(x))
    layer = compress.get_module(model, "0")
    state = model.state_dict()
    assert torch.allclose(state["0.in_qparams"], torch.tensor([layer.in_scale, layer.in_zero]))


def test_static_int8_gives_the_same_result_on_every_quantised_engine():
    # fbgemm without VNNI saturates int16 pair sums of 8-bit activations; the 7-bit range of
    # ACT_QMAX avoids it, so x86/fbgemm and qnnpack kernels agree on any CPU
    torch.manual_seed(0)
    layer = nn.Linear(256, 64)
    layer.weight.data *= 8  # large weights: the pair sums that would overflow int16
    x = torch.randn(32, 256).abs() * 4
    ranges = (torch.stack([x.min(), x.max()]), torch.stack([(y := layer(x)).min(), y.max()]))
    engines = [
        e for e in ("x86", "fbgemm", "qnnpack") if e in torch.backends.quantized.supported_engines
    ]
    before, out = torch.backends.quantized.engine, {}
    try:
        for e in engines:
            torch.backends.quantized.engine = e
            with torch.no_grad():
                out[e] = compress.StaticInt8Linear(layer, *ranges)(x)
    finally:
        torch.backends.quantized.engine = before
    scale = float(y.abs().max())
    for e in engines[1:]:
        assert float((out[e] - out[engines[0]]).abs().max()) < 0.02 * scale, e
    assert float((out[engines[0]] - y.detach()).norm() / y.norm()) < 0.05
