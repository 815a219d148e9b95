"""Peak training memory and time per step, each configuration in a fresh process.

What is measured: the peak resident set size (``getrusage(RUSAGE_SELF).ru_maxrss``, the
kernel's high-water mark of the process's resident memory) during building the model and
``steps`` AdamW training steps, minus the resident size just before the model was built.
So the number holds the weights, gradients, optimizer state, activations and the
allocator's temporaries, as a GPU's peak memory would, and nothing of the interpreter and
its imported libraries. Each configuration runs in its own process, forked from a
clean server process that has only imported torch, transformers and peft (multiprocessing's
"forkserver"): the high-water mark starts afresh, and no import is paid per configuration.
The weights are random (``BertConfig`` sizes): memory does not depend on their values.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import time
from dataclasses import asdict, dataclass

PRELOAD = ["torch", "transformers", "peft", "lib.chapters.peft.memory"]
_CTX: mp.context.BaseContext | None = None


@dataclass(frozen=True)
class MemConfig:
    """One measurement: a BERT shape, a method and the batch."""

    hidden: int
    layers: int
    method: str
    batch: int = 8
    seq_len: int = 32
    steps: int = 2
    vocab: int = 30522
    rank: int = 8
    prompt_tokens: int = 20
    prefix_tokens: int = 20
    seed: int = 0
    alloc_mb: float = 0.0  # > 0: allocate and touch this much instead (the method's check)


def rss_mb() -> float:
    """Current resident set size of this process, MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_mb() -> float:
    """High-water mark of this process's resident set size, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bert_config(hidden: int, layers: int, vocab: int = 30522):
    """A BERT configuration of the given width and depth (heads of 64, feed-forward 4d)."""
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(hidden // 64, 1),
        intermediate_size=4 * hidden,
    )


def _measure(cfg: MemConfig) -> dict:
    """Run in the child: build, train ``cfg.steps`` steps, report memory and time."""
    import numpy as np
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(cfg.seed)
    base = rss_mb()
    if cfg.alloc_mb > 0:
        x = np.ones(int(cfg.alloc_mb * 2**20 / 8))  # written: every page becomes resident
        return {"peak_mb": peak_mb() - base, "sum": float(x[::4096].sum())}
    from transformers import BertModel

    from lib.chapters.peft import methods

    bert = BertModel(bert_config(cfg.hidden, cfg.layers, cfg.vocab), add_pooling_layer=False)
    sizes = methods.Sizes(cfg.rank, cfg.prompt_tokens, cfg.prefix_tokens)
    enc = methods.wrap(bert, cfg.method, sizes)
    head = torch.nn.Linear(cfg.hidden, 2)
    model = torch.nn.ModuleDict({"encoder": enc, "head": head})
    loaded = rss_mb() - base
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    g = torch.Generator().manual_seed(cfg.seed)
    ids = torch.randint(1000, cfg.vocab, (cfg.batch, cfg.seq_len), generator=g)
    mask = torch.ones_like(ids)
    y = torch.randint(0, 2, (cfg.batch,), generator=g)
    times = []
    for _ in range(cfg.steps):
        t0 = time.perf_counter()
        h = enc(ids, mask).last_hidden_state.mean(1)
        loss = torch.nn.functional.cross_entropy(head(h), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return {
        "peak_mb": peak_mb() - base,
        "loaded_mb": loaded,
        "step_s": float(np.mean(times[1:] if len(times) > 1 else times)),
        "trainable": sum(p.numel() for p in params),
        "total": sum(p.numel() for p in model.parameters()),
    }


def _child(cfg: MemConfig, q) -> None:
    try:
        q.put(_measure(cfg))
    except BaseException as exc:  # report, do not hang the parent
        q.put({"error": f"{type(exc).__name__}: {exc}"})


def context() -> mp.context.BaseContext:
    """The forkserver context, its server preloading torch, transformers and peft."""
    global _CTX
    if _CTX is None:
        _CTX = mp.get_context("forkserver")
        _CTX.set_forkserver_preload(PRELOAD)
    return _CTX


def measure(cfg: MemConfig, timeout: float = 1800.0) -> dict:
    """Measure ``cfg`` in a fresh process; a dict with ``peak_mb`` (MiB above the process's
    resident size before the model was built), ``loaded_mb`` (the same after building),
    ``step_s`` (seconds per step after the first), ``trainable`` and ``total``, and the
    configuration's fields."""
    ctx = context()
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(cfg, q))
    p.start()
    out = q.get(timeout=timeout)
    p.join()
    if "error" in out:
        raise RuntimeError(f"memory measurement {cfg} failed: {out['error']}")
    return {**asdict(cfg), **out}


def sweep(shapes: list[tuple[int, int]], methods: list[str], repeats: int, **kw) -> list[dict]:
    """Every (shape, method) ``repeats`` times, repeat-major (so drifts in the machine's load
    spread over all configurations alike); rows with a ``repeat`` index."""
    rows = []
    for r in range(repeats):
        for hidden, layers in shapes:
            for m in methods:
                rows.append({**measure(MemConfig(hidden, layers, m, **kw)), "repeat": r})
    return rows
