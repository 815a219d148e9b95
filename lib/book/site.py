"""Render the book: stage the executed chapters, generate the status page and the papers
table, and run Jupyter Book v1 on the staged tree (``-W -n --keep-going``).

Jupyter Book only renders here; the runner executes. A chapter in ``_toc.yml`` without a
successful run record stops the build, so nothing failed or stale is ever rendered.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from lib.book import profiles, repro
from lib.book.paths import BOOK_DIR, ROOT, build_dir, executed_dir
from lib.book.records import fmt, fmt_ci
from lib.book.verdicts import VERDICTS

GENERATED = "_generated"


def toc_chapters(toc_file: Path = ROOT / "_toc.yml") -> list[str]:
    """Notebook paths (like ``book/chapters/01_x``) listed in the table of contents."""
    toc = yaml.safe_load(toc_file.read_text())
    files = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "file" in node and str(node["file"]).startswith("book/chapters/"):
                files.append(str(node["file"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc)
    return files


def load_records(profile: str = "book") -> dict[str, dict[str, Any]]:
    """Successful run records of the chapters in the table of contents, by chapter name."""
    records, missing = {}, []
    for entry in toc_chapters():
        name = profiles.chapter_name(Path(entry).name)
        rec_file = executed_dir(profile) / f"{name}.json"
        nb_file = executed_dir(profile) / f"{name}.ipynb"
        if not (rec_file.exists() and nb_file.exists()):
            missing.append(name)
            continue
        record = json.loads(rec_file.read_text())
        if record.get("status") != "ok":
            missing.append(name)
            continue
        records[name] = record
    if missing:
        raise SystemExit(
            f"no successful run for: {', '.join(missing)} (in {executed_dir(profile)}); "
            f"run `python -m lib run {' '.join(missing)} --profile {profile}` first"
        )
    return records


def papers_table(
    records: dict[str, dict[str, Any]], papers_file: Path = BOOK_DIR / "papers.yml"
) -> str:
    """Markdown table of every seed paper: chapter, headline verdict and number beside the
    paper's, and the counts of each verdict among the chapter's findings."""
    papers = yaml.safe_load(papers_file.read_text())
    toc = {profiles.chapter_name(Path(e).name): e for e in toc_chapters()}
    out = []
    for list_name, caption in (
        ("seed_list_a", "Seed list A"),
        ("seed_list_b", "Seed list B (James O'Neill and colleagues)"),
    ):
        out += [
            f"**{caption}**",
            "",
            "| paper | chapter | headline verdict | headline (here, 95 % interval) "
            "| paper's number | findings (reproduced / partly / not / inconclusive) |",
            "|---|---|---|---|---|---|",
        ]
        for p in papers[list_name]:
            names = [a.strip() for a in p["authors"].replace(" and ", ", ").split(",")]
            authors = names[0].replace(" et al.", "") + (
                " et al."
                if len(names) > 2 or "et al." in names[0]
                else "".join(f" and {n}" for n in names[1:])
            )
            cite = f"*{p['title']}*. {authors} ({p['year']}), {p['ref']}"
            name = p.get("chapter")
            if name and name in records:
                rec = records[name]
                head = rec.get("headline") or {}
                link = f"[{rec.get('title', name)}]({Path(toc[name]).relative_to('book')}.ipynb)"
                status = head.get("verdict", "not stated")
                here = (
                    (
                        f"{short(head.get('text', ''))}: {fmt(head.get('value'))} "
                        f"{fmt_ci(head.get('ci'))}"
                    )
                    if head
                    else "-"
                )
                paper = fmt(head.get("paper_value")) if head else "-"
                row = [cite, link, status, here, paper, verdict_counts(rec)]
            else:
                status = p.get("status", "planned")
                reason = p.get("reason") or f"chapter `{name}` is being written"
                row = [cite, f"none yet: {reason}", status, "-", "-", "-"]
            out.append("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |")
        out.append("")
    return "\n".join(out)


def short(text: str, limit: int = 80) -> str:
    """A finding's text for a table cell: up to its first parenthesis, at most ``limit``."""
    text = text.split(" (")[0]
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "\u2026"


def verdict_counts(record: dict[str, Any]) -> str:
    """``r / p / n / i``: how many of a run's findings got each verdict."""
    got = [f["verdict"] for f in record.get("findings", [])]
    return " / ".join(str(got.count(v)) for v in VERDICTS)


