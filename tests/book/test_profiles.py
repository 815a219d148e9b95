"""Parameter specs: types, ranges, unknown names and profiles are checked before a run."""

from pathlib import Path

import pytest

from lib.book import profiles

SPEC = """
title: test chapter
data: []
params:
  seed: {type: int, default: 0, min: 0, help: random seed}
  lr: {type: float, default: 0.1, min: 0.0, max: 10.0, help: step size}
  lrs: {type: list, items: float, default: [0.1, 1.0], min: 0.0, help: grid}
  opt: {type: str, default: adam, choices: [adam, gd], help: optimizer}
  centred: {type: bool, default: false, help: centre the inputs}
profiles:
  smoke: {lr: 0.5, lrs: [1.0]}
  book: {}
  paper: {seed: 3}
"""


@pytest.fixture
def chapter(tmp_path: Path) -> profiles.Chapter:
    (tmp_path / "07_toy.ipynb").write_text("{}")
    (tmp_path / "07_toy.yml").write_text(SPEC)
    return profiles.load_chapter(tmp_path / "07_toy.ipynb")


def test_name_drops_number_prefix(chapter):
    assert chapter.name == "toy"
    assert profiles.chapter_name("12_heavy_tailed_imbalance") == "heavy_tailed_imbalance"


def test_profiles_override_defaults(chapter):
    book = profiles.resolve(chapter, "book")
    assert book == {
        "profile": "book",
        "seed": 0,
        "lr": 0.1,
        "lrs": [0.1, 1.0],
        "opt": "adam",
        "centred": False,
    }
    assert profiles.resolve(chapter, "smoke")["lr"] == 0.5
    assert profiles.resolve(chapter, "paper")["seed"] == 3
    assert profiles.resolve(chapter, "smoke", {"lr": "2"})["lr"] == 2.0


def test_command_line_strings_are_typed(chapter):
    assert profiles.coerce(chapter, "seed", "3") == 3
    assert profiles.coerce(chapter, "lr", "1e-2") == 0.01
    assert profiles.coerce(chapter, "lrs", "[0.5, 2]") == [0.5, 2.0]
    assert profiles.coerce(chapter, "lrs", "0.5") == [0.5]
    assert profiles.coerce(chapter, "opt", "gd") == "gd"
    assert profiles.coerce(chapter, "centred", "true") is True


@pytest.mark.parametrize(
    "key,value,words",
    [
        ("sed", "1", "unknown parameter"),
        ("seed", "1.5", "must be int"),
        ("seed", "true", "must be int"),
        ("seed", "-1", "below its minimum"),
        ("lr", "11", "above its maximum"),
        ("lrs", "[1, -1]", "below its minimum"),
        ("opt", "sgd", "not one of"),
        ("centred", "3", "must be bool"),
    ],
)
def test_bad_values_are_rejected_with_the_valid_list(chapter, key, value, words):
    with pytest.raises(profiles.ParameterError) as err:
        profiles.resolve(chapter, "book", {key: value})
    assert words in str(err.value)
    if words in ("unknown parameter", "must be int", "must be bool"):
        for name in ("seed", "lr", "lrs", "opt", "centred"):
            assert name in str(err.value)


def test_unknown_profile(chapter):
    with pytest.raises(profiles.ParameterError, match="unknown profile"):
        profiles.resolve(chapter, "huge")


def test_broken_profile_is_caught_at_load(tmp_path):
    (tmp_path / "01_bad.ipynb").write_text("{}")
    (tmp_path / "01_bad.yml").write_text(SPEC.replace("paper: {seed: 3}", "paper: {seed: -3}"))
    with pytest.raises(profiles.ParameterError, match="below its minimum"):
        profiles.load_chapter(tmp_path / "01_bad.ipynb")
