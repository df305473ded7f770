"""Corpus text -> BERT pre-training pairs (MLM + NSP) as a `tf.data.Dataset`.

Corpus format: UTF-8 text files, one document per blank-line separated block.
Every line of a block is split into sentences by `split_sentences`, so both
Google's one-sentence-per-line files and plain paragraphs work.

Pairs follow Google BERT's `create_pretraining_data.py`: sentences of one
document accumulate up to a target length (10% of the time a shorter, random
one), a random prefix of them is segment A, and segment B is either the rest
(`next_sentence_labels` = 0, IsNext) or, with probability 0.5, text from a
random other document (label 1, NotNext); the unused sentences are then put
back. Pairs over length lose tokens from the longer segment, at a random end.
A chunk of a single sentence can only take a random B, so short documents
raise the NotNext share: on the default corpus (Wikipedia leads, 3.6
sentences per document) it is 65% at seq_length 128, as Google's code gives.

Pairs are built once per `dupe_factor` pass with different random choices and
stored packed; masking is dynamic (`training.data.masking`), a new draw every time
a pair is seen.
"""

import glob
import hashlib
import io
import os
import random
import re

import numpy as np
import tensorflow as tf
from absl import logging

from groupbert_tf import tokenization
from training.data import masking, packing

NEXT_SENTENCE = 0
RANDOM_NEXT = 1

# A sentence ends at . ! or ? (plus closing quotes or brackets) followed by
# whitespace and a capital letter, digit, or opening quote/bracket.
_BOUNDARY = re.compile(r"[.!?][\"'\u201d\u2019)\]]*(\s+)(?=[\"'\u201c\u2018(\[]?[A-Z0-9])")
# Endings that are not sentence ends: single initials ("Arthur C. Clarke")
# and common abbreviations.
_NO_SPLIT_BEFORE = re.compile(
    r"(?:\b[A-Z]|\b(?:Mr|Mrs|Ms|Dr|Prof|Sr|Jr|St|Mt|vs|etc|e\.g|i\.e|c|ca|"
    r"approx|No|Vol|Fig|Inc|Ltd|Co|Corp|Gen|Col|Lt|Sgt|Capt|Rev|Hon|Gov|"
    r"U\.S|U\.K|a\.m|p\.m|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec))"
    r"\.[\"'\u201d\u2019)\]]*$"
)


def split_sentences(text):
    """Splits a paragraph into sentences with a rule-based splitter.

    A boundary is end punctuation, whitespace and an upper-case or numeric
    start, unless the text before it ends with an initial or a known
    abbreviation. It is not a linguistic parser: it only has to give NSP
    sentence-sized units, and errors merely move a boundary.
    """
    sentences, start = [], 0
    for match in _BOUNDARY.finditer(text):
        head = text[start : match.start(1)]
        if _NO_SPLIT_BEFORE.search(head):
            continue
        sentences.append(head.strip())
        start = match.end()
    sentences.append(text[start:].strip())
    return [s for s in sentences if s]


def document_sentences(lines):
    """The sentences of one document given as lines of text."""
    parts = (part.strip() for line in lines for part in line.splitlines())
    return [s for part in parts for s in split_sentences(part)]


def _open_binary(path):
    return open(path, "rb")


def _first_bad_line(path, open_binary):
    """1-based number of the first line of `path` that is not valid UTF-8."""
    number = 0
    with open_binary(path) as f:
        for number, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return number


def iter_documents(path, open_binary=_open_binary):
    """Streams one corpus file's documents (lists of sentences), a block at a time.

    Blocks are separated by whitespace-only lines. Memory holds one block, so
    files larger than memory stream too. `open_binary(path)` opens the file for
    reading bytes (e.g. Beam's `FileSystems.open` for cloud storage).

    Raises:
      ValueError: the file is not UTF-8 text (named, with the line number).
    """
    block = []
    with io.TextIOWrapper(open_binary(path), encoding="utf-8") as f:
        try:
            for line in f:
                if line.strip():
                    block.append(line)
                elif block:
                    sentences = document_sentences(block)
                    if sentences:
                        yield sentences
                    block = []
        except UnicodeDecodeError as e:
            raise ValueError(
                f"Corpus file {path} is not UTF-8 text (line {_first_bad_line(path, open_binary)}: "
                f"{e.reason})"
            ) from None
    sentences = document_sentences(block)
    if sentences:
        yield sentences


