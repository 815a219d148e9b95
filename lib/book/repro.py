"""Seeding, threads, determinism and the facts of a run (versions, machine, git revision)."""

from __future__ import annotations

import os
import platform
import random
import subprocess
from importlib import metadata

import numpy as np

from lib.book.paths import ROOT

# Packages whose versions are printed on run cards and recorded with every run.
KEY_PACKAGES = (
    "numpy",
    "torch",
    "scipy",
    "pandas",
    "matplotlib",
    "seaborn",
    "papermill",
    "jupyter-book",
    "myst-nb",
    "transformers",
    "peft",
    "tslearn",
)

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def thread_env(threads: int = 1) -> dict[str, str]:
    """Environment variables fixing the number of intra-op threads (set before a kernel starts)."""
    return {var: str(threads) for var in THREAD_VARS}


def seed_everything(seed: int, threads: int = 1, deterministic: bool = True) -> None:
    """Seed python, numpy and torch, fix torch's thread count and make it deterministic."""
    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch
    except ImportError:  # a chapter without torch still gets numpy/python seeds
        return
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS


def device(name: str = "auto"):
    """torch device from a parameter: ``auto`` is CUDA when available, else CPU."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "device='cuda' was asked for but torch sees no CUDA device; use 'auto' or 'cpu'"
        )
    return torch.device(name)


def versions(packages: tuple[str, ...] = KEY_PACKAGES) -> dict[str, str]:
    """Installed versions of the key packages (absent ones left out), plus python's."""
    found = {"python": platform.python_version()}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


# CPU instruction sets that change what a timing means.
ISA_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "amx_int8",
    "avx512_bf16",
    "amx_bf16",
)
# int8 kernels use VNNI/AMX where present; bfloat16 is native only with these two, and emulated
# (several times slower than float32) elsewhere.
NATIVE_BF16 = ("avx512_bf16", "amx_bf16")


def machine(cpuinfo: str | None = None) -> dict[str, object]:
    """The CPU a run's timings come from: model name, the :data:`ISA_FLAGS` it has, and the
    cores the process may use (read from ``/proc/cpuinfo``; empty fields where it is absent)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": fields.get("model name") or platform.processor() or platform.machine(),
        "isa": [f for f in ISA_FLAGS if f in flags],
        "cores": cores,
    }


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (else autocast to it is a slow-down)."""
    return any(f in machine()["isa"] for f in NATIVE_BF16)


def all_versions() -> list[str]:
    """Every installed distribution as ``name==version``, sorted and once each (for cache keys:
    the project's own ``*.egg-info`` is seen twice from its root, once from elsewhere)."""
    return sorted(
        {
            f"{d.metadata['Name'].lower()}=={d.version}"
            for d in metadata.distributions()
            if d.metadata["Name"]
        }
    )


def git_revision() -> str:
    """Short git revision of the project, with ``+dirty`` when the tree has changes."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()

    try:
        rev = git("rev-parse", "--short", "HEAD") or "unknown"
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")
