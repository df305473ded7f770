"""SQuAD v1.1 span extraction: JSON -> windowed features, best-span decoding, EM and F1.

Contexts are tokenized by the in-graph tokenizer of the exported model
(`groupbert_tf.tokenization.BertTokenizer.tokenize_with_offsets`: the same ids, and byte offsets
into the original context), and the byte offsets are turned into characters, the unit of SQuAD's
`answer_start`. A predicted span is then exactly `context[start_char:end_char]`.

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
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from absl import logging


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

def tokenize_with_char_offsets(tokenizer, texts: Sequence[str], chunk=4096):
    """Texts -> per text (token ids, (start, end) character spans) from the tokenizer's bytes.

    (Texts are encoded with `surrogatepass`, so a lone surrogate that JSON allows is one
    character of three bytes, as Python counts it.)
    """
    results = []
    for first in range(0, len(texts), chunk):
        encoded = [text.encode("utf-8", "surrogatepass") for text in texts[first:first + chunk]]
        ids, starts, ends = tokenizer.tokenize_with_offsets(tf.constant(encoded, tf.string))
        for data, row_ids, row_starts, row_ends in zip(encoded, ids.to_list(), starts.to_list(),
                                                       ends.to_list()):
            # The character of each byte: characters start at bytes that are not 10xxxxxx.
            char_of_byte = np.cumsum((np.frombuffer(data, np.uint8) & 0xC0) != 0x80) - 1
            spans = [(int(char_of_byte[a]), int(char_of_byte[b - 1]) + 1)
                     for a, b in zip(row_starts, row_ends)]
            results.append((row_ids, spans))
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
    context_tokens = dict(zip(contexts, tokenize_with_char_offsets(tokenizer, contexts)))
    questions = tokenizer.tokenize(
        tf.constant([e.question.encode("utf-8", "surrogatepass") for e in examples], tf.string)
    ).to_list()
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
