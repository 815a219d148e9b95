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
        data.ud_sentences("en", "train")


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
    for split in ("dev", "test"):
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
        assert tags <= {
            "ADJ",
            "ADP",
            "ADV",
            "AUX",
            "CCONJ",
            "DET",
            "INTJ",
            "NOUN",
            "NUM",
            "PART",
            "PRON",
            "PROPN",
            "PUNCT",
            "SCONJ",
            "SYM",
            "VERB",
            "X",
        }


def test_wikitext_token_counts_match_the_paper():
    # Merity et al. (2016), Table 1: 217,646 validation tokens (the test copy lacks one <eos>).
    assert len(data.wikitext_tokens("valid")) == 217_646
    # The test copy lacks the original's final whitespace-only line, hence one <eos> fewer than 245,569.
    assert len(data.wikitext_tokens("test")) == 245_568
