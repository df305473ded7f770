"""Sentence and sentence-pair classification data in GLUE's TSV/CSV layouts.

A file is read with a column spec (`Columns`): where text A, the optional text B and the
label are, by header name or by 0-based index, and whether the first line is a header.
`GLUE_TASKS` holds the specs of the GLUE tasks' train/dev files; `--glue_task=auto` (the
default) finds the columns from a header with `sentence`/`sentence1`/`sentence2`/`question`/
`label`-style names. Any number of labels: the label vocabulary is the sorted set of the
training labels (or a given list) and is saved next to the model.

TSV files are read without quote processing (GLUE's MNLI and QQP have unbalanced quotes);
files ending in .csv are read with the csv module's standard quoting.
"""

import csv
import dataclasses
import os
from typing import List, Optional, Sequence, Union

import numpy as np
import tensorflow as tf
from absl import logging

from training.data import packing

Column = Union[int, str]


@dataclasses.dataclass(frozen=True)
class Columns:
    """Where the fields of a row are: a header name or a 0-based index each."""

    text_a: Column
    label: Column
    text_b: Optional[Column] = None
    header: bool = True


# GLUE's train/dev files (test files have no labels). CoLA has no header.
GLUE_TASKS = {
    "cola": Columns(text_a=3, label=1, header=False),
    "sst-2": Columns(text_a="sentence", label="label"),
    "mrpc": Columns(text_a="#1 String", text_b="#2 String", label="Quality"),
    "qqp": Columns(text_a="question1", text_b="question2", label="is_duplicate"),
    "mnli": Columns(text_a="sentence1", text_b="sentence2", label="gold_label"),
    "qnli": Columns(text_a="question", text_b="sentence", label="label"),
    "rte": Columns(text_a="sentence1", text_b="sentence2", label="label"),
    "wnli": Columns(text_a="sentence1", text_b="sentence2", label="label"),
}

# Header names, tried in order: pairs first (text A, text B), then single sentences.
_AUTO_PAIRS = (("sentence1", "sentence2"), ("question1", "question2"), ("question", "sentence"),
               ("text_a", "text_b"), ("#1 String", "#2 String"))
_AUTO_SINGLE = ("sentence", "text", "text_a", "question")
_AUTO_LABEL = ("label", "gold_label", "is_duplicate", "Quality")


@dataclasses.dataclass
class Example:
    text_a: str
    text_b: Optional[str]
    label: str
    line: int  # 1-based line of the file, for error messages.


class DataFormatError(ValueError):
    """A data file does not match its column spec; the message names file and line."""


def _open_rows(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Data file not found: {path}")
    is_csv = path.lower().endswith(".csv")
    f = open(path, encoding="utf-8", newline="")
    if is_csv:
        return f, csv.reader(f)
    return f, csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)


def _resolve(path, header_row, column, what):
    if isinstance(column, int):
        return column
    if header_row is None:
        raise DataFormatError(f"{path}: column {what}={column!r} is a name but the spec says "
                              "the file has no header")
    if column not in header_row:
        raise DataFormatError(f"{path}:1: no column named {column!r} for {what}; the header "
                              f"has {header_row}")
    return header_row.index(column)


def auto_columns(path, header_row):
    """Finds text A/B and label columns from a header line."""
    label = next((n for n in _AUTO_LABEL if n in header_row), None)
    pair = next((p for p in _AUTO_PAIRS if p[0] in header_row and p[1] in header_row), None)
    single = next((n for n in _AUTO_SINGLE if n in header_row), None)
    if label is None or (pair is None and single is None):
        raise DataFormatError(
            f"{path}:1: cannot find the text and label columns in the header {header_row}; "
            f"name them (pairs: {list(_AUTO_PAIRS)}, single: {list(_AUTO_SINGLE)}, "
            f"label: {list(_AUTO_LABEL)}) or pass --glue_task / --text_a_column, "
            "--text_b_column, --label_column")
    if pair is not None:
        return Columns(text_a=pair[0], text_b=pair[1], label=label)
    return Columns(text_a=single, label=label)


