"""In-graph WordPiece tokenization and BERT input packing (TensorFlow-specific).

Wraps tensorflow-text's `BertTokenizer` (BERT's basic tokenizer: lower-casing,
accent stripping, punctuation and CJK splitting, then greedy longest-match
WordPiece). The vocab is baked into the graph as a constant lookup table, so
the tokenizer runs inside `tf.data` and `tf.function` and a SavedModel that
holds it needs no external file.
"""

import os

import tensorflow as tf
import tensorflow_text as tf_text

CLS_TOKEN = "[CLS]"
SEP_TOKEN = "[SEP]"
PAD_TOKEN = "[PAD]"
MASK_TOKEN = "[MASK]"
UNK_TOKEN = "[UNK]"


def load_vocab(vocab_path):
    """Reads a WordPiece vocab file (one token per line, id = line number)."""
    if not os.path.isfile(vocab_path):
        raise FileNotFoundError(f"Vocab file not found: {vocab_path}")
    with open(vocab_path, encoding="utf-8") as f:
        tokens = [line.rstrip("\n").rstrip("\r") for line in f]
    while tokens and not tokens[-1]:
        tokens.pop()
    if not tokens:
        raise ValueError(f"Vocab file is empty: {vocab_path}")
    seen = {}
    for i, token in enumerate(tokens):
        if token in seen:
            raise ValueError(
                f"Vocab file {vocab_path}: token {token!r} appears on "
                f"lines {seen[token] + 1} and {i + 1}"
            )
        seen[token] = i
    return tokens


# Nothing here branches on tensors; skipping AutoGraph's source conversion
# (of this and of tf-text) cuts tracing from ~15 s to ~1 s.
_plain_graph_code = tf.autograph.experimental.do_not_convert


def _keep_first(segment, lengths):
    return tf.RaggedTensor.from_tensor(segment.to_tensor(), lengths=lengths)


