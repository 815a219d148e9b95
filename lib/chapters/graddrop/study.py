"""The chapter's study: English fine-tuning arms at an equal number of steps (standard, gradual
unfreezing, GradDrop element-wise, layer-wise and scheduled), selection of the learning rate
and of the drop rate on English dev, evaluation per sentence on English and the zero-shot
languages, and the statistics behind every finding (a bootstrap over seeds and test
sentences, paired across arms, which all tag the same sentences).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import stats as st

from lib.book import stats
from lib.chapters.graddrop import masking
from lib.core import cache
from lib.core.pos_transfer import (
    IGNORE,
    Tagger,
    TrainConfig,
    TransferData,
    bucketed_batches,
    evaluate_items,
    lr_lambda,
    pad_batch,
    prepare_transfer,
    reset_tagger,
    trainable_state,
)
from lib.core.train import fit
from lib.core.transfer_scores import Scores, gains, interval, words, zs_gain

CACHE_VERSION = 1  # bump when the training code changes what a cached run would contain
KINDS = ("standard", "unfreeze", "elementwise", "layerwise", "scheduled")
WEIGHT_DECAY = 0.01


@dataclass(frozen=True)
class Arm:
    """One way of fine-tuning: ``kind`` (one of :data:`KINDS`), drop rate ``p``, what happens
    to masked entries (``state``: 'frozen' = no move, no optimizer-state change; 'decay' =
    plain AdamW on the masked gradient) and whether kept gradients are rescaled by 1/(1-p)."""

    kind: str
    p: float = 0.0
    state: str = "frozen"
    rescale: bool = True

    @property
    def label(self) -> str:
        if self.kind in ("standard", "unfreeze"):
            return self.kind
        return f"{self.kind} p={self.p:g} {self.state}"


# ----------------------------------------------------------------------- data


StudyData = TransferData  # the shared harness's data: English train/dev, test per language
prepare = prepare_transfer


# ----------------------------------------------------------------------- training


def make_hooks(tagger: Tagger, arm: Arm, steps: int, seed: int):
    """(grad hook or None, optimizer class) of an arm. Masks are drawn from their own
    generator (seeded from the run's seed), so dropout and data order are those of the
    standard arm with the same seed."""
    if arm.kind not in KINDS:
        raise ValueError(f"unknown arm kind {arm.kind!r}; use one of {KINDS}")
    if arm.state not in masking.STATES:
        raise ValueError(f"unknown state {arm.state!r}; use one of {masking.STATES}")
    groups = masking.layer_groups(tagger)
    encoder_params = [w for g in groups[:-1] for w in g]
    gen = torch.Generator(device=encoder_params[0].device).manual_seed(10_007 + seed)
    opt = masking.SparseAdamW if arm.state == "frozen" else torch.optim.AdamW
    if arm.kind == "standard":
        return None, torch.optim.AdamW
    if arm.kind == "unfreeze":
        return masking.GradualUnfreezing(groups, steps), torch.optim.AdamW
    if arm.kind == "layerwise":
        hook = masking.LayerwiseDrop(
            groups[:-1], arm.p, state=arm.state, rescale=arm.rescale, generator=gen
        )
        return hook, torch.optim.AdamW
    schedule = masking.linear_anneal(steps) if arm.kind == "scheduled" else None
    hook = masking.ElementwiseDrop(
        encoder_params, arm.p, rescale=arm.rescale, schedule=schedule, generator=gen
    )
    return hook, opt


def train_arm(
    tagger: Tagger,
    train: list,
    cfg: TrainConfig,
    arm: Arm,
    pad: int,
    device="cpu",
) -> dict:
    """Fine-tune for ``cfg.steps`` steps of ``arm`` on :func:`lib.core.train.fit` (AdamW or
    :class:`~masking.SparseAdamW`, linear warm-up and decay; batches and dropout as
    :func:`lib.core.pos_transfer.train_tagger` draws them); the mask is the grad hook.
    Returns a log: loss per step, seconds and the hook (for its counters)."""
    g = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.bucket:
        batches = bucketed_batches(
            np.array([len(x) for x, _ in train]), cfg.batch_size, cfg.steps, g
        )
    else:
        reps = cfg.steps * cfg.batch_size // len(train) + 1
        order = np.concatenate([g.permutation(len(train)) for _ in range(reps)])
        batches = [order[t * cfg.batch_size : (t + 1) * cfg.batch_size] for t in range(cfg.steps)]
    hook, opt_cls = make_hooks(tagger, arm, cfg.steps, cfg.seed)

    def next_batch(step: int) -> dict[str, torch.Tensor]:
        b = pad_batch([train[i] for i in batches[step]], pad)
        return {k: v.to(device) for k, v in b.items()}

    def loss_fn(model: Tagger, b: dict[str, torch.Tensor]) -> torch.Tensor:
        logits, _ = model(b["input_ids"], b["attention_mask"])
        return F.cross_entropy(logits.flatten(0, 1), b["labels"].flatten(), ignore_index=IGNORE)

    log = fit(
        tagger,
        next_batch,
        loss_fn,
        cfg.steps,
        lambda params: opt_cls(params, lr=cfg.lr, weight_decay=WEIGHT_DECAY),
        make_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg)),
        grad_hook=hook,
    )
    return {"loss": log["loss"], "seconds": log["seconds"], "hook": hook}


def hook_summary(hook) -> dict:
    """What a hook measured, as plain numbers (cached with the run)."""
    if isinstance(hook, masking.ElementwiseDrop):
        return {"drop_z": hook.drop_z(), "drop_fraction": hook.drop_fraction()}
    if isinstance(hook, masking.GradualUnfreezing):
        return {"first_update": dict(hook.first_update), "planned": hook.unfreeze_steps()}
    if isinstance(hook, masking.LayerwiseDrop):
        k, n = sum(len(x) for x in hook.dropped), len(hook.dropped) * len(hook.groups)
        z = (k - n * hook.p) / max(np.sqrt(n * hook.p * (1 - hook.p)), 1e-12)
        return {"drop_z": float(z), "drop_fraction": k / max(n, 1)}
    return {}


def run(
    tagger: Tagger,
    pretrained: dict,
    d: StudyData,
    cfg: TrainConfig,
    arm: Arm,
    pad: int,
    key_parts: dict,
    device="cpu",
    use_cache: bool = True,
    eval_batch: int = 128,
) -> dict:
    """One fine-tune from the pretrained encoder (fresh head from ``cfg.seed``), scored per
    sentence on English dev and on every test set; cached by configuration (so a selection
    run is also the first seed of a reported arm). Returns {'dev': tags right per dev
    sentence, 'test': {lang: ...}, 'loss', 'seconds', 'hook', 'cached'}."""
    config = {
        "cfg": asdict(cfg),
        "arm": asdict(arm),
        "version": CACHE_VERSION,
        **key_parts,
    }

    def build() -> dict:
        reset_tagger(tagger, pretrained, cfg.seed)
        t0 = time.perf_counter()
        log = train_arm(tagger, d.train, cfg, arm, pad, device)
        out = {
            "dev": evaluate_items(tagger, d.dev, pad, eval_batch, device)["correct"],
            "test": {
                lang: evaluate_items(tagger, ex, pad, eval_batch, device)["correct"]
                for lang, ex in d.test.items()
            },
            "loss": log["loss"],
            "train_seconds": log["seconds"],
            "hook": hook_summary(log["hook"]),
        }
        out["seconds"] = time.perf_counter() - t0
        return out

    saved, loaded = cache.cached("graddrop", "run", config, build, use_cache=use_cache)
    return {**saved, "cached": loaded}


def dev_accuracy(result: dict, d: StudyData) -> float:
    """English dev accuracy of one run."""
    return float(result["dev"].sum() / words(d.dev).sum())


# ----------------------------------------------------------------------- selection


def select(grid: dict, edge_values: list) -> tuple[object, str | None]:
    """The grid value with the best English dev accuracy (``grid``: value -> accuracy) and,
    when it is the smallest or largest of ``edge_values``, why that leaves the choice
    unresolved (else None)."""
    best = max(grid, key=lambda k: grid[k])
    edge = best in (min(edge_values), max(edge_values)) and len(edge_values) > 1
    why = f"selected {best} is at the edge of its grid {sorted(edge_values)}" if edge else None
    return best, why


# ----------------------------------------------------------------------- statistics


def gain_table(sc: Scores, point: np.ndarray, boot: np.ndarray, ref: str = "standard"):
    """Per arm and language: accuracy (mean over seeds) and gain over ``ref`` with its paired
    95 % interval; plus the mean over the zero-shot languages."""
    rows = []
    q = [(1 - stats.LEVEL) / 2, (1 + stats.LEVEL) / 2]
    for a in sc.arms:
        g_pt, g_bs = gains(point, sc, a, ref), gains(boot, sc, a, ref)
        cols = [*sc.langs, "zero-shot mean"]
        g_pt = np.concatenate([g_pt, g_pt[:, 1:].mean(1, keepdims=True)], 1)
        g_bs = np.concatenate([g_bs, g_bs[:, 1:].mean(1, keepdims=True)], 1)
        acc = 100 * point[0, :, sc.arm(a), :].mean(0)
        acc = np.append(acc, acc[1:].mean())
        lo, hi = np.quantile(g_bs, q, axis=0)
        for j, lang in enumerate(cols):
            rows.append(
                {
                    "arm": a,
                    "lang": lang,
                    "acc": acc[j],
                    "gain": g_pt[0, j],
                    "lo": lo[j],
                    "hi": hi[j],
                }
            )
    return pd.DataFrame(rows)


def mean_zs_gain(sc: Scores, point, boot, arm: str, ref: str = "standard") -> stats.Estimate:
    """Mean zero-shot accuracy gain (points) of ``arm`` over ``ref`` (standard fine-tuning by
    default), paired interval."""
    return zs_gain(sc, point, boot, arm, ref)


def spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of each row of ``x`` with the same row of ``y`` (ties get
    average ranks): rows."""
    rx = st.rankdata(x, axis=-1)
    ry = st.rankdata(y, axis=-1)
    rx = rx - rx.mean(-1, keepdims=True)
    ry = ry - ry.mean(-1, keepdims=True)
    den = np.sqrt((rx**2).sum(-1) * (ry**2).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rx * ry).sum(-1) / den


def resource_correlation(
    sc: Scores, point, boot, arm: str, size: pd.Series, seed: int = 0
) -> stats.Estimate:
    """Spearman correlation, over the zero-shot languages, of ``arm``'s gain over standard
    fine-tuning with the language's pretraining-corpus size (``size``, by language). The
    interval resamples the languages too: each replicate takes the gains of one replicate
    of the sentence-and-seed bootstrap, on a resample of the languages."""
    zs = sc.langs[1:]
    x = np.log(size.loc[zs].to_numpy(float))
    g_pt, g_bs = gains(point, sc, arm, "standard")[:, 1:], gains(boot, sc, arm, "standard")[:, 1:]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(zs), size=(len(g_bs), len(zs)))
    r_bs = spearman_rows(np.take_along_axis(g_bs, idx, 1), x[idx])
    r_bs = r_bs[np.isfinite(r_bs)]
    what = f"bootstrap over {len(zs)} languages, {len(sc.seeds)} seeds and test sentences"
    return interval(spearman_rows(g_pt[0], x), r_bs, len(sc.seeds), what)


