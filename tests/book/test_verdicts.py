"""The verdict rule: the whole interval must clear a boundary; anything else is inconclusive."""

import pytest

from lib.book.verdicts import CriterionError, check_criterion, holds, verdict

AT_LEAST = {"at_least": 3.33, "partly": 2.0}
AT_MOST = {"at_most": 1.0, "partly": 3.0}


@pytest.mark.parametrize(
    "ci, want",
    [
        ((3.5, 4.0), "reproduced"),
        ((2.2, 3.0), "partly"),
        ((1.0, 1.9), "not reproduced"),
        ((3.0, 3.6), "inconclusive"),  # straddles the bound
        ((1.5, 2.5), "inconclusive"),  # straddles the partly bound
        ((1.5, 3.6), "inconclusive"),
    ],
)
def test_at_least_with_a_partly_band(ci, want):
    assert verdict(sum(ci) / 2, ci, AT_LEAST)[0] == want


@pytest.mark.parametrize(
    "ci, want",
    [
        ((0.1, 0.9), "reproduced"),
        ((1.5, 2.5), "partly"),
        ((3.5, 5.0), "not reproduced"),
        ((0.5, 1.5), "inconclusive"),
    ],
)
def test_at_most_mirrors_at_least(ci, want):
    assert verdict(sum(ci) / 2, ci, AT_MOST)[0] == want


def test_between_and_exact_values():
    crit = {"between": [-1.0, 1.0]}
    assert verdict(0.0, (-0.5, 0.5), crit)[0] == "reproduced"
    assert verdict(2.0, (1.5, 2.5), crit)[0] == "not reproduced"
    assert verdict(1.0, (0.5, 1.5), crit)[0] == "inconclusive"
    assert verdict(3.4, None, AT_LEAST)[0] == "reproduced"  # exact: the point is the interval


def test_collapse_budget_and_unresolved_make_it_inconclusive():
    ci = (3.5, 4.0)
    assert verdict(3.7, ci, AT_LEAST, collapsed=True) == (
        "inconclusive",
        verdict(3.7, ci, AT_LEAST, collapsed=True)[1],
    )
    assert "budget" in verdict(3.7, ci, AT_LEAST, adequate=False)[1]
    assert verdict(3.7, ci, AT_LEAST, unresolved="lr at grid edge")[1] == "lr at grid edge"
    assert verdict(float("nan"), None, AT_LEAST)[0] == "inconclusive"


def test_bad_criteria_are_rejected():
    for bad in (
        {"at_least": 1, "at_most": 2},
        {"at_least": 1, "partly": 1.5},
        {"between": [2, 1]},
        {"around": 1},
    ):
        with pytest.raises(CriterionError):
            check_criterion(bad)


def test_holds_for_checks_and_claims():
    assert holds(0.5, {"at_least": 0.2, "at_most": 0.8}) and not holds(0.9, {"at_most": 0.8})
    assert holds(True, {"equals": True}) and not holds(3, {"equals": 4})
    assert not holds(float("nan"), {"at_least": 0})
