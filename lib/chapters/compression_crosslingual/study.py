"""The chapter's study: per seed, the dense English fine-tune of the shared UD harness (cached
and shared through :func:`lib.core.pos_transfer.cached_dense_finetune`), then at each bit
width post-training quantisation (no retraining), QAT (fake-quantised weights, straight-
through gradient, cross-entropy) and SDQ (the same plus distillation from the dense model:
its tag distributions and its per-head attention distributions), every retraining arm for
the same steps on the same batches; the dense model given those steps too; every model scored
per sentence on English and the zero-shot languages (the same sentences for all), and the
quantisation error of every sublayer of the post-training-quantised models.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from lib.book import stats
from lib.chapters.compression_crosslingual import quant
from lib.core import cache
from lib.core.pos_transfer import (
    IGNORE,
    Tagger,
    TrainConfig,
    TransferData,
    bucketed_batches,
    cached_dense_finetune,
    evaluate_items,
    lr_lambda,
    pad_batch,
    reset_tagger,
)
from lib.core.train import fit
from lib.core.transfer_scores import Scores, en_gain, interval, words, zs_gain

CACHE_VERSION = 1  # bump when the code changes what a cached run would contain
WEIGHT_DECAY = 0.01
DENSE, MORE = "dense", "dense +steps"
BITS = (8, 4)


@dataclass(frozen=True)
class Recipe:
    """How a quantised arm is made: ``kind`` 'PTQ' (round the dense weights), 'QAT' (retrain
    through the quantiser, cross-entropy) or 'SDQ' (QAT plus distillation); ``bits``; the SDQ
    weights of the output KD term (``kd``, at ``temperature``) and the attention term
    (``att``); ``embedding``: the word embeddings are stored on the grid too."""

    kind: str
    bits: int
    kd: float = 0.0
    att: float = 0.0
    temperature: float = 1.0
    embedding: bool = True

    @property
    def label(self) -> str:
        return f"{self.kind} {self.bits}-bit"


# ----------------------------------------------------------------------- distillation terms


class AttentionTap:
    """Hooks on every layer's query and key projections; :meth:`log_probs` gives each head's
    attention distribution of the last forward pass (log, masked keys at -1e9), computed from
    them as BERT's self-attention does, whatever attention kernel the model runs."""

    def __init__(self, tagger: Tagger):
        cfg = tagger.encoder.config
        self.heads = cfg.num_attention_heads
        self.q: dict[int, torch.Tensor] = {}
        self.k: dict[int, torch.Tensor] = {}
        self.handles = []
        for i, layer in enumerate(tagger.encoder.encoder.layer):
            sa = layer.attention.self
            self.handles.append(sa.query.register_forward_hook(self._keep(self.q, i)))
            self.handles.append(sa.key.register_forward_hook(self._keep(self.k, i)))

    @staticmethod
    def _keep(store: dict, i: int):
        def hook(mod, args, out):
            store[i] = out

        return hook

    def log_probs(self, mask: torch.Tensor) -> list[torch.Tensor]:
        """Per layer: log attention probabilities, batch x heads x queries x keys."""
        out = []
        for i in sorted(self.q):
            b, t, h = self.q[i].shape
            q = self.q[i].view(b, t, self.heads, -1).transpose(1, 2)
            k = self.k[i].view(b, t, self.heads, -1).transpose(1, 2)
            s = q @ k.transpose(-1, -2) / np.sqrt(q.shape[-1])
            s = s.masked_fill(~mask.bool()[:, None, None, :], -1e9)
            out.append(F.log_softmax(s, -1))
        return out

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def attention_kl(log_t: list[torch.Tensor], log_s: list[torch.Tensor], mask: torch.Tensor):
    """KL(teacher || student) of every head's attention distribution, averaged over the real
    query tokens, the heads and the layers."""
    m = mask.float()[:, None, :]  # batch x 1 x queries
    total = 0.0
    for lt, ls in zip(log_t, log_s):
        kl = F.kl_div(ls, lt, log_target=True, reduction="none").sum(-1)  # b x heads x queries
        total = total + (kl * m).sum() / (m.sum() * kl.shape[1])
    return total / len(log_t)


