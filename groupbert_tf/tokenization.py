"""In-graph WordPiece tokenization and BERT input packing (TensorFlow-specific).

BERT's normalization (`BertTokenizer.normalize`: cleaning, lower-casing, accent
stripping), then tensorflow-text's BERT word splitting (whitespace, punctuation,
CJK characters) and greedy longest-match WordPiece. The vocab is baked into the
graph as a constant lookup table, so the tokenizer runs inside `tf.data` and
`tf.function` and a SavedModel that holds it needs no external file.

This is the project's one text component: serving, fine-tuning data (GLUE,
SQuAD with its answer offsets) and pre-training data all tokenize here, and
`pack_segments` is the one `[CLS] a [SEP] b [SEP]` layout.
"""

import os

import tensorflow as tf
import tensorflow_text as tf_text
# tf-text's word splitter (the first stage of its BertTokenizer, which takes the class as an
# argument): `tokenize_with_offsets` needs the end of each word.
from tensorflow_text.python.ops.bert_tokenizer import BasicTokenizer

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


def _longest_first_lengths(lengths, budget):
    """How many tokens each segment keeps so that each row has at most `budget` in all.

    The same result as Google BERT's `_truncate_seq_pair`: drop one token at a
    time from the longer segment, from the second one on a tie. In closed
    form, segment A keeps min(len_a, max(budget - len_b, ceil(budget / 2)))
    tokens. HF's `longest_first` and tf-text's ShrinkLongestTrimmer can give
    the odd token of an odd budget to the other segment; the trimmer also fails
    on a single segment inside tf.function.
    """
    if len(lengths) == 1:
        return [tf.minimum(lengths[0], budget)]
    len_a, len_b = lengths
    keep_a = tf.minimum(len_a, tf.maximum(budget - len_b, (budget + 1) // 2))
    return [keep_a, tf.minimum(len_b, budget - keep_a)]


def _layout(first, segments, separators, fill, seq_length):
    """`first`, each segment followed by its separator, then `fill` up to seq_length.

    Ragged concat then one to_tensor: cheaper to trace than tf-text's
    combine_segments + pad_model_inputs.
    """
    column = tf.ones([segments[0].nrows(), 1], segments[0].dtype)
    column = tf.RaggedTensor.from_tensor(column)
    parts = [column * first]
    for segment, separator in zip(segments, separators):
        parts += [segment, column * separator]
    return tf.concat(parts, axis=1).to_tensor(fill, shape=[None, seq_length])


def pack_segments(segments, seq_length, cls_id, sep_id, pad_id):
    """Lays out 1 or 2 id segments that fit as `[CLS] a [SEP] (b [SEP])`, padded.

    The layout of every packed BERT input here; truncation is the caller's
    (`BertTokenizer.pack`: longest first; pre-training pairs: a random end).

    Args:
      segments: list of 1 or 2 int32 RaggedTensors [B, (T)], at most
        `seq_length - 1 - len(segments)` tokens per row in all.
      seq_length: the static output length.
      cls_id, sep_id, pad_id: the special token ids.

    Returns:
      Dict of int32 [B, seq_length]: `token_ids`, `segment_ids` (0 on padding),
      `padding_mask` (1 = real token).
    """
    ones = [tf.ones_like(segment) for segment in segments]
    n = len(segments)
    return {
        "token_ids": _layout(cls_id, segments, [sep_id] * n, pad_id, seq_length),
        "segment_ids": _layout(0, [one * i for i, one in enumerate(ones)], range(n), 0,
                               seq_length),
        "padding_mask": _layout(1, ones, [1] * n, 0, seq_length),
    }


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
        # tf-text's BertTokenizer in its two stages. Normalization is ours (see `normalize`);
        # tf-text only splits words, then word pieces.
        self._words = BasicTokenizer(lower_case=False)
        self._word_pieces = tf_text.WordpieceTokenizer(
            self._table, token_out_type=tf.int64, unknown_token=UNK_TOKEN
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
        pieces = self._word_pieces.tokenize(self._words.tokenize(text))  # [B, (words), (pieces)]
        return tf.cast(pieces.merge_dims(-2, -1), tf.int32)

    @_plain_graph_code
    def tokenize_with_offsets(self, text):
        """Strings [B] -> word pieces and where they are in the original text.

        `normalize` maps each character on its own, so normalizing character by
        character and joining gives the normalized text with, for each of its
        bytes, the original character it came from; tf-text's offsets into the
        normalized text then map back through that. The ids equal `tokenize`'s.

        Returns:
          `(ids, starts, ends)`: int32 ids and int64 byte offsets [start, end)
          into each (un-normalized) string, RaggedTensors [B, (T)]. Invalid UTF-8
          keeps its bytes: offsets count bytes of the input as given.
        """
        text = tf.convert_to_tensor(text, tf.string)
        _, char_starts = tf.strings.unicode_decode_with_offsets(
            text, "UTF-8", errors="replace")
        char_starts = tf.cast(char_starts, tf.int64)
        # Characters cover their text's bytes back to back: in the texts joined, each one
        # ends where the next starts.
        text_bytes = tf.cast(tf.strings.length(text), tf.int64)
        row_offsets = tf.gather(tf.math.cumsum(text_bytes, exclusive=True),
                                char_starts.value_rowids())
        joined_starts = char_starts.flat_values + row_offsets
        joined_ends = tf.concat([joined_starts, tf.reduce_sum(text_bytes, keepdims=True)], 0)[1:]
        char_ends = char_starts.with_flat_values(joined_ends - row_offsets)
        # The original bytes (not replacement characters), so invalid UTF-8 stays as is.
        chars = tf.strings.substr(tf.strings.reduce_join(text), joined_starts,
                                  joined_ends - joined_starts)
        unique_chars, index = tf.unique(chars)
        normalized = char_starts.with_flat_values(tf.gather(self.normalize(unique_chars), index))
        norm_ends = tf.math.cumsum(tf.cast(tf.strings.length(normalized), tf.int64), axis=1)
        words, word_starts, word_ends = self._words.tokenize_with_offsets(
            tf.strings.reduce_join(normalized, axis=1))
        ids, starts, ends = self._word_pieces.tokenize_with_offsets(words)
        # Offsets in the text; the last piece of a word ends with the word (tf-text ends the
        # [UNK] of a word over `max_bytes_per_word` 5 bytes after its start).
        starts = starts + word_starts[:, :, None]
        ends = ends + word_starts[:, :, None]
        pieces = ids.values.row_lengths()
        last = tf.ragged.range(pieces) == pieces[:, None] - 1
        ends = ends.with_flat_values(tf.where(
            last.flat_values, tf.repeat(word_ends.flat_values, pieces), ends.flat_values))
        dense_ends = norm_ends.to_tensor(default_value=tf.int64.max)
        last_char = tf.maximum(char_starts.row_lengths() - 1, 0)[:, None]

        def to_original(norm_offsets, bounds):
            # Index of the character whose normalized bytes hold each offset.
            norm_offsets = tf.cast(norm_offsets.merge_dims(-2, -1), tf.int64)
            index = tf.searchsorted(dense_ends, norm_offsets.to_tensor(), side="right")
            index = tf.minimum(tf.cast(index, tf.int64), last_char)
            picked = tf.gather(bounds.to_tensor(default_value=0), index, batch_dims=1)
            return tf.RaggedTensor.from_tensor(picked, lengths=norm_offsets.row_lengths())

        return (tf.cast(ids.merge_dims(-2, -1), tf.int32), to_original(starts, char_starts),
                to_original(ends - 1, char_ends))

    @_plain_graph_code
    def pack(self, segments, seq_length, offsets=None):
        """Packs 1 or 2 ragged id segments into fixed-length BERT inputs.

        `[CLS] a [SEP]` or `[CLS] a [SEP] b [SEP]` (`pack_segments`). When too
        long, the longer segment loses tokens from its end first (BERT's
        longest-first truncation); offsets are cut with their tokens.

        Args:
          segments: list of 1 or 2 int RaggedTensors [B, (T)].
          seq_length: the static output length, including special tokens.
          offsets: optional, per segment, its `(starts, ends)` from
            `tokenize_with_offsets`.

        Returns:
          Dict of int32 [B, seq_length]: `token_ids`, `segment_ids`,
          `padding_mask` (1 = real token); with `offsets` also int64
          `token_start_offsets`, `token_end_offsets` [B, seq_length]: the byte
          offsets of each token in the text of its segment, -1 on [CLS], [SEP]
          and padding.
        """
        if len(segments) not in (1, 2):
            raise ValueError(f"pack takes 1 or 2 segments, got {len(segments)}")
        budget = seq_length - 1 - len(segments)
        if budget < len(segments):
            raise ValueError(
                f"seq_length={seq_length} leaves no room for "
                f"{len(segments)} segment(s) and special tokens"
            )
        keep = _longest_first_lengths([s.row_lengths() for s in segments], budget)
        packed = pack_segments(
            [_keep_first(tf.cast(s, tf.int32), k) for s, k in zip(segments, keep)],
            seq_length, self.cls_id, self.sep_id, self.pad_id)
        if offsets is not None:
            for index, name in enumerate(("token_start_offsets", "token_end_offsets")):
                kept = [_keep_first(tf.cast(o[index], tf.int64), k) for o, k in zip(offsets, keep)]
                packed[name] = _layout(-1, kept, [-1] * len(kept), -1, seq_length)
        return packed

    @_plain_graph_code
    def __call__(self, text_a, text_b=None, seq_length=128):
        """Strings [B] (and optionally [B] second segments) -> packed inputs."""
        segments = [self.tokenize(text_a)]
        if text_b is not None:
            segments.append(self.tokenize(text_b))
        return self.pack(segments, seq_length)