def status_page(records: dict[str, dict[str, Any]]) -> str:
    """The generated status page: per chapter its run, claims held, cache key and versions."""
    lines = [
        "# Status of the runs",
        "",
        "Generated at build time from the runner's records (`_build/executed/*.json`).",
        "",
        "| chapter | profile | wall time (s) | checks and claims held | budget adequate "
        "| findings r / p / n / i | git revision | cache key | started (UTC) |",
        "|---|---|---:|---:|---:|---:|---|---|---|",
    ]
    total = 0.0
    for name, rec in records.items():
        held = sum(c["holds"] for c in rec["claims"])
        adequacy = rec.get("adequacy") or []
        ok = sum(a["holds"] for a in adequacy)
        total += rec["wall_s"]
        lines.append(
            f"| {name} | {rec['profile']} | {rec['wall_s']:.1f} | {held}/{len(rec['claims'])} "
            f"| {ok}/{len(adequacy)} | {verdict_counts(rec)} | `{rec['git_revision']}` "
            f"| `{rec['cache_key']}` | {rec['started_at']} |"
        )
    lines += ["", f"Total execution time of the book: {total:.1f} s.", ""]
    for name, rec in records.items():
        shown = ", ".join(f"`{k}={v}`" for k, v in rec["parameters"].items())
        vers = ", ".join(f"{k} {v}" for k, v in rec["versions"].items())
        lines += [f"## {name}", "", f"Parameters: {shown}", "", f"Versions: {vers}", ""]
        if "machine" in rec:  # records written before the machine was recorded lack it
            m = rec["machine"]
            isa = ", ".join(m["isa"]) or "none of " + ", ".join(repro.ISA_FLAGS)
            lines += [f"Machine: {m['cpu']} ({m['cores']} cores; {isa})", ""]
        failed = [c["name"] for c in rec["claims"] if not c["holds"]]
        if failed:
            lines += [f"**Claims that do not hold:** {', '.join(failed)}", ""]
    return "\n".join(lines)


def stage(records: dict[str, dict[str, Any]], profile: str = "book") -> Path:
    """Copy config, toc, pages and executed notebooks into a fresh render tree."""
    render = build_dir() / "render"
    if render.exists():
        shutil.rmtree(render)
    ignore = shutil.ignore_patterns("*.ipynb", "*.yml", ".ipynb_checkpoints", "__pycache__")
    shutil.copytree(BOOK_DIR, render / "book", ignore=ignore)
    shutil.copy2(ROOT / "_config.yml", render / "_config.yml")
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    toc["parts"] = [
        part for part in toc.get("parts", []) if part.get("chapters")
    ]  # none yet: no part
    (render / "_toc.yml").write_text(yaml.safe_dump(toc, sort_keys=False))
    for entry in toc_chapters():
        name = profiles.chapter_name(Path(entry).name)
        shutil.copy2(executed_dir(profile) / f"{name}.ipynb", render / f"{entry}.ipynb")
    gen = render / "book" / GENERATED
    gen.mkdir(exist_ok=True)
    (gen / "papers.md").write_text(papers_table(records))
    (render / "book" / "status.md").write_text(status_page(records))
    from lib.book.sweep import robustness_page  # sweeps: the Robustness page

    (render / "book" / "robustness.md").write_text(robustness_page())
    return render


def build(profile: str = "book") -> int:
    """Stage and render the runs of ``profile`` (the book's by default) to ``<build>/html``;
    return the exit code."""
    records = load_records(profile)
    render = stage(records, profile)
    site = build_dir() / "site"
    if site.exists():  # a fresh build: a stale pickled environment can hide or invent warnings
        shutil.rmtree(site)
    jb = Path(sys.executable).parent / "jupyter-book"
    cmd = [str(jb), "build", str(render), "--path-output", str(site), "-W", "-n", "--keep-going"]
    print("rendering:", " ".join(cmd), flush=True)
    result = subprocess.run(cmd)
    if result.returncode != 0:
        print("error: the book did not render cleanly (see the warnings above)", file=sys.stderr)
        return result.returncode
    html = build_dir() / "html"
    if html.exists():
        shutil.rmtree(html)
    shutil.move(str(site / "_build" / "html"), str(html))
    print(f"\nThe book is at {html / 'index.html'}")
    return 0