def corpus_files(paths):
    """Corpus paths -> files: a folder means every file under it (recursively, hidden ones
    skipped), a pattern with `*`, `?` or `[` its matches (`**` recurses); both sorted.

    Raises:
      FileNotFoundError: a path is missing, or a folder or pattern gives no file (named).
    """
    files = []
    for path in map(str, paths):
        if os.path.isdir(path):
            found = []
            for root, folders, names in os.walk(path):
                folders[:] = sorted(f for f in folders if not f.startswith("."))
                found += [os.path.join(root, n) for n in sorted(names) if not n.startswith(".")]
            if not found:
                raise FileNotFoundError(f"Corpus folder {path} holds no files")
        elif any(c in path for c in "*?["):
            found = sorted(p for p in glob.glob(path, recursive=True) if os.path.isfile(p))
            if not found:
                raise FileNotFoundError(f"Corpus pattern {path} matches no file")
        elif os.path.isfile(path):
            found = [path]
        else:
            raise FileNotFoundError(f"Corpus file not found: {path}")
        files += found
    return files


def read_documents(paths):
    """Reads corpus files into documents, each a list of sentence strings.

    Args:
      paths: a path or a list of paths; folders and glob patterns as in `corpus_files`.

    Raises:
      FileNotFoundError: a file is missing (named).
      ValueError: the files hold no text at all, or a file is not UTF-8 (named).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise ValueError("No corpus files given")
    documents = []
    for path in corpus_files(paths):
        documents.extend(iter_documents(path))
    if not documents:
        raise ValueError(f"Corpus is empty (no text in {', '.join(map(str, paths))})")
    return documents


def split_documents(documents, validation_fraction=0.01):
    """Deterministic train / validation split of documents.

    Documents are ranked by the MD5 of their text; the first
    `max(2, round(fraction * n))` are held out. The split depends on content
    only, not on file order, and validation has the 2 documents NSP needs.
    A fraction of 0 trains on every document and holds out none.

    Returns:
      (train_documents, validation_documents).
    """
    if not 0 <= validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    if validation_fraction == 0:
        return list(documents), []
    n_val = max(2, round(validation_fraction * len(documents)))
    if len(documents) - n_val < 2:
        raise ValueError(
            f"Corpus has {len(documents)} documents: too few for a "
            f"validation split of {n_val} and 2 training documents"
        )
    keys = [hashlib.md5("\n".join(d).encode("utf-8")).digest() for d in documents]
    order = sorted(range(len(documents)), key=lambda i: keys[i])
    held_out = set(order[:n_val])
    train = [d for i, d in enumerate(documents) if i not in held_out]
    val = [d for i, d in enumerate(documents) if i in held_out]
    return train, val


def tokenize_sentences(documents, tokenizer, batch_size=4096):
    """Documents of sentences -> documents of word-piece id lists, aligned.

    Runs the in-graph tokenizer over batches of sentences. Sentences with no
    tokens are dropped; a document can come out empty, and stays in its place
    so callers can keep keys beside documents.
    """
    flat = [s for doc in documents for s in doc]
    ids = []
    for i in range(0, len(flat), batch_size):
        ids.extend(tokenizer.tokenize(tf.constant(flat[i : i + batch_size])).to_list())
    out, k = [], 0
    for doc in documents:
        out.append([s for s in ids[k : k + len(doc)] if s])
        k += len(doc)
    return out


def tokenize_documents(documents, tokenizer, batch_size=4096):
    """Documents of sentences -> documents of word-piece id lists; documents
    left without tokens are dropped."""
    return [doc for doc in tokenize_sentences(documents, tokenizer, batch_size) if doc]


def _truncate_pair(tokens_a, tokens_b, max_tokens, rng):
    """Shortens the longer segment from a random end until the pair fits (in place).

    Google's loop drops one token at a time from a random end of the longer segment. The
    same random draws here only count the drops, and each list is cut once: linear time
    for a huge segment (a 10 MB line), where deleting from a list's front is quadratic.
    """
    lengths = [len(tokens_a), len(tokens_b)]
    cut = [[0, 0], [0, 0]]  # Tokens to drop from the [front, back] of A and of B.
    while lengths[0] + lengths[1] > max_tokens:
        longer = 0 if lengths[0] > lengths[1] else 1
        cut[longer][0 if rng.random() < 0.5 else 1] += 1
        lengths[longer] -= 1
    for tokens, (front, back) in zip((tokens_a, tokens_b), cut):
        tokens[:] = tokens[front:len(tokens) - back]


def create_pairs(documents, seq_length, rng, short_seq_prob=0.1):
    """Builds NSP pairs from tokenized documents (one pass over the corpus).

    Args:
      documents: list of documents, each a list of sentences of token ids; at
        least 2 documents.
      seq_length: packed length including [CLS] and two [SEP].
      rng: a `random.Random`.
      short_seq_prob: probability of a shorter random target length.

    Returns:
      List of (tokens_a, tokens_b, next_sentence_label).
    """
    if len(documents) < 2:
        raise ValueError(f"NSP needs at least 2 documents, got {len(documents)}")
    max_tokens = seq_length - 3
    if max_tokens < 2:
        raise ValueError(f"seq_length={seq_length} is too short for a pair")
    pairs = []
    for doc_index in rng.sample(range(len(documents)), len(documents)):
        document = documents[doc_index]
        target = max_tokens
        if rng.random() < short_seq_prob:
            target = rng.randint(2, max_tokens)
        chunk, chunk_len, i = [], 0, 0
        while i < len(document):
            chunk.append(document[i])
            chunk_len += len(document[i])
            if i == len(document) - 1 or chunk_len >= target:
                a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
                tokens_a = [t for s in chunk[:a_end] for t in s]
                if len(chunk) == 1 or rng.random() < 0.5:
                    label = RANDOM_NEXT
                    other = rng.randrange(len(documents) - 1)
                    other_doc = documents[other + (other >= doc_index)]
                    tokens_b = []
                    for sentence in other_doc[rng.randrange(len(other_doc)) :]:
                        tokens_b.extend(sentence)
                        if len(tokens_b) >= target - len(tokens_a):
                            break
                    i -= len(chunk) - a_end  # Unused sentences start the next chunk.
                else:
                    label = NEXT_SENTENCE
                    tokens_b = [t for s in chunk[a_end:] for t in s]
                _truncate_pair(tokens_a, tokens_b, max_tokens, rng)
                pairs.append((tokens_a, tokens_b, label))
                chunk, chunk_len = [], 0
            i += 1
    return pairs


def _ragged(rows):
    flat = np.fromiter((t for row in rows for t in row), np.int32)
    return tf.RaggedTensor.from_row_lengths(flat, np.array([len(r) for r in rows], np.int64))


def pack_pairs(pairs, seq_length, cls_id, sep_id, pad_id):
    """Pairs (already truncated) -> numpy dict of int32 `token_ids`, `segment_ids`,
    `padding_mask` [N, seq_length] (`tokenization.pack_segments`, the layout of every
    packed input) and `next_sentence_labels` [N]."""
    for k, (a, b, _) in enumerate(pairs):
        if len(a) + len(b) > seq_length - 3:
            raise ValueError(f"pair {k} has {len(a) + len(b)} tokens, more than "
                             f"seq_length - 3 = {seq_length - 3}")
    packed = tokenization.pack_segments(
        [_ragged([a for a, _, _ in pairs]), _ragged([b for _, b, _ in pairs])], seq_length,
        cls_id, sep_id, pad_id)
    examples = {name: value.numpy() for name, value in packed.items()}
    examples["next_sentence_labels"] = np.array([label for _, _, label in pairs], np.int32)
    return examples


def create_examples(
    documents, tokenizer, seq_length=128, dupe_factor=5, short_seq_prob=0.1, seed=0
):
    """Tokenized documents -> packed unmasked examples (numpy dict).

    `dupe_factor` passes over the corpus, each with fresh random pairings.
    """
    rng = random.Random(seed)
    pairs = []
    for _ in range(dupe_factor):
        pairs.extend(create_pairs(documents, seq_length, rng, short_seq_prob))
    return pack_pairs(pairs, seq_length, tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id)


def pretraining_dataset(
    corpus_paths,
    vocab_path,
    batch_size,
    *,
    split="train",
    seq_length=128,
    max_predictions_per_seq=20,
    masked_lm_prob=0.15,
    dupe_factor=5,
    short_seq_prob=0.1,
    validation_fraction=0.01,
    seed=0,
    shuffle_buffer=10_000,
    repeat=True,
    max_sequences_per_pack=None,
):
    """The MLM + NSP training (or validation) dataset from corpus files.

    Args:
      corpus_paths: corpus text file(s).
      vocab_path: WordPiece vocab file.
      batch_size: global batch size; the last partial batch is dropped.
      split: "train" or "validation" (held-out documents, see
        `split_documents`; not shuffled, one pass over the corpus).
      seq_length, max_predictions_per_seq, masked_lm_prob: static shapes and
        masking rate.
      dupe_factor, short_seq_prob: pair creation, as in Google's BERT.
      validation_fraction: share of documents held out.
      seed: seeds pairing, shuffling and masking.
      shuffle_buffer: examples in the shuffle buffer (train only).
      repeat: repeat forever (train only).
      max_sequences_per_pack: if set, packs up to this many pairs per row
        (training/data/packing.py; `batch_size` then counts rows) and logs the
        packing efficiency.

    Returns:
      A `tf.data.Dataset` of (features, labels), see `training.data.masking`.
    """
    if split not in ("train", "validation"):
        raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
    tokenizer = tokenization.BertTokenizer(vocab_path)
    train_docs, val_docs = split_documents(read_documents(corpus_paths), validation_fraction)
    docs = train_docs if split == "train" else val_docs
    examples = create_examples(
        tokenize_documents(docs, tokenizer),
        tokenizer,
        seq_length,
        dupe_factor if split == "train" else 1,
        short_seq_prob,
        seed,
    )
    if max_sequences_per_pack:
        pairs = len(examples["token_ids"])
        examples, efficiency = packing.pack_examples(
            examples, seq_length, max_sequences_per_pack, seed,
            per_sequence=("next_sentence_labels",))
        logging.info("Packed %d %s pairs into %d rows of %d (at most %d per row): packing "
                     "efficiency %.1f%%", pairs, split, len(examples["token_ids"]), seq_length,
                     max_sequences_per_pack, 100 * efficiency)
    if len(examples["token_ids"]) < batch_size:
        raise ValueError(
            f"The {split} split of {corpus_paths} gives "
            f"{len(examples['token_ids'])} examples, fewer than batch_size="
            f"{batch_size}"
        )
    ds = tf.data.Dataset.from_tensor_slices(examples)
    if split == "train":
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        if repeat:
            ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=True)
    masker = masking.MlmMasker(
        vocab_size=tokenizer.vocab_size,
        mask_id=tokenizer.mask_id,
        special_ids=tokenizer.special_ids,
        max_predictions_per_seq=max_predictions_per_seq,
        masked_lm_prob=masked_lm_prob,
        seed=seed,
    )
    ds = ds.map(masker, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
