"""SQuAD features (windows, offsets), best-span decoding and the official EM/F1."""

import json
import os
import re
import unicodedata

import numpy as np
import pytest

from groupbert_tf.tokenization import BertTokenizer
from training.data import download, squad_data

SQUAD_TINY = os.path.join(os.path.dirname(__file__), "data", "squad_tiny.json")
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# Words the test vocab only has as word pieces, so offsets inside words get tested.
SPLIT_WORDS = {"photosynthesis": ["photo", "##synthesis"], "croissants": ["croissant", "##s"]}


def squad_vocab(path=SQUAD_TINY):
    """A whole-word vocab of the file's text (lower-cased, accents stripped) + SPLIT_WORDS."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    texts = []
    for article in data["data"]:
        for paragraph in article["paragraphs"]:
            texts.append(paragraph["context"])
            texts.extend(qa["question"] for qa in paragraph["qas"])
    tokens = set()
    for text in texts:
        text = "".join(c for c in unicodedata.normalize("NFD", text.lower())
                       if unicodedata.category(c) != "Mn")
        tokens.update(re.findall(r"\w+|[^\w\s]", text))
    for word, pieces in SPLIT_WORDS.items():
        tokens.discard(word)
        tokens.update(pieces)
    return SPECIAL + sorted(tokens)


@pytest.fixture(scope="module")
def tokenizer():
    return BertTokenizer(squad_vocab())


@pytest.fixture(scope="module")
def examples():
    return squad_data.read_squad(SQUAD_TINY)


def test_read_squad(examples):
    assert len(examples) == 15
    first = examples[0]
    assert first.qas_id == "q01"
    assert first.answers == [("chemical energy", first.context.index("chemical energy"))]


def test_read_squad_rejects_misplaced_answer(tmp_path):
    bad = {"data": [{"paragraphs": [{"context": "abc def", "qas": [
        {"id": "x", "question": "q", "answers": [{"text": "def", "answer_start": 1}]}]}]}]}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="question x: answer 'def' is not at character 1"):
        squad_data.read_squad(str(path))


def test_offsets_map_pieces_back_to_original_characters(tokenizer):
    text = "Photosynthesis in  Marie's café, at five o'clock."
    [(ids, spans)] = squad_data.tokenize_with_char_offsets(tokenizer, [text])
    pieces = [tokenizer.vocab[i] for i in ids]
    assert pieces == ["photo", "##synthesis", "in", "marie", "'", "s", "cafe", ",", "at", "five",
                      "o", "'", "clock", "."]
    assert [text[a:b] for a, b in spans] == ["Photo", "synthesis", "in", "Marie", "'", "s",
                                             "café", ",", "at", "five", "o", "'", "clock", "."]
    # The ids are those of the in-graph tokenizer on the whole text.
    assert ids == tokenizer.tokenize([text]).numpy()[0].tolist()


def test_unknown_word_covers_its_characters(tokenizer):
    text = "The zyxwv, lamp"
    [(ids, spans)] = squad_data.tokenize_with_char_offsets(tokenizer, [text])
    assert [tokenizer.vocab[i] for i in ids] == ["the", "[UNK]", ",", "lamp"]
    assert [text[a:b] for a, b in spans] == ["The", "zyxwv", ",", "lamp"]


def test_doc_stride_windows_cover_every_answer(tokenizer, examples):
    seq_length, stride = 32, 8
    features = squad_data.convert_examples(examples, tokenizer, seq_length, doc_stride=stride,
                                           max_query_length=12, training=True)
    by_example = {}
    for feature in features:
        by_example.setdefault(feature.example_index, []).append(feature)
        assert feature.token_ids.shape == (seq_length,)
        assert feature.token_ids[0] == tokenizer.cls_id
    assert sorted(by_example) == list(range(len(examples)))
    assert max(len(f) for f in by_example.values()) > 1  # Contexts need several windows.
    for index, windows in by_example.items():
        example = examples[index]
        text, start_char = example.answers[0]
        labelled = [f for f in windows if f.start_position > 0]
        assert labelled, f"no window holds the answer of {example.qas_id}"
        for feature in labelled:
            start = feature.token_spans[feature.start_position][0]
            end = feature.token_spans[feature.end_position][1]
            assert example.context[start:end] == text
            assert start == start_char
        # Windows cover every context token, and each token has one max-context window.
        covered = {}
        for feature in windows:
            for span, best in zip(feature.token_spans, feature.max_context):
                if span is not None:
                    covered.setdefault(span, []).append(best)
        [(ids, spans)] = squad_data.tokenize_with_char_offsets(tokenizer, [example.context])
        assert sorted(covered) == sorted(set(spans))
        assert all(sum(flags) == 1 for flags in covered.values())


def test_window_without_the_answer_points_at_cls(tokenizer, examples):
    features = squad_data.convert_examples(examples[:1], tokenizer, 32, doc_stride=8,
                                           max_query_length=12, training=True)
    without = [f for f in features if f.start_position == 0]
    assert without and all(f.end_position == 0 for f in without)


def test_best_span_hand_computed():
    starts = [0.0, 1.0, 5.0, 0.5, 0.0]
    ends = [0.0, 0.0, 1.0, 6.0, 9.0]
    every = [True] * 5
    # Length <= 2 tokens: (2, 3) = 5 + 6 = 11 beats (3, 4) = 9.5 and (4, 4) = 9.
    assert squad_data.best_span(starts, ends, every, every, 2) == (2, 3, 11.0)
    # Length <= 3 allows (2, 4) = 14.
    assert squad_data.best_span(starts, ends, every, every, 3) == (2, 4, 14.0)
    # Position 2 cannot start: (3, 4) = 9.5. End before start is never chosen.
    no_two = [True, True, False, True, True]
    assert squad_data.best_span(starts, ends, no_two, every, 3) == (3, 4, 9.5)
    # (1, 0) = 18 would be best but ends before it starts: (1, 1) = 10 wins.
    assert squad_data.best_span([0, 9.0], [9.0, 1.0], every[:2], every[:2], 5) == (1, 1, 10.0)
    assert squad_data.best_span(starts, ends, [False] * 5, every, 3) is None


def _decode_gold_logits(examples, tokenizer, seq_length, doc_stride, max_query_length):
    """(features, predictions) of logits that put 10 on each window's gold start and end."""
    features = squad_data.convert_examples(examples, tokenizer, seq_length,
                                           doc_stride=doc_stride,
                                           max_query_length=max_query_length, training=True)
    start_logits = np.zeros((len(features), seq_length))
    end_logits = np.zeros((len(features), seq_length))
    for i, feature in enumerate(features):
        if feature.start_position:
            start_logits[i, feature.start_position] = 10.0
            end_logits[i, feature.end_position] = 10.0
    return features, squad_data.decode(examples, features, start_logits, end_logits,
                                       max_answer_length=30)