def arms_for(p: float, state_variants: list[str], scheduled: bool) -> list[Arm]:
    """The reported arms at the selected drop rate ``p``: standard, gradual unfreezing,
    element-wise GradDrop in each state variant, layer-wise and (if asked) scheduled."""
    arms = [Arm("standard"), Arm("unfreeze")]
    arms += [Arm("elementwise", p, s) for s in state_variants]
    arms.append(Arm("layerwise", p, state_variants[0]))
    if scheduled:
        arms.append(Arm("scheduled", p, state_variants[0]))
    return arms


def with_lr(cfg: TrainConfig, lr: float, seed: int, steps: int | None = None) -> TrainConfig:
    return replace(cfg, lr=lr, seed=seed, steps=steps or cfg.steps)


# ----------------------------------------------------------------------- probes (checks)


def masked_entries_probe(
    tagger: Tagger, d: StudyData, cfg: TrainConfig, pad: int, p: float, device="cpu"
) -> float:
    """Largest change, over the entries a step masked, of the weights and of both Adam
    moments, in one frozen-reading step taken after an unmasked one (so the moments are
    non-zero): 0 when masked entries do not move."""
    params = [w for g in masking.layer_groups(tagger)[:-1] for w in g]
    opt = masking.SparseAdamW(params, lr=cfg.lr, weight_decay=WEIGHT_DECAY)
    gen = torch.Generator(device=params[0].device).manual_seed(cfg.seed)
    hook = masking.ElementwiseDrop(params, p, generator=gen)
    b = {k: v.to(device) for k, v in pad_batch(d.train[: cfg.batch_size], pad).items()}

    def backward() -> None:
        opt.zero_grad(set_to_none=True)
        logits, _ = tagger(b["input_ids"], b["attention_mask"])
        y = b["labels"].flatten()
        F.cross_entropy(logits.flatten(0, 1), y, ignore_index=IGNORE).backward()

    tagger.train()
    backward()
    opt.step()  # an unmasked step: the moments are non-zero from here on
    backward()
    hook(tagger, 0)
    masks = [w.grad == 0 for w in params]
    names = ("exp_avg", "exp_avg_sq")
    before = [[w.detach().clone(), *(opt.state[w][s].clone() for s in names)] for w in params]
    opt.step()
    tagger.eval()
    moved = 0.0
    for w, m, old in zip(params, masks, before):
        now = [w.detach(), *(opt.state[w][s] for s in names)]
        for a, a0 in zip(now, old):
            if m.any():
                moved = max(moved, float((a - a0)[m].abs().max()))
    return moved


