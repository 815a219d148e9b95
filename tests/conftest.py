"""Shared fixtures: the smoke run of every chapter and the site built from it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lib.book import profiles, site
from lib.book.paths import ROOT

SMOKE_DIR = ROOT / "_build" / "smoke"


def smoke_env() -> dict[str, str]:
    """Environment of the smoke runs: their own build folder, one thread."""
    env = dict(os.environ, REPRO_BUILD_DIR=str(SMOKE_DIR), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def toc_names() -> list[str]:
    return [profiles.chapter_name(Path(e).name) for e in site.toc_chapters()]


@pytest.fixture(scope="session")
def smoke_run() -> dict:
    """Execute every chapter of the book with the smoke profile (cached by content), via the CLI."""
    names = toc_names()
    proc = None
    if names:
        proc = subprocess.run(
            [sys.executable, "-m", "lib", "run", *names, "--profile", "smoke", "--jobs", "2"],
            cwd=ROOT,
            env=smoke_env(),
            capture_output=True,
            text=True,
        )
        print(proc.stdout[-5000:], proc.stderr[-20000:])
    records = {}
    for name in names:
        f = SMOKE_DIR / "executed" / "smoke" / f"{name}.json"
        records[name] = json.loads(f.read_text()) if f.exists() else None
    return {
        "names": names,
        "records": records,
        "returncode": proc.returncode if proc else 0,
        "output": (proc.stdout + proc.stderr) if proc else "",
    }


@pytest.fixture(scope="session")
def smoke_site(smoke_run) -> Path:
    """The site rendered (with -W) from the smoke outputs."""
    proc = subprocess.run(
        [sys.executable, "-m", "lib", "build", "--profile", "smoke"],
        cwd=ROOT,
        env=smoke_env(),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, (
        f"the book did not build:\n{proc.stdout[-8000:]}\n{proc.stderr[-8000:]}"
    )
    return SMOKE_DIR / "html"
