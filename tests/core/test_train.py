"""The shared training loop's hooks do what they say, and the cache saves once, atomically."""

import numpy as np
import pytest
import torch
from torch import nn

from lib.core import cache, train


def toy(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(64, 4)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return model, x, y


def ce(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def sgd(params):
    return torch.optim.SGD(params, lr=0.1)


def test_fit_lowers_the_loss_and_logs_every_step():
    model, x, y = toy()
    log = train.fit(model, lambda t: (x, y), ce, 200, sgd)
    assert len(log["loss"]) == 200 and log["loss"][-1] < 0.5 * log["loss"][0]
    assert not model.training


def test_param_filter_trains_only_the_chosen_parameters():
    model, x, y = toy()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train.fit(model, lambda t: (x, y), ce, 5, sgd, param_filter=lambda n, p: n.endswith("bias"))
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) != n.endswith("bias"), n


def test_grad_hook_runs_between_backward_and_the_update():
    model, x, y = toy()
    before = [p.detach().clone() for p in model.parameters()]
    seen = []

    def zero_grads(m, t):
        seen.append(t)
        assert all(p.grad is not None for p in m.parameters())
        for p in m.parameters():
            p.grad.zero_()

    train.fit(model, lambda t: (x, y), ce, 3, sgd, grad_hook=zero_grads)
    assert seen == [0, 1, 2]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_extra_loss_events_and_after_step():
    model, x, y = toy()
    built, after = [], []

    def make(params):
        built.append(len(params))
        return sgd(params)

    log = train.fit(model, lambda t: (x, y), lambda m, b: (ce(m, b), {"ce": 1.0}), 4, make,
                    extra_loss=lambda m, b: torch.tensor(10.0), before_step=lambda t: t == 2,
                    after_step=after.append)
    assert built == [4, 4] and after == [0, 1, 2, 3]  # optimizer rebuilt once, at step 2
    assert min(log["loss"]) > 10.0 and log["ce"] == [1.0] * 4


def test_correct_items_keeps_masked_items_in_order():
    batches = [(torch.tensor([[0, 1], [2, 2]]), torch.tensor([[0, 2], [2, 0]]),
                torch.tensor([[True, True], [True, False]]))]
    hits = train.correct_items(lambda b: b[0], batches, gold=lambda b: b[1], mask=lambda b: b[2])
    assert hits.tolist() == [True, False, True]
    assert np.mean(hits) == pytest.approx(2 / 3)


def test_cached_builds_once_and_reloads(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_BUILD_DIR", str(tmp_path))
    calls = []

    def build():
        calls.append(1)
        return {"w": torch.arange(3.0)}

    cfg = {"steps": 10, "seed": 0}
    first, loaded1 = cache.cached("toy", "dense", cfg, build)
    again, loaded2 = cache.cached("toy", "dense", cfg, build)
    assert (loaded1, loaded2) == (False, True) and len(calls) == 1
    assert torch.equal(first["w"], again["w"])
    assert cache.cache_key(cfg) != cache.cache_key({**cfg, "seed": 1})
    assert not list((tmp_path / "cache" / "toy").glob("*.tmp"))


def test_warmup_decay_rises_linearly_then_falls_to_zero():
    f = train.warmup_decay(100, 0.1)
    assert [f(t) for t in (0, 4, 9)] == [0.1, 0.5, 1.0]  # warm-up over 10 steps
    assert f(55) == 0.5 and f(100) == 0.0 and f(150) == 0.0  # linear decay, then 0
    assert train.warmup_decay(5, 0.0)(0) == 1.0  # at least one warm-up step
