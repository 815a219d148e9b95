"""The one records mechanism: a chapter's checks, claims, adequacy conditions and findings.

Every record's criterion is declared in the chapter's YAML before the run (see
``book/STYLE.md``); a notebook only supplies measured values:

- a *check* proves the code right (reference equality, finite differences, an identity);
- a *claim* is an empirical statement about the chapter's own experiment, able to fail;
- an *adequacy* condition says whether the budget could test the findings that need it
  (``needs``: a failure makes them inconclusive) or could refute them (``needs_to_refute``:
  a failure leaves a reproduced verdict standing and makes any other inconclusive);
- a *finding* is the paper's result measured here, with its interval and a verdict computed
  by :func:`lib.book.verdicts.verdict`.

Checks and claims must hold (a failure fails the run and the tests); findings never do.
The records travel as output metadata of ``ch.show_claims()``, where the runner reads them.
"""

from __future__ import annotations

import math
from typing import Any

from lib.book import verdicts
from lib.book.stats import Estimate

METADATA_KEY = "repro"
SECTIONS = ("checks", "claims", "adequacy", "findings")
KIND = {"checks": "check", "claims": "claim", "adequacy": "adequacy", "findings": "finding"}


class RecordError(ValueError):
    """A record that the chapter's YAML does not declare, or declares badly."""


def plain(value: Any) -> Any:
    """Numbers as plain python floats/ints/bools (numpy and torch scalars included)."""
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    return value


def fmt(value: Any) -> str:
    """Short, stable text for a value: 4 significant digits for floats."""
    value = plain(value)
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.4g}"
    return str(value)


def fmt_ci(ci: Any) -> str:
    """An interval as ``[low, high]`` with 3 significant digits, or ``-``."""
    if not ci:
        return "-"
    return f"[{plain(ci[0]):.3g}, {plain(ci[1]):.3g}]"


def check_spec(spec: dict[str, Any], where: str) -> None:
    """Validate the record sections of a chapter's YAML (raises RecordError)."""
    unknown = set(spec) - set(SECTIONS)
    if unknown:
        raise RecordError(f"{where}: unknown record section(s) {sorted(unknown)}; use {SECTIONS}")
    for section in SECTIONS:
        for name, entry in (spec.get(section) or {}).items():
            here = f"{where}: {KIND[section]} {name!r}"
            if not isinstance(entry, dict) or not entry.get("text"):
                raise RecordError(f"{here} needs a 'text' saying what is measured")
            if "criterion" not in entry:
                raise RecordError(f"{here} needs a 'criterion'")
            if section == "findings":
                verdicts.check_criterion(entry["criterion"], here)
                for key in ("paper_value", "paper_source"):
                    if entry.get(key) in (None, ""):
                        raise RecordError(f"{here} needs '{key}' (a finding is the paper's result)")
                wanted = set(entry.get("needs") or []) | set(entry.get("needs_to_refute") or [])
                missing = wanted - set(spec.get("adequacy") or {})
                if missing:
                    raise RecordError(
                        f"{here} needs undeclared adequacy condition(s) {sorted(missing)}"
                    )
            else:
                for crit in [
                    entry["criterion"],
                    *[entry[p] for p in ("smoke", "book", "paper") if p in entry],
                ]:
                    if not set(crit) & {"at_least", "at_most", "equals"}:
                        raise RecordError(
                            f"{here}: criterion {crit} needs at_least, at_most or equals"
                        )
            if section == "claims" and not entry.get("fails_if"):
                raise RecordError(f"{here} needs 'fails_if': the result that would break it")