def test_decode_gold_logits_gives_exact_answers(tokenizer, examples):
    _, predictions = _decode_gold_logits(examples, tokenizer, 32, 8, 12)
    assert predictions == {e.qas_id: e.answers[0][0] for e in examples}
    assert squad_data.evaluate(examples, predictions) == {"exact_match": 100.0, "f1": 100.0}


def test_normalize_answer_like_the_official_script():
    assert squad_data.normalize_answer("The  Cat, sat!") == "cat sat"
    assert squad_data.normalize_answer("an apple a day") == "apple day"
    assert squad_data.normalize_answer("theory of the atom") == "theory of atom"
    assert squad_data.normalize_answer("o'clock") == "oclock"


def test_exact_match_and_f1_hand_computed():
    assert squad_data.exact_match_score("The Chloroplasts.", "chloroplasts") == 1.0
    assert squad_data.exact_match_score("in the chloroplasts", "chloroplasts") == 0.0
    # "cat sat on mat" vs "cat sat": overlap 2, precision 2/4, recall 2/2, F1 = 2/3.
    assert squad_data.f1_score("the cat sat on the mat", "a cat sat") == pytest.approx(2 / 3)
    # Repeated tokens count once per occurrence: "a a b" vs "a b b" -> "b" twice? no:
    # normalized "b" vs "b b" (articles removed): overlap 1, P = 1, R = 1/2, F1 = 2/3.
    assert squad_data.f1_score("a a b", "a b b") == pytest.approx(2 / 3)
    assert squad_data.f1_score("dog", "cat") == 0.0
    example = squad_data.SquadExample("q", "?", "ctx", [("1874", 0), ("in 1874", 0)])
    other = squad_data.SquadExample("r", "?", "ctx", [("Robert Stevenson", 0)])
    # Max over the ground truths; then the mean over questions, in percent.
    results = squad_data.evaluate([example, other], {"q": "in 1874", "r": "Stevenson"})
    assert results["exact_match"] == pytest.approx(50.0)
    assert results["f1"] == pytest.approx(100 * (1.0 + 2 / 3) / 2)


# (context, answers): accents, CJK, punctuation, runs of spaces, dropped characters. (A span
# ends with its last character that normalizes to something, as in HF `tokenizers`: an answer
# ending in a decomposed accent, "cafe\u0301", would come back as "cafe"; SQuAD text is NFC.)
HARD_CONTEXTS = [
    ("Le Café naïve ouvre à 7h, près de la Gare   Saint-Lazare.",
     ["Café naïve", "Gare   Saint-Lazare", "7h"]),
    ("東京都 (Tōkyō-to) is the capital of 日本; its kanji are 東京.",
     ["東京都", "Tōkyō-to", "日本", "東京"]),
    ("He left at five o'clock — \"exactly\" — from U.S.A.'s  biggest\u00a0port.",
     ["o'clock", "\"exactly\"", "U.S.A.'s  biggest\u00a0port"]),
    ("A zero\u200bwidth space, an emoji 😀 and a decomposed cafe\u0301 sit here.",
     ["zero\u200bwidth", "😀", "decomposed"]),
]


def test_decoded_span_is_the_answer_on_hard_text():
    download.fetch()
    tokenizer = BertTokenizer(download.default_vocab_path())
    examples = [squad_data.SquadExample(f"q{i}-{j}", "What?", context,
                                        [(answer, context.rindex(answer))])
                for i, (context, answers) in enumerate(HARD_CONTEXTS)
                for j, answer in enumerate(answers)]
    features, predictions = _decode_gold_logits(examples, tokenizer, 24, 6, 8)
    assert predictions == {e.qas_id: e.answers[0][0] for e in examples}
    assert max(sum(f.example_index == k for f in features) for k in range(len(examples))) > 1
