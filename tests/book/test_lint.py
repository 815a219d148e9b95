"""Notebook sources are clean: no outputs, one literal parameters cell matching the book
profile, every chapter in the table of contents, and no network access in chapter code."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from lib.book import profiles, site
from lib.book.paths import CHAPTERS_DIR, LIB_DIR, ROOT

NOTEBOOKS = sorted(CHAPTERS_DIR.glob("*.ipynb"))
NETWORK = re.compile(
    r"\b(urllib|requests|http\.client|socket|urlopen|urlretrieve|wget|curl|"
    r"hf_hub_download|snapshot_download|fetch_[a-z_]+|download\s*=\s*True)\b|"
    r"\bdatasets\.load_dataset|(?<![.\w])load_dataset\(|https?://"
)
# (a method such as tslearn's CachedDatasets().load_dataset reads files bundled in a package)


def code_cells(path: Path) -> list:
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def parameters_cell(path: Path):
    cells = [c for c in code_cells(path) if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{path.name}: {len(cells)} cells tagged 'parameters' (want exactly 1)"
    return cells[0]


def literal_parameters(source: str) -> dict:
    """Names and values of a parameters cell; fails on anything but `name = literal`."""
    values = {}
    for node in ast.parse(source).body:
        assert (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
        ), f"not a plain assignment: {ast.unparse(node)}"
        values[node.targets[0].id] = ast.literal_eval(node.value)  # raises on a derived value
    return values


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks under book/chapters"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_sources_carry_no_outputs(path):
    for cell in code_cells(path):
        assert not cell.outputs and cell.execution_count is None, f"{path.name} has stored outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_is_literal_and_equals_the_book_profile(path):
    values = literal_parameters(parameters_cell(path).source)
    chapter = profiles.load_chapter(path)
    assert values == profiles.resolve(chapter, "book"), (
        f"{path.name}: the parameters cell must list profile='book' and every parameter "
        "at its book value"
    )
    assert list(values)[0] == "profile"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_chapter_starts_with_lib_start(path):
    first = [c for c in code_cells(path) if "parameters" not in c.metadata.get("tags", [])][0]
    name = profiles.chapter_name(path.stem) if not path.stem.startswith("_") else path.stem
    assert f'lib.start("{name}", globals())' in first.source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_claims_table_is_checked_by_nbval(path):
    tagged = [c for c in code_cells(path) if "ch.show_claims()" in c.source]
    assert len(tagged) == 1 and "nbval-check-output" in tagged[0].metadata.get("tags", [])


def test_every_chapter_is_in_the_toc_and_every_toc_entry_exists():
    toc = site.toc_chapters()
    chapters = [f"book/chapters/{p.stem}" for p in NOTEBOOKS if not p.stem.startswith("_")]
    assert sorted(toc) == sorted(chapters)
    assert (ROOT / "book" / "intro.md").exists()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_network_access_in_chapter_code(path):
    for cell in code_cells(path):
        assert not NETWORK.search(cell.source), f"{path.name}: network access in\n{cell.source}"


# The one module that downloads, and only for `python -m lib data fetch`; `lib run` never
# imports it (tests/book/test_fetch.py checks that).
DOWNLOADER = LIB_DIR / "book" / "fetch.py"


@pytest.mark.parametrize(
    "path", sorted(p for p in LIB_DIR.rglob("*.py") if p != DOWNLOADER), ids=lambda p: p.name
)
def test_no_network_access_in_lib(path):
    code = "\n".join(
        line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")
    )
    code = re.sub(r'"""[\s\S]*?"""', "", code)  # docstrings may cite web pages
    code = re.sub(r'"[^"\n]*https?://[^"\n]*"', '""', code)  # as may error messages
    assert not NETWORK.search(code), (
        f"{path}: possible network access: {NETWORK.search(code).group(0)}"
    )


# ---------------------------------------------------------------- honest verdicts

VERDICT_TEXT = re.compile(r"""["'](not reproduced|reproduced|partly|inconclusive)["']""")
THRESHOLD_KW = re.compile(r"\b(at_least|at_most|partly|between|threshold|verdict)\s*=")
RECORD_CALLS = ("check", "claim", "adequacy", "finding", "headline")
MAX_RECORD_CELL_LINES = 20
CHAPTER_NOTEBOOKS = [p for p in NOTEBOOKS if not p.stem.startswith("_")]


def record_calls(source: str) -> list[ast.Call]:
    """Calls ``ch.check(...)``, ``ch.claim(...)``, ... in a cell."""
    return [
        n
        for n in ast.walk(ast.parse(source))
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and n.func.attr in RECORD_CALLS
        and isinstance(n.func.value, ast.Name)
        and n.func.value.id == "ch"
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_verdict_text_and_no_thresholds_in_notebooks(path):
    """Verdicts are computed from the YAML's criteria: a notebook types neither."""
    for cell in code_cells(path):
        assert not VERDICT_TEXT.search(cell.source), f"{path.name}: verdict typed in\n{cell.source}"
        assert not THRESHOLD_KW.search(cell.source), f"{path.name}: threshold in\n{cell.source}"
        for call in record_calls(cell.source):
            for arg in [*call.args, *(k.value for k in call.keywords)]:
                decided = [n for n in ast.walk(arg) if isinstance(n, (ast.Compare, ast.BoolOp))]
                assert not decided, (
                    f"{path.name}: a comparison inside ch.{call.func.attr}(): "
                    f"{ast.unparse(arg)} (declare the criterion in the YAML)"
                )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_cells_that_record_are_short(path):
    for cell in code_cells(path):
        if record_calls(cell.source):
            n = len(cell.source.strip().splitlines())
            assert n <= MAX_RECORD_CELL_LINES, f"{path.name}: a {n}-line cell records results"


@pytest.mark.parametrize("path", CHAPTER_NOTEBOOKS, ids=lambda p: p.stem)
def test_every_declared_record_is_recorded_by_the_notebook(path):
    chapter = profiles.load_chapter(path)
    code = "\n".join(c.source for c in code_cells(path))
    for section, entries in chapter.records.items():
        for name in entries:
            assert name in code, f"{path.name}: {section} {name!r} is declared but never recorded"
    assert chapter.records.get("findings"), f"{path.name} declares no findings"


def test_code_passes_ruff():
    """pyflakes, pycodestyle (100 characters a line) and import order over the code."""
    ruff = Path(sys.executable).parent / "ruff"
    proc = subprocess.run(
        [
            str(ruff),
            "check",
            "--output-format",
            "concise",
            "lib",
            "tests",
            "benchmarks",
            "book/chapters",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]


def test_the_style_guide_exists_and_names_its_example():
    guide = (ROOT / "book" / "STYLE.md").read_text()
    assert "findings:" in guide and "fails_if" in guide and "book/chapters/" in guide
