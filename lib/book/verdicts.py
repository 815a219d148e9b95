"""The one verdict rule: a finding's verdict from its estimate, interval and declared criterion.

A criterion is declared in the chapter's YAML before the run, as one of

- ``{at_least: t}`` (the paper's result is "at least t"), optionally with ``partly: p`` (p < t);
- ``{at_most: t}``, optionally with ``partly: p`` (p > t);
- ``{between: [a, b]}`` (the paper's result is "about the same": inside [a, b]).

The whole 95 % interval must clear a boundary for a verdict; an interval that contains a
boundary gives ``inconclusive``, as do collapsed arms and a failed adequacy condition.
"""

from __future__ import annotations

import math
from typing import Any

VERDICTS = ("reproduced", "partly", "not reproduced", "inconclusive")
KINDS = ("at_least", "at_most", "between")


class CriterionError(ValueError):
    """A criterion in a chapter's YAML that the verdict rule cannot read."""


def check_criterion(criterion: dict[str, Any], where: str = "") -> None:
    """Raise CriterionError unless ``criterion`` is one of the forms above."""
    kinds = [k for k in KINDS if k in criterion]
    extra = set(criterion) - set(KINDS) - {"partly"}
    if len(kinds) != 1 or extra:
        raise CriterionError(
            f"{where}: a finding's criterion needs exactly one of {KINDS} "
            f"(and optionally 'partly'), got {criterion}"
        )
    kind = kinds[0]
    if kind == "between":
        a, b = criterion["between"]
        if not a <= b or "partly" in criterion:
            raise CriterionError(
                f"{where}: 'between' takes [low, high] with low <= high, no 'partly'"
            )
        return
    t, p = criterion[kind], criterion.get("partly")
    if p is not None and ((kind == "at_least" and p >= t) or (kind == "at_most" and p <= t)):
        raise CriterionError(f"{where}: 'partly' must be a weaker bound than {kind} {t}, got {p}")


def describe(criterion: dict[str, Any]) -> str:
    """The criterion as short text, for the page."""
    if "between" in criterion:
        a, b = criterion["between"]
        return f"reproduced if the interval lies in [{a:g}, {b:g}]"
    kind = "at_least" if "at_least" in criterion else "at_most"
    op = ">=" if kind == "at_least" else "<="
    text = f"reproduced if the interval is {op} {criterion[kind]:g}"
    if criterion.get("partly") is not None:
        text += f"; partly if {op} {criterion['partly']:g}"
    return text


def verdict(
    estimate: float,
    ci: tuple[float, float] | None,
    criterion: dict[str, Any],
    *,
    collapsed: bool = False,
    adequate: bool = True,
    unresolved: str | None = None,
) -> tuple[str, str]:
    """(verdict, why) for a finding. ``ci`` None means the estimate is exact (no sampling).

    ``unresolved`` names a reason the run could not settle the question (for example a chosen
    learning rate at the edge of its grid); like ``collapsed`` and ``adequate=False`` it makes
    the verdict ``inconclusive``.
    """
    check_criterion(criterion)
    if not adequate:
        return "inconclusive", "budget: an adequacy condition failed"
    if collapsed:
        return "inconclusive", "arms collapsed (e.g. to the majority class)"
    if unresolved:
        return "inconclusive", unresolved
    lo, hi = (estimate, estimate) if ci is None else ci
    if any(v is None or not math.isfinite(v) for v in (estimate, lo, hi)):
        return "inconclusive", "no finite estimate"
    if "between" in criterion:
        a, b = criterion["between"]
        if a <= lo and hi <= b:
            return "reproduced", f"interval inside [{a:g}, {b:g}]"
        if hi < a or lo > b:
            return "not reproduced", f"interval outside [{a:g}, {b:g}]"
        return "inconclusive", f"interval straddles [{a:g}, {b:g}]"
    sign = 1.0 if "at_least" in criterion else -1.0
    t = criterion["at_least" if sign > 0 else "at_most"]
    p = criterion.get("partly")
    # in the "at least" frame: low end of the interval is the conservative one
    low, high = (lo, hi) if sign > 0 else (-hi, -lo)
    t_s, p_s = sign * t, (None if p is None else sign * p)
    ops = (">=", "<") if sign > 0 else ("<=", ">")
    if low >= t_s:
        return "reproduced", f"whole interval {ops[0]} {t:g}"
    weakest = t_s if p_s is None else p_s
    if high < weakest:
        return "not reproduced", f"whole interval {ops[1]} {weakest * sign:g}"
    if p_s is not None and low >= p_s and high < t_s:
        return "partly", f"interval between {p:g} and {t:g}"
    bound = t if low < t_s <= high else p
    return "inconclusive", f"interval straddles {bound:g}"


def holds(value: Any, criterion: dict[str, Any]) -> bool:
    """Whether a check's, claim's or adequacy condition's value meets its criterion.

    Forms: ``{at_least: x}``, ``{at_most: y}``, both, or ``{equals: v}`` (for booleans and
    exact counts). NaN never holds.
    """
    if "equals" in criterion:
        return value == criterion["equals"]
    if not set(criterion) & {"at_least", "at_most"}:
        raise CriterionError(f"criterion {criterion} needs at_least, at_most or equals")
    number = float(value)
    if math.isnan(number):
        return False
    return (criterion.get("at_least") is None or number >= criterion["at_least"]) and (
        criterion.get("at_most") is None or number <= criterion["at_most"]
    )


def describe_bound(criterion: dict[str, Any]) -> str:
    """A check's or claim's criterion as text: ``>= 3``, ``<= 1e-10``, ``== True``."""
    if "equals" in criterion:
        return f"== {criterion['equals']}"
    parts = []
    if criterion.get("at_least") is not None:
        parts.append(f">= {criterion['at_least']:g}")
    if criterion.get("at_most") is not None:
        parts.append(f"<= {criterion['at_most']:g}")
    return " and ".join(parts)