def output_kl(t_logits, s_logits, labels, temperature: float) -> torch.Tensor:
    """KL(teacher || student) of the tag distributions at temperature T (times T^2), averaged
    over the tagged positions (first subwords)."""
    m = labels != IGNORE
    lt = F.log_softmax(t_logits[m] / temperature, -1)
    ls = F.log_softmax(s_logits[m] / temperature, -1)
    kl = F.kl_div(ls, lt, log_target=True, reduction="batchmean")
    return kl * temperature**2


# ----------------------------------------------------------------------- training


def retrain(
    tagger: Tagger,
    train: list,
    cfg: TrainConfig,
    pad: int,
    recipe: Recipe | None = None,
    teacher: Tagger | None = None,
    device="cpu",
) -> dict:
    """``cfg.steps`` AdamW steps (warm-up and decay) on ``train`` from the tagger's current
    weights, with the encoder's Linears fake-quantised to ``recipe.bits`` for QAT and SDQ
    (plain training when ``recipe`` is None: the dense model given the same steps); SDQ adds
    ``kd`` x output KL and ``att`` x attention KL to the cross-entropy. Batches and dropout
    follow ``cfg.seed`` alone, so every arm of a seed sees the same batches. The Linears are
    left as plain Linears with their float (not yet rounded) weights."""
    g = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    lengths = np.array([len(x) for x, _ in train])
    batches = bucketed_batches(lengths, cfg.batch_size, cfg.steps, g)
    names = quant.encoder_linears(tagger)
    if recipe is not None:
        quant.to_quant(tagger, names, recipe.bits)
    distil = recipe is not None and recipe.kind == "SDQ" and (recipe.kd > 0 or recipe.att > 0)
    taps = (AttentionTap(tagger), AttentionTap(teacher)) if distil and recipe.att > 0 else None

    def next_batch(step: int) -> dict[str, torch.Tensor]:
        b = pad_batch([train[i] for i in batches[step]], pad)
        return {k: v.to(device) for k, v in b.items()}

    def loss_fn(model: Tagger, b: dict[str, torch.Tensor]):
        logits, _ = model(b["input_ids"], b["attention_mask"])
        ce = F.cross_entropy(logits.flatten(0, 1), b["labels"].flatten(), ignore_index=IGNORE)
        if not distil:
            return ce, {"ce": ce.detach()}
        with torch.no_grad():
            t_logits, _ = teacher(b["input_ids"], b["attention_mask"])
        kd = output_kl(t_logits, logits, b["labels"], recipe.temperature)
        att = torch.zeros(())
        if taps is not None:
            m = b["attention_mask"]
            with torch.no_grad():
                log_t = taps[1].log_probs(m)
            att = attention_kl(log_t, taps[0].log_probs(m), m)
        loss = ce + recipe.kd * kd + recipe.att * att
        return loss, {"ce": ce.detach(), "kd": kd.detach(), "att": att.detach()}

    try:
        if teacher is not None:
            teacher.eval()
        log = fit(
            tagger,
            next_batch,
            loss_fn,
            cfg.steps,
            lambda params: torch.optim.AdamW(params, lr=cfg.lr, weight_decay=WEIGHT_DECAY),
            make_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg)),
        )
    finally:
        if taps is not None:
            for t in taps:
                t.remove()
        quant.from_quant(tagger)
    return log


# ----------------------------------------------------------------------- one seed


