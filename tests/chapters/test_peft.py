"""The chapter's building blocks on a tiny random BERT: peft's parameters against each
method's equation, adapters that start as the identity, BitFit's filter and frozen weights
through the shared training loop, a short run that learns, the fresh-process memory
measurement against a known allocation, and the statistics the findings rest on."""

import copy

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel

from lib.book import stats
from lib.chapters.peft import memory, methods, study


def tiny_config(hidden=32, layers=2, vocab=120):
    return BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=4 * hidden,
        max_position_embeddings=64,
    )


def tiny_bert(seed=0, **kw):
    torch.manual_seed(seed)
    return BertModel(tiny_config(**kw), add_pooling_layer=False).eval()


def toy_task(n=240, seed=0):
    """Sequences of random ids; the label says whether id 7 occurs (a learnable rule)."""
    g = np.random.default_rng(seed)
    ex = []
    for i in range(n):
        ids = [2] + list(g.integers(10, 100, size=int(g.integers(4, 10)))) + [3]
        y = i % 2
        if y:
            ids[int(g.integers(1, len(ids) - 1))] = 7
        ex.append((ids, y))
    return study.TaskData("rt", ex[:160], ex[160:200], ex[200:], 0, 0.5, float("nan"))


@pytest.mark.parametrize("sizes", [methods.Sizes(), methods.Sizes(4, 5, 3)])
@pytest.mark.parametrize("shape", [(32, 2), (64, 3)])
def test_counts_match_equations(sizes, shape):
    cfg = tiny_config(*shape)
    assert methods.backbone_count(cfg) == sum(p.numel() for p in BertModel(cfg, False).parameters())
    for m in methods.METHODS:
        enc = methods.wrap(BertModel(cfg, add_pooling_layer=False), m, sizes)
        c = methods.counted(enc)
        assert c["trainable"] == methods.analytic_count(m, cfg, sizes), m
        assert c["backbone"] == methods.backbone_count(cfg)


def test_lora_count_is_r_times_din_plus_dout():
    cfg = tiny_config(48, 3)
    enc = methods.wrap(BertModel(cfg, add_pooling_layer=False), "lora", methods.Sizes(rank=5))
    a = [p for n, p in enc.named_parameters() if "lora_A" in n]
    b = [p for n, p in enc.named_parameters() if "lora_B" in n]
    assert len(a) == len(b) == 2 * 3  # query and value in each layer
    assert all(p.shape == (5, 48) for p in a) and all(p.shape == (48, 5) for p in b)


def test_adapters_start_as_identity_and_soft_prompts_do_not():
    base = tiny_bert()
    ids = torch.randint(10, 100, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    with torch.no_grad():
        ref = base(input_ids=ids, attention_mask=mask).last_hidden_state
        for m in ("lora", "loha", "ia3"):
            out = methods.wrap(copy.deepcopy(base), m).eval()(ids, mask).last_hidden_state
            assert torch.allclose(out, ref, atol=1e-6), m
        for m in ("prompt", "prefix"):
            out = methods.wrap(copy.deepcopy(base), m).eval()(ids, mask).last_hidden_state
            assert out.shape == ref.shape  # prompt tuning's virtual positions are cut off
            assert not torch.allclose(out, ref, atol=1e-3), m


def test_ia3_scales_keys_values_and_feedforward_input_only():
    enc = methods.wrap(tiny_bert(), "ia3")
    names = [n for n, p in enc.named_parameters() if p.requires_grad]
    assert len(names) == 2 * 3
    assert not any("attention.output" in n for n in names)
    assert sum("output.dense" in n for n in names) == 2


def test_bitfit_trains_only_biases_through_the_filter():
    base, task = tiny_bert(), toy_task()
    model = study.build("rt", base, "bitfit", methods.Sizes(), seed=0)
    weights0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    study.train(model, task, "bitfit", 1e-2, study.Budget(5, 8), 0, "cpu")
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, weights0[n])}
    assert moved and all(methods.is_bias(n) for n in moved)
    assert any(n.startswith("head.") for n in moved)
    assert study.frozen_change(model, base) == 0.0


