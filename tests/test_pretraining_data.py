"""Corpus reading, sentence splitting, NSP pairs and the training dataset."""

import random

import numpy as np
import pytest
import tensorflow as tf

from training.data import download
from training.data import pretraining_data as pd


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "It rained. Then it stopped! Did it? Yes.",
            ["It rained.", "Then it stopped!", "Did it?", "Yes."],
        ),
        (
            "Written by Arthur C. Clarke in 1968. It was filmed.",
            ["Written by Arthur C. Clarke in 1968.", "It was filmed."],
        ),
        (
            "Dr. Smith met Mr. Jones at St. Paul's. They left.",
            ["Dr. Smith met Mr. Jones at St. Paul's.", "They left."],
        ),
        (
            'He said "Go home." She did. (See below.) Fine.',
            ['He said "Go home."', "She did.", "(See below.)", "Fine."],
        ),
        (
            "Pi is 3.14 roughly. The U.S. Army e.g. marched. 1990 came.",
            ["Pi is 3.14 roughly.", "The U.S. Army e.g. marched.", "1990 came."],
        ),
        ("no capital after. so no split", ["no capital after. so no split"]),
        ("   ", []),
    ],
)
def test_split_sentences(text, expected):
    assert pd.split_sentences(text) == expected


def test_read_documents_blocks_lines_and_files(tmp_path):
    a = tmp_path / "a.txt"
    a.write_text(
        "First doc. Two sentences.\nA second line.\n\n\nSecond doc.\n  \nThird doc here.\n"
    )
    b = tmp_path / "b.txt"
    b.write_text("\nFourth doc.")
    docs = pd.read_documents([str(a), str(b)])
    assert docs == [
        ["First doc.", "Two sentences.", "A second line."],
        ["Second doc."],
        ["Third doc here."],
        ["Fourth doc."],
    ]


def test_read_documents_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        pd.read_documents([str(tmp_path / "missing.txt")])
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n\n")
    with pytest.raises(ValueError, match="empty.*empty.txt"):
        pd.read_documents(str(empty))


def _synthetic_documents(n_docs, rng):
    """Documents whose tokens are unique: doc d, token k = d * 10000 + k."""
    docs = []
    for d in range(n_docs):
        sentences, k = [], 0
        for _ in range(rng.randint(1, 12)):
            n = rng.randint(3, 20)
            sentences.append(list(range(d * 10000 + k, d * 10000 + k + n)))
            k += n
        docs.append(sentences)
    return docs


