"""The runner: cache keys, atomic outputs, failed cells, cached re-runs, the command line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from lib.book import profiles, runner
from lib.book.paths import LIB_DIR, ROOT

SPEC = """
title: toy
data: []
params:
  seed: {type: int, default: 0, min: 0, help: seed}
  fail: {type: bool, default: false, help: raise in the third cell}
profiles: {smoke: {}, book: {}, paper: {}}
claims:
  x_positive: {text: "x is positive", criterion: {at_least: 1}, fails_if: "x below 1"}
"""


def make_chapter(folder: Path, name: str = "01_toy") -> profiles.Chapter:
    """A two-parameter chapter that records one claim, and can be told to fail."""
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
            "from lib.book import profiles\n"
            "from lib.book.chapter import ChapterRun\n"
            "spec = profiles.load_chapter(__import__('pathlib').Path('01_toy.ipynb')).records\n"
            "ch = ChapterRun('toy', {'profile': profile, 'seed': seed}, spec)"
        ),
        nbformat.v4.new_code_cell(
            "if fail:\n    raise ValueError('boom in the toy chapter')\nx = seed + 1"
        ),
        nbformat.v4.new_code_cell("ch.claim('x_positive', x)\nch.show_claims()"),
    ]
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, folder / f"{name}.ipynb")
    (folder / f"{name}.yml").write_text(SPEC)
    return profiles.load_chapter(folder / f"{name}.ipynb")


@pytest.fixture
def build(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("REPRO_BUILD_DIR", str(tmp_path / "build"))
    return tmp_path / "build"


def test_cache_key_follows_notebook_params_and_lib_source(tmp_path, monkeypatch):
    chapter = make_chapter(tmp_path / "ch")
    params = profiles.resolve(chapter, "smoke")
    key = runner.cache_key(chapter, params)
    assert runner.cache_key(chapter, params) == key
    assert runner.cache_key(chapter, {**params, "seed": 1}) != key

    fake_lib = tmp_path / "lib"
    shutil.copytree(LIB_DIR, fake_lib, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(runner, "LIB_DIR", fake_lib)
    assert runner.cache_key(chapter, params) == key
    records_py = fake_lib / "book" / "records.py"
    records_py.write_text(records_py.read_text() + "\n# changed\n")
    assert runner.cache_key(chapter, params) != key
    monkeypatch.undo()

    chapter.notebook.write_text(
        chapter.notebook.read_text().replace("x = seed + 1", "x = seed + 2")
    )
    assert runner.cache_key(chapter, params) != key


def test_editing_one_chapters_module_leaves_the_other_chapters_keys_alone(tmp_path, monkeypatch):
    fake_lib = tmp_path / "lib"
    shutil.copytree(LIB_DIR, fake_lib, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(runner, "LIB_DIR", fake_lib)
    chapters = profiles.chapters()
    keys = {n: runner.cache_key(c, profiles.resolve(c, "smoke")) for n, c in chapters.items()}
    own = {n: runner.lib_sources(c.notebook, fake_lib) for n, c in chapters.items()}
    for name in chapters:  # a chapter's own package is in its key and in no other chapter's
        mine = [p for p in own[name] if f"chapters/{name}/" in p.as_posix()]
        assert mine, f"{name} imports none of lib/chapters/{name}/"
        edited = mine[-1]
        original = edited.read_text()
        edited.write_text(original + "\n# edited\n")
        for other, chapter in chapters.items():
            changed = runner.cache_key(chapter, profiles.resolve(chapter, "smoke")) != keys[other]
            assert changed == (other == name), f"editing {edited.name} of {name} vs {other}"
        edited.write_text(original)


def test_success_writes_notebook_and_record_then_reuses_the_cache(tmp_path, build):
    chapter = make_chapter(tmp_path / "ch")
    params = profiles.resolve(chapter, "smoke", {"seed": "2"})
    first = runner.execute(chapter, params, progress=False)
    assert first.status == "ok", first.error
    record = json.loads((build / "executed" / "smoke" / "toy.json").read_text())
    assert record["parameters"]["seed"] == 2 and record["profile"] == "smoke"
    assert record["claims"] == [
        {
            "name": "x_positive",
            "kind": "claim",
            "value": 3,
            "holds": True,
            "criterion": ">= 1",
            "text": "x is positive",
            "fails_if": "x below 1",
        }
    ]
    for key in ("git_revision", "versions", "machine", "wall_s", "cache_key", "started_at"):
        assert key in record
    nb = nbformat.read(build / "executed" / "smoke" / "toy.ipynb", as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and "remove-cell" in injected[0].metadata["tags"]
    own_params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert "hide-cell" in own_params[0].metadata["tags"]  # collapsed on the page
    assert not list((build / "tmp").glob("*"))  # no temporary file left behind

    again = runner.execute(chapter, params, progress=False)
    assert again.status == "cached"
    forced = runner.execute(chapter, params, use_cache=False, progress=False)
    assert forced.status == "ok"


def test_a_smoke_run_leaves_the_book_page_alone(tmp_path, build):
    """The site's pages are the book profile's; a later smoke run writes beside them."""
    chapter = make_chapter(tmp_path / "ch")
    book = runner.execute(chapter, profiles.resolve(chapter, "book"), progress=False)
    assert book.status == "ok", book.error
    page = (build / "executed" / "toy.ipynb").read_text()
    smoke = runner.execute(chapter, profiles.resolve(chapter, "smoke"), progress=False)
    assert smoke.status == "ok", smoke.error
    assert (build / "executed" / "toy.ipynb").read_text() == page
    assert json.loads((build / "executed" / "toy.json").read_text())["profile"] == "book"
    assert json.loads((build / "executed" / "smoke" / "toy.json").read_text())["profile"] == "smoke"


def test_failed_cell_is_reported_and_nothing_looks_complete(tmp_path, build, capsys):
    chapter = make_chapter(tmp_path / "ch")
    ok = runner.execute(chapter, profiles.resolve(chapter, "smoke"), progress=False)
    assert ok.status == "ok"
    bad = runner.execute(
        chapter, profiles.resolve(chapter, "smoke", {"fail": "true"}), progress=False
    )
    assert bad.status == "failed"
    assert "toy" in bad.error and "cell 3 of 4" in bad.error
    assert "ValueError: boom in the toy chapter" in bad.error and "raise ValueError" in bad.error
    smoke_page = build / "executed" / "smoke" / "toy.ipynb"
    assert not smoke_page.exists()  # the earlier success is gone too
    assert not (build / "executed" / "smoke" / "toy.json").exists()
    assert (build / "failed" / "toy.ipynb").exists()
    assert runner.report([bad]) == 1
    out = capsys.readouterr()
    assert "toy failed" in out.err and "FAILED" in out.out


def test_interrupted_run_leaves_no_notebook(tmp_path, build, monkeypatch):
    chapter = make_chapter(tmp_path / "ch")

    def interrupted(src, out, **kw):
        Path(out).write_text("{half a notebook")
        raise KeyboardInterrupt

    import papermill

    monkeypatch.setattr(papermill, "execute_notebook", interrupted)
    with pytest.raises(KeyboardInterrupt):
        runner.execute(chapter, profiles.resolve(chapter, "smoke"), progress=False)
    assert not (build / "executed" / "smoke" / "toy.ipynb").exists()
    assert not (build / "executed" / "smoke" / "toy.json").exists()


def test_write_atomic_replaces_whole_files(tmp_path):
    target = tmp_path / "a" / "record.json"
    runner.write_atomic(target, "one")
    runner.write_atomic(target, "two")
    assert target.read_text() == "two" and [p.name for p in target.parent.iterdir()] == [
        "record.json"
    ]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lib", *args], cwd=ROOT, capture_output=True, text=True
    )


def test_cli_rejects_bad_parameters_before_running():
    bad_name = run_cli("run", "_template", "-p", "nonsense", "1")
    assert bad_name.returncode == 2
    assert "unknown parameter" in bad_name.stderr and "max_log2_n" in bad_name.stderr
    bad_range = run_cli("run", "_template", "-p", "max_log2_n", "99")
    assert bad_range.returncode == 2 and "above its maximum" in bad_range.stderr
    bad_type = run_cli("run", "_template", "-p", "repeats", "many")
    assert bad_type.returncode == 2 and "must be int" in bad_type.stderr
    unknown = run_cli("run", "no_such_chapter")
    assert unknown.returncode == 2 and "unknown chapter" in unknown.stderr


def test_cli_list_shows_every_chapter_with_parameters_and_profiles():
    out = run_cli("list")
    assert out.returncode == 0
    for chapter in profiles.chapters().values():
        assert chapter.name in out.stdout
        for key in chapter.params:
            assert f"  {key}:" in out.stdout
    assert out.stdout.count("profile smoke") == len(profiles.chapters())


def test_cache_key_follows_data_files_and_package_versions(tmp_path, monkeypatch):
    chapter = make_chapter(tmp_path / "ch")
    chapter.data = ["wikitext-2"]
    (tmp_path / "data" / "wikitext-2").mkdir(parents=True)
    (tmp_path / "data" / "wikitext-2" / "valid.txt").write_text("a b c\n")
    monkeypatch.setenv("REPRO_DATA", str(tmp_path / "data"))
    params = profiles.resolve(chapter, "smoke")
    key = runner.cache_key(chapter, params)
    (tmp_path / "data" / "wikitext-2" / "valid.txt").write_text("a b d\n")
    assert runner.cache_key(chapter, params) != key
    key = runner.cache_key(chapter, params)
    real = runner.repro.all_versions()
    monkeypatch.setattr(runner.repro, "all_versions", lambda: real + ["numpy==0.0.1"])
    assert runner.cache_key(chapter, params) != key


def test_package_versions_do_not_depend_on_the_working_directory(tmp_path, monkeypatch):
    from lib.book import repro

    here = repro.all_versions()
    monkeypatch.chdir(tmp_path)
    assert repro.all_versions() == here and len(here) == len(set(here))


def test_machine_reads_the_cpu_model_and_the_timing_relevant_instruction_sets():
    info = "processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu sse avx2 avx512f amx_int8\n"
    info += "processor\t: 1\nmodel name\t: Test CPU 9000\nflags\t\t: fpu\n"
    m = runner.repro.machine(info)
    assert m["cpu"] == "Test CPU 9000"  # the first processor's fields
    assert m["isa"] == ["avx2", "avx512f", "amx_int8"]  # in ISA_FLAGS order, absent ones left out
    assert m["cores"] >= 1
    assert runner.repro.machine("")["isa"] == []
