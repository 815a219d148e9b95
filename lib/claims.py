"""The one claims mechanism: a chapter's claims, findings and headline number.

A *claim* is a statement the chapter asserts (it must hold at any seed; a failing claim
fails the tests). A *finding* is a measured number beside the paper's, with a verdict;
it never fails a test. The *headline* is the one number the book's intro table shows.
The table is displayed with the records attached as output metadata, which is how the
runner reads them back from the executed notebook.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

VERDICTS = ("reproduced", "partly", "not reproduced")
METADATA_KEY = "repro"


def _plain(value: Any) -> Any:
    """Numbers as plain python floats/ints/bools (numpy and torch scalars included)."""
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    return value


def fmt(value: Any) -> str:
    """Short, stable text for a value: 4 significant digits for floats."""
    value = _plain(value)
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.4g}"
    return str(value)


@dataclass
class Claim:
    name: str
    value: Any
    holds: bool
    paper_value: Any = None
    at_least: Any = None
    at_most: Any = None
    text: str = ""

    def bound(self) -> str:
        parts = []
        if self.at_least is not None:
            parts.append(f">= {fmt(self.at_least)}")
        if self.at_most is not None:
            parts.append(f"<= {fmt(self.at_most)}")
        return " and ".join(parts) or "true"


@dataclass
class Finding:
    name: str
    value: Any
    paper_value: Any
    verdict: str
    text: str = ""


class Claims:
    """Collects a chapter's claims, findings and headline, and shows them as one table."""

    def __init__(self) -> None:
        self.claims: list[Claim] = []
        self.findings: list[Finding] = []
        self.headline_row: dict[str, Any] | None = None

    def claim(self, name: str, value: Any, at_least: Any = None, at_most: Any = None,
              paper_value: Any = None, text: str = "") -> bool:
        """Record a claim; it holds iff ``at_least <= value <= at_most`` (a bare bool: iff True)."""
        value = _plain(value)
        if at_least is None and at_most is None:
            if not isinstance(value, bool):
                raise ValueError(f"claim {name!r}: give at_least/at_most, or a bool value")
            holds = value
        else:
            number = float(value)
            holds = not math.isnan(number)
            holds = holds and (at_least is None or number >= at_least)
            holds = holds and (at_most is None or number <= at_most)
        self._unique(name)
        self.claims.append(Claim(name, value, bool(holds), _plain(paper_value), at_least, at_most, text))
        return bool(holds)

    def finding(self, name: str, value: Any, paper_value: Any = None,
                verdict: str = "reproduced", text: str = "") -> None:
        """Record a measured number beside the paper's, with a verdict (never a test failure)."""
        if verdict not in VERDICTS:
            raise ValueError(f"finding {name!r}: verdict must be one of {VERDICTS}, not {verdict!r}")
        self._unique(name)
        self.findings.append(Finding(name, _plain(value), _plain(paper_value), verdict, text))

    def headline(self, text: str, value: Any, paper_value: Any, verdict: str) -> None:
        """The chapter's one headline number for the book's intro table."""
        if verdict not in VERDICTS:
            raise ValueError(f"headline verdict must be one of {VERDICTS}, not {verdict!r}")
        self.headline_row = {"text": text, "value": _plain(value),
                             "paper_value": _plain(paper_value), "verdict": verdict}

    def _unique(self, name: str) -> None:
        if any(r.name == name for r in [*self.claims, *self.findings]):
            raise ValueError(f"{name!r} is recorded twice")

    def records(self) -> dict[str, Any]:
        """Everything recorded, as JSON-ready data (what the runner stores)."""
        return {
            "claims": [{"name": c.name, "value": c.value, "paper_value": c.paper_value,
                        "holds": c.holds, "bound": c.bound(), "text": c.text} for c in self.claims],
            "findings": [asdict(f) for f in self.findings],
            "headline": self.headline_row,
        }

    def rows(self) -> list[dict[str, str]]:
        """The "paper vs here" table, values rounded so that re-execution compares equal."""
        rows = [{"kind": "claim", "name": c.name, "what": c.text, "paper": fmt(c.paper_value),
                 "here": fmt(c.value), "check": c.bound(),
                 "result": "holds" if c.holds else "FAILS"} for c in self.claims]
        rows += [{"kind": "finding", "name": f.name, "what": f.text, "paper": fmt(f.paper_value),
                  "here": fmt(f.value), "check": "-", "result": f.verdict} for f in self.findings]
        return rows

    def markdown(self) -> str:
        """The table as Markdown."""
        head = ["kind", "name", "what", "paper", "here", "check", "result"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in self.rows():
            cells = [str(row[h]).replace("|", "\\|").replace("\n", " ") for h in head]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def text(self) -> str:
        """The table as plain text (what nbval compares)."""
        return "\n".join(f"{r['kind']:8} {r['name']}: here {r['here']} | paper {r['paper']} | "
                         f"{r['check']} -> {r['result']}" for r in self.rows())

    def failed(self) -> list[str]:
        """Names of claims that do not hold."""
        return [c.name for c in self.claims if not c.holds]
