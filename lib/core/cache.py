"""The one cached-state helper: a trained state saved under a key of its configuration.

Fine-tuned models that several arms (or chapters) start from are trained once and stored in
``<build>/cache/<space>/<name>-<key>.pt``, written atomically, so an interrupted run never
leaves a half-written file. The key hashes the configuration, which must name everything
the state depends on (data files, steps, seed, a version to bump when the code changes).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lib.book import paths


def cache_key(config: dict[str, Any]) -> str:
    """Short content hash of a JSON-able configuration."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cache_file(space: str, name: str, config: dict[str, Any]) -> Path:
    """Where the state for ``config`` lives: ``<build>/cache/<space>/<name>-<key>.pt``."""
    return paths.cache_dir() / space / f"{name}-{cache_key(config)}.pt"


def cached(
    space: str,
    name: str,
    config: dict[str, Any],
    build: Callable[[], Any],
    *,
    use_cache: bool = True,
    map_location: Any = "cpu",
) -> tuple[Any, bool]:
    """``(value, loaded)``: the saved value for ``config``, or ``build()`` saved atomically.

    ``value`` is anything ``torch.save`` stores (a state dict, a dict with a log beside it).
    """
    file = cache_file(space, name, config)
    if use_cache and file.exists():
        return torch.load(file, map_location=map_location, weights_only=False), True
    value = build()
    if use_cache:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(f".{id(value)}.tmp")
        torch.save(value, tmp)
        tmp.replace(file)
    return value, False
