"""In-graph tokenizer: ids identical to HF `tokenizers`, packing, SavedModel."""

import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
import tokenizers

from groupbert_tf import tokenization
from training.data import download
from training.data import pretraining_data

EDGE_CASES = [
    "Ὀδυσσεύς and the final sigma: λόγος.",  # NFKC would fold ς to σ
    "R″ and 3\u00a0km (2\u00a0mi), 10\u2009000 people",  # double prime, spaces
    "zero\u200bwidth, soft\u00adhyphen and a\x00nul",  # controls are dropped
    "Crème Brûlée in Zürich, ÅNGSTRÖM",  # accents stripped
    "中文字符 and 日本語 mixed with words",  # CJK split per char
    "unaffable antidisestablishmentarianism xyzzyq",
    "",
]


@pytest.fixture(scope="module")
def paths():
    download.fetch()
    return download.default_vocab_path(), download.minilm_dir()


@pytest.fixture(scope="module")
def tokenizer(paths):
    return tokenization.BertTokenizer(paths[0])


@pytest.fixture(scope="module")
def hf(paths):
    tok = tokenizers.Tokenizer.from_file(os.path.join(paths[1], "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


@pytest.fixture(scope="module")
def sentences():
    docs = pretraining_data.read_documents(download.default_corpus_path())
    return [s for d in docs[::7] for s in d][:1500]


def test_special_ids_from_vocab(tokenizer):
    assert (
        tokenizer.pad_id,
        tokenizer.unk_id,
        tokenizer.cls_id,
        tokenizer.sep_id,
        tokenizer.mask_id,
    ) == (0, 100, 101, 102, 103)
    assert tokenizer.vocab_size == 30522


def test_ids_match_hf_tokenizers_on_corpus(tokenizer, hf, sentences):
    texts = sentences + EDGE_CASES
    assert len(sentences) == 1500
    ours = tokenizer.tokenize(tf.constant(texts)).to_list()
    theirs = [e.ids for e in hf.encode_batch(texts)]
    assert all(t[0] == 101 and t[-1] == 102 for t in theirs)
    mismatches = [(x, a, b[1:-1]) for x, a, b in zip(texts, ours, theirs) if a != b[1:-1]]
    assert not mismatches, mismatches[:3]
    assert sum(map(len, ours)) > 30_000  # really tokenized, not trivially equal


def _google_truncate_seq_pair(a, b, budget):
    """Google BERT's run_classifier._truncate_seq_pair, the oracle."""
    a, b = list(a), list(b)
    while len(a) + len(b) > budget:
        (a if len(a) > len(b) else b).pop()
    return a, b


def test_pack_pairs_truncates_longest_first_like_bert(tokenizer, sentences):
    a, b = sentences[:300:2], sentences[1:300:2]
    seq_length = 24
    packed = tokenizer(tf.constant(a), tf.constant(b), seq_length=seq_length)
    ids_a = tokenizer.tokenize(tf.constant(a)).to_list()
    ids_b = tokenizer.tokenize(tf.constant(b)).to_list()
    n_truncated = 0
    for row, (x, y) in enumerate(zip(ids_a, ids_b)):
        x2, y2 = _google_truncate_seq_pair(x, y, seq_length - 3)
        n_truncated += (x2, y2) != (x, y)
        ids = [101, *x2, 102, *y2, 102]
        pad = seq_length - len(ids)
        assert packed["token_ids"].numpy()[row].tolist() == ids + [0] * pad
        assert packed["segment_ids"].numpy()[row].tolist() == (
            [0] * (len(x2) + 2) + [1] * (len(y2) + 1) + [0] * pad
        )
        assert packed["padding_mask"].numpy()[row].tolist() == ([1] * len(ids) + [0] * pad)
    assert n_truncated > 100
    for v in packed.values():
        assert v.dtype == tf.int32 and v.shape == (150, seq_length)


def test_pack_single_matches_hf_truncation(tokenizer, sentences):
    hf_trunc = tokenizers.Tokenizer.from_file(os.path.join(download.minilm_dir(), "tokenizer.json"))
    hf_trunc.enable_truncation(16)
    hf_trunc.enable_padding(length=16)
    enc = hf_trunc.encode_batch(sentences[:200])
    packed = tokenizer(tf.constant(sentences[:200]), seq_length=16)
    np.testing.assert_array_equal(packed["token_ids"], [e.ids for e in enc])
    np.testing.assert_array_equal(packed["padding_mask"], [e.attention_mask for e in enc])
    np.testing.assert_array_equal(packed["segment_ids"], np.zeros((200, 16)))


def test_pack_single_short_sentence_pads(tokenizer):
    packed = tokenizer(tf.constant(["Hello world."]), seq_length=8)
    np.testing.assert_array_equal(packed["token_ids"], [[101, 7592, 2088, 1012, 102, 0, 0, 0]])
    np.testing.assert_array_equal(packed["segment_ids"], [[0] * 8])
    np.testing.assert_array_equal(packed["padding_mask"], [[1, 1, 1, 1, 1, 0, 0, 0]])


def test_runs_in_tf_data_with_static_shapes(tokenizer):
    ds = tf.data.Dataset.from_tensor_slices(["a first text", "and another one"])
    ds = ds.batch(2).map(lambda t: tokenizer(t, seq_length=16))
    assert ds.element_spec["token_ids"].shape.as_list() == [None, 16]
    batch = next(iter(ds))
    assert batch["padding_mask"].numpy().sum(axis=1).tolist() == [5, 5]


def test_saved_model_needs_no_vocab_file(tmp_path, paths, hf):
    vocab_copy = tmp_path / "vocab.txt"
    shutil.copy(paths[0], vocab_copy)
    module = tf.Module()
    module.tokenizer = tokenization.BertTokenizer(str(vocab_copy))
    module.serve = tf.function(
        lambda text: module.tokenizer(text, seq_length=12),
        input_signature=[tf.TensorSpec([None], tf.string)],
    )
    expected = module.serve(tf.constant(["Crème Brûlée in Zürich!"]))
    tf.saved_model.save(module, str(tmp_path / "sm"))
    os.remove(vocab_copy)
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    got = loaded.serve(tf.constant(["Crème Brûlée in Zürich!"]))
    for key in ("token_ids", "segment_ids", "padding_mask"):
        np.testing.assert_array_equal(got[key], expected[key])
    hf_ids = hf.encode("Crème Brûlée in Zürich!").ids
    assert got["token_ids"].numpy()[0, : len(hf_ids)].tolist() == hf_ids


def test_bad_vocab_errors_name_file_and_token(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        tokenization.BertTokenizer(str(tmp_path / "nope.txt"))
    vocab = tmp_path / "v.txt"
    vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n")
    with pytest.raises(ValueError, match=r"v\.txt.*\[MASK\]"):
        tokenization.BertTokenizer(str(vocab))
    vocab.write_text("[PAD]\nhello\nhello\n")
    with pytest.raises(ValueError, match="'hello' appears on lines 2 and 3"):
        tokenization.load_vocab(str(vocab))


def test_pack_rejects_too_short_seq_length(tokenizer):
    ids = tokenizer.tokenize(tf.constant(["a b"]))
    with pytest.raises(ValueError, match="seq_length=4"):
        tokenizer.pack([ids, ids], seq_length=4)
