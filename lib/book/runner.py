"""The one runner: execute chapters with papermill, cache by content, record each run.

``run_chapters`` executes each chapter into ``<build>/executed/NAME.ipynb`` (other profiles
than ``book`` into ``<build>/executed/<profile>/``) and writes the run record ``NAME.json``
beside it (parameters, revision, versions, wall time, claims).
A chapter is re-executed only when its cache key (notebook, spec, parameters, ``lib/``
source, data files, installed packages) changes. Outputs are written to a temporary
file and renamed, so an interrupted or failed run never leaves a notebook that looks
complete; a failed notebook is kept under ``<build>/failed/`` for diagnosis only.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import nbformat

from lib.book import profiles, repro
from lib.book.paths import LIB_DIR, build_dir, executed_dir
from lib.book.records import METADATA_KEY
from lib.core import data

CELL_TIMEOUT_S = 3600
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass
class Outcome:
    """What happened to one chapter: ok, cached or failed, with its record or error text."""

    chapter: str
    status: str
    wall_s: float
    record: dict[str, Any] | None = None
    error: str = ""

    def summary(self) -> str:
        """One line for the end of a run."""
        if self.status == "failed":
            return f"FAILED  {self.chapter:28} {self.wall_s:7.1f} s  {self.error.splitlines()[0]}"
        claims = self.record["claims"]
        held = sum(c["holds"] for c in claims)
        flag = "ok     " if held == len(claims) else "CLAIMS "
        label = "cached " if self.status == "cached" else flag
        verdicts = [f["verdict"] for f in self.record["findings"]]
        counts = ", ".join(f"{verdicts.count(v)} {v}" for v in dict.fromkeys(verdicts))
        return (
            f"{label} {self.chapter:28} {self.record['wall_s']:7.1f} s  "
            f"checks+claims {held}/{len(claims)} hold  findings: {counts or 'none'}  "
            f"profile {self.record['profile']}"
        )


def _digest_file(h: "hashlib._Hash", path: Path, label: str) -> None:
    h.update(label.encode() + b"\0" + path.read_bytes() + b"\0")


def _module_file(module: str, lib_dir: Path) -> Path | None:
    """The source file of a ``lib`` module name, or None when it is not a module of ``lib``."""
    parts = module.split(".")
    if parts[0] != "lib":
        return None
    base = lib_dir.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(source: str) -> set[str]:
    """Names of the modules an import statement anywhere in ``source`` may load
    (``from a.b import c`` may load ``a.b`` and ``a.b.c``; parent packages load too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    for name in list(found):
        parts = name.split(".")
        found.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return found


def lib_sources(notebook: Path, lib_dir: Path | None = None) -> list[Path]:
    """The ``lib`` source files a chapter's notebook imports, transitively (sorted)."""
    lib_dir = lib_dir or LIB_DIR
    nb = nbformat.read(notebook, as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    code = "\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("%", "!")))
    todo, seen = list(_imported_modules(code)), {}
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen[name] = _module_file(name, lib_dir)
        if seen[name] is not None:
            todo.extend(_imported_modules(seen[name].read_text(encoding="utf-8")))
    return sorted({f for f in seen.values() if f is not None})


def cache_key(chapter: profiles.Chapter, params: dict[str, Any]) -> str:
    """sha256 over everything the chapter's output depends on: its notebook, spec and
    parameters, the ``lib`` modules it imports (transitively), its data files and the
    installed packages. Editing one chapter's module leaves the others' keys alone."""
    h = hashlib.sha256()
    _digest_file(h, chapter.notebook, "notebook")
    _digest_file(h, chapter.spec_file, "spec")
    h.update(json.dumps(params, sort_keys=True).encode())
    for src in lib_sources(chapter.notebook):
        _digest_file(h, src, str(src.relative_to(LIB_DIR)))
    for name in chapter.data:
        for f in data.dataset_files(name):
            _digest_file(h, f, f"{name}/{f.relative_to(data.path(name))}")
    h.update("\n".join(repro.all_versions()).encode())
    return h.hexdigest()[:16]


def write_atomic(path: Path, text: str) -> None:
    """Write text to a temporary file beside ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def read_records(nb: nbformat.NotebookNode) -> dict[str, Any]:
    """Claims, findings and headline that ``ch.show_claims()`` left in the outputs."""
    found = {"claims": [], "findings": [], "adequacy": [], "headline": None}
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            rec = out.get("metadata", {}).get(METADATA_KEY)
            if rec:
                found = rec
    return found


def cell_failure(nb_path: Path) -> str:
    """Text naming the failing cell of a papermill output, its source and its traceback."""
    nb = nbformat.read(nb_path, as_version=4)
    added = ("injected-parameters", "papermill-error-cell-tag")  # cells papermill inserted
    own = [c for c in nb.cells if not set(added) & set(c.metadata.get("tags", []))]
    for index, cell in enumerate(own, start=1):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                tb = _ANSI.sub("", "\n".join(out.get("traceback", [])))
                source = "\n".join("    " + line for line in cell.source.splitlines()[:8])
                return (
                    f"cell {index} of {len(own)} (execution count "
                    f"{cell.get('execution_count')}) raised {out.get('ename')}: "
                    f"{out.get('evalue')}\n  source:\n{source}\n  traceback:\n{tb}"
                )
    return "no cell error recorded (the kernel may have died or timed out)"


def _tidy(nb: nbformat.NotebookNode) -> None:
    """Shape the page: papermill's injected-parameters cell removed (the run card shows the
    values), the parameters cell and the run card collapsed behind a toggle."""
    for cell in nb.cells:
        tags = cell.metadata.setdefault("tags", [])
        if "injected-parameters" in tags:
            want = "remove-cell"
        elif "parameters" in tags:
            want = "hide-cell"
        elif cell.cell_type == "code" and "lib.start(" in cell.source:
            want = "hide-output"
        else:
            continue
        if want not in tags:
            tags.append(want)


def execute(
    chapter: profiles.Chapter,
    params: dict[str, Any],
    *,
    use_cache: bool = True,
    position: int = 0,
    progress: bool = True,
) -> Outcome:
    """Execute one chapter (or reuse its cached output) and return what happened."""
    import papermill
    from traitlets.config import Config

    out_dir = executed_dir(params["profile"])
    out_nb = out_dir / f"{chapter.name}.ipynb"
    out_json = out_dir / f"{chapter.name}.json"
    key = cache_key(chapter, params)
    if use_cache and out_nb.exists() and out_json.exists():
        record = json.loads(out_json.read_text())
        if record.get("cache_key") == key and record.get("status") == "ok":
            return Outcome(chapter.name, "cached", 0.0, record)

    for stale in (out_nb, out_json):  # a re-run that fails must not leave the old result behind
        stale.unlink(missing_ok=True)
    tmp_dir = build_dir() / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp_nb = tmp_dir / f"{chapter.name}.{os.getpid()}.ipynb"
    os.environ.update(repro.thread_env(1))  # inherited by the kernel, before it starts
    started = datetime.now(timezone.utc)
    revision = repro.git_revision()  # the sources the run starts from, not those at its end
    t0 = time.perf_counter()
    bar = (
        {
            "desc": f"{chapter.name:28}",
            "position": position,
            "leave": True,
            "bar_format": "{desc} {n_fmt}/{total_fmt} cells |{bar:20}| {elapsed}",
        }
        if progress
        else False
    )
    try:
        papermill.execute_notebook(
            str(chapter.notebook),
            str(tmp_nb),
            parameters=params,
            kernel_name="python3",
            progress_bar=bar,
            cwd=str(chapter.notebook.parent),
            execution_timeout=CELL_TIMEOUT_S,
            # jupyter_client provisions CurveZMQ keys, so the kernel's sockets are encrypted
            # (ipykernel's kernelspec declares curve support); papermill hands `config` to
            # nbclient, which gives it to the kernel manager it creates
            config=Config(KernelManager={"transport_encryption": "required"}),
        )
    except Exception as exc:  # papermill's execution error, a dead kernel, a timeout
        wall = time.perf_counter() - t0
        failed_dir = build_dir() / "failed"
        failed_dir.mkdir(parents=True, exist_ok=True)
        detail = f"{type(exc).__name__}: {exc}"
        if tmp_nb.exists():
            detail = cell_failure(tmp_nb)
            os.replace(tmp_nb, failed_dir / f"{chapter.name}.ipynb")
        return Outcome(chapter.name, "failed", wall, None, f"{chapter.name}: {detail}")
    wall = time.perf_counter() - t0

    nb = nbformat.read(tmp_nb, as_version=4)
    _tidy(nb)
    record = {
        "chapter": chapter.name,
        "title": chapter.title,
        "notebook": chapter.notebook.name,
        "profile": params["profile"],
        "parameters": params,
        "status": "ok",
        "git_revision": revision,
        "versions": repro.versions(),
        "machine": repro.machine(),
        "started_at": started.isoformat(timespec="seconds"),
        "wall_s": round(wall, 2),
        "cache_key": key,
        **read_records(nb),
    }
    write_atomic(out_nb, nbformat.writes(nb))
    tmp_nb.unlink(missing_ok=True)
    write_atomic(out_json, json.dumps(record, indent=2, default=str))
    return Outcome(chapter.name, "ok", wall, record)


def _execute_job(args: tuple) -> Outcome:
    name, params, use_cache, position = args
    return execute(profiles.get(name), params, use_cache=use_cache, position=position)


def run_chapters(
    names: list[str],
    profile: str,
    overrides: dict[str, str],
    *,
    jobs: int = 1,
    use_cache: bool = True,
) -> list[Outcome]:
    """Validate every chapter's parameters and data first, then execute them (``jobs`` at a
    time, the longest first by their last recorded wall times); outcomes in the given order."""
    known = profiles.chapters()
    selected = [profiles.get(n) for n in names] if names else list(known.values())
    if not selected:
        raise SystemExit("no chapters found under book/chapters/")
    unknown = [k for k in overrides if not any(k in c.params for c in selected)]
    if unknown:
        valid = "\n".join(f"{c.name}:\n{c.describe()}" for c in selected)
        raise profiles.ParameterError(f"unknown parameter(s) {unknown}. Valid parameters:\n{valid}")
    plans = []
    for chapter in selected:
        mine = {k: v for k, v in overrides.items() if k in chapter.params}
        params = profiles.resolve(chapter, profile, mine)
        for name in chapter.data:  # missing data is reported before anything runs
            data.require(name)
        plans.append((chapter.name, params, use_cache))
    if jobs <= 1 or len(plans) == 1:
        return [execute(profiles.get(n), p, use_cache=c, position=0) for n, p, c in plans]

    def last_wall(name: str) -> float:
        """Wall time of the chapter's last recorded run; one never run counts as the longest."""
        try:
            record = executed_dir(profile) / f"{name}.json"
            return float(json.loads(record.read_text())["wall_s"])
        except (OSError, ValueError, KeyError, TypeError):
            return float("inf")

    order = sorted(range(len(plans)), key=lambda i: last_wall(plans[i][0]), reverse=True)
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        jobs_args = [(*plans[i], rank % jobs) for rank, i in enumerate(order)]
        done = dict(zip(order, pool.map(_execute_job, jobs_args)))
    return [done[i] for i in range(len(plans))]


def report(outcomes: list[Outcome]) -> int:
    """Print failures in full and one summary line per chapter; return the exit code."""
    for o in outcomes:
        if o.status == "failed":
            print(f"\n=== {o.chapter} failed ===\n{o.error}", file=sys.stderr)
    print()
    for o in outcomes:
        print(o.summary())
    bad = [
        o
        for o in outcomes
        if o.status == "failed" or not all(c["holds"] for c in o.record["claims"])
    ]
    return 1 if bad else 0
