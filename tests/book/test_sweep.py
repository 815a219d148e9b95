"""Sweeps on Dask distributed: plans checked first, a two-worker local cluster, cached plans,
failed plans reported without stopping the others, refused workers, the summary and the
Robustness page. The chapter is a tiny fake one in a temporary folder."""

from __future__ import annotations

import io
import json
from pathlib import Path

import nbformat
import pytest

from lib.book import profiles, runner, sweep

SPEC = """
title: toy sweep
data: []
params:
  seed: {type: int, default: 0, min: 0, help: seed}
  fail: {type: bool, default: false, help: raise in the second cell}
profiles: {smoke: {}, book: {}, paper: {}}
"""

# The records a chapter's `ch.show_claims()` leaves in its outputs, written directly so that
# this test does not depend on the chapter API: a claim that always holds, a check that holds
# for even seeds, and a finding whose value is the seed.
RECORD_CELL = """
from IPython.display import display
from lib.book.records import METADATA_KEY
rec = {
    "claims": [
        {"name": "x_positive", "kind": "claim", "value": x, "holds": x >= 1},
        {"name": "seed_even", "kind": "check", "value": seed % 2, "holds": seed % 2 == 0},
    ],
    "findings": [
        {"name": "effect", "kind": "finding", "value": float(seed), "paper_value": 21.0,
         "verdict": "reproduced" if seed % 2 else "partly"},
    ],
    "adequacy": [],
    "headline": None,
}
display({"text/plain": "records"}, raw=True, metadata={METADATA_KEY: rec})
"""


def make_chapter(folder: Path) -> profiles.Chapter:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.cells = [
        nbformat.v4.new_code_cell(
            "profile = 'book'\nseed = 0\nfail = False", metadata={"tags": ["parameters"]}
        ),
        nbformat.v4.new_code_cell(
            "if fail:\n    raise ValueError('boom in the toy sweep')\nx = seed + 1"
        ),
        nbformat.v4.new_code_cell(RECORD_CELL),
    ]
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, folder / "01_toy.ipynb")
    (folder / "01_toy.yml").write_text(SPEC)
    return profiles.load_chapter(folder / "01_toy.ipynb")


@pytest.fixture
def build(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("REPRO_BUILD_DIR", str(tmp_path / "build"))
    return tmp_path / "build"


def test_every_plan_is_checked_before_anything_runs(tmp_path):
    chapter = make_chapter(tmp_path / "ch")
    grid = sweep.parse_values([("seed", "1, 2"), ("fail", "false")])
    assert grid == {"seed": ["1", "2"], "fail": ["false"]}
    assert [p["seed"] for p in sweep.plans(chapter, "smoke", grid)] == [1, 2]
    with pytest.raises(profiles.ParameterError, match="plan .*'seed': 'minus'"):
        sweep.plans(chapter, "smoke", {"seed": ["1", "minus"]})
    with pytest.raises(profiles.ParameterError):
        sweep.plans(chapter, "smoke", {"nonsense": ["1"]})
    with pytest.raises(profiles.ParameterError, match="one or more values"):
        sweep.parse_values([("seed", ",")])


def test_two_workers_sweep_two_seeds_then_reuse_them_and_report_failures(tmp_path, build):
    chapter = make_chapter(tmp_path / "ch")
    grid = {"seed": ["21", "22"]}
    summary = sweep.sweep(
        "toy", "smoke", grid, jobs=2, directory=chapter.notebook.parent, progress=False
    )
    assert summary["runs"] == 2 and summary["failed"] == []
    on_disk = json.loads((build / "sweeps" / "toy" / "summary.json").read_text())
    assert on_disk["runs"] == 2 and on_disk["profile"] == "smoke"
    for params in sweep.plans(chapter, "smoke", grid):
        folder = build / "sweeps" / "toy" / runner.cache_key(chapter, params)
        record = json.loads((folder / "toy.json").read_text())
        assert record["parameters"]["seed"] == params["seed"]
        assert nbformat.read(folder / "toy.ipynb", as_version=4).cells
    claims = {r["name"]: (r["held"], r["n"]) for r in summary["claims"] + summary["checks"]}
    assert claims == {"x_positive": (2, 2), "seed_even": (1, 2)}
    (effect,) = summary["findings"]
    assert effect["mean"] == 21.5 and effect["n"] == 2 and effect["ci"][0] < 21 < effect["ci"][1]
    assert effect["verdicts"] == {"reproduced": 1, "partly": 1}
    assert sweep.report(summary, out=io.StringIO()) == 1  # seed_even failed once

    # on an existing scheduler: the two plans are reused; the two new ones fail without
    # stopping each other
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, dashboard_address=None, memory_limit=0
    ) as cluster:
        again = sweep.sweep(
            "toy",
            "smoke",
            {"seed": ["21", "22"], "fail": ["false", "true"]},
            scheduler=cluster.scheduler_address,
            directory=chapter.notebook.parent,
            progress=False,
        )
    assert [p["status"] for p in again["plans"]] == ["cached", "failed", "cached", "failed"]
    assert again["runs"] == 2 and len(again["failed"]) == 2
    failure = again["failed"][0]
    assert failure["parameters"]["fail"] is True and failure["parameters"]["seed"] == 21
    assert "ValueError: boom in the toy sweep" in failure["error"]
    assert (build / "sweeps" / "toy" / failure["cache_key"] / "error.txt").exists()


