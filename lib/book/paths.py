"""Where things are: the project root and the build folders derived from it."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BOOK_DIR = ROOT / "book"
CHAPTERS_DIR = BOOK_DIR / "chapters"
LIB_DIR = ROOT / "lib"


def build_dir() -> Path:
    """Build folder: ``$REPRO_BUILD_DIR`` (tests use a separate one) or ``_build``."""
    return Path(os.environ.get("REPRO_BUILD_DIR") or ROOT / "_build").resolve()


def executed_dir(profile: str = "book") -> Path:
    """Executed notebooks and their run records: the book profile's (the site's pages) in
    ``executed``, any other profile's in ``executed/<profile>``, so a smoke run never
    replaces a book page."""
    base = build_dir() / "executed"
    return base if profile == "book" else base / profile


def cache_dir() -> Path:
    """Cached intermediate results that chapters reuse (e.g. a fine-tuned model)."""
    return build_dir() / "cache"
