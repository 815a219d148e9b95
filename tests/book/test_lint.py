"""Notebook sources are clean: no outputs, one literal parameters cell matching the book
profile, every chapter in the table of contents, and no network access in chapter code."""

from __future__ import annotations

import ast
import re
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
        f"{path.name}: the parameters cell must list profile='book' and every parameter at its book value"
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


@pytest.mark.parametrize("path", sorted(LIB_DIR.rglob("*.py")), ids=lambda p: p.name)
def test_no_network_access_in_lib(path):
    code = "\n".join(
        line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")
    )
    code = re.sub(r'"""[\s\S]*?"""', "", code)  # docstrings may cite web pages
    code = re.sub(r'"[^"\n]*https?://[^"\n]*"', '""', code)  # as may error messages
    assert not NETWORK.search(code), (
        f"{path}: possible network access: {NETWORK.search(code).group(0)}"
    )
