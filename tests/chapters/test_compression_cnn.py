"""The CNN testbed's building blocks: the Fashion-MNIST reader, the model and its FLOPs
formula, each family's operator against an independent reference (channel pruning of dead
channels changes nothing, full-rank SVD reproduces the convolution, int8 convolution close to
float, int4 packing round trip), sizes on disk, nested budgets (a checkpoint of a long run is
the short run), cached teacher outputs, and the statistics of the equal-accuracy table."""

import gzip

import numpy as np
import pytest
import torch

from lib.chapters.compression import cnn
from lib.core import compress
from lib.core.data import MissingPackage, fashion_mnist, read_idx


def test_read_idx_roundtrip(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 8, 3]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    f = tmp_path / "x.gz"
    with gzip.open(f, "wb") as g:
        g.write(header + arr.tobytes())
    assert np.array_equal(read_idx(f), arr)  # the registry's reader of Fashion-MNIST


def test_fashion_mnist_shapes():
    try:
        x, y = fashion_mnist("test")
    except MissingPackage:
        pytest.skip("dataset-fashion-mnist not installed")
    assert x.shape == (10000, 1, 28, 28) and y.shape == (10000,)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0 and set(y.tolist()) == set(range(10))


def _model(width=8, depth=2, seed=0):
    torch.manual_seed(seed)
    return cnn.ResCNN(width, depth)


def _toy(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 28, 28, generator=g)
    return cnn.Split(x, (x.mean((1, 2, 3)) > 0).long())


def test_flops_hooks_match_the_formula_for_dense_narrow_and_factorised_models():
    x = torch.zeros(1, 1, 28, 28)
    m = _model(8, 3)
    assert cnn.count_flops(m, x) == cnn.flops_formula(8, 3, 8)
    narrow = cnn.prune_channels(m, 0.5)
    assert cnn.shape_of(narrow) == {"width": 4, "stem": 4, "rank": None}
    assert cnn.count_flops(narrow, x) == cnn.flops_formula(4, 3, 4)
    rank = cnn.low_rank_model(m, 0.25)
    assert rank == 2 and cnn.count_flops(m, x) == cnn.flops_formula(8, 3, 8, rank=2)


def test_removing_dead_channels_changes_nothing():
    m = _model(8, 2)
    dead_stream, dead_stem = 3, 5
    with torch.no_grad():
        m.stem1.weight[dead_stream] = 0
        m.stem1.bias[dead_stream] = 0
        for conv in [m.stem2, *m.blocks]:
            conv.weight[dead_stream] = 0
            conv.weight[:, dead_stream] = 0
            conv.bias[dead_stream] = 0
        m.head.weight.view(10, 8, 16)[:, dead_stream] = 0
        m.stem0.weight[dead_stem] = 0
        m.stem0.bias[dead_stem] = 0
        m.stem1.weight[:, dead_stem] = 0
    stream, stem = cnn.channel_scores(m)
    assert stream[dead_stream] == 0 and stem[dead_stem] == 0
    narrow = cnn.prune_channels(m, 1 / 8)
    x = torch.randn(5, 1, 28, 28)
    assert cnn.shape_of(narrow)["width"] == 7
    torch.testing.assert_close(narrow(x), m(x), rtol=1e-5, atol=1e-5)


def test_full_rank_svd_reproduces_the_convolution():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 6, 3, 2, 1)
    x = torch.randn(3, 6, 9, 9)
    torch.testing.assert_close(cnn.low_rank_conv(conv, 6)(x), conv(x), rtol=1e-4, atol=1e-4)
    low = cnn.low_rank_conv(conv, 2)
    assert low[0].weight.shape == (2, 6, 3, 3) and low[1].weight.shape == (6, 2, 1, 1)


def test_static_int8_convolution_is_close_to_float_and_stored_in_a_quarter():
    m = _model(16, 2)
    calib = torch.randn(200, 1, 28, 28)
    q = cnn.to_static_int8(cnn.clone(m), calib)
    assert isinstance(q.stem1, cnn.StaticInt8Conv2d)
    x = torch.randn(20, 1, 28, 28)
    with torch.no_grad():
        ref, got = m(x), q(x)
    assert float((got - ref).norm() / ref.norm()) < 0.05
    f8, f32 = (cnn.measure_file(cnn.model_state(*a)) for a in ((q, "int8"), (m, "fp32")))
    assert 0.25 <= f8["payload"] / f32["payload"] < 0.3
    assert 0 < f8["overhead"] < 1024 and 0 < f32["overhead"] < 1024  # payload + container


def test_int4_packing_round_trip_and_weight_grid():
    q = torch.tensor([-8, -1, 0, 7, 3], dtype=torch.int8)
    packed = cnn.pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.numel() == 3
    assert torch.equal(cnn.unpack_int4(packed, 5), q)
    w = torch.randn(4, 3, 3, 3)
    r = cnn.quantise_weight(w, 4)
    steps = r / cnn.weight_scale(w, 4)
    assert torch.allclose(steps, steps.round(), atol=1e-4) and steps.abs().max() <= 8