def rescale_difference(
    tagger: Tagger, pretrained: dict, d: StudyData, cfg: TrainConfig, p: float, pad: int,
    device="cpu",
) -> float:  # fmt: skip
    """Relative difference of the weight change after ``cfg.steps`` frozen-variant steps with
    and without rescaling by 1/(1-p) (same seed, same masks): ||dA - dB|| / ||dB||. Adam is
    invariant to a constant gradient scale (up to its epsilon), so it should be ~0."""
    deltas = []
    for rescale in (True, False):
        reset_tagger(tagger, pretrained, cfg.seed)
        w0 = trainable_state(tagger)
        train_arm(tagger, d.train, cfg, Arm("elementwise", p, "frozen", rescale), pad, device)
        deltas.append({n: w.detach() - w0[n] for n, w in tagger.named_parameters() if n in w0})
    num = sum(float((deltas[0][n] - deltas[1][n]).pow(2).sum()) for n in deltas[0])
    den = sum(float(deltas[1][n].pow(2).sum()) for n in deltas[1])
    return float(np.sqrt(num / max(den, 1e-30)))


# ----------------------------------------------------------------------- the study's loops


def run_grid(tagger, pretrained, d, base: TrainConfig, arms_lrs: list, pad, key, device,
             use_cache: bool = True) -> dict:  # fmt: skip
    """Run every (arm, lr, seed) in ``arms_lrs`` (printing one line each); {(label, lr,
    seed): result}."""
    out = {}
    for arm, lr, seed in arms_lrs:
        cfg = replace(base, lr=lr, seed=seed)
        r = run(tagger, pretrained, d, cfg, arm, pad, key, device, use_cache)
        out[(arm.label, lr, seed)] = r
        zs = [k for k in r["test"] if k != "en"]
        acc = {k: r["test"][k].sum() / words(d.test[k]).sum() for k in r["test"]}
        how = "cached" if r["cached"] else f"{r['seconds']:.0f} s"
        print(
            f"{arm.label:>28} lr {lr:.2g} seed {seed}: dev {dev_accuracy(r, d):.3f}, "
            f"en {acc['en']:.3f}, zero-shot mean {np.mean([acc[k] for k in zs]):.3f} [{how}]"
        )
    return out


