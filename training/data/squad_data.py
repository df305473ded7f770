"""SQuAD v1.1 span extraction: JSON -> windowed features, best-span decoding, EM and F1.

Context tokenization keeps character offsets: the context is split on whitespace (as Google's
`run_squad.py`), each word is WordPiece-tokenized by `groupbert_tf.tokenization.BertTokenizer`
(the same ids as the in-graph tokenizer of the exported model), and every word piece is
aligned back to the characters of the original context it came from. A predicted span is then
exactly `context[start_char:end_char]`.

Long contexts are cut into windows of at most `seq_length - len(question) - 3` tokens that
start every `doc_stride` tokens. A window that does not contain the whole answer is labelled
[CLS] (0, 0). At decoding time a token is only a candidate start in the window where it has
the most context on both sides (Google's `_check_is_max_context`).

EM and F1 follow the official SQuAD v1.1 evaluation script: lower-case, remove punctuation,
remove the articles a/an/the, collapse whitespace; F1 over bags of tokens; max over answers.
"""

import collections
import dataclasses
import json
import re
import string
import unicodedata
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

from groupbert_tf import tokenization


@dataclasses.dataclass
class SquadExample:
    qas_id: str
    question: str
    context: str
    answers: List[Tuple[str, int]]  # (text, start character), in file order.


@dataclasses.dataclass
class SquadFeature:
    """One window of one example, packed to seq_length."""

    example_index: int
    token_ids: np.ndarray
    segment_ids: np.ndarray
    padding_mask: np.ndarray
    # Per position: (start, end) characters of the context for context tokens, else None.
    token_spans: List[Optional[Tuple[int, int]]]
    # Per position: True where this window is the one with the most context for the token.
    max_context: List[bool]
    start_position: int = 0
    end_position: int = 0