@dataclass
class Setup:
    """What every run of the study shares."""

    tagger: Tagger
    pretrained: dict
    embedding: torch.Tensor  # the pretrained (frozen) word embeddings, to restore
    d: TransferData
    dense_cfg: TrainConfig
    retrain_cfg: TrainConfig
    pad: int
    key: dict
    device: object = "cpu"
    eval_batch: int = 128
    use_cache: bool = True
    dense: dict = field(default_factory=dict)  # seed -> (state, log), once trained or loaded


def restore(s: Setup, state: dict) -> None:
    """The tagger back to ``state`` (trainable weights) with the float word embeddings."""
    s.tagger.load_state_dict(state, strict=False)
    with torch.no_grad():
        s.tagger.encoder.embeddings.word_embeddings.weight.copy_(s.embedding)


def score(s: Setup) -> dict[str, np.ndarray]:
    """Tags right per test sentence, per language."""
    return {
        lang: evaluate_items(s.tagger, ex, s.pad, s.eval_batch, s.device)["correct"]
        for lang, ex in s.d.test.items()
    }


def dense_model(s: Setup, seed: int) -> tuple[dict, dict]:
    """The seed's dense English fine-tune (fresh head from ``seed``), cached on disk and
    shared (:func:`lib.core.pos_transfer.cached_dense_finetune`; ``s.key`` names the encoder
    and data), and kept in ``s.dense`` for the rest of the run. The tagger ends holding it."""
    if seed not in s.dense:
        reset_tagger(s.tagger, s.pretrained, seed)
        restore(s, s.pretrained)
        cfg = replace(s.dense_cfg, seed=seed)
        s.dense[seed] = cached_dense_finetune(
            s.tagger, s.d.train, cfg, s.pad, s.key, space="pos_transfer", device=s.device,
            use_cache=s.use_cache,
        )  # fmt: skip
    restore(s, s.dense[seed][0])
    return s.dense[seed]


def error_batches(s: Setup, n_err: int):
    """(sentence indices, ids, mask) over the first ``n_err`` test sentences of every
    language (indices run over the concatenation)."""
    ex = [x for lang in s.d.test for x in s.d.test[lang][:n_err]]
    order = np.argsort([len(x) for x, _ in ex], kind="stable")
    for i in range(0, len(order), s.eval_batch):
        idx = order[i : i + s.eval_batch]
        b = pad_batch([ex[j] for j in idx], s.pad)
        yield idx, b["input_ids"].to(s.device), b["attention_mask"].to(s.device)


def run_arm(s: Setup, seed: int, dense_state: dict, recipe: Recipe | None, teacher, n_err: int):
    """One arm at one seed from the seed's dense model: PTQ, QAT, SDQ or (``recipe`` None) the
    dense model given the retraining steps. Cached by configuration. Returns {'test': tags
    right per sentence per language, 'loss', 'seconds', and for PTQ 'errors' (sublayer errors
    against the dense model)}."""
    cfg = replace(s.retrain_cfg, seed=seed)
    config = {
        "dense": asdict(replace(s.dense_cfg, seed=seed)),
        "retrain": asdict(cfg) if (recipe is None or recipe.kind != "PTQ") else None,
        "recipe": asdict(recipe) if recipe is not None else None,
        "n_err": n_err if (recipe is not None and recipe.kind == "PTQ") else None,
        "test": {lang: len(ex) for lang, ex in s.d.test.items()},  # evenly spread subsets
        "version": CACHE_VERSION,
        **s.key,
    }

    def build() -> dict:
        t0 = time.perf_counter()
        restore(s, dense_state)
        out: dict = {"loss": []}
        if recipe is not None and recipe.embedding:
            quant.round_weights(s.tagger, [quant.EMBEDDING], recipe.bits)
        if recipe is None or recipe.kind != "PTQ":
            log = retrain(s.tagger, s.d.train, cfg, s.pad, recipe, teacher, s.device)
            out["loss"] = log["loss"]
        if recipe is not None:
            quant.round_weights(s.tagger, quant.encoder_linears(s.tagger), recipe.bits)
        out["test"] = score(s)
        if recipe is not None and recipe.kind == "PTQ":
            n = sum(min(n_err, len(v)) for v in s.d.test.values())
            out["errors"] = quant.sublayer_errors(
                teacher, s.tagger, error_batches(s, n_err), n, recipe.bits
            )
        out["seconds"] = time.perf_counter() - t0
        return out

    saved, loaded = cache.cached(
        "compression_crosslingual", "run", config, build, use_cache=s.use_cache
    )
    return {**saved, "cached": loaded}


