"""Hostile inputs to the data readers: a 10 MB line without sentence ends, corpus folders and
globs, non-UTF-8 text, TSV rows with a tab inside a field; hypothesis fuzz of corpus text
and TSV rows. Every failure must be a one-line ValueError/OSError naming the file (and
line), never another exception."""

import json
import os
import random
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from training.data import glue_data, squad_data
from training.data import pretraining_data as pd


def _google_truncate(tokens_a, tokens_b, max_tokens, rng):
    """Google BERT's `truncate_seq_pair` loop, as the reference (quadratic on long input)."""
    while len(tokens_a) + len(tokens_b) > max_tokens:
        longer = tokens_a if len(tokens_a) > len(tokens_b) else tokens_b
        if rng.random() < 0.5:
            del longer[0]
        else:
            longer.pop()


@pytest.mark.parametrize("seed", range(20))
def test_truncate_pair_equals_googles_loop(seed):
    rng = random.Random(seed)
    a = list(range(rng.randint(0, 300)))
    b = list(range(1000, 1000 + rng.randint(0, 300)))
    max_tokens = rng.randint(2, 200)
    expected_a, expected_b = list(a), list(b)
    _google_truncate(expected_a, expected_b, max_tokens, random.Random(seed + 100))
    pd._truncate_pair(a, b, max_tokens, random.Random(seed + 100))
    assert (a, b) == (expected_a, expected_b)


def test_truncate_pair_is_linear_on_a_huge_segment():
    # 2M tokens: about what a 10 MB line gives. The one-token loop deleting from the front
    # moved ~2e12 list entries here (hours); the counting loop takes well under a second.
    a, b = list(range(2_000_000)), list(range(10))
    started = time.perf_counter()
    pd._truncate_pair(a, b, 125, random.Random(0))
    assert time.perf_counter() - started < 5.0
    assert len(a) == 115 and b == list(range(10))  # Only the longer segment is cut.
    assert a == list(range(a[0], a[0] + len(a)))  # One contiguous slice of the original.


def test_a_10_mb_line_without_sentence_ends_reads_and_pairs_quickly(tmp_path):
    path = tmp_path / "one_line.txt"
    words = " ".join(f"w{i % 1000}" for i in range(1_700_000))  # ~10 MB, no full stops.
    path.write_text(words + "\n\nA second document. It is short.\n", encoding="utf-8")
    started = time.perf_counter()
    documents = pd.read_documents(str(path))
    assert [len(d) for d in documents] == [1, 2]
    # Token ids stand in for the tokenizer's output: one token per word.
    tokenized = [[list(range(len(documents[0][0].split())))], [[1, 2, 3], [4, 5]]]
    pairs = pd.create_pairs(tokenized, 128, random.Random(0))
    assert time.perf_counter() - started < 30.0
    assert all(len(a) + len(b) <= 125 for a, b, _ in pairs)


def test_corpus_folders_and_globs(tmp_path):
    (tmp_path / "corpus" / "sub").mkdir(parents=True)
    (tmp_path / "corpus" / "b.txt").write_text("Doc b.\n")
    (tmp_path / "corpus" / "sub" / "a.txt").write_text("Doc a.\n")
    (tmp_path / "corpus" / ".hidden").write_text("Hidden.\n")
    (tmp_path / "corpus" / "c.md").write_text("Doc c.\n")
    folder = str(tmp_path / "corpus")
    assert pd.corpus_files([folder]) == [os.path.join(folder, "b.txt"),
                                         os.path.join(folder, "c.md"),
                                         os.path.join(folder, "sub", "a.txt")]
    assert pd.corpus_files([os.path.join(folder, "**", "*.txt")]) == [
        os.path.join(folder, "b.txt"), os.path.join(folder, "sub", "a.txt")]
    assert pd.read_documents([os.path.join(folder, "*.txt")]) == [["Doc b."]]
    assert pd.read_documents(folder) == [["Doc b."], ["Doc c."], ["Doc a."]]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=f"Corpus folder {tmp_path / 'empty'} holds no"):
        pd.read_documents(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="Corpus pattern .*nothing-\\*.txt matches no"):
        pd.read_documents(str(tmp_path / "nothing-*.txt"))


