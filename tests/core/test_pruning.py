"""Global magnitude pruning, its schedule, and the alignment regularizers."""

import pytest
import torch
from torch import nn

from lib.core import pruning


class Tiny(nn.Module):
    """Two 'encoder layers' plus an embedding and a head, named like a BertModel."""

    def __init__(self):
        super().__init__()
        self.embeddings = nn.Embedding(10, 8)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList([nn.Linear(8, 8), nn.Linear(8, 16)])
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = self.embeddings(x).mean(1)
        return self.head(torch.relu(self.encoder.layer[1](torch.relu(self.encoder.layer[0](h)))))


def test_prunable_weights_exclude_embeddings_biases_heads():
    names = set(pruning.prunable_weights(Tiny()))
    assert names == {"encoder.layer.0.weight", "encoder.layer.1.weight"}


@pytest.mark.parametrize("s", [0.0, 0.3, 0.5, 0.7, 0.9, 1.0])
def test_global_masks_exact_count_even_with_ties(s):
    g = torch.Generator().manual_seed(0)
    w = {
        "a": torch.randint(-3, 4, (20, 7), generator=g).float(),
        "b": torch.randn(5, 9, generator=g),
    }
    m = pruning.global_masks(w, s)
    n = sum(x.numel() for x in w.values())
    assert sum(int((~x).sum()) for x in m.values()) == round(s * n)


def test_global_threshold_is_global_not_per_layer():
    w = {
        "small": torch.full((4, 4), 0.01) + torch.arange(16.0).view(4, 4) * 1e-4,
        "large": torch.full((4, 4), 5.0) + torch.arange(16.0).view(4, 4),
    }
    m = pruning.global_masks(w, 0.5)
    assert not m["small"].any() and m["large"].all()
    # every kept magnitude >= every pruned magnitude
    flat = torch.cat([x.abs().flatten() for x in w.values()])
    keep = torch.cat([x.flatten() for x in m.values()])
    assert flat[keep].min() >= flat[~keep].max()


def test_cubic_schedule_endpoints_and_shape():
    f = lambda t: pruning.cubic_sparsity(t, 0.8, start=10, end=50)
    assert (
        f(0) == 0.0 and f(10) == 0.0 and f(50) == pytest.approx(0.8) and f(99) == pytest.approx(0.8)
    )
    assert f(30) == pytest.approx(0.8 * (1 - 0.5**3))
    vals = [f(t) for t in range(0, 60)]
    assert all(b >= a for a, b in zip(vals, vals[1:]))
    # fast at first: more than half the final sparsity after a quarter of the way
    assert f(20) > 0.4


def test_pruner_really_zeros_weights_through_training():
    torch.manual_seed(0)
    model = Tiny()
    pr = pruning.MagnitudePruner(model, final=0.7, start=0, end=20, every=5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randint(0, 10, (32, 5)), torch.randint(0, 3, (32,))
    for t in range(30):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        pr.step(t + 1)
    n = sum(w.numel() for w in pr.weights.values())
    assert pr.target == pytest.approx(0.7)
    assert pr.sparsity() == pytest.approx(round(0.7 * n) / n, abs=1e-12)
    assert float((model.embeddings.weight == 0).float().mean()) == 0.0  # embeddings untouched


def _pair():
    g = torch.Generator().manual_seed(1)
    ref = {
        "a": torch.randn(6, 4, generator=g, dtype=torch.float64),
        "b": torch.randn(3, 5, generator=g, dtype=torch.float64),
    }
    w = {
        k: (v + 0.3 * torch.randn(v.shape, generator=g, dtype=torch.float64)).requires_grad_()
        for k, v in ref.items()
    }
    return w, ref


@pytest.mark.parametrize("reg", [pruning.cosine_alignment, pruning.frobenius_alignment])
def test_regularizers_zero_when_equal(reg):
    _, ref = _pair()
    assert float(reg({k: v.clone() for k, v in ref.items()}, ref)) == pytest.approx(0.0, abs=1e-12)


def test_frobenius_gradient_closed_form_and_direction():
    w, ref = _pair()
    r = pruning.frobenius_alignment(w, ref)
    r.backward()
    for k in w:  # d/dW of mean_l ||W - W0||^2 / ||W0||^2 = 2 (W - W0) / (L ||W0||^2)
        expect = 2 * (w[k].detach() - ref[k]) / (len(w) * ref[k].pow(2).sum())
        assert torch.allclose(w[k].grad, expect)
    with torch.no_grad():
        stepped = {k: v - 0.1 * v.grad for k, v in w.items()}
    assert pruning.frobenius_alignment(stepped, ref) < r


def test_cosine_gradient_matches_finite_differences_and_is_scale_free():
    w, ref = _pair()
    assert torch.autograd.gradcheck(
        lambda a, b: pruning.cosine_alignment({"a": a, "b": b}, ref), (w["a"], w["b"])
    )
    r = pruning.cosine_alignment(w, ref)
    r.backward()
    for k in w:  # cosine ignores each row's length, so the gradient is orthogonal to every row
        assert torch.allclose(
            (w[k].grad * w[k].detach()).sum(1),
            torch.zeros(w[k].shape[0], dtype=torch.float64),
            atol=1e-12,
        )
    with torch.no_grad():
        stepped = {k: v - 0.5 * v.grad for k, v in w.items()}
    assert pruning.cosine_alignment(stepped, ref) < r
    # rescaling a unit does not change the penalty
    scaled = {
        k: v.detach() * torch.linspace(0.5, 3, v.shape[0], dtype=torch.float64)[:, None]
        for k, v in w.items()
    }
    assert float(pruning.cosine_alignment(scaled, ref)) == pytest.approx(float(r.detach()))


def test_masked_blocks_gradient_to_pruned_entries():
    w, ref = _pair()
    masks = pruning.global_masks(w, 0.5)
    pruning.frobenius_alignment(pruning.masked(w, masks), ref).backward()
    for k in w:
        assert torch.all(w[k].grad[~masks[k]] == 0)


def test_cross_correlation_loss():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(64, 6, generator=g, dtype=torch.float64)
    # identical, decorrelated features: the diagonal is exactly 1, so only the small
    # off-diagonal part remains
    q, _ = torch.linalg.qr(z - z.mean(0))
    assert float(pruning.cross_correlation_loss(q, q, off_diag=0.0)) == pytest.approx(
        0.0, abs=1e-10
    )
    assert float(pruning.cross_correlation_loss(q, q)) == pytest.approx(0.0, abs=1e-10)
    s = z.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a: pruning.cross_correlation_loss(z, a), (s,))
    assert float(pruning.cross_correlation_loss(z, -z, off_diag=0.0)) == pytest.approx(4 * 6)
