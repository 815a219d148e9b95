"""CPU latency of compressed all-MiniLM-L6-v2 variants against the dense fp32 model, side by side.

One process, one intra-op thread, fixed sequence length; warm-up runs are excluded and the
median and 90th percentile of the timed runs are printed, with the ratio to the dense model.
The weights are the pretrained ones (no fine-tuning: speed does not depend on the task).
Other processes on the machine inflate absolute times; the ratios, measured in one burst,
are the point.

    python benchmarks/compression_latency.py                 # 100 runs, batch 1 and 32, 32 tokens
    python benchmarks/compression_latency.py --runs 200 --seq 48 --threads 2
"""

from __future__ import annotations

import argparse
import warnings

import torch

from lib.chapters.compression import study as cs
from lib.core import compress, encoders, latency


def variants(calib: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.nn.Module]:
    """The dense model and one compressed model per family that changes the arithmetic."""
    dense = cs.load_minilm(6).eval()
    names = cs.encoder_linears(dense)
    out = {"dense fp32": dense}
    out["90% unstructured (dense kernels)"] = cs.clone(dense)
    compress.prune_unstructured(out["90% unstructured (dense kernels)"], 0.9, names)
    out["int8 dynamic"] = compress.quantize_dynamic_int8(cs.clone(dense), names)
    out["int8 static"] = compress.quantize_static_int8(cs.clone(dense), names, lambda m: m(*calib))
    out["FFN neurons -50%"] = cs.clone(dense)
    compress.prune_neurons(out["FFN neurons -50%"], cs.ffn_pairs(dense), 0.5)
    out["SVD rank x1/4"] = cs.clone(dense)
    compress.low_rank_model(out["SVD rank x1/4"], names, 0.25)
    out["3-layer student"] = cs.clone(dense)
    encoders.keep_layers(out["3-layer student"].bert, [0, 2, 5])
    out["3-layer student + int8"] = compress.quantize_dynamic_int8(
        cs.clone(out["3-layer student"]), cs.encoder_linears(out["3-layer student"])
    )
    return out


def main() -> None:
    """Time every variant at batch 1 and 32 and print one row each."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    texts, _ = cs.rotten_tomatoes()
    ids, mask = cs.encode(cs.tokenizer(), texts[:256], args.seq)
    models = variants((ids, mask))
    x1, x32 = (ids[:1], mask[:1]), (ids[:32], mask[:32])
    print(
        f"{args.threads} thread(s), {args.seq} tokens, "
        f"{args.runs} runs after {args.warmup} warm-up; ms"
    )
    print(
        f"{'model':34} {'b1 med':>8} {'b1 p90':>8} {'b32 med':>9} {'b32 p90':>9} "
        f"{'x dense b1':>10} {'x dense b32':>11} {'MB file':>8}"
    )
    base = None
    for name, model in models.items():
        b1 = latency.measure(lambda: model(*x1), args.runs, args.warmup, args.threads)
        b32 = latency.measure(lambda: model(*x32), args.runs, args.warmup, args.threads)
        base = base or (b1["median_ms"], b32["median_ms"])
        mb = compress.file_bytes(model, skip=cs.EMBED) / 1e6
        print(
            f"{name:34} {b1['median_ms']:8.2f} {b1['p90_ms']:8.2f} "
            f"{b32['median_ms']:9.1f} {b32['p90_ms']:9.1f} "
            f"{base[0] / b1['median_ms']:10.2f} {base[1] / b32['median_ms']:11.2f} {mb:8.2f}"
        )


if __name__ == "__main__":
    main()