def test_non_utf8_corpus_names_file_and_line(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("Line one.\nCaf\u00e9 au lait.\n".encode("latin-1"))
    with pytest.raises(ValueError, match=f"{path} is not UTF-8 text \\(line 2"):
        pd.read_documents(str(path))


def test_tsv_row_with_a_tab_inside_a_quoted_field_is_an_error(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text('sentence\tlabel\na fine film\t1\n"quoted\tfield"\t1\n', encoding="utf-8")
    with pytest.raises(glue_data.DataFormatError) as error:
        glue_data.read_examples(str(path))
    assert str(error.value).startswith(f"{path}:3: row has 3 columns but the header has 2")
    no_header = tmp_path / "cola.tsv"
    no_header.write_text("src\t1\t\tok text\nsrc\t0\t\tbad\ttext\n", encoding="utf-8")
    with pytest.raises(glue_data.DataFormatError, match=":2: row has 5 columns but the first"):
        glue_data.read_examples(str(no_header), glue_data.GLUE_TASKS["cola"])


# ------------------------------------------------------------------------------------------
# Fuzz
# ------------------------------------------------------------------------------------------

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(text=st.text(max_size=400))
def test_fuzz_corpus_text_keeps_every_word(tmp_path, text):
    path = tmp_path / "fuzz.txt"
    path.write_text(text, encoding="utf-8", newline="")
    # What a reader of the file sees: universal newlines.
    seen = text.replace("\r\n", "\n").replace("\r", "\n")
    if not seen.split():
        with pytest.raises(ValueError, match=f"Corpus is empty \\(no text in {path}\\)"):
            pd.read_documents(str(path))
        return
    documents = pd.read_documents(str(path))
    sentences = [s for d in documents for s in d]
    assert all(s and s == s.strip() for s in sentences)
    assert " ".join(sentences).split() == seen.split()


@FUZZ
@given(data=st.binary(max_size=400))
def test_fuzz_corpus_bytes_fail_only_with_a_named_error(tmp_path, data):
    path = tmp_path / "fuzz.bin"
    path.write_bytes(data)
    try:
        pd.read_documents(str(path))
    except ValueError as error:
        assert str(path) in str(error) and "\n" not in str(error)


_FIELD = st.text(st.characters(blacklist_characters="\t\n\r", blacklist_categories=("Cs",)),
                 max_size=30)
_ROW = st.tuples(_FIELD, st.sampled_from(["0", "1", "pos", "neg"]), st.booleans())


@FUZZ
@given(rows=st.lists(_ROW, min_size=1, max_size=20))
def test_fuzz_tsv_rows_are_read_exactly_or_named(tmp_path, rows):
    """A row is (text, label, whether a tab is inside the text). Clean rows come back
    exactly; the first row with a tab in its text is named by file and line."""
    path = tmp_path / "fuzz.tsv"
    lines = ["sentence\tlabel"] + [
        (f"{text[:3]}\t{text[3:]}" if tab else text) + f"\t{label}" for text, label, tab in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", newline="")
    first_bad = next((i for i, (_, _, tab) in enumerate(rows) if tab), None)
    if first_bad is not None:
        with pytest.raises(glue_data.DataFormatError) as error:
            glue_data.read_examples(str(path))
        assert str(error.value).startswith(f"{path}:{first_bad + 2}: row has 3 columns")
        return
    examples = glue_data.read_examples(str(path))
    assert [(e.text_a, e.label, e.line) for e in examples] == [
        (text, label, i + 2) for i, (text, label, _) in enumerate(rows)]


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 50) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.sampled_from(["data", "paragraphs", "context", "qas", "id", "question", "answers",
                         "text", "answer_start", "title"]), children, max_size=5),
    max_leaves=25)


_LEAF = st.none() | st.integers(-3, 40) | st.text(max_size=20)
_ANSWER = st.fixed_dictionaries({"text": _LEAF | st.text(max_size=5),
                                 "answer_start": _LEAF | st.integers(0, 20)})
_QA = st.fixed_dictionaries({"id": _LEAF, "question": _LEAF | st.text(max_size=10)},
                            optional={"answers": st.lists(_ANSWER, max_size=2) | _LEAF})
_SQUAD = st.fixed_dictionaries({"data": st.lists(st.fixed_dictionaries({"paragraphs": st.lists(
    st.fixed_dictionaries({"context": _LEAF | st.text(max_size=30),
                           "qas": st.lists(_QA, max_size=3)}), max_size=2)}), max_size=2)})


@FUZZ
@given(document=_JSON | _SQUAD)
def test_fuzz_squad_json_fails_only_with_a_named_error(tmp_path, document):
    path = tmp_path / "fuzz.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    try:
        examples = squad_data.read_squad(str(path))
    except ValueError as error:
        assert str(error).startswith(f"{path}: ") and "\n" not in str(error), str(error)
        return
    for example in examples:
        for text, start in example.answers:
            assert example.context[start:start + len(text)] == text