class Records:
    """Collects a chapter's records against its declared spec, and shows them as tables."""

    def __init__(self, spec: dict[str, Any] | None = None, profile: str = "book") -> None:
        self.spec = {s: dict((spec or {}).get(s) or {}) for s in SECTIONS}
        self.profile = profile
        self.entries: dict[str, list[dict[str, Any]]] = {s: [] for s in SECTIONS}
        self.headline_row: dict[str, Any] | None = None

    # -- recording -------------------------------------------------------------------------
    def _declared(self, section: str, name: str) -> dict[str, Any]:
        if name not in self.spec[section]:
            declared = ", ".join(self.spec[section]) or "none"
            raise RecordError(
                f"{KIND[section]} {name!r} is not declared in the chapter's YAML "
                f"under '{section}' (declared: {declared})"
            )
        if any(r["name"] == name for rows in self.entries.values() for r in rows):
            raise RecordError(f"{name!r} is recorded twice")
        return self.spec[section][name]

    def _bounded(self, section: str, name: str, value: Any) -> bool:
        entry = self._declared(section, name)
        criterion = {**entry["criterion"], **(entry.get(self.profile) or {})}
        value = plain(value)
        ok = bool(verdicts.holds(value, criterion))
        row = {
            "name": name,
            "kind": KIND[section],
            "value": value,
            "holds": ok,
            "criterion": verdicts.describe_bound(criterion),
            "text": entry["text"],
        }
        if section == "claims":
            row["fails_if"] = entry["fails_if"]
        self.entries[section].append(row)
        return ok

    def check(self, name: str, value: Any) -> bool:
        """Record a check (the code is right); its criterion comes from the YAML."""
        return self._bounded("checks", name, value)

    def claim(self, name: str, value: Any) -> bool:
        """Record a claim (an empirical statement about this experiment, able to fail)."""
        return self._bounded("claims", name, value)

    def adequacy(self, name: str, value: Any) -> bool:
        """Record whether the budget could test the findings that declare ``needs: [name]``."""
        return self._bounded("adequacy", name, value)

    def finding(
        self,
        name: str,
        estimate: Estimate | float,
        ci: tuple[float, float] | None = None,
        n_seeds: int | None = None,
        *,
        ci_reason: str | None = None,
        collapsed: bool = False,
        unresolved: str | None = None,
    ) -> str:
        """Record the paper's result measured here and return its computed verdict.

        ``estimate`` is an :class:`~lib.book.stats.Estimate` (value, interval, seeds) or a number
        with ``ci`` and ``n_seeds``. A missing interval needs ``ci_reason`` (e.g. an exact count).
        """
        entry = self._declared("findings", name)
        if isinstance(estimate, Estimate):
            value, ci, n_seeds = estimate.value, estimate.ci, estimate.n_seeds
            ci_reason = ci_reason or estimate.method
        else:
            value = plain(estimate)
        if ci is None and not ci_reason:
            raise RecordError(
                f"finding {name!r}: give an interval or say why there is none (ci_reason)"
            )
        if n_seeds is None:
            raise RecordError(f"finding {name!r}: say how many seeds it rests on (n_seeds)")
        needs = entry.get("needs") or []
        to_refute = entry.get("needs_to_refute") or []
        seen = {r["name"]: r["holds"] for r in self.entries["adequacy"]}
        unseen = [n for n in needs + to_refute if n not in seen]
        if unseen:
            raise RecordError(
                f"finding {name!r} needs adequacy {unseen}, recorded after it; record it first"
            )
        failed = [n for n in needs if not seen[n]]
        ci = None if ci is None else (float(plain(ci[0])), float(plain(ci[1])))
        verdict, why = verdicts.verdict(
            float(value),
            ci,
            entry["criterion"],
            collapsed=collapsed,
            adequate=not failed,
            unresolved=unresolved,
        )
        if failed:
            why = f"budget: adequacy {', '.join(failed)} failed"
        cannot_refute = [n for n in to_refute if not seen[n]]
        if cannot_refute and verdict in ("not reproduced", "partly"):
            verdict = "inconclusive"
            why = f"budget: adequacy {', '.join(cannot_refute)} failed (could confirm, not refute)"
        self.entries["findings"].append(
            {
                "name": name,
                "kind": "finding",
                "value": float(value),
                "ci": ci,
                "ci_reason": ci_reason,
                "n_seeds": int(n_seeds),
                "paper_value": entry["paper_value"],
                "paper_source": entry["paper_source"],
                "criterion": verdicts.describe(entry["criterion"]),
                "verdict": verdict,
                "why": why,
                "text": entry["text"],
                "needs": needs + to_refute,
            }
        )
        return verdict

    def headline(self, finding: str, text: str | None = None) -> None:
        """Make a recorded finding the chapter's headline (the intro table shows it)."""
        rows = [r for r in self.entries["findings"] if r["name"] == finding]
        if not rows:
            raise RecordError(f"headline: record the finding {finding!r} first")
        r = rows[0]
        self.headline_row = {
            "finding": finding,
            "text": text or r["text"],
            "value": r["value"],
            "ci": r["ci"],
            "paper_value": r["paper_value"],
            "verdict": r["verdict"],
        }

    # -- reading ---------------------------------------------------------------------------
    @property
    def claims(self) -> list[dict[str, Any]]:
        """Checks and claims (what must hold), in the order recorded."""
        return self.entries["checks"] + self.entries["claims"]

    @property
    def findings(self) -> list[dict[str, Any]]:
        return self.entries["findings"]

    def failed(self) -> list[str]:
        """Names of checks and claims that do not hold."""
        return [r["name"] for r in self.claims if not r["holds"]]

    def missing(self) -> list[str]:
        """Declared records that the run never recorded (for this profile)."""
        done = {r["name"] for rows in self.entries.values() for r in rows}
        return [
            n
            for s in SECTIONS
            for n, e in self.spec[s].items()
            if n not in done and self.profile not in (e.get("skip_profiles") or [])
        ]

    def records(self) -> dict[str, Any]:
        """Everything recorded, as JSON-ready data (what the runner stores)."""
        return {
            "claims": self.claims,
            "findings": self.findings,
            "adequacy": self.entries["adequacy"],
            "headline": self.headline_row,
        }

    def verdict_counts(self) -> dict[str, int]:
        """How many findings got each verdict."""
        return {v: sum(r["verdict"] == v for r in self.findings) for v in verdicts.VERDICTS}

    # -- showing ---------------------------------------------------------------------------
    def tables(self) -> dict[str, list[dict[str, str]]]:
        """The page's tables, values rounded so that re-execution compares equal."""
        must = [
            {
                "kind": r["kind"],
                "name": r["name"],
                "what": r["text"],
                "value": fmt(r["value"]),
                "criterion": r["criterion"],
                "result": "holds" if r["holds"] else "FAILS",
                "breaks if": r.get("fails_if", "-"),
            }
            for r in self.claims
        ]
        adequacy = [
            {
                "name": r["name"],
                "what": r["text"],
                "value": fmt(r["value"]),
                "criterion": r["criterion"],
                "result": "adequate" if r["holds"] else "NOT adequate",
            }
            for r in self.entries["adequacy"]
        ]
        paper = [
            {
                "name": r["name"],
                "what": r["text"],
                "paper": fmt(r["paper_value"]),
                "source": r["paper_source"],
                "here": fmt(r["value"]),
                "95 % interval": fmt_ci(r["ci"]),
                "seeds": str(r["n_seeds"]),
                "criterion": r["criterion"],
                "verdict": r["verdict"]
                + (f" ({r['why']})" if r["verdict"] == "inconclusive" else ""),
            }
            for r in self.findings
        ]
        return {
            "Checks and claims": must,
            "Adequacy of the budget": adequacy,
            "Paper vs here": paper,
        }

    def markdown(self) -> str:
        """The tables as Markdown, one heading each (empty tables left out)."""
        out = []
        for title, rows in self.tables().items():
            if not rows:
                continue
            head = list(rows[0])
            out += [f"**{title}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            out += [
                "| "
                + " | ".join(str(r[h]).replace("|", "\\|").replace("\n", " ") for h in head)
                + " |"
                for r in rows
            ]
            out.append("")
        return "\n".join(out)

    def text(self) -> str:
        """The tables as plain text (what nbval compares)."""
        lines = []
        for title, rows in self.tables().items():
            for r in rows:
                lines.append(
                    f"{title[:6]:6} " + " | ".join(f"{k} {v}" for k, v in r.items() if k != "what")
                )
        return "\n".join(lines)