def selection_table(runs: dict, d: StudyData) -> pd.DataFrame:
    """English dev accuracy (%) of the selection runs."""
    rows = [
        {"arm": a, "lr": lr, "seed": s, "dev_acc": 100 * dev_accuracy(r, d)}
        for (a, lr, s), r in runs.items()
    ]
    return pd.DataFrame(rows)


def check_values(runs: dict) -> dict:
    """The checks that the runs' hooks measured: largest |z| of the drop counts, and whether
    gradual unfreezing updated each group first at its declared step."""
    zs = [abs(r["hook"]["drop_z"]) for r in runs.values() if "drop_z" in r["hook"]]
    gu = [r["hook"] for r in runs.values() if "planned" in r["hook"]]
    on_schedule = bool(gu) and all(h["first_update"] == dict(enumerate(h["planned"])) for h in gu)
    return {"drop_z": max(zs) if zs else 0.0, "on_schedule": on_schedule}


def long_run_gap(runs: dict, long_run: dict, d: StudyData, lr: float, seed: int) -> float:
    """English dev accuracy (points) of standard fine-tuning at the budget minus the longer
    run's (same seed and learning rate)."""
    (long,) = long_run.values()
    return 100 * (dev_accuracy(runs[("standard", lr, seed)], d) - dev_accuracy(long, d))


def language_gain_text(gt: pd.DataFrame, arm: str, langs: list[str]) -> str:
    """'de +0.5 [-0.2, +1.1], ...' for an arm's gain in each language."""
    r = gt[gt.arm == arm].set_index("lang").loc[langs]
    return "; ".join(f"{k} {x.gain:+.1f} [{x.lo:+.1f}, {x.hi:+.1f}]" for k, x in r.iterrows())


def margin_over_majority(point: np.ndarray, table: pd.DataFrame) -> float:
    """Smallest English test accuracy over arms and seeds minus the English majority-tag
    baseline, in points (English is the first language)."""
    return float(100 * (point[0, :, :, 0].min() - table.loc["en", "majority"]))


def dev_spread(sel: dict, d: StudyData, lr: float, seed: int) -> float:
    """Largest minus smallest English dev accuracy (points) over the drop rates tried."""
    acc = [
        dev_accuracy(r, d)
        for (label, l_, s), r in sel.items()
        if label.startswith("elementwise") and l_ == lr and s == seed
    ]
    return 100 * (max(acc) - min(acc)) if acc else float("nan")
