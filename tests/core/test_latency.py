"""Latency harness: warm-up calls are not timed, the thread count is honoured, the run count
and statistics are right; peak memory counts live tensors."""

import time

import numpy as np
import pytest
import torch

from lib.core import latency


def test_warmup_excluded_and_run_count():
    calls = []

    def fn():
        calls.append(1)
        if len(calls) <= 3:  # the first (warm-up) calls are slow
            time.sleep(0.05)

    times = latency.time_calls(fn, runs=100, warmup=3)
    assert len(calls) == 103 and len(times) == 100
    assert times.max() < 0.02


def test_thread_count_honoured_and_restored():
    seen = []
    before = torch.get_num_threads()
    latency.time_calls(lambda: seen.append(torch.get_num_threads()), runs=5, warmup=1, n_threads=1)
    assert set(seen) == {1}
    assert torch.get_num_threads() == before


def test_summary_median_and_p90():
    s = latency.summary(np.arange(1, 101) / 1000)
    assert abs(s["median_ms"] - 50.5) < 1e-9 and abs(s["p90_ms"] - 90.1) < 1e-9 and s["runs"] == 100


def test_peak_bytes_counts_tensors_alive_together():
    n = 1_000_000

    def two_alive():
        a = torch.ones(n)
        b = torch.ones(n)
        return (a + b).sum()

    def one_at_a_time():
        for _ in range(3):
            a = torch.ones(n)
            del a
        return 0

    assert latency.peak_bytes(two_alive) >= 3 * 4 * n  # a, b and a+b
    assert latency.peak_bytes(one_at_a_time) <= 4 * n + 1024


def test_model_bytes_counts_shared_once():
    lin = torch.nn.Linear(100, 100, bias=False)
    model = torch.nn.Sequential(lin, lin)
    assert latency.model_bytes(model) == 100 * 100 * 4


def test_speedup_is_the_ratio_of_medians_with_an_interval_around_it():
    rng = np.random.default_rng(0)
    base = 2.0 + 0.05 * rng.standard_normal(200)
    fast = 1.0 + 0.05 * rng.standard_normal(200)
    ratio, (lo, hi) = latency.speedup(base, fast)
    assert ratio == np.median(base) / np.median(fast)
    assert lo < ratio < hi and 1.9 < lo and hi < 2.1
    same, (lo2, hi2) = latency.speedup(base, base)
    assert same == 1.0 and lo2 <= 1.0 <= hi2


def test_time_interleaved_separates_models_and_shuffles_order():
    """A slow and a fast function keep their speeds, every round times each once, and the
    order within rounds changes (so a slow phase is shared by both)."""
    calls: list[str] = []

    def slow():
        calls.append("slow")
        time.sleep(0.002)

    def fast():
        calls.append("fast")

    times = latency.time_interleaved({"slow": slow, "fast": fast}, rounds=30, warmup=2)
    assert set(times) == {"slow", "fast"} and all(len(t) == 30 for t in times.values())
    assert np.median(times["slow"]) > 0.0015 > np.median(times["fast"])
    timed = calls[4:]  # after two warm-up rounds of two calls
    firsts = {timed[2 * r] for r in range(30)}
    assert firsts == {"slow", "fast"}
    assert all(sorted(timed[2 * r : 2 * r + 2]) == ["fast", "slow"] for r in range(30))
    s = latency.interleaved_summary(times)
    assert s["slow"]["q25_ms"] <= s["slow"]["median_ms"] <= s["slow"]["q75_ms"]
    assert s["fast"]["runs"] == 30


def test_time_interleaved_rejects_bad_arguments():
    with pytest.raises(ValueError):
        latency.time_interleaved({}, rounds=3)
    with pytest.raises(ValueError):
        latency.time_interleaved({"a": lambda: None}, rounds=0)
