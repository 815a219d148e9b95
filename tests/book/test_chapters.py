"""Every chapter of the book runs with the smoke profile: all cells, no errors, claims hold."""

from __future__ import annotations

import nbformat
import pytest
from conftest import SMOKE_DIR, toc_names

from lib.book.verdicts import VERDICTS

SMOKE_BUDGET_S = 60  # the smoke profile's promise: each chapter under a minute on this machine


def test_runner_succeeded(smoke_run):
    assert smoke_run["returncode"] == 0, smoke_run["output"][-20000:]


@pytest.mark.parametrize("name", toc_names())
def test_every_cell_ran_without_errors(smoke_run, name):
    record = smoke_run["records"][name]
    assert record is not None and record["status"] == "ok", smoke_run["output"][-20000:]
    nb = nbformat.read(SMOKE_DIR / "executed" / "smoke" / f"{name}.ipynb", as_version=4)
    assert nb.metadata.papermill.exception is None
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.execution_count is not None, (
                f"{name}: a cell did not run:\n{cell.source[:300]}"
            )
            assert cell.metadata.papermill.status == "completed"
            assert not [o for o in cell.outputs if o.output_type == "error"]


@pytest.mark.parametrize("name", toc_names())
def test_every_claim_holds_and_the_chapter_reports(smoke_run, name):
    record = smoke_run["records"][name]
    assert record is not None, f"{name} did not run"
    assert record["claims"], f"{name} records no claims"
    failed = [c for c in record["claims"] if not c["holds"]]
    assert not failed, f"{name}: claims that do not hold: {failed}"
    assert record["headline"] and record["headline"]["verdict"] in VERDICTS
    assert record["profile"] == "smoke"


@pytest.mark.parametrize("name", toc_names())
def test_every_record_follows_the_schema(smoke_run, name):
    record = smoke_run["records"][name]
    assert record is not None, f"{name} did not run"
    for r in record["claims"]:
        assert r["kind"] in ("check", "claim") and isinstance(r["holds"], bool)
        assert r["criterion"] and r["text"] and "value" in r
        assert r["kind"] == "check" or r["fails_if"]
    for r in record["findings"]:
        assert r["kind"] == "finding" and r["verdict"] in VERDICTS, r
        assert r["paper_value"] not in (None, "") and r["paper_source"], r
        assert r["criterion"] and isinstance(r["n_seeds"], int) and r["n_seeds"] >= 1, r
        assert (r["ci"] is None and r["ci_reason"]) or len(r["ci"]) == 2, r
        if r["ci"]:
            assert r["ci"][0] <= r["ci"][1], r
    for r in record["adequacy"]:
        assert r["kind"] == "adequacy" and isinstance(r["holds"], bool)


@pytest.mark.parametrize("name", toc_names())
def test_smoke_profile_is_fast(smoke_run, name):
    record = smoke_run["records"][name]
    assert record is not None and record["wall_s"] < SMOKE_BUDGET_S, (
        f"{name}: smoke run took {record and record['wall_s']} s"
    )