def frozen_copy(tagger: Tagger, share_embedding: bool = False) -> Tagger:
    """A frozen copy (the teacher and the reference of the error measurement); with
    ``share_embedding`` it holds the same word-embedding tensor (no 250k-row copy), for
    copies that never change it."""
    emb = tagger.encoder.embeddings.word_embeddings.weight
    memo = {id(emb): emb} if share_embedding else {}
    t = copy.deepcopy(tagger, memo).eval()
    for p in t.parameters():
        p.requires_grad_(False)
    return t


def run_seed(s: Setup, seed: int, recipes: list[Recipe], n_err: int) -> dict:
    """Every arm at one seed: {label: run result} (DENSE and MORE included)."""
    dense_state, dlog = dense_model(s, seed)
    teacher = frozen_copy(s.tagger)
    out = {DENSE: {"test": score(s), "loss": dlog["loss"], "cached": dlog["cached"],
                   "seconds": dlog["seconds"]}}  # fmt: skip
    out[MORE] = run_arm(s, seed, dense_state, None, teacher, n_err)
    for r in recipes:
        out[r.label] = run_arm(s, seed, dense_state, r, teacher, n_err)
    restore(s, dense_state)
    return out


def run_all(s: Setup, seeds: list[int], recipes: list[Recipe], n_err: int) -> dict:
    """{(label, seed): result} for every seed, printing a line per arm."""
    runs = {}
    for seed in seeds:
        for label, r in run_seed(s, seed, recipes, n_err).items():
            runs[(label, seed)] = r
            acc = {k: v.sum() / words(s.d.test[k]).sum() for k, v in r["test"].items()}
            zs = np.mean([a for k, a in acc.items() if k != "en"])
            how = "cached" if r["cached"] else f"{r.get('seconds', 0):.0f} s"
            print(f"seed {seed} {label:>14}: en {acc['en']:.3f}, zero-shot mean {zs:.3f} [{how}]")
    return runs


# ----------------------------------------------------------------------- statistics


def scores(runs: dict, d: TransferData) -> Scores:
    """Per-sentence scores of every arm and seed (the shared paired-bootstrap container)."""
    return Scores.from_runs({(a, s): r for (a, s), r in runs.items()}, d)


def accuracy_table(sc: Scores, point, boot) -> pd.DataFrame:
    """Per arm: English and mean zero-shot accuracy (%, mean over seeds) with 95 % intervals
    (bootstrap over seeds and sentences)."""
    q = [(1 - stats.LEVEL) / 2, (1 + stats.LEVEL) / 2]
    rows = []
    for a in sc.arms:
        j = sc.arm(a)
        en_p, en_b = 100 * point[0, :, j, 0].mean(), 100 * boot[:, :, j, 0].mean(1)
        zs_p, zs_b = 100 * point[0, :, j, 1:].mean(), 100 * boot[:, :, j, 1:].mean((1, 2))
        (el, eh), (zl, zh) = np.quantile(en_b, q), np.quantile(zs_b, q)
        rows.append(
            {"arm": a, "en": en_p, "en_lo": el, "en_hi": eh, "zs": zs_p, "zs_lo": zl, "zs_hi": zh}
        )
    return pd.DataFrame(rows).set_index("arm")


def language_accuracy(sc: Scores, point) -> pd.DataFrame:
    """Accuracy (%) per arm and language, mean over seeds."""
    return pd.DataFrame(100 * point[0].mean(0), index=sc.arms, columns=sc.langs)