def _truncate_longest_first(segments, budget):
    """Cuts segment ends so that each row has at most `budget` tokens in all.

    The same result as Google BERT's `_truncate_seq_pair`: drop one token at a
    time from the longer segment, from the second one on a tie. In closed
    form, segment A keeps min(len_a, max(budget - len_b, ceil(budget / 2)))
    tokens. HF's `longest_first` and tf-text's ShrinkLongestTrimmer can give
    the odd token of an odd budget to the other segment; the trimmer also fails
    on a single segment inside tf.function.
    """
    len_a = segments[0].row_lengths()
    if len(segments) == 1:
        return [_keep_first(segments[0], tf.minimum(len_a, budget))]
    len_b = segments[1].row_lengths()
    keep_a = tf.minimum(len_a, tf.maximum(budget - len_b, (budget + 1) // 2))
    keep_b = tf.minimum(len_b, budget - keep_a)
    return [_keep_first(segments[0], keep_a), _keep_first(segments[1], keep_b)]


class BertTokenizer(tf.Module):
    """Text -> WordPiece ids -> packed, padded BERT inputs, all in-graph.

    Attributes:
      vocab_size: number of tokens.
      cls_id, sep_id, pad_id, mask_id, unk_id: special token ids, looked up in
        the vocab (a vocab missing one of them is rejected).
    """

    def __init__(self, vocab, lower_case=True, name=None):
        """Args: vocab, a vocab file path or a list of tokens; lower_case."""
        super().__init__(name=name)
        source = vocab if isinstance(vocab, str) else "the vocab list"
        tokens = load_vocab(vocab) if isinstance(vocab, str) else list(vocab)
        index = {t: i for i, t in enumerate(tokens)}
        special = {}
        for token in (CLS_TOKEN, SEP_TOKEN, PAD_TOKEN, MASK_TOKEN, UNK_TOKEN):
            if token not in index:
                raise ValueError(f"{source} has no special token {token}")
            special[token] = index[token]
        self.vocab = tokens
        self.vocab_size = len(tokens)
        self.lower_case = lower_case
        self.cls_id = special[CLS_TOKEN]
        self.sep_id = special[SEP_TOKEN]
        self.pad_id = special[PAD_TOKEN]
        self.mask_id = special[MASK_TOKEN]
        self.unk_id = special[UNK_TOKEN]
        self._table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(tokens), tf.range(len(tokens), dtype=tf.int64)
            ),
            default_value=-1,
        )
        # Normalization is ours (see `normalize`); tf-text only splits words.
        self._tokenizer = tf_text.BertTokenizer(
            self._table, token_out_type=tf.int64, unknown_token=UNK_TOKEN, lower_case=False
        )

    @property
    def special_ids(self):
        """Ids that masking must never select."""
        return (self.cls_id, self.sep_id, self.pad_id)

    @_plain_graph_code
    def normalize(self, text):
        """Cleans and lower-cases text exactly like the reference BERT tokenizer.

        tf-text's own `lower_case` path case-folds with NFKC (final sigma becomes
        sigma, a double prime two primes) and turns control characters into
        spaces; Google's BERT and HF `tokenizers` instead drop control characters,
        split on Unicode spaces, strip accents after NFD and lower-case without
        compatibility mapping. Doing it here keeps the ids identical to theirs.
        """
        text = tf.strings.regex_replace(text, r"[^\t\n\r\PC]|\x{FFFD}", "")
        # tf-text splits words on ASCII whitespace only.
        text = tf.strings.regex_replace(text, r"\p{Z}", " ")
        if self.lower_case:
            text = tf_text.normalize_utf8(text, "NFD")
            text = tf.strings.regex_replace(text, r"\p{Mn}", "")
            text = tf.strings.lower(text, encoding="utf-8")
        return text

    @_plain_graph_code
    def tokenize(self, text):
        """Strings [B] -> word-piece ids, int32 RaggedTensor [B, (T)]."""
        text = self.normalize(tf.convert_to_tensor(text, dtype=tf.string))
        pieces = self._tokenizer.tokenize(text)  # [B, (words), (pieces)]
        return tf.cast(pieces.merge_dims(-2, -1), tf.int32)

    @_plain_graph_code
    def pack(self, segments, seq_length):
        """Packs 1 or 2 ragged id segments into fixed-length BERT inputs.

        `[CLS] a [SEP]` or `[CLS] a [SEP] b [SEP]`. When too long, the longer
        segment loses tokens from its end first (BERT's longest-first truncation).

        Args:
          segments: list of 1 or 2 int RaggedTensors [B, (T)].
          seq_length: the static output length, including special tokens.

        Returns:
          Dict of int32 [B, seq_length]: `token_ids`, `segment_ids`,
          `padding_mask` (1 = real token).
        """
        if len(segments) not in (1, 2):
            raise ValueError(f"pack takes 1 or 2 segments, got {len(segments)}")
        budget = seq_length - 1 - len(segments)
        if budget < len(segments):
            raise ValueError(
                f"seq_length={seq_length} leaves no room for "
                f"{len(segments)} segment(s) and special tokens"
            )
        segments = _truncate_longest_first([tf.cast(s, tf.int32) for s in segments], budget)
        # Ragged concat then one to_tensor: cheaper to trace than tf-text's
        # combine_segments + pad_model_inputs.
        one = tf.RaggedTensor.from_tensor(tf.ones([segments[0].nrows(), 1], tf.int32))
        ids, types = [one * self.cls_id], [one * 0]
        for segment_id, segment in enumerate(segments):
            ids += [segment, one * self.sep_id]
            types += [tf.ones_like(segment) * segment_id, one * segment_id]
        ids = tf.concat(ids, axis=1)
        shape = [None, seq_length]
        return {
            "token_ids": ids.to_tensor(self.pad_id, shape=shape),
            "segment_ids": tf.concat(types, axis=1).to_tensor(0, shape=shape),
            "padding_mask": tf.ones_like(ids).to_tensor(0, shape=shape),
        }

    @_plain_graph_code
    def __call__(self, text_a, text_b=None, seq_length=128):
        """Strings [B] (and optionally [B] second segments) -> packed inputs."""
        segments = [self.tokenize(text_a)]
        if text_b is not None:
            segments.append(self.tokenize(text_b))
        return self.pack(segments, seq_length)