def test_file_sizes_follow_the_stored_formats():
    m = _model(16, 3)
    fp32 = cnn.file_bytes(m, "fp32")
    assert 1.0 <= fp32 / (4 * cnn.n_params(m)) < 1.15
    assert 0.5 <= cnn.file_bytes(m, "fp16") / fp32 < 0.6
    f4 = cnn.measure_file(cnn.model_state(m, "int4"))
    assert 0.125 <= f4["payload"] / (4 * cnn.n_params(m)) < 0.2 and 0 < f4["overhead"] < 1024
    fused = cnn.clone(m)
    compress.fuse_layers(fused, cnn.square_convs(fused), 3)
    saved = cnn.n_params(m) - cnn.n_params(fused)
    assert saved == 3 * (16 * 16 * 9 + 16)
    # 3 weights and 3 biases fewer: their numbers and their records (< 1 KiB each)
    assert 4 * saved < fp32 - cnn.file_bytes(fused, "fp32") < 4 * saved + 6 * 1024
    keeper = cnn.MaskKeeper(cnn.clone(m), 0.9)
    assert keeper.sparsity() == pytest.approx(0.9, abs=1e-3)


def test_masks_hold_through_training_and_checkpoints_of_a_long_run_are_the_short_run():
    data = _toy()
    m = _model(4, 1)
    keeper = cnn.MaskKeeper(m, 0.7)
    states = {}
    cnn.train(
        m,
        data,
        6,
        8,
        1e-2,
        seed=1,
        after_step=keeper,
        checkpoints={3: lambda: states.setdefault(3, cnn.clone(m).state_dict())},
    )
    assert keeper.sparsity() == pytest.approx(0.7, abs=1e-2)
    short = _model(4, 1)
    k2 = cnn.MaskKeeper(short, 0.7)
    cnn.train(short, data, 3, 8, 1e-2, seed=1, after_step=k2)
    for k, v in short.state_dict().items():
        torch.testing.assert_close(states[3][k], v)


def test_training_learns_and_distillation_terms_vanish_for_the_teacher_itself():
    data = _toy(128)
    m = _model(4, 1)
    losses = cnn.train(m, data, 40, 32, 1e-2, seed=0)
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    x = data.x[:16]
    feats = m.features(x)
    logits = m.head(feats.flatten(1))
    teacher = cnn.teacher_outputs(m, cnn.Split(x, data.y[:16]))
    kd = cnn.distil_terms(logits, feats, teacher.logits, teacher.feats, 1.0, 0.0, 2.0)
    assert float(kd.detach()) == pytest.approx(0.0, abs=1e-6)


def test_cached_teacher_rows_are_the_teachers_forward_of_the_batch_images():
    data = _toy(1200)  # more than two evaluation batches, the last one partial
    teacher = _model(8, 2, seed=3).eval()
    out = cnn.teacher_outputs(teacher, data)
    assert out.feats.shape == (1200, 8, 4, 4) and out.logits.shape == (1200, 10)
    idx = torch.tensor([1199, 0, 517, 600, 3])
    with torch.no_grad():
        feats = teacher.features(data.x[idx])
        torch.testing.assert_close(out.feats[idx], feats, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.logits[idx], teacher(data.x[idx]), rtol=1e-5, atol=1e-5)
    # a student trained against the cached rows feels the distillation terms: its loss log
    # differs from plain training on the same batches only through them
    student = _model(4, 1, seed=1)
    plain = cnn.train(cnn.clone(student), data, 3, 64, 1e-3, seed=0)
    kd = cnn.train(cnn.clone(student), data, 3, 64, 1e-3, seed=0, teacher=out, kd=1.0)
    assert kd[0] > plain[0]  # the first step's loss adds a positive KL term to the same CE


def test_training_runs_channels_last_and_keeps_fused_tensors_tied():
    m = _model(8, 2)
    fused = cnn.clone(m)
    compress.fuse_layers(fused, cnn.square_convs(fused), 2)
    tied = [n for n in cnn.square_convs(fused) if n.startswith("blocks")]
    before = {n: cnn.compress.get_module(fused, n).weight for n in tied}
    x = _toy(16).x
    with torch.no_grad():
        y0 = fused(x)
    cnn.train(fused, _toy(), 0, 8, 1e-2, seed=0)  # only the layout changes
    with torch.no_grad():
        torch.testing.assert_close(fused(x), y0, rtol=1e-5, atol=1e-5)
    w = fused.blocks[0].weight
    assert w.stride()[1] == 1  # channels-last: the input-channel stride is 1
    cnn.train(fused, _toy(), 3, 8, 1e-2, seed=0)
    assert all(compress.get_module(fused, n).weight is before[n] for n in tied)
    assert cnn.n_params(fused) == cnn.n_params(m) - 2 * (8 * 8 * 9 + 8)