def recovered_share(point, sc: Scores, bits: int) -> float:
    """Share of the accuracy that PTQ at ``bits`` loses against the dense model it rounds which
    QAT at ``bits`` wins back: 1 - (dense +steps - QAT) / (dense - PTQ), each accuracy the mean
    over the languages (English and zero-shot) and the seeds; 1 when PTQ loses nothing."""
    acc = point[0].mean((0, 2))  # per arm
    lost = acc[sc.arm(DENSE)] - acc[sc.arm(f"PTQ {bits}-bit")]
    if lost <= 0:
        return 1.0
    return float(1 - (acc[sc.arm(MORE)] - acc[sc.arm(f"QAT {bits}-bit")]) / lost)


def margin_over_majority(point, sc: Scores, majority_en: float) -> float:
    """Smallest English accuracy over arms and seeds minus the majority tag's (points)."""
    return float(100 * (point[0, :, :, 0].min() - majority_en))


# ----------------------------------------------------------------------- sublayer errors


def error_arrays(runs: dict, bits: int, seeds: list[int]) -> dict[str, np.ndarray]:
    """The PTQ runs' error sums stacked over seeds: seeds x sentences x layers x sublayers."""
    label = f"PTQ {bits}-bit"
    return {
        k: np.stack([runs[(label, s)]["errors"][k] for s in seeds])
        for k in ("acc_err", "local_err", "ref")
    }


def error_table(e: dict[str, np.ndarray], kind: str = "acc_err") -> pd.DataFrame:
    """Relative error per layer (rows) and sublayer (columns), pooled over seeds."""
    rel = quant.relative_error(e[kind].sum(0), e["ref"].sum(0))
    return pd.DataFrame(rel, columns=list(quant.SUBLAYERS)).rename_axis("layer")


def peak_ratio(rel: np.ndarray, target: str = "attn out") -> np.ndarray:
    """Mean over layers of ``target``'s relative error divided by the largest mean of the
    other sublayers (> 1: ``target`` has the largest error). ``rel``: ... x layers x
    sublayers."""
    names = list(quant.SUBLAYERS)
    m = rel.mean(-2)
    j = names.index(target)
    others = np.delete(m, j, axis=-1).max(-1)
    return m[..., j] / others


def peak_estimate(e: dict[str, np.ndarray], kind: str = "acc_err", n_boot: int = stats.N_BOOT,
                  seed: int = 0) -> stats.Estimate:  # fmt: skip
    """:func:`peak_ratio` of the accumulated (or local) errors with a bootstrap over seeds and
    the measured sentences (the same sentence draw for every sublayer)."""
    err, ref = e[kind], e["ref"]
    n_seeds, n = err.shape[:2]
    point = peak_ratio(quant.relative_error(err.sum(0), ref.sum(0)))
    rng = np.random.default_rng(seed)
    out = np.empty(n_boot)
    for b in range(n_boot):
        si = rng.integers(0, n_seeds, n_seeds)
        ii = rng.integers(0, n, n)
        eb = err[si][:, ii].sum((0, 1))
        rb = ref[si][:, ii].sum((0, 1))
        out[b] = peak_ratio(np.sqrt(eb / np.maximum(rb, 1e-30)))
    what = f"bootstrap over {n_seeds} seeds x {n} sentences"
    return interval(float(point), out, n_seeds, what)


def peak_sublayer(rel: pd.DataFrame) -> str:
    """The sublayer with the largest mean relative error over layers."""
    return str(rel.mean(axis=0).idxmax())


# ----------------------------------------------------------------------- drops


