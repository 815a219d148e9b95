"""Unit tests of chapter 07 (self-distilled quantisation across languages): the quantiser and
its straight-through gradient, the packed file, the distillation terms, the sublayer error
measurement and the statistics."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel

from lib.chapters.compression_crosslingual import quant, study
from lib.core import pos_transfer as pt


def tiny_tagger(seed: int = 0, attn: str = "sdpa") -> pt.Tagger:
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, attn_implementation=attn,
    )  # fmt: skip
    tagger = pt.Tagger(BertModel(cfg, add_pooling_layer=False).eval())
    pt.freeze_embeddings(tagger)
    return tagger.eval()


def toy_data(n: int = 24, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        t = int(rng.integers(3, 9))
        ids = [0] + rng.integers(5, 50, t).tolist() + [2]
        labels = [pt.IGNORE] + [int(x) % 17 for x in ids[1:-1]] + [pt.IGNORE]
        out.append((ids, labels))
    return out


def batch(data: list) -> dict:
    return pt.pad_batch(data, pad=1)


@pytest.mark.parametrize("bits", [8, 4, 3])
def test_rounded_rows_use_at_most_the_grid_levels_and_keep_the_row_maximum(bits):
    w = torch.randn(20, 50)
    r = quant.fake_quant_rows(w, bits)
    for row, orig in zip(r, w):
        assert len(torch.unique(row)) <= 2**bits - 1
        assert row.abs().max() == pytest.approx(float(orig.abs().max()), rel=1e-6)
    s = quant.row_scale(w, bits)
    assert torch.all((r - w).abs() <= s / 2 + 1e-7)  # round to nearest


def test_straight_through_gradient_is_identity():
    w = torch.randn(8, 12, requires_grad=True)
    (quant.fake_quant_rows(w, 4) * torch.arange(12.0)).sum().backward()
    assert torch.equal(w.grad, torch.arange(12.0).expand(8, 12))


def test_nibbles_round_trip_every_code_and_odd_lengths():
    q = torch.tensor(list(range(-7, 8)) * 3, dtype=torch.int8)  # 45 codes: odd
    packed = quant.pack_nibbles(q)
    assert packed.dtype == torch.uint8 and packed.numel() == 23
    assert torch.equal(quant.unpack_nibbles(packed, q.numel()), q)


@pytest.mark.parametrize("bits", [8, 4])
def test_packed_file_reads_back_the_rounded_model_and_stores_b_bits_per_weight(bits):
    tagger = tiny_tagger()
    names = quant.quantized_names(tagger, embedding=True)
    quant.round_weights(tagger, names, bits)
    packed = quant.pack_model(tagger, names, bits)
    back = quant.unpack_model(packed)
    for k, v in tagger.state_dict().items():
        assert torch.equal(back[k], v), k
    tb = quant.tensor_bytes(packed)
    rows = sum(quant.get_module(tagger, n).weight.shape[0] for n in names)
    assert tb["quantized"] == tb["quantized_weights"] * bits // 8 + 4 * rows
    assert quant.file_bytes(packed) >= tb["quantized"] + tb["float"]


def test_rounding_twice_changes_nothing():
    tagger = tiny_tagger()
    names = quant.encoder_linears(tagger)
    quant.round_weights(tagger, names, 4)
    once = copy.deepcopy(tagger.state_dict())
    quant.round_weights(tagger, names, 4)
    assert all(torch.equal(once[k], v) for k, v in tagger.state_dict().items())


def test_quant_linear_forward_equals_rounded_plain_forward_and_shares_parameters():
    tagger = tiny_tagger()
    b = batch(toy_data(6))
    names = quant.encoder_linears(tagger)
    params = {n: quant.get_module(tagger, n).weight for n in names}
    quant.to_quant(tagger, names, 4)
    assert all(quant.get_module(tagger, n).weight is params[n] for n in names)
    with torch.no_grad():
        fake, _ = tagger(b["input_ids"], b["attention_mask"])
    quant.from_quant(tagger)
    assert not any(isinstance(m, quant.QuantLinear) for m in tagger.modules())
    quant.round_weights(tagger, names, 4)
    with torch.no_grad():
        rounded, _ = tagger(b["input_ids"], b["attention_mask"])
    assert torch.allclose(fake, rounded, atol=1e-6)


def test_attention_tap_matches_eager_attention_probabilities():
    tagger = tiny_tagger(attn="eager")
    b = batch(toy_data(5))
    tap = study.AttentionTap(tagger)
    with torch.no_grad():
        out = tagger.encoder(
            input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_attentions=True
        )
    mine = tap.log_probs(b["attention_mask"])
    tap.remove()
    for a, lp in zip(out.attentions, mine):
        assert torch.allclose(a, lp.exp(), atol=1e-6)


def test_distillation_terms_vanish_for_a_copy_and_match_the_definition():
    tagger, twin, other = tiny_tagger(), tiny_tagger(), tiny_tagger(seed=1)
    b = batch(toy_data(5))
    m = b["attention_mask"]
    taps = [study.AttentionTap(t) for t in (tagger, twin, other)]
    with torch.no_grad():
        logits = [t(b["input_ids"], m)[0] for t in (tagger, twin, other)]
    lp = [tap.log_probs(m) for tap in taps]
    assert float(study.output_kl(logits[0], logits[1], b["labels"], 2.0)) < 1e-10
    assert float(study.attention_kl(lp[0], lp[1], m)) < 1e-10
    assert float(study.attention_kl(lp[0], lp[2], m)) > 0
    sel = b["labels"] != pt.IGNORE  # output KL at T = 1, by hand
    p = torch.softmax(logits[0][sel], -1)
    q = torch.softmax(logits[2][sel], -1)
    manual = (p * (p.log() - q.log())).sum(-1).mean()
    got = study.output_kl(logits[0], logits[2], b["labels"], 1.0)
    assert float(got) == pytest.approx(float(manual), rel=1e-5)


def test_layer0_qkv_accumulated_error_equals_local_error_when_the_input_is_exact():
    ref = tiny_tagger()
    q = copy.deepcopy(ref)
    quant.round_weights(q, quant.encoder_linears(q), 4)  # embeddings stay exact
    data = toy_data(10)
    b = batch(data)
    batches = [(np.arange(10), b["input_ids"], b["attention_mask"])]
    e = quant.sublayer_errors(ref, q, batches, 10, 4)
    assert e["acc_err"].shape == (10, 2, 6)
    for j in range(3):  # Q, K, V of layer 0 see the (exact) embeddings
        np.testing.assert_allclose(e["acc_err"][:, 0, j], e["local_err"][:, 0, j], rtol=1e-5)
    assert np.all(e["acc_err"][:, 1] > 0) and np.all(e["ref"] > 0)
    same = quant.sublayer_errors(ref, copy.deepcopy(ref), batches, 10, 4)
    assert same["acc_err"].max() == 0.0


def test_peak_ratio_and_its_bootstrap():
    rel = np.array([[0.1, 0.1, 0.1, 0.4, 0.1, 0.2], [0.1, 0.1, 0.1, 0.2, 0.1, 0.2]])
    assert study.peak_ratio(rel) == pytest.approx(0.3 / 0.2)
    rng = np.random.default_rng(0)
    ref = rng.uniform(1, 2, size=(2, 30, 2, 6))
    err = ref * (np.array([1, 1, 1, 4, 1, 1.0]) * 1e-4)  # relative error 0.01 / 0.02
    est = study.peak_estimate({"acc_err": err, "ref": ref}, n_boot=200)
    assert est.value == pytest.approx(2.0) and est.ci[0] == pytest.approx(2.0)


def test_retrain_sdq_without_distillation_is_qat_and_batches_follow_the_seed():
    data = toy_data(24)
    cfg = pt.TrainConfig(steps=3, lr=1e-3, batch_size=4, bucket=True, seed=5)
    states = []
    teacher = study.frozen_copy(tiny_tagger())
    for recipe in (study.Recipe("QAT", 4), study.Recipe("SDQ", 4, kd=0.0, att=0.0)):
        tagger = tiny_tagger()
        before = copy.deepcopy(tagger.state_dict())
        study.retrain(tagger, data, cfg, 1, recipe, teacher)
        states.append(tagger.state_dict())
        assert not any(isinstance(m, quant.QuantLinear) for m in tagger.modules())
        assert any(not torch.equal(before[k], v) for k, v in states[-1].items())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    tagger = tiny_tagger()
    log = study.retrain(tagger, data, cfg, 1, study.Recipe("SDQ", 4, kd=1.0, att=1.0), teacher)
    assert len(log["loss"]) == 3 and np.isfinite(log["loss"]).all()
    assert any(not torch.equal(states[0][k], v) for k, v in tagger.state_dict().items())


def test_recovered_share():
    class Sc:
        arms = [study.DENSE, study.MORE, "PTQ 4-bit", "QAT 4-bit"]

        def arm(self, a):
            return self.arms.index(a)

    point = np.zeros((1, 2, 4, 2))  # seeds x arms x (English, one zero-shot language)
    point[0, :, :, 0] = [0.90, 0.92, 0.80, 0.87]
    point[0, :, :, 1] = [0.70, 0.72, 0.60, 0.67]
    assert study.recovered_share(point, Sc(), 4) == pytest.approx(1 - 0.05 / 0.10)
    point[0, :, 2, :] = 0.95  # PTQ loses nothing
    assert study.recovered_share(point, Sc(), 4) == 1.0
