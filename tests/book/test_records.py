"""The records mechanism: criteria come from the YAML, checks and claims hold or fail,
findings get computed verdicts, adequacy makes findings inconclusive, tables are rounded."""

import numpy as np
import pytest

from lib.book import stats
from lib.book.records import RecordError, Records, check_spec, fmt
from lib.book.verdicts import CriterionError

SPEC = {
    "checks": {"ref_error": {"text": "error vs reference", "criterion": {"at_most": 1e-10}}},
    "claims": {
        "ratio": {
            "text": "GD / Adam",
            "criterion": {"at_least": 3.0},
            "smoke": {"at_least": 1.0},
            "fails_if": "ratio below 3",
        },
        "sparser": {"text": "l2 sparser", "criterion": {"equals": True}, "fails_if": "not sparser"},
    },
    "adequacy": {"dense_trained": {"text": "dense accuracy", "criterion": {"at_least": 0.85}}},
    "findings": {
        "gain": {
            "text": "gain, points",
            "paper_value": 1.2,
            "paper_source": "Table 2",
            "criterion": {"at_least": 0.0},
            "needs": ["dense_trained"],
        },
        "ratio_x": {
            "text": "compression within 2 points",
            "paper_value": 3.33,
            "paper_source": "Fig. 4",
            "criterion": {"at_least": 3.33, "partly": 2.0},
        },
    },
}


def test_checks_and_claims_use_the_declared_criterion_per_profile():
    book, smoke = Records(SPEC, "book"), Records(SPEC, "smoke")
    assert book.check("ref_error", np.float64(1e-12))
    assert not book.claim("ratio", 2.0) and smoke.claim("ratio", 2.0)
    assert book.claim("sparser", np.bool_(True))
    assert book.failed() == ["ratio"]
    assert not Records(SPEC).check("ref_error", float("nan"))


def test_undeclared_and_duplicate_records_are_errors():
    r = Records(SPEC)
    with pytest.raises(RecordError, match="not declared"):
        r.claim("made_up", 1.0)
    r.check("ref_error", 0.0)
    with pytest.raises(RecordError, match="twice"):
        r.check("ref_error", 0.0)
    with pytest.raises(RecordError, match="never recorded|ci_reason|interval"):
        r.finding("ratio_x", 3.0, n_seeds=3)  # no interval and no reason


def test_finding_verdicts_follow_interval_and_adequacy():
    r = Records(SPEC)
    with pytest.raises(RecordError, match="adequacy"):
        r.finding("gain", 1.0, ci=(0.5, 1.5), n_seeds=3)  # adequacy not yet recorded
    assert not r.adequacy("dense_trained", 0.80)
    assert r.finding("gain", 1.0, ci=(0.5, 1.5), n_seeds=3) == "inconclusive"
    assert r.findings[-1]["why"].startswith("budget")
    assert r.finding("ratio_x", 2.5, ci=(2.2, 2.8), n_seeds=3) == "partly"
    assert r.verdict_counts()["inconclusive"] == 1 and r.verdict_counts()["partly"] == 1


def test_needs_to_refute_lets_a_generous_budget_confirm_but_not_refute():
    spec = {
        "adequacy": {"within_paper": {"text": "budget / paper's", "criterion": {"at_most": 1.0}}},
        "findings": {
            f"little_{i}": {
                "text": "loss removed",
                "paper_value": "little",
                "paper_source": "Fig. 2",
                "criterion": {"at_most": 0.1, "partly": 0.5},
                "needs_to_refute": ["within_paper"],
            }
            for i in range(4)
        },
    }
    generous = Records(spec)
    assert not generous.adequacy("within_paper", 40.0)
    assert generous.finding("little_0", 0.05, ci=(0.02, 0.08), n_seeds=3) == "reproduced"
    assert generous.finding("little_1", 0.9, ci=(0.8, 1.0), n_seeds=3) == "inconclusive"
    assert generous.finding("little_2", 0.3, ci=(0.2, 0.4), n_seeds=3) == "inconclusive"
    assert (
        "not refute" in generous.findings[1]["why"]
        and "within_paper" in generous.findings[2]["why"]
    )
    assert generous.findings[1]["needs"] == ["within_paper"]
    fair = Records(spec)
    assert fair.adequacy("within_paper", 0.5)
    assert fair.finding("little_1", 0.9, ci=(0.8, 1.0), n_seeds=3) == "not reproduced"
    with pytest.raises(RecordError, match="undeclared adequacy"):
        check_spec({"findings": {"x": {**spec["findings"]["little_0"]}}}, "t.yml")


def test_an_estimate_carries_its_interval_and_seeds():
    r = Records(SPEC)
    r.adequacy("dense_trained", 0.9)
    rng = np.random.default_rng(0)
    a, b = rng.random((3, 500)) < 0.9, rng.random((3, 500)) < 0.5
    assert r.finding("gain", stats.bootstrap_items(a, b)) == "reproduced"
    row = r.findings[0]
    assert row["n_seeds"] == 3 and row["ci"][0] > 0 and row["paper_source"] == "Table 2"
    assert set(row) >= {
        "name",
        "kind",
        "value",
        "criterion",
        "ci",
        "n_seeds",
        "paper_value",
        "paper_source",
        "verdict",
    }


def test_missing_records_and_headline():
    r = Records(SPEC, "book")
    r.check("ref_error", 0.0)
    assert "ratio" in r.missing()
    with pytest.raises(RecordError, match="headline"):
        r.headline("ratio_x")
    r.finding("ratio_x", 4.0, ci_reason="exact count", n_seeds=1)
    r.headline("ratio_x")
    assert r.records()["headline"]["verdict"] == "reproduced"


def test_tables_are_rounded_and_separate_the_kinds():
    r = Records(SPEC)
    r.check("ref_error", 1.23456789e-12)
    r.finding("ratio_x", 2.0123456, ci=(1.5, 2.51234), n_seeds=3)
    text, md = r.text(), r.markdown()
    assert "1.235e-12" in text and "[1.5, 2.51]" in text
    assert "**Checks and claims**" in md and "**Paper vs here**" in md and "Fig. 4" in md
    assert fmt(None) == "-" and fmt(True) == "yes" and fmt(1234567.0) == "1.235e+06"


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"claims": {"c": {"text": "t", "criterion": {"at_least": 1}}}}, "fails_if"),
        (
            {"findings": {"f": {"text": "t", "criterion": {"at_least": 1}, "paper_source": "T1"}}},
            "paper_value",
        ),
        (
            {
                "findings": {
                    "f": {
                        "text": "t",
                        "criterion": {"at_least": 1},
                        "paper_value": 1,
                        "paper_source": "T1",
                        "needs": ["nope"],
                    }
                }
            },
            "adequacy",
        ),
        ({"checks": {"c": {"text": "t", "criterion": {"about": 1}}}}, "at_least"),
        ({"verdicts": {}}, "unknown record section"),
    ],
)
def test_bad_specs_are_rejected_at_load_time(bad, match):
    with pytest.raises(RecordError, match=match):
        check_spec(bad, "x.yml")


def test_a_finding_criterion_must_be_readable():
    with pytest.raises(CriterionError):
        check_spec(
            {
                "findings": {
                    "f": {
                        "text": "t",
                        "criterion": {"at_least": 1, "partly": 2},
                        "paper_value": 1,
                        "paper_source": "T",
                    }
                }
            },
            "x.yml",
        )