def read_squad(path) -> List[SquadExample]:
    """Reads a SQuAD v1.1 JSON file ({"data": [{"paragraphs": [{"context", "qas"}]}]}).

    Raises:
      ValueError: the file is not UTF-8 JSON in that layout; the message names the file and
        the JSON path of the offending entry.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text (byte {error.start}: {error.reason})") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON: {error}") from error
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise ValueError(f"{path}: expected a SQuAD JSON object with a 'data' list")
    examples = []
    where = "data"
    try:
        for i, article in enumerate(data["data"]):
            for j, paragraph in enumerate(article["paragraphs"]):
                where = f"data[{i}].paragraphs[{j}]"
                context = paragraph["context"]
                for k, qa in enumerate(paragraph["qas"]):
                    where = f"data[{i}].paragraphs[{j}].qas[{k}]"
                    answers = []
                    for answer in qa.get("answers", []):
                        text, start = answer["text"], answer["answer_start"]
                        if not (isinstance(text, str) and isinstance(start, int)
                                and isinstance(context, str)):
                            raise TypeError("context and answer text must be strings, "
                                            "answer_start an integer")
                        if context[start:start + len(text)] != text:
                            raise ValueError(
                                f"{path}: question {qa['id']}: answer {text!r} is not at "
                                f"character {start} of its context (found "
                                f"{context[start:start + len(text)]!r})")
                        answers.append((text, start))
                    if not isinstance(qa["question"], str):
                        raise TypeError("the question must be a string")
                    examples.append(SquadExample(str(qa["id"]), qa["question"], context,
                                                 answers))
    except (KeyError, TypeError, AttributeError) as error:
        problem = f"no key {error}" if isinstance(error, KeyError) else str(error)
        raise ValueError(f"{path}: {where} is not in the SQuAD v1.1 layout ({problem})") from None
    if not examples:
        raise ValueError(f"{path}: no questions")
    return examples


# ---------------------------------------------------------------------------------------------
# Tokenization with character offsets.

def _is_whitespace(char):
    return char in " \t\r\n" or ord(char) == 0x202F or unicodedata.category(char) == "Zs"


def _is_punctuation(char):
    cp = ord(char)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def _normalize_char(char, lower_case):
    """One character through `BertTokenizer.normalize` (may give 0 or several characters)."""
    if (unicodedata.category(char).startswith("C") and char not in "\t\n\r") or char == "\ufffd":
        return ""
    if unicodedata.category(char).startswith("Z"):
        return " "
    if lower_case:
        char = "".join(c for c in unicodedata.normalize("NFD", char)
                       if unicodedata.category(c) != "Mn")
        char = char.lower()
    return char


def split_words(text) -> List[Tuple[int, int]]:
    """Whitespace-separated words as (start, end) character spans."""
    spans, start = [], None
    for i, char in enumerate(text):
        if _is_whitespace(char):
            if start is not None:
                spans.append((start, i))
                start = None
        elif start is None:
            start = i
    if start is not None:
        spans.append((start, len(text)))
    return spans


def piece_offsets(word, pieces, lower_case=True) -> List[Tuple[int, int]]:
    """Aligns the word pieces of one word to (start, end) characters of that word.

    Pieces are matched against the normalized word; [UNK] covers one basic token (up to the
    next punctuation character). If matching fails (a normalization we do not mirror), the
    remaining pieces get the rest of the word: offsets stay inside the word and ordered.
    """
    normalized, origin = [], []
    for i, char in enumerate(word):
        for c in _normalize_char(char, lower_case):
            normalized.append(c)
            origin.append(i)
    normalized = "".join(normalized)

    def to_word(a, b):  # Normalized [a, b) -> word characters.
        if not origin:
            return 0, len(word)
        a = min(a, len(origin) - 1)
        b = max(min(b, len(origin)), a + 1)
        return origin[a], origin[b - 1] + 1

    offsets, pos = [], 0
    for k, piece in enumerate(pieces):
        while pos < len(normalized) and normalized[pos] == " ":
            pos += 1
        if piece == tokenization.UNK_TOKEN:
            end = pos + 1
            if pos < len(normalized) and not _is_punctuation(normalized[pos]):
                while (end < len(normalized) and not _is_punctuation(normalized[end])
                       and normalized[end] != " "):
                    end += 1
            offsets.append(to_word(pos, end))
            pos = end
            continue
        text = piece[2:] if piece.startswith("##") else piece
        if text and normalized.startswith(text, pos):
            offsets.append(to_word(pos, pos + len(text)))
            pos += len(text)
        else:
            rest = to_word(pos, len(normalized))
            offsets.extend([rest] * (len(pieces) - k))
            break
    return offsets


def tokenize_with_offsets(tokenizer, texts: Sequence[str], chunk=4096):
    """Texts -> per text (token ids, (start, end) character spans), batched over words."""
    words = [split_words(text) for text in texts]
    flat = [text[a:b] for text, spans in zip(texts, words) for a, b in spans]
    ids = []
    for start in range(0, len(flat), chunk):
        ragged = tokenizer.tokenize(tf.constant(flat[start:start + chunk]))
        ids.extend(row.tolist() for row in ragged.numpy())
    results, k = [], 0
    for text, spans in zip(texts, words):
        token_ids, token_spans = [], []
        for a, b in spans:
            pieces = [tokenizer.vocab[i] for i in ids[k]]
            for (s, e), token_id in zip(piece_offsets(text[a:b], pieces, tokenizer.lower_case),
                                        ids[k]):
                token_ids.append(token_id)
                token_spans.append((a + s, a + e))
            k += 1
        results.append((token_ids, token_spans))
    return results


# ---------------------------------------------------------------------------------------------
# Features.

def _max_context_score(window_start, window_length, position):
    left = position - window_start
    right = window_start + window_length - 1 - position
    return min(left, right) + 0.01 * window_length


def convert_examples(examples: Sequence[SquadExample], tokenizer, seq_length, doc_stride=128,
                     max_query_length=64, training=False) -> List[SquadFeature]:
    """Examples -> windowed features. Training features carry start/end token positions."""
    contexts = sorted({e.context for e in examples})
    context_tokens = dict(zip(contexts, tokenize_with_offsets(tokenizer, contexts)))
    questions = [ids for ids, _ in tokenize_with_offsets(tokenizer, [e.question for e in examples])]
    features = []
    skipped = 0
    for index, example in enumerate(examples):
        query = questions[index][:max_query_length]
        doc_ids, doc_spans = context_tokens[example.context]
        max_doc = seq_length - len(query) - 3
        if max_doc < 1:
            raise ValueError(f"seq_length={seq_length} leaves no room for the context after a "
                             f"question of {len(query)} tokens (lower --max_query_length)")
        answer_tokens = None
        if training and example.answers:
            text, start_char = example.answers[0]
            end_char = start_char + len(text)
            overlapping = [t for t, (a, b) in enumerate(doc_spans) if a < end_char and b > start_char]
            if overlapping:
                answer_tokens = (overlapping[0], overlapping[-1])
            else:
                skipped += 1
                continue
        windows, window_start = [], 0
        while window_start < len(doc_ids) or not windows:
            length = min(len(doc_ids) - window_start, max_doc)
            windows.append((window_start, length))
            if window_start + length >= len(doc_ids):
                break
            window_start += min(length, doc_stride)
        for window_start, length in windows:
            ids = [tokenizer.cls_id, *query, tokenizer.sep_id]
            segments = [0] * len(ids)
            spans: List[Optional[Tuple[int, int]]] = [None] * len(ids)
            max_context = [False] * len(ids)
            offset = len(ids)
            for t in range(window_start, window_start + length):
                ids.append(doc_ids[t])
                segments.append(1)
                spans.append(doc_spans[t])
                best = max(
                    (w for w in windows if w[0] <= t < w[0] + w[1]),
                    key=lambda w, t=t: _max_context_score(w[0], w[1], t))
                max_context.append(best == (window_start, length))
            ids.append(tokenizer.sep_id)
            segments.append(1)
            spans.append(None)
            max_context.append(False)
            real = len(ids)
            pad = seq_length - real
            feature = SquadFeature(
                example_index=index,
                token_ids=np.array(ids + [tokenizer.pad_id] * pad, np.int32),
                segment_ids=np.array(segments + [0] * pad, np.int32),
                padding_mask=np.array([1] * real + [0] * pad, np.int32),
                token_spans=spans + [None] * pad,
                max_context=max_context + [False] * pad)
            if answer_tokens is not None:
                first, last = answer_tokens
                if window_start <= first and last < window_start + length:
                    feature.start_position = first - window_start + offset
                    feature.end_position = last - window_start + offset
            features.append(feature)
    if skipped:
        logging.warning("Skipped %d training example(s) whose answer has no token.", skipped)
    return features


def make_dataset(features: Sequence[SquadFeature], batch_size, training, seed=0):
    """(inputs, labels) batches for training (shuffled, drop remainder); inputs for predict."""
    inputs = {
        "token_ids": np.stack([f.token_ids for f in features]),
        "segment_ids": np.stack([f.segment_ids for f in features]),
        "padding_mask": np.stack([f.padding_mask for f in features]),
    }
    if not training:
        return tf.data.Dataset.from_tensor_slices(inputs).batch(batch_size).prefetch(2)
    if len(features) < batch_size:
        raise ValueError(f"{len(features)} training features, fewer than one batch of "
                         f"{batch_size}")
    labels = {
        "start_positions": np.array([f.start_position for f in features], np.int32),
        "end_positions": np.array([f.end_position for f in features], np.int32),
    }
    dataset = tf.data.Dataset.from_tensor_slices((inputs, labels))
    dataset = dataset.shuffle(len(features), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size, drop_remainder=True).prefetch(2)


# ---------------------------------------------------------------------------------------------
# Decoding.

def best_span(start_logits, end_logits, candidate_starts, candidate_ends, max_answer_length):
    """The (start, end, score) maximising start + end logit with start <= end < start + L.

    `candidate_starts` / `candidate_ends` are boolean masks of allowed positions. Returns None
    when no pair is allowed. Exhaustive over all pairs (no n-best shortlist).
    """
    start_logits = np.asarray(start_logits, np.float64)
    end_logits = np.asarray(end_logits, np.float64)
    n = len(start_logits)
    scores = start_logits[:, None] + end_logits[None, :]
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    allowed = ((j >= i) & (j - i < max_answer_length)
               & np.asarray(candidate_starts, bool)[:, None]
               & np.asarray(candidate_ends, bool)[None, :])
    if not allowed.any():
        return None
    scores = np.where(allowed, scores, -np.inf)
    flat = int(np.argmax(scores))
    return flat // n, flat % n, float(scores.flat[flat])


def decode(examples, features, start_logits, end_logits, max_answer_length=30) -> Dict[str, str]:
    """Predicted answer text per question id, the best span over all of its windows."""
    best: Dict[int, Tuple[float, str]] = {}
    for feature, starts, ends in zip(features, start_logits, end_logits):
        is_context = np.array([s is not None for s in feature.token_spans])
        found = best_span(starts, ends, is_context & np.array(feature.max_context), is_context,
                          max_answer_length)
        if found is None:
            continue
        start, end, score = found
        if feature.example_index not in best or score > best[feature.example_index][0]:
            context = examples[feature.example_index].context
            text = context[feature.token_spans[start][0]:feature.token_spans[end][1]]
            best[feature.example_index] = (score, text)
    return {example.qas_id: best.get(index, (0.0, ""))[1]
            for index, example in enumerate(examples)}


# ---------------------------------------------------------------------------------------------
# The official SQuAD v1.1 metrics.

def normalize_answer(text):
    """Lower case, drop punctuation and the articles a/an/the, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match_score(prediction, ground_truth):
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def f1_score(prediction, ground_truth):
    prediction_tokens = normalize_answer(prediction).split()
    truth_tokens = normalize_answer(ground_truth).split()
    common = collections.Counter(prediction_tokens) & collections.Counter(truth_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(prediction_tokens)
    recall = overlap / len(truth_tokens)
    return 2 * precision * recall / (precision + recall)


def evaluate(examples: Sequence[SquadExample], predictions: Dict[str, str]):
    """{"exact_match", "f1"} in percent over the examples with answers."""
    exact, f1, count = 0.0, 0.0, 0
    for example in examples:
        truths = [text for text, _ in example.answers]
        if not truths:
            continue
        prediction = predictions.get(example.qas_id, "")
        exact += max(exact_match_score(prediction, t) for t in truths)
        f1 += max(f1_score(prediction, t) for t in truths)
        count += 1
    if not count:
        raise ValueError("no example with an answer to evaluate")
    return {"exact_match": 100.0 * exact / count, "f1": 100.0 * f1 / count}
