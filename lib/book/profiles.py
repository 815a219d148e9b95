"""Per-chapter parameter specs, profiles and record criteria, from ``book/chapters/NN_name.yml``.

One YAML file beside each notebook declares every parameter (type, default, range, help),
the profiles ``smoke``/``book``/``paper`` as overrides of the defaults, and the criteria of
its checks, claims, adequacy conditions and findings (see ``lib.book.records``). The runner
and the notebook both validate through :func:`resolve`, so a bad value is rejected
before any kernel starts, with the list of valid parameters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lib.book import records
from lib.book.paths import CHAPTERS_DIR

PROFILES = ("smoke", "book", "paper")
DEFAULT_PROFILE = "book"
TYPES = {"int": int, "float": float, "str": str, "bool": bool, "list": list}
_PREFIX = re.compile(r"^\d+_")


class ParameterError(ValueError):
    """A parameter name, type or value that the chapter's spec does not allow."""


@dataclass
class Chapter:
    """A chapter: its command-line name, notebook, spec file and declared parameters."""

    name: str
    notebook: Path
    spec_file: Path
    title: str
    data: list[str]
    params: dict[str, dict[str, Any]]
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    records: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """Human-readable list of the valid parameters."""
        lines = []
        for key, spec in self.params.items():
            kind = spec["type"] + (f"[{spec['items']}]" if spec["type"] == "list" else "")
            rng = []
            if "choices" in spec:
                rng.append("one of " + ", ".join(map(str, spec["choices"])))
            if "min" in spec:
                rng.append(f">= {spec['min']}")
            if "max" in spec:
                rng.append(f"<= {spec['max']}")
            extra = f" ({'; '.join(rng)})" if rng else ""
            lines.append(f"  {key}: {kind} = {spec['default']!r}{extra}  {spec.get('help', '')}")
        return "\n".join(lines)


def chapter_name(stem: str) -> str:
    """Command-line name of a notebook stem: the stem without its number prefix."""
    return _PREFIX.sub("", stem)


def load_chapter(path: Path) -> Chapter:
    """Read and check one chapter's spec file (``.yml`` beside the notebook)."""
    spec_file = path.with_suffix(".yml")
    notebook = path.with_suffix(".ipynb")
    if not spec_file.exists():
        raise FileNotFoundError(f"{notebook.name} has no parameter spec {spec_file}")
    raw = yaml.safe_load(spec_file.read_text()) or {}
    params = raw.get("params") or {}
    for key, spec in params.items():
        if spec.get("type") not in TYPES:
            raise ValueError(
                f"{spec_file}: parameter {key!r} has type {spec.get('type')!r}; "
                f"use one of {', '.join(TYPES)}"
            )
        if "default" not in spec:
            raise ValueError(f"{spec_file}: parameter {key!r} has no default")
    record_spec = {s: raw[s] for s in records.SECTIONS if raw.get(s)}
    records.check_spec(record_spec, str(spec_file))
    chapter = Chapter(
        name=chapter_name(path.stem),
        notebook=notebook,
        spec_file=spec_file,
        title=raw.get("title", path.stem),
        data=list(raw.get("data") or []),
        params=params,
        profiles=raw.get("profiles") or {},
        records=record_spec,
    )
    for profile in PROFILES:  # a broken profile is a bug in the spec, caught at load time
        resolve(chapter, profile)
    return chapter


def chapters(directory: Path = CHAPTERS_DIR) -> dict[str, Chapter]:
    """All chapters (notebooks not starting with ``_``), by command-line name, in file order."""
    found = {}
    for nb in sorted(directory.glob("*.ipynb")):
        if not nb.name.startswith("_"):
            chapter = load_chapter(nb)
            found[chapter.name] = chapter
    return found


def get(name: str, directory: Path = CHAPTERS_DIR) -> Chapter:
    """One chapter by name (with or without its number prefix)."""
    known = chapters(directory)
    key = chapter_name(name)
    if key not in known and (directory / f"{name}.ipynb").exists():  # e.g. the _template
        return load_chapter(directory / f"{name}.ipynb")
    if key not in known:
        raise KeyError(f"unknown chapter {name!r}; chapters: {', '.join(known) or '(none)'}")
    return known[key]


def coerce(chapter: Chapter, key: str, value: Any) -> Any:
    """Convert a value (a command-line string, or a literal) to the parameter's type and
    check its range."""
    if key not in chapter.params:
        raise ParameterError(
            f"{chapter.name}: unknown parameter {key!r}. Valid parameters:\n" + chapter.describe()
        )
    spec = chapter.params[key]
    if isinstance(value, str) and spec["type"] != "str":
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ParameterError(f"{chapter.name}: cannot parse {key}={value!r}: {exc}") from None
    if spec["type"] == "list":
        if not isinstance(value, (list, tuple)):
            value = [value]
        value = [_scalar(chapter, key, spec.get("items", "float"), v, spec) for v in value]
        if not value:
            raise ParameterError(f"{chapter.name}: {key} must not be empty")
        return value
    return _scalar(chapter, key, spec["type"], value, spec)


def _scalar(chapter: Chapter, key: str, kind: str, value: Any, spec: dict) -> Any:
    want = TYPES[kind]
    if kind == "float" and isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
        try:
            value = float(value)
        except ValueError:
            pass
    ok = isinstance(value, want) and not (kind in ("int", "float") and isinstance(value, bool))
    if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise ParameterError(
            f"{chapter.name}: {key} must be {kind}, got {value!r} "
            f"({type(value).__name__}). Valid parameters:\n" + chapter.describe()
        )
    if "choices" in spec and value not in spec["choices"]:
        raise ParameterError(f"{chapter.name}: {key}={value!r} is not one of {spec['choices']}")
    if "min" in spec and value < spec["min"]:
        raise ParameterError(f"{chapter.name}: {key}={value!r} is below its minimum {spec['min']}")
    if "max" in spec and value > spec["max"]:
        raise ParameterError(f"{chapter.name}: {key}={value!r} is above its maximum {spec['max']}")
    return value


def resolve(
    chapter: Chapter, profile: str = DEFAULT_PROFILE, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Full, checked parameter set: defaults, then the profile's overrides, then the user's."""
    if profile not in PROFILES:
        raise ParameterError(f"unknown profile {profile!r}; profiles: {', '.join(PROFILES)}")
    values = {key: spec["default"] for key, spec in chapter.params.items()}
    values.update(chapter.profiles.get(profile) or {})
    values.update(overrides or {})
    checked = {key: coerce(chapter, key, value) for key, value in values.items()}
    return {"profile": profile, **checked}