def test_qat_levels_follow_the_configured_bits():
    base = dict(
        width=8, depth=2, n_train=64, n_test=64, epochs=0.1, budgets=(0.0,), batch=8,
        retrain_batch=8, lr=1e-3, retrain_lr=1e-3, sparsities=(0.5,), channel_fractions=(0.5,),
        rank_ratios=(0.5,), student_widths=(0.5,), fusion_removed=(1,), cc_weight=1.0,
        kd_weight=1.0, seeds=1, latency_rounds=1, latency_warmup=0,
    )  # fmt: skip
    calib = torch.zeros(4, 1, 28, 28)
    for bits, levels in (((4,), ["int4 weights"]), ((8, 4), ["int8", "int4 weights"])):
        cfg = cnn.CnnConfig(**base, qat_bits=bits)
        assert [a.level for a in cnn.arms(cfg, calib) if a.family == "QAT"] == levels


def test_paper_vs_here_gives_the_reason_of_an_inconclusive_verdict():
    rows = [
        {"name": "a", "paper_value": 3.33, "paper_source": "s", "value": 2.0, "ci": (1.5, 3.5),
         "n_seeds": 3, "verdict": "inconclusive", "why": "interval straddles 3.33"},
        {"name": "b", "paper_value": 3.33, "paper_source": "s", "value": 5.2, "ci": (5.2, 5.2),
         "n_seeds": 3, "verdict": "reproduced", "why": "whole interval >= 3.33"},
    ]  # fmt: skip
    table = cnn.paper_vs_here(rows, cnn.NOT_RUN)
    assert table.verdict[0] == "inconclusive (interval straddles 3.33)"
    assert table.verdict[1] == "reproduced" and table.here[1] == "5.2 [5.2, 5.2], 3 seeds"
    assert len(table) == 2 + len(cnn.NOT_RUN)


def test_budget_statistics_on_a_synthetic_curve():
    # 2 seeds x (reference + 3 levels) x 100 items: accuracies 0.9, 0.89, 0.85, 0.6
    acc = [0.9, 0.89, 0.85, 0.6]
    hits = np.stack([np.stack([np.arange(100) < 100 * a for a in acc])] * 2)
    ratios = np.array([1.0, 1.2, 1.5, 2.0])
    a = hits.mean(2)
    assert np.allclose(cnn.mean_drop_pts(a), [0, 1, 5, 30])
    assert cnn.ratio_within(a, ratios, 2.0) == 1.2
    assert cnn.ratio_within(a, ratios, 0.5) == 1.0
    assert cnn.drop_acceleration(a) == pytest.approx(21.0)
    est = cnn.bootstrap_curve(hits, cnn.drop_acceleration, n_boot=300)
    assert est.value == pytest.approx(21.0) and est.ci[0] < 21.0 < est.ci[1]
    assert np.isnan(cnn.drop_acceleration(a[:, :2]))


def _results(acc_by_arm, n=2000, seeds=3):
    out = []
    for s in range(seeds):
        r = cnn.SeedResult(s)
        for (fam, level, b), (acc, nbytes) in acc_by_arm.items():
            r.hits[(fam, level, b)] = np.arange(n) < round(acc * n)
            r.classes[(fam, level, b)] = 10
            r.size[(fam, level)] = {"bytes": nbytes}
        out.append(r)
    return out


def test_equal_accuracy_pieces_pick_the_largest_ratio_within_the_tolerance():
    res = _results(
        {
            ("dense", "1x", 0.0): (0.90, 1000),
            ("dense", "1x", 1.0): (0.91, 1000),
            ("layer fusion", "2 fused", 0.0): (0.80, 500),
            ("layer fusion", "2 fused", 1.0): (0.905, 500),
            ("layer fusion", "4 fused", 0.0): (0.50, 250),
            ("layer fusion", "4 fused", 1.0): (0.87, 250),
            ("PTQ", "int8", 0.0): (0.895, 250),
        }
    )
    est, level = cnn.ratio_estimate(res, "layer fusion", 1.0, 2.0, n_boot=200)
    assert level == "2 fused" and est.value == pytest.approx(2.0)
    est0, level0 = cnn.ratio_estimate(res, "layer fusion", 0.0, 2.0, n_boot=200)
    assert level0 == "none" and est0.value == 1.0
    est_ptq, level_ptq = cnn.ratio_estimate(res, "PTQ", 1.0, 1.0, n_boot=200)  # judged at 0
    assert level_ptq == "int8" and est_ptq.value == pytest.approx(4.0)
    assert cnn.at_top_of_grid(res, "PTQ", "int8")
    d = cnn.drop_estimate(res, "layer fusion", "4 fused", 1.0)
    assert d.value == pytest.approx(4.0) and cnn.judged(d, 2.0) == "no"
    assert cnn.judged(cnn.pts(cnn.Estimate(0.005, (-0.01, 0.03), 3, "m")), 2.0) == "inconclusive"
    table = cnn.budget_table(res)
    row = table[(table.family == "layer fusion") & (table.budget == 1.0)].iloc[0]
    assert row.drop_pts == pytest.approx(0.5) and row.ratio == pytest.approx(2.0)
    assert not cnn.collapsed(res, [("PTQ", "int8", 0.0)])