def test_lora_run_learns_and_keeps_the_backbone_frozen():
    base, task = tiny_bert(), toy_task()
    model = study.build("rt", base, "lora", methods.Sizes(rank=4), seed=1)
    log = study.train(model, task, "lora", 1e-2, study.Budget(60, 16), 1, "cpu")
    assert np.mean(log["loss"][-10:]) < np.mean(log["loss"][:10])
    assert study.frozen_change(model, base) == 0.0
    assert study.item_scores(model, task, task.test, "cpu").mean() > 0.7


def test_full_fine_tuning_moves_the_backbone():
    base, task = tiny_bert(), toy_task()
    model = study.build("rt", base, "full", methods.Sizes(), seed=0)
    study.train(model, task, "full", 1e-3, study.Budget(3, 8), 0, "cpu")
    ref = dict(base.named_parameters())
    w = dict(model.named_parameters())["encoder.net.encoder.layer.0.attention.self.query.weight"]
    assert not torch.equal(w, ref["encoder.layer.0.attention.self.query.weight"])


def test_item_scores_are_in_input_order():
    base, task = tiny_bert(), toy_task()
    model = study.build("rt", base, "full", methods.Sizes(), seed=0).eval()
    scores = study.item_scores(model, task, task.test, "cpu", batch=7)
    with torch.no_grad():
        for k in (0, 5, 17):
            ids, mask = study.pad_ids([task.test[k][0]], 0)
            assert scores[k] == float(model(ids, mask).argmax(-1).item() == task.test[k][1])


def test_split_indices_are_disjoint_and_sized():
    tr, dv, te = study.split_indices(100, 10, 20, seed=3)
    assert (len(tr), len(dv), len(te)) == (70, 10, 20)
    assert len(set(tr) | set(dv) | set(te)) == 100
    with pytest.raises(ValueError):
        study.split_indices(10, 5, 5, 0)


def test_memory_measurement_sees_a_known_allocation():
    out = memory.measure(memory.MemConfig(0, 0, "full", alloc_mb=128.0))
    assert abs(out["peak_mb"] - 128.0) / 128.0 < 0.05


def test_full_fine_tuning_needs_more_memory_than_lora():
    kw = dict(batch=2, seq_len=8, steps=2, vocab=20000)
    full = memory.measure(memory.MemConfig(64, 2, "full", **kw))
    lora = memory.measure(memory.MemConfig(64, 2, "lora", **kw))
    weights_mb = full["total"] * 4 / 2**20
    assert full["peak_mb"] - lora["peak_mb"] > 2 * weights_mb  # gradients + AdamW's moments
    assert full["trainable"] == full["total"] > lora["trainable"]


def test_savings_are_paired_by_repeat_and_growth_reads_largest_minus_smallest():
    rows = []
    for rep, (a, b) in enumerate([(100.0, 1000.0), (110.0, 1100.0), (90.0, 900.0)]):
        for h, nl, scale in ((32, 2, 1.0), (64, 4, 0.5)):
            rows.append(dict(hidden=h, layers=nl, method="full", repeat=rep, peak_mb=b))
            rows.append(dict(hidden=h, layers=nl, method="lora", repeat=rep, peak_mb=a * scale))
    sv = study.memory_savings(rows, "lora")
    assert np.allclose(sv[(32, 2)], 0.9) and np.allclose(sv[(64, 4)], 0.95)
    est = study.saving_growth(rows, "lora")
    assert est.value == pytest.approx(0.05) and est.ci[0] == pytest.approx(0.05)
    assert study.below_full_share(rows) == 1.0


def test_unresolved_names_edge_choices():
    runs = {"full": {"edge": False, "lr": 1e-4}, "lora": {"edge": True, "lr": 1e-2}}
    assert "lora" in study.unresolved(runs, "lora")
    runs["lora"]["edge"] = False
    assert study.unresolved(runs, "lora") is None


def test_token_accuracy_resamples_sentences_with_their_word_counts():
    g = np.random.default_rng(0)
    words = g.integers(1, 40, size=300)
    correct = np.stack([g.binomial(words, 0.9) for _ in range(3)])
    scores = correct * len(words) / words.sum()  # item_scores' per-sentence POS scores
    est = study.token_accuracy(scores, words)
    assert est.value == pytest.approx(correct.sum() / (3 * words.sum()))
    naive = stats.bootstrap_items(scores)
    assert est.ci[1] - est.ci[0] < 0.5 * (naive.ci[1] - naive.ci[0])
    assert est.ci[0] < est.value < est.ci[1]
