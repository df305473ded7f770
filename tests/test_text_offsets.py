"""Word-piece offsets of the in-graph tokenizer against HF `tokenizers`, and their packing.

HF's offsets are characters of the original text, ours bytes of it: the oracle converts.
Known differences left out of the comparison: HF matches a literal "[UNK]" (or "[SEP]", ...)
in the text as one added token, tf-text splits it into "[", "unk", "]"; and a non-ASCII word
of at most 100 characters but over 100 bytes is word pieces for HF (a limit in characters)
and one [UNK] for tf-text (a limit in bytes).
"""

import os

import numpy as np
import pytest
import tensorflow as tf
import tokenizers

from groupbert_tf import tokenization
from training.data import download

HARD_CASES = [
    "Café naïve résumé",  # 2-byte characters, 1-byte normalized pieces
    "cafe\u0301 with a combining accent",
    "中文字符 and 日本語 mixed, 한국어 too",  # CJK ideographs split per character
    "emoji 😀👍🏽 here😀x and 😀",  # not in the vocab: [UNK] over the word
    "ctrl\x00a\x07b\u200bc soft\u00adhyphen \ufeffbom",  # dropped characters inside words
    "multiple    spaces\t\ttabs\n\nnewlines \u3000ideographic\u00a0nbsp 10\u2009000",
    "  leading and trailing  ",
    "zyxwvq qqqqzzzz unaffable xyzzyq",  # unknown words, many pieces
    "o'clock, U.S.A.! (really?) -- \"quoted\" R″",
    "Ὀδυσσεύς λόγος ÅNGSTRÖM Zürich İstanbul straße",
    "a" * 150 + " follows a word over 100 bytes",  # one [UNK] over the whole word
    "é" * 120 + " " + "😀" * 30,
    "",
    " ",
    "\x00",
]


@pytest.fixture(scope="module", autouse=True)
def fetched():
    download.fetch()


@pytest.fixture(scope="module")
def tokenizer():
    return tokenization.BertTokenizer(download.default_vocab_path())


@pytest.fixture(scope="module")
def hf():
    tok = tokenizers.Tokenizer.from_file(os.path.join(download.minilm_dir(), "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


@pytest.fixture(scope="module")
def lines():
    with open(download.default_corpus_path(), encoding="utf-8") as f:
        text = [line.rstrip("\n") for line in f if line.strip()]
    return text[::25][:400]


def _encode(texts):
    return tf.constant([t.encode("utf-8") for t in texts])


def _hf_byte_offsets(hf, texts):
    """HF ids and offsets, characters converted to bytes of the UTF-8 text."""
    result = []
    for text, encoding in zip(texts, hf.encode_batch(texts, add_special_tokens=False)):
        byte_of_char = np.cumsum([0] + [len(c.encode("utf-8")) for c in text])
        result.append((encoding.ids, [int(byte_of_char[a]) for a, _ in encoding.offsets],
                       [int(byte_of_char[b]) for _, b in encoding.offsets]))
    return result


def test_offsets_match_hf_tokenizers(tokenizer, hf, lines):
    texts = lines + HARD_CASES
    assert len(lines) == 400
    ids, starts, ends = tokenizer.tokenize_with_offsets(_encode(texts))
    ours = list(zip(ids.to_list(), starts.to_list(), ends.to_list()))
    theirs = _hf_byte_offsets(hf, texts)
    mismatches = [(text, a, b) for text, a, b in zip(texts, ours, theirs)
                  if (a[0], a[1], a[2]) != b]
    assert not mismatches, mismatches[:2]
    assert sum(len(row[0]) for row in ours) > 10_000  # really tokenized
    # The ids are those of `tokenize`, which normalizes whole strings.
    assert ids.to_list() == tokenizer.tokenize(_encode(texts)).to_list()
    assert ids.dtype == tf.int32 and starts.dtype == tf.int64 and ends.dtype == tf.int64


def test_hard_case_offsets_by_hand(tokenizer):
    text = "Café  日本 a\x00b " + "x" * 120
    ids, starts, ends = tokenizer.tokenize_with_offsets(_encode([text]))
    data = text.encode("utf-8")
    pieces = [data[a:b].decode("utf-8") for a, b in zip(starts[0].numpy(), ends[0].numpy())]
    assert pieces == ["Café", "日", "本", "a\x00b", "x" * 120]
    assert ids[0, -1] == tokenizer.unk_id


def _triples(tokenized):
    """Per text, its list of (id, start, end)."""
    return [list(zip(*row)) for row in zip(*(part.to_list() for part in tokenized))]


def _truncated(a, b, budget):
    """Google BERT's `_truncate_seq_pair` on lists of (id, start, end), the oracle."""
    a, b = list(a), list(b)
    while len(a) + len(b) > budget:
        (a if len(a) > len(b) else b).pop()
    return a, b


@pytest.mark.parametrize("seq_length", [24, 128])
def test_packed_offsets_line_up_with_packed_ids(tokenizer, lines, seq_length):
    texts_a, texts_b = lines[:200:2] + HARD_CASES, lines[1:200:2] + HARD_CASES[::-1]
    tokenized = [tokenizer.tokenize_with_offsets(_encode(t)) for t in (texts_a, texts_b)]
    packed = tokenizer.pack([ids for ids, _, _ in tokenized], seq_length,
                            offsets=[offsets for _, *offsets in tokenized])
    # With offsets: the same ids as without.
    plain = tokenizer.pack([ids for ids, _, _ in tokenized], seq_length)
    for name, value in plain.items():
        np.testing.assert_array_equal(packed[name], value)
    special = (-1, -1)
    truncated = 0
    for row, (a, b) in enumerate(zip(*map(_triples, tokenized))):
        a2, b2 = _truncated(a, b, seq_length - 3)
        truncated += (a2, b2) != (a, b)
        expected = [(tokenizer.cls_id, *special), *a2, (tokenizer.sep_id, *special), *b2,
                    (tokenizer.sep_id, *special)]
        expected += [(tokenizer.pad_id, *special)] * (seq_length - len(expected))
        got = list(zip(packed["token_ids"][row].numpy().tolist(),
                       packed["token_start_offsets"][row].numpy().tolist(),
                       packed["token_end_offsets"][row].numpy().tolist()))
        assert got == expected, (texts_a[row], texts_b[row])
    assert truncated > (50 if seq_length == 24 else 0)
    for name in ("token_start_offsets", "token_end_offsets"):
        assert packed[name].dtype == tf.int64 and packed[name].shape == (len(texts_a), seq_length)


def test_single_segment_offsets_and_empty_text(tokenizer):
    ids, starts, ends = tokenizer.tokenize_with_offsets(_encode(["Hello, world!", ""]))
    packed = tokenizer.pack([ids], 7, offsets=[(starts, ends)])
    np.testing.assert_array_equal(packed["token_ids"], [[101, 7592, 1010, 2088, 999, 102, 0],
                                                        [101, 102, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(packed["token_start_offsets"],
                                  [[-1, 0, 5, 7, 12, -1, -1], [-1] * 7])
    np.testing.assert_array_equal(packed["token_end_offsets"],
                                  [[-1, 5, 6, 12, 13, -1, -1], [-1] * 7])
    cut = tokenizer.pack([ids], 4, offsets=[(starts, ends)])
    np.testing.assert_array_equal(cut["token_start_offsets"], [[-1, 0, 5, -1], [-1] * 4])
