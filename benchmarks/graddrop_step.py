"""One GradDrop training step against one standard step, on the chapter's model.

A step is forward, backward, the gradient hook and the optimizer update of the chapter's tagger
(multilingual-e5-small, its first ``--layers`` layers, embeddings frozen) on one fixed batch of
English EWT training sentences. Arms: standard (AdamW), element-wise GradDrop with plain AdamW
(the "decay" reading: the mask alone), element-wise GradDrop with SparseAdamW (the "frozen"
reading: mask and sparse update) and layer-wise GradDrop. The printed ratio is each arm's step
time over the standard step's (target: at most 1.10). Best of a few repeats, one thread,
interleaved so that background load hits every arm alike.

    python benchmarks/graddrop_step.py                 # the book's setting: 4 layers, batch 16
    python benchmarks/graddrop_step.py --layers 12 --batch 32
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from lib.chapters.graddrop import masking
from lib.chapters.graddrop import study as gs
from lib.core import data
from lib.core.pos_transfer import IGNORE, encode_treebank, pad_batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--p", type=float, default=0.3)
    a = ap.parse_args()
    torch.set_num_threads(1)
    tagger, tok = gs.build_tagger("e5", a.layers, 0, "cpu")
    sents = data.ud_sentences("en", "train")[: a.batch]
    b = pad_batch(encode_treebank(tok, sents, a.max_len), tok.pad)
    groups = masking.layer_groups(tagger)
    enc = [w for g in groups[:-1] for w in g]
    params = [w for g in groups for w in g]
    gen = torch.Generator().manual_seed(0)
    arms = {
        "standard": (None, torch.optim.AdamW(params, lr=1e-5, weight_decay=0.01)),
        "element-wise, AdamW (decay)": (
            masking.ElementwiseDrop(enc, a.p, generator=gen),
            torch.optim.AdamW(params, lr=1e-5, weight_decay=0.01),
        ),
        "element-wise, SparseAdamW (frozen)": (
            masking.ElementwiseDrop(enc, a.p, generator=gen),
            masking.SparseAdamW(params, lr=1e-5, weight_decay=0.01),
        ),
        "layer-wise": (
            masking.LayerwiseDrop(groups[:-1], a.p, generator=gen),
            torch.optim.AdamW(params, lr=1e-5, weight_decay=0.01),
        ),
    }
    tagger.train()

    def step(hook, opt) -> float:
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        logits, _ = tagger(b["input_ids"], b["attention_mask"])
        y = b["labels"].flatten()
        F.cross_entropy(logits.flatten(0, 1), y, ignore_index=IGNORE).backward()
        if hook is not None:
            hook(tagger, 0)
        opt.step()
        return time.perf_counter() - t

    for hook, opt in arms.values():  # warm-up: optimizer state allocated, kernels loaded
        step(hook, opt)
    best = {k: float("inf") for k in arms}
    hook_best = {k: float("inf") for k in arms}
    for _ in range(a.repeats):  # interleaved
        for k, (hook, opt) in arms.items():
            best[k] = min(best[k], step(hook, opt))
            if hook is not None:
                t = time.perf_counter()
                hook(tagger, 0)
                hook_best[k] = min(hook_best[k], time.perf_counter() - t)
    n_enc = sum(w.numel() for w in enc)
    print(
        f"e5-small, {a.layers} layers ({n_enc / 1e6:.1f} M masked encoder weights), "
        f"batch {a.batch} x {b['input_ids'].shape[1]} tokens, p = {a.p}, one thread"
    )
    for k in arms:
        hook_ms = ""
        if arms[k][0] is not None:
            share = hook_best[k] / best["standard"]
            hook_ms = f", hook alone {1e3 * hook_best[k]:.1f} ms = {share:.3f} of a standard step"
        print(f"{k:>36}: {1e3 * best[k]:7.1f} ms, ratio {best[k] / best['standard']:.3f}{hook_ms}")


if __name__ == "__main__":
    main()