def test_create_pairs_nsp_semantics():
    rng = random.Random(0)
    docs = _synthetic_documents(400, rng)
    seq_length = 40
    pairs = pd.create_pairs(docs, seq_length, rng)
    labels = np.array([label for _, _, label in pairs])
    assert len(pairs) > 1000
    # Single-sentence chunks can only take a random B, as in Google's BERT.
    assert 0.5 <= labels.mean() < 0.7, labels.mean()
    for a, b, label in pairs:
        assert a and b and len(a) + len(b) <= seq_length - 3
        assert np.all(np.diff(a) >= 1)  # A is a forward run of one document
        doc_a = a[0] // 10000
        assert {t // 10000 for t in a} == {doc_a}
        docs_b = {t // 10000 for t in b}
        assert len(docs_b) == 1
        if label == pd.NEXT_SENTENCE:
            assert docs_b == {doc_a}
            # B continues A with no gap (truncation only trims the outer ends).
            assert b[0] > a[-1]
            assert b[0] - a[-1] == 1 or len(a) + len(b) == seq_length - 3
        else:
            assert docs_b != {doc_a}


def test_create_pairs_label_balance_on_long_documents():
    rng = random.Random(1)
    docs = [[[d * 10000 + 10 * s + i for i in range(10)] for s in range(40)] for d in range(50)]
    labels = [l for _, _, l in pd.create_pairs(docs, 64, rng)]
    # Only the last chunk of a document and short targets force NotNext.
    assert 0.5 < np.mean(labels) < 0.6


def test_create_pairs_needs_two_documents():
    with pytest.raises(ValueError, match="at least 2 documents, got 1"):
        pd.create_pairs([[[1, 2, 3]]], 16, random.Random(0))


def test_pack_pairs_layout():
    out = pd.pack_pairs(
        [([5, 6], [7], 1), ([8], [9, 10, 11], 0)], 8, cls_id=101, sep_id=102, pad_id=0
    )
    np.testing.assert_array_equal(
        out["token_ids"], [[101, 5, 6, 102, 7, 102, 0, 0], [101, 8, 102, 9, 10, 11, 102, 0]]
    )
    np.testing.assert_array_equal(
        out["segment_ids"], [[0, 0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1, 1, 0]]
    )
    np.testing.assert_array_equal(
        out["padding_mask"], [[1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1, 0]]
    )
    np.testing.assert_array_equal(out["next_sentence_labels"], [1, 0])


def test_split_documents_is_deterministic_and_content_based():
    docs = [[f"Document number {i}."] for i in range(1000)]
    train, val = pd.split_documents(docs, 0.01)
    assert len(val) == 10 and len(train) == 990
    assert not {d[0] for d in train} & {d[0] for d in val}
    _, val2 = pd.split_documents(list(reversed(docs)), 0.01)
    assert sorted(map(tuple, val2)) == sorted(map(tuple, val))
    with pytest.raises(ValueError, match="3 documents"):
        pd.split_documents(docs[:3], 0.01)


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """The first 400 documents of the real corpus."""
    download.fetch()
    with open(download.default_corpus_path(), encoding="utf-8") as f:
        blocks = f.read().split("\n\n")[:400]
    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    path.write_text("\n\n".join(blocks), encoding="utf-8")
    return str(path)


def test_pretraining_dataset_train_and_validation(small_corpus):
    vocab = download.default_vocab_path()
    ds = pd.pretraining_dataset(
        small_corpus,
        vocab,
        batch_size=16,
        seq_length=64,
        max_predictions_per_seq=10,
        dupe_factor=2,
        seed=3,
    )
    features, labels = ds.element_spec
    assert {k: s.shape.as_list() for k, s in features.items()} == {
        "token_ids": [16, 64],
        "segment_ids": [16, 64],
        "padding_mask": [16, 64],
        "masked_lm_positions": [16, 10],
    }
    assert {k: (s.shape.as_list(), s.dtype) for k, s in labels.items()} == {
        "masked_lm_ids": ([16, 10], tf.int32),
        "masked_lm_weights": ([16, 10], tf.float32),
        "next_sentence_labels": ([16], tf.int32),
    }
    batches = list(ds.take(20))
    tokens = np.concatenate([f["token_ids"].numpy() for f, _ in batches])
    mask = np.concatenate([f["padding_mask"].numpy() for f, _ in batches])
    assert (tokens[:, 0] == 101).all()
    assert ((tokens == 102) & (mask == 1)).sum(axis=1).tolist() == [2] * 320
    assert mask.sum(axis=1).mean() > 40  # Sequences are mostly filled.
    nsp = np.concatenate([l["next_sentence_labels"].numpy() for _, l in batches])
    assert 0.4 < nsp.mean() < 0.85
    weights = np.concatenate([l["masked_lm_weights"].numpy() for _, l in batches])
    assert 5 < weights.sum(axis=1).mean() <= 10

    val = pd.pretraining_dataset(
        small_corpus, vocab, batch_size=2, split="validation", seq_length=64
    )
    n_val = sum(1 for _ in val)
    assert 1 <= n_val < 20  # 4 held-out documents, one pass, no repeat.


def test_pretraining_dataset_errors(small_corpus):
    vocab = download.default_vocab_path()
    with pytest.raises(ValueError, match="split must be"):
        pd.pretraining_dataset(small_corpus, vocab, 8, split="test")
    with pytest.raises(ValueError, match="fewer than batch_size=1000"):
        pd.pretraining_dataset(small_corpus, vocab, 1000, split="validation")


def test_split_documents_with_zero_fraction_holds_out_nothing():
    docs = [[f"doc {i} sentence."] for i in range(5)]
    train, val = pd.split_documents(docs, 0.0)
    assert train == docs and val == []
    with pytest.raises(ValueError, match="validation_fraction must be in"):
        pd.split_documents(docs, 1.0)