def read_examples(path, columns: Optional[Columns] = None, max_examples=None) -> List[Example]:
    """Reads labelled examples from a GLUE-style TSV (or CSV) file.

    Args:
      path: the file.
      columns: a `Columns` spec; None reads the header and guesses (`auto_columns`).
      max_examples: stop after this many examples.

    Raises:
      DataFormatError: a named column is missing, or a row is too short or has an empty
        label; the message gives the file and the 1-based line.
    """
    f, reader = _open_rows(path)
    with f:
        header_row = None
        if columns is None or columns.header:
            try:
                header_row = [c.strip() for c in next(reader)]
            except StopIteration:
                raise DataFormatError(f"{path}: the file is empty") from None
            if header_row and header_row[0].startswith("\ufeff"):
                header_row[0] = header_row[0][1:]
        if columns is None:
            columns = auto_columns(path, header_row)
        index_a = _resolve(path, header_row, columns.text_a, "text_a")
        index_b = (None if columns.text_b is None
                   else _resolve(path, header_row, columns.text_b, "text_b"))
        index_label = _resolve(path, header_row, columns.label, "label")
        needed = max(i for i in (index_a, index_b, index_label) if i is not None) + 1
        names = {index_a: "text_a", index_label: "label"}
        if index_b is not None:
            names[index_b] = "text_b"
        # No row may be wider than the header (or the first row): an extra column is a tab
        # (TSV, no quoting) or an unquoted comma (CSV) inside a field, and would otherwise
        # shift the label silently.
        width = len(header_row) if header_row is not None else None
        delimiter = "comma" if path.lower().endswith(".csv") else "tab"
        examples = []
        for row in reader:
            line = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # Blank line.
            width = len(row) if width is None else width
            if len(row) > width:
                raise DataFormatError(
                    f"{path}:{line}: row has {len(row)} columns but the "
                    f"{'header' if header_row is not None else 'first row'} has {width}: a "
                    f"field holds the delimiter ({delimiter}), or the row has stray columns")
            if len(row) < needed:
                missing = sorted(name for i, name in names.items() if i >= len(row))
                raise DataFormatError(
                    f"{path}:{line}: row has {len(row)} column(s) but {', '.join(missing)} is "
                    f"in column {max(i for i in names if i >= len(row))} (0-based); check the "
                    "delimiter (tab for .tsv, comma for .csv) and the column spec")
            label = row[index_label].strip()
            if not label:
                raise DataFormatError(f"{path}:{line}: empty label in column {index_label}")
            examples.append(Example(text_a=row[index_a],
                                    text_b=None if index_b is None else row[index_b],
                                    label=label, line=line))
            if max_examples and len(examples) >= max_examples:
                break
    if not examples:
        raise DataFormatError(f"{path}: no examples")
    return examples


class LabelVocabulary:
    """Label strings <-> ids 0..L-1."""

    def __init__(self, labels: Sequence[str]):
        labels = list(labels)
        if not labels:
            raise ValueError("a label vocabulary needs at least one label")
        if len(set(labels)) != len(labels):
            raise ValueError(f"duplicate labels in {labels}")
        self.labels = labels
        self._index = {label: i for i, label in enumerate(labels)}

    @classmethod
    def from_examples(cls, examples: Sequence[Example]):
        """Sorted distinct labels; numeric labels sort by value ("2" before "10")."""
        distinct = {e.label for e in examples}
        try:
            ordered = sorted(distinct, key=float)
        except ValueError:
            ordered = sorted(distinct)
        return cls(ordered)

    def __len__(self):
        return len(self.labels)

    def id(self, label, path="", line=0):
        if label not in self._index:
            where = f"{path}:{line}: " if path else ""
            raise DataFormatError(f"{where}label {label!r} is not in the label vocabulary "
                                  f"{self.labels} (built from the training file)")
        return self._index[label]

    def save(self, path):
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(self.labels) + "\n")

    @classmethod
    def load(cls, path):
        with open(path, encoding="utf-8") as f:
            return cls([line.rstrip("\n") for line in f if line.strip()])


def encode(examples: Sequence[Example], tokenizer, seq_length, chunk=1024):
    """Tokenizes and packs examples -> dict of int32 numpy arrays [N, seq_length]."""
    pair = examples[0].text_b is not None
    parts = []
    for start in range(0, len(examples), chunk):
        batch = examples[start:start + chunk]
        text_a = tf.constant([e.text_a for e in batch])
        text_b = tf.constant([e.text_b for e in batch]) if pair else None
        packed = tokenizer(text_a, text_b, seq_length=seq_length)
        parts.append({k: v.numpy() for k, v in packed.items()})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def make_dataset(examples, tokenizer, label_vocab: LabelVocabulary, seq_length, batch_size,
                 training, seed=0, path="", max_sequences_per_pack=None):
    """(inputs, {"labels"}) batches; training data is shuffled and drops the remainder.

    `max_sequences_per_pack` packs up to that many examples per row (training/data/packing.py):
    each row then has `sequence_ids` and `cls_positions`, labels are [rows, k] with
    `sequence_weights`, and `batch_size` counts rows.
    """
    features = encode(examples, tokenizer, seq_length)
    labels = np.array([label_vocab.id(e.label, path, e.line) for e in examples], np.int32)
    targets, items = {"labels": labels}, "examples"
    if max_sequences_per_pack:
        features, efficiency = packing.pack_examples({**features, **targets}, seq_length,
                                                     max_sequences_per_pack, seed, ("labels",))
        targets = {k: features.pop(k) for k in ("labels", "sequence_weights")}
        items = "packed rows"
        logging.info("%s: packed %d examples into %d rows of %d (at most %d per row): packing "
                     "efficiency %.1f%%", path or "training data", len(examples),
                     len(targets["labels"]), seq_length, max_sequences_per_pack, 100 * efficiency)
    dataset = tf.data.Dataset.from_tensor_slices((features, targets))
    rows = len(targets["labels"])
    if training:
        if rows < batch_size:
            raise ValueError(f"{path or 'training data'}: {rows} {items}, fewer than "
                             f"one batch of {batch_size}")
        dataset = dataset.shuffle(rows, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, drop_remainder=training)
    return dataset.prefetch(tf.data.AUTOTUNE)
