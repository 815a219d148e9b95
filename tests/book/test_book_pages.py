"""The generated pages: the papers table reads chapters' records; missing runs stop the build."""

from __future__ import annotations

import pytest
import yaml

from lib.book import site
from lib.book.paths import BOOK_DIR


def fake_record(verdict: str = "partly") -> dict:
    return {
        "title": "A chapter",
        "profile": "book",
        "wall_s": 12.5,
        "git_revision": "abc1234",
        "cache_key": "0123456789abcdef",
        "started_at": "2026-01-01T00:00:00+00:00",
        "parameters": {"profile": "book", "seed": 0},
        "versions": {"python": "3.11.7"},
        "claims": [{"name": "c1", "holds": True}, {"name": "c2", "holds": False}],
        "adequacy": [{"name": "a1", "holds": False}],
        "findings": [{"name": "f1", "verdict": verdict}, {"name": "f2", "verdict": "inconclusive"}],
        "headline": {
            "finding": "f1",
            "text": "rare-class loss ratio",
            "value": 12.3456,
            "ci": [10.0, 14.5],
            "paper_value": "qualitative",
            "verdict": verdict,
        },
    }


def test_papers_table_lists_every_paper_once_with_the_chapter_verdict(monkeypatch):
    papers = yaml.safe_load((BOOK_DIR / "papers.yml").read_text())
    with_chapter = [
        p["chapter"] for p in papers["seed_list_a"] + papers["seed_list_b"] if p.get("chapter")
    ]
    monkeypatch.setattr(
        site,
        "toc_chapters",
        lambda: [f"book/chapters/0{i}_{n}" for i, n in enumerate(with_chapter)],
    )
    records = {with_chapter[0]: fake_record("not reproduced")}
    table = site.papers_table(records)
    rows = [line for line in table.splitlines() if line.startswith("| ") and "arXiv" in line]
    assert len(rows) == len(papers["seed_list_a"]) + len(papers["seed_list_b"]) == 21
    first = next(r for r in rows if papers["seed_list_a"][0]["ref"] in r)
    assert "not reproduced" in first and "12.35 [10, 14.5]" in first and "qualitative" in first
    assert "| 0 / 0 / 1 / 1 |" in first  # verdict counts: reproduced / partly / not / inconclusive
    assert ".ipynb)" in first  # a link to the chapter
    for p in papers["seed_list_a"] + papers["seed_list_b"]:
        if not p.get("chapter"):
            row = next(r for r in rows if p["ref"] in r)
            assert p["status"] in row and p["reason"][:30] in row


def test_status_page_reports_runs_and_failing_claims():
    page = site.status_page({"toy": fake_record()})
    assert (
        "| toy | book | 12.5 | 1/2 | 0/1 | 0 / 1 / 0 / 1 |" in page and "0123456789abcdef" in page
    )
    assert (
        "Claims that do not hold:** c2" in page
        and "Total execution time of the book: 12.5 s" in page
    )


def test_status_page_names_the_machine_when_the_record_has_it():
    rec = fake_record()
    assert "Machine:" not in site.status_page({"toy": rec})  # older records lack it
    rec["machine"] = {"cpu": "Some CPU", "isa": ["avx2"], "cores": 2}
    assert "Machine: Some CPU (2 cores; avx2)" in site.status_page({"toy": rec})


def test_build_refuses_chapters_without_a_successful_run(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_BUILD_DIR", str(tmp_path))
    monkeypatch.setattr(site, "toc_chapters", lambda: ["book/chapters/01_toy"])
    with pytest.raises(SystemExit, match="no successful run for: toy"):
        site.load_records()