class FakeClient:
    def __init__(self, workers: dict, identities: dict):
        self.workers, self.identities = workers, identities

    def scheduler_info(self, **kw):
        return {"workers": self.workers}

    def run(self, fn):
        return self.identities


def test_workers_with_threads_or_other_packages_or_revision_are_refused():
    me = sweep.identity()
    other_pkgs = {**me, "versions": me["versions"] + ["numpy==0.0.1"]}
    other_rev = {**me, "git_revision": "0000000"}
    client = FakeClient(
        {"tcp://a": {"nthreads": 1}, "tcp://b": {"nthreads": 4}, "tcp://c": {"nthreads": 1},
         "tcp://d": {"nthreads": 1}},
        {"tcp://a": me, "tcp://b": me, "tcp://c": other_pkgs, "tcp://d": other_rev},
    )  # fmt: skip
    out = io.StringIO()
    assert sweep.accepted_workers(client, out=out) == ["tcp://a"]
    text = out.getvalue()
    assert "tcp://b: 4 threads" in text
    assert "tcp://c: packages differ: numpy==0.0.1" in text
    assert "tcp://d: git revision 0000000" in text


def test_robustness_page_shows_summaries_and_says_when_there_is_none(build):
    names = [profiles.chapter_name(Path(e).name) for e in sweep_toc()]
    if not names:
        pytest.skip("no chapter in the table of contents")
    first = names[0]
    summary = {
        "chapter": first,
        "profile": "smoke",
        "swept": {"seed": ["21", "22"]},
        "runs": 2,
        "failed": [],
        "git_revision": "abc1234",
        "generated_at": "2026-01-01T00:00:00+00:00",
        "checks": [{"name": "grad_ok", "kind": "check", "held": 2, "n": 2}],
        "claims": [{"name": "c1", "kind": "claim", "held": 1, "n": 2}],
        "adequacy": [],
        "findings": [
            {"name": "f1", "paper_value": 0.5, "n": 2, "mean": 0.4, "sd": 0.1, "min": 0.3,
             "max": 0.5, "ci": [0.0, 0.8], "verdicts": {"reproduced": 1, "inconclusive": 1}},
        ],
    }  # fmt: skip
    (build / "sweeps" / first).mkdir(parents=True)
    (build / "sweeps" / first / "summary.json").write_text(json.dumps(summary))
    page = sweep.robustness_page()
    assert page.startswith("# Robustness")
    assert "Profile `smoke`, `seed` = 21, 22: 2 runs" in page
    assert "| check | `grad_ok` | 2 of 2 |" in page and "| claim | `c1` | 1 of 2 |" in page
    assert "reproduced: 1, inconclusive: 1" in page and "[0, 0.8]" in page
    for other in names[1:]:
        section = page.split(f"## {other}\n")[1].split("\n## ")[0]
        assert "No sweep of this chapter has been run yet" in section


def sweep_toc() -> list[str]:
    from lib.book.site import toc_chapters

    return toc_chapters()


def test_run_jobs_starts_the_longest_chapters_first(build, monkeypatch):
    chapters = list(profiles.chapters())
    if len(chapters) < 3:
        pytest.skip("needs three chapters")
    walls = {chapters[0]: 10.0, chapters[1]: 1584.0}  # the others: never run (longest)
    (build / "executed" / "smoke").mkdir(parents=True)  # the smoke profile's last runs
    for name, wall in walls.items():
        (build / "executed" / "smoke" / f"{name}.json").write_text(json.dumps({"wall_s": wall}))
    started = []

    class Pool:  # runs the jobs in the order they were handed out
        def __init__(self, max_workers):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def map(self, fn, args):
            return [fn(a) for a in args]

    def job(args):
        started.append(args[0])
        return runner.Outcome(args[0], "ok", 0.0)

    monkeypatch.setattr(runner, "ProcessPoolExecutor", Pool)
    monkeypatch.setattr(runner, "_execute_job", job)
    monkeypatch.setattr(runner.data, "require", lambda name: None)
    outcomes = runner.run_chapters([], "smoke", {}, jobs=2)
    never = [n for n in chapters if n not in walls]
    assert started == never + [chapters[1], chapters[0]]
    assert [o.chapter for o in outcomes] == chapters  # reported in the book's order
