"""The claims mechanism: when a claim holds, findings' verdicts, the rounded table."""

import numpy as np
import pytest

from lib.book.records import Claims, fmt


def test_bounds_decide_whether_a_claim_holds():
    c = Claims()
    assert c.claim("ratio", np.float32(6.0), at_least=5)
    assert not c.claim("gap", 0.3, at_most=0.2)
    assert c.claim("slope", 1.1, at_least=0.8, at_most=1.2)
    assert not c.claim("nan", float("nan"), at_least=0)
    assert c.claim("direction", True)
    assert not c.claim("direction2", np.bool_(False))
    assert c.failed() == ["gap", "nan", "direction2"]


def test_a_number_without_bounds_is_not_a_claim():
    with pytest.raises(ValueError, match="at_least"):
        Claims().claim("x", 3.0)


def test_findings_need_a_known_verdict_and_names_are_unique():
    c = Claims()
    c.finding("acc", 0.91, paper_value=0.95, verdict="partly")
    with pytest.raises(ValueError, match="verdict"):
        c.finding("acc2", 0.9, verdict="sort of")
    with pytest.raises(ValueError, match="twice"):
        c.claim("acc", True)


def test_records_and_table_are_json_ready_and_rounded():
    c = Claims()
    c.claim("ratio", np.float64(12.345678), at_least=5, paper_value=None, text="Adam vs GD")
    c.finding("acc", 0.912345, paper_value=0.95, verdict="partly")
    c.headline("rare-class loss ratio", 12.3, "qualitative", "reproduced")
    rec = c.records()
    assert (
        rec["claims"][0]["value"] == pytest.approx(12.345678)
        and type(rec["claims"][0]["value"]) is float
    )
    assert rec["claims"][0]["holds"] is True and rec["claims"][0]["paper_value"] is None
    assert rec["headline"]["verdict"] == "reproduced"
    assert "12.35" in c.text() and "0.9123" in c.text() and "| claim | ratio |" in c.markdown()
    assert fmt(None) == "-" and fmt(True) == "yes" and fmt(1234567.0) == "1.235e+06"
