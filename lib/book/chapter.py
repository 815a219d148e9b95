"""What a chapter notebook calls: ``ch = lib.start("name", globals())`` and the ``ch`` object.

``start`` checks the notebook's parameters against the chapter's spec, fixes threads and
seeds, applies the plotting style and prints a run card; ``ch`` then records claims and
findings, shows the "paper vs here" table and reports the wall time.
"""

from __future__ import annotations

import textwrap
import time
from typing import Any

import numpy as np

from lib.book import plotting, profiles, repro
from lib.book.records import METADATA_KEY, RecordError, Records


class ChapterRun:
    """One execution of a chapter: its parameters, device, random generator and records."""

    def __init__(
        self, name: str, params: dict[str, Any], spec: dict[str, Any] | None = None
    ) -> None:
        self.name = name
        self.params = params
        self.profile: str = params["profile"]
        self.seed: int = int(params.get("seed", 0))
        self.rng = np.random.default_rng(self.seed)
        self.device = repro.device(params.get("device", "auto"))
        self.records = Records(spec, self.profile)
        self.started = time.perf_counter()
        self.check = self.records.check
        self.claim = self.records.claim
        self.adequacy = self.records.adequacy
        self.finding = self.records.finding
        self.headline = self.records.headline

    def run_card(self) -> str:
        """Profile, seed, parameters, device, threads, versions and git revision in a few lines."""
        import torch

        shown = ", ".join(f"{k}={v}" for k, v in self.params.items() if k != "profile")
        vers = ", ".join(f"{k} {v}" for k, v in repro.versions().items())
        lines = [
            f"chapter {self.name} | profile {self.profile} | seed {self.seed}",
            f"device {self.device} | torch threads {torch.get_num_threads()} "
            f"| git {repro.git_revision()}",
            *textwrap.wrap(f"parameters: {shown}", 88, subsequent_indent="  "),
            *textwrap.wrap(f"versions: {vers}", 88, subsequent_indent="  "),
        ]
        return "\n".join(lines)

    def show_claims(self) -> None:
        """Display the checks and claims, the adequacy conditions and the "paper vs here"
        table; the records travel in the output's metadata (the runner reads them there)."""
        from IPython.display import display

        missing = self.records.missing()
        if missing:
            raise RecordError(f"{self.name}: declared in the YAML but never recorded: {missing}")
        bundle = {"text/plain": self.records.text(), "text/markdown": self.records.markdown()}
        display(bundle, raw=True, metadata={METADATA_KEY: self.records.records()})

    def finish(self) -> float:
        """Print and return the wall time since ``start``, in seconds."""
        wall = time.perf_counter() - self.started
        failed = self.records.failed()
        counts = ", ".join(f"{n} {v}" for v, n in self.records.verdict_counts().items() if n)
        print(
            f"{self.name}: {len(self.records.claims) - len(failed)}/{len(self.records.claims)} "
            f"checks and claims hold; findings: {counts or 'none'}; wall time {wall:.1f} s"
        )
        return wall


def start(name: str, namespace: dict[str, Any]) -> ChapterRun:
    """Validate the notebook's parameters (found in ``namespace``), seed, set the style and
    print the run card."""
    chapter = profiles.get(name)
    profile = namespace.get("profile", profiles.DEFAULT_PROFILE)
    missing = [k for k in chapter.params if k not in namespace]
    if missing:
        raise profiles.ParameterError(f"{name}: the parameters cell lacks {missing}")
    given = {k: namespace[k] for k in chapter.params}
    params = profiles.resolve(chapter, profile, given)
    run = ChapterRun(chapter.name, params, chapter.records)
    repro.seed_everything(run.seed, threads=1)
    plotting.use_style()
    print(run.run_card())
    return run