def drop_table(sc: Scores, point, boot, against: str | None = None) -> pd.DataFrame:
    """Points lost per arm (English and mean zero-shot) with paired 95 % intervals. By default
    the quantised arms only: PTQ against the dense model it rounds, QAT and SDQ against the
    dense model given the same retraining steps; with ``against``, every other arm against
    that one."""
    rows = []
    for a in sc.arms:
        if (against is None and a in (DENSE, MORE)) or a == against:
            continue
        ref = against or (DENSE if a.startswith("PTQ") else MORE)
        en, zs = en_gain(sc, point, boot, ref, a), zs_gain(sc, point, boot, ref, a)
        rows.append(
            {"arm": a, "against": ref, "en": en.value, "en_lo": en.ci[0], "en_hi": en.ci[1],
             "zs": zs.value, "zs_lo": zs.ci[0], "zs_hi": zs.ci[1]}
        )  # fmt: skip
    return pd.DataFrame(rows).set_index("arm")


def drop_text(drops: pd.DataFrame, column: str | None = None) -> str:
    """'PTQ 8-bit +0.1 [...] / +0.2 [...]; ...' (English / zero-shot) for the discussion, or
    only ``column`` ('en' or 'zs')."""

    def one(r, c):
        return f"{r[c]:+.2f} [{r[c + '_lo']:+.2f}, {r[c + '_hi']:+.2f}]"

    cols = [column] if column else ["en", "zs"]
    return "; ".join(f"{a} " + " / ".join(one(r, c) for c in cols) for a, r in drops.iterrows())


def gain_text(sc: Scores, point, boot, arms: list[str], ref: str) -> str:
    """'QAT 4-bit +0.35 [...] / -0.05 [...]; ...': points each arm gains over ``ref``, English
    / mean zero-shot, with paired 95 % intervals."""
    out = []
    for a in arms:
        en, zs = en_gain(sc, point, boot, a, ref), zs_gain(sc, point, boot, a, ref)
        out.append(
            f"{a} {en.value:+.2f} [{en.ci[0]:+.2f}, {en.ci[1]:+.2f}] / {zs.value:+.2f} "
            f"[{zs.ci[0]:+.2f}, {zs.ci[1]:+.2f}]"
        )
    return "; ".join(out)


# ----------------------------------------------------------------------- sizes and probes


def size_table(s: Setup, runs: dict, seed: int, embedding: bool) -> pd.DataFrame:
    """Whole-model file sizes of the seed's dense model and of its 8- and 4-bit roundings (the
    PTQ models: the same format as every quantised arm), with the encoder layers' and the
    embeddings' share and the stored bits per quantised weight. ``attrs``: 'roundtrip' (largest
    |weight read back - weight scored|) and 'file_over_tensors' (largest |file / tensors - 1|)."""
    dense_state, _ = dense_model(s, seed)
    rows, roundtrip, over = [], 0.0, 0.0
    for bits in (None, *BITS):
        restore(s, dense_state)
        names = quant.quantized_names(s.tagger, embedding) if bits else []
        if bits:
            quant.round_weights(s.tagger, names, bits)
        packed = quant.pack_model(s.tagger, names, bits)
        if bits:
            back = quant.unpack_model(packed)
            for k, v in s.tagger.state_dict().items():
                if not torch.equal(back[k], v):  # one pass when equal (the embedding is large)
                    roundtrip = max(roundtrip, float((back[k] - v).abs().max()))
        size = quant.file_bytes(packed)
        tb = quant.tensor_bytes(packed)
        enc = quant.tensor_bytes(packed, "encoder.encoder.")
        emb = quant.tensor_bytes(packed, "encoder.embeddings.")
        over = max(over, abs(size / (tb["quantized"] + tb["float"]) - 1))
        rows.append(
            {
                "format": f"{bits}-bit" if bits else "fp32",
                "file (MB)": size / 1e6,
                "encoder layers (MB)": (enc["quantized"] + enc["float"]) / 1e6,
                "embeddings (MB)": (emb["quantized"] + emb["float"]) / 1e6,
                "bits per quantised weight": (
                    8 * tb["quantized"] / tb["quantized_weights"] if bits else 32.0
                ),
            }
        )
    restore(s, dense_state)
    out = pd.DataFrame(rows).set_index("format")
    out["x smaller"] = out.loc["fp32", "file (MB)"] / out["file (MB)"]
    out["encoder x smaller"] = out.loc["fp32", "encoder layers (MB)"] / out["encoder layers (MB)"]
    out.attrs = {"roundtrip": roundtrip, "file_over_tensors": over}
    return out


def size_text(sizes: pd.DataFrame) -> str:
    """One sentence of file sizes for the discussion."""
    r = sizes
    return (
        f"the dense file is {r.loc['fp32', 'file (MB)']:.0f} MB; at 8 bits "
        f"{r.loc['8-bit', 'file (MB)']:.0f} MB ({r.loc['8-bit', 'x smaller']:.2f}x smaller; "
        f"encoder layers {r.loc['8-bit', 'encoder x smaller']:.2f}x), at 4 bits "
        f"{r.loc['4-bit', 'file (MB)']:.0f} MB ({r.loc['4-bit', 'x smaller']:.2f}x; encoder "
        f"layers {r.loc['4-bit', 'encoder x smaller']:.2f}x)"
    )


def probes(s: Setup, seed: int) -> dict[str, float]:
    """The checks measured on the seed's dense model: the straight-through gradient, the grid,
    the fake-quantised forward against the rounded one, the attention distributions of
    :class:`AttentionTap` against ``transformers``' eager attention, and the distillation
    terms against an exact copy."""
    dense_state, _ = dense_model(s, seed)
    model = frozen_copy(s.tagger, share_embedding=True)
    out: dict[str, float] = {}
    w = model.encoder.encoder.layer[0].intermediate.dense.weight.detach().clone()
    w.requires_grad_(True)
    quant.fake_quant_rows(w, 4).sum().backward()
    out["ste_gradient_is_identity"] = float((w.grad - 1).abs().max())
    levels = 0.0
    for bits in BITS:
        for n in quant.encoder_linears(model):
            r = quant.fake_quant_rows(quant.get_module(model, n).weight, bits).detach()
            srt = r.sort(1).values
            distinct = 1 + (srt.diff(dim=1) != 0).sum(1)
            levels = max(levels, float(distinct.max()) / (2**bits - 1))
    out["codes_within_grid"] = levels
    b = {k: v.to(s.device) for k, v in pad_batch(s.d.test["en"][:32], s.pad).items()}
    ids, mask = b["input_ids"], b["attention_mask"]
    names = quant.encoder_linears(model)
    with torch.no_grad():
        quant.to_quant(model, names, 4)
        fake, _ = model(ids, mask)
        quant.from_quant(model)
        rounded_model = frozen_copy(model, share_embedding=True)
        quant.round_weights(rounded_model, names, 4)
        rounded, _ = rounded_model(ids, mask)
    out["quant_forward_equals_rounded"] = float((fake - rounded).abs().max())
    eager = frozen_copy(model, share_embedding=True)
    eager.encoder.set_attn_implementation("eager")
    tap = AttentionTap(eager)
    with torch.no_grad():
        ref = eager.encoder(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
    mine = tap.log_probs(mask)
    tap.remove()
    out["attention_probs_match_eager"] = max(
        float((a - lp.exp()).abs().max()) for a, lp in zip(ref, mine)
    )
    twin = frozen_copy(model, share_embedding=True)
    taps = AttentionTap(model), AttentionTap(twin)
    with torch.no_grad():
        la, _ = model(ids, mask)
        lb, _ = twin(ids, mask)
        kl = output_kl(la, lb, b["labels"], 2.0)
        kl = kl + attention_kl(taps[0].log_probs(mask), taps[1].log_probs(mask), mask)
    for t in taps:
        t.remove()
    out["distillation_zero_for_identical"] = float(kl)
    restore(s, dense_state)
    return out
