"""Raw text -> encoder inputs for the tasks, as a Keras layer (keras-hub's preprocessor).

TensorFlow-specific: tokenization runs in tf.data with tensorflow-text ops (the in-graph
`tokenization.BertTokenizer`), so a task on any backend can `fit` on strings. The vocabulary
is the layer's asset: `task.save("x.keras")` stores it and `keras.saving.load_model` restores
it.
"""

import os

import keras
import numpy as np
import tensorflow as tf

from groupbert_tf import tokenization

VOCAB_ASSET = "vocab.txt"


@keras.saving.register_keras_serializable(package="groupbert_tf")
class TextPreprocessor(keras.layers.Layer):
    """Strings [B] (or a pair `(texts_a, texts_b)`) -> `token_ids`, `segment_ids`,
    `padding_mask` int32 [B, sequence_length], packed `[CLS] a [SEP] (b [SEP])` with BERT's
    longest-first truncation.

    `call(x, y=None, sample_weight=None)` returns `x` packed, or `(x, y[, sample_weight])`,
    so it maps over a tf.data pipeline of (text, label) batches as it is.

    Args:
      vocabulary: a WordPiece vocab file or a list of tokens (None: set later by
        `set_vocabulary`, as loading a saved model does).
      sequence_length: the packed length, special tokens included.
      lower_case: lower-case and strip accents (uncased vocabularies).
    """

    def __init__(self, vocabulary=None, sequence_length=128, lower_case=True, **kwargs):
        kwargs.setdefault("trainable", False)
        kwargs.setdefault("dtype", "int32")
        super().__init__(**kwargs)
        if sequence_length < 3:
            raise ValueError(f"sequence_length={sequence_length}: needs at least 3 "
                             "([CLS] a [SEP])")
        self.sequence_length = int(sequence_length)
        self.lower_case = lower_case
        self.tokenizer = None
        self.built = True  # No weights: nothing to build.
        if vocabulary is not None:
            self.set_vocabulary(vocabulary)

    def set_vocabulary(self, vocabulary):
        self.tokenizer = tokenization.BertTokenizer(vocabulary, lower_case=self.lower_case)

    @property
    def vocabulary(self):
        return None if self.tokenizer is None else self.tokenizer.vocab

    def __call__(self, x, y=None, sample_weight=None):
        # Not Keras' __call__: that converts inputs to the layer's dtype, and strings are no
        # float or int tensor. Nothing here has weights to build.
        return self.call(x, y, sample_weight)

    def call(self, x, y=None, sample_weight=None):
        if self.tokenizer is None:
            raise ValueError("TextPreprocessor has no vocabulary: pass `vocabulary`")
        # A tuple of two batches is a pair; a list (or array, tensor) is one batch of texts.
        pair = isinstance(x, tuple) and len(x) == 2 and not isinstance(x[0], (str, bytes))
        texts = [tf.convert_to_tensor(text, tf.string) for text in (x if pair else [x])]
        inputs = self.tokenizer(*texts, seq_length=self.sequence_length)
        return keras.utils.pack_x_y_sample_weight(inputs, y, sample_weight)

    def save_assets(self, dir_path):
        with open(os.path.join(dir_path, VOCAB_ASSET), "w", encoding="utf-8") as f:
            f.write("".join(f"{token}\n" for token in self.vocabulary))

    def load_assets(self, dir_path):
        self.set_vocabulary(os.path.join(dir_path, VOCAB_ASSET))

    def get_config(self):
        return {**super().get_config(), "sequence_length": self.sequence_length,
                "lower_case": self.lower_case}


def _is_text(value):
    if isinstance(value, str):
        return False  # One string is not a batch of texts.
    if isinstance(value, (list, np.ndarray)) and len(value):
        return isinstance(np.asarray(value).reshape(-1)[0], (str, bytes))
    if isinstance(value, tf.Tensor):
        return value.dtype == tf.string
    return False


def _is_pair(x):
    return isinstance(x, tuple) and len(x) == 2 and all(_is_text(part) for part in x)


def is_raw_text(x):
    """Whether `x` (what fit / evaluate / predict got) is strings for the preprocessor: a
    list or array of strings, a pair of them, or a tf.data.Dataset whose inputs are strings."""
    if isinstance(x, tf.data.Dataset):
        return any(spec.dtype == tf.string for spec in tf.nest.flatten(x.element_spec))
    return _is_text(x) or _is_pair(x)


def text_dataset(preprocessor, x, y=None, sample_weight=None, batch_size=None, shuffle=False,
                 seed=None):
    """Batches of raw text (and labels) -> a tf.data pipeline of preprocessed batches.

    `x` is a list/array of strings, a pair `(texts_a, texts_b)`, or a tf.data.Dataset of
    `x`, `(x, y)` or `(x, y, sample_weight)` whose `x` is strings (batched or not; unbatched
    ones are batched here by `batch_size`, default 32).
    """
    batch_size = batch_size or 32
    if isinstance(x, tf.data.Dataset):
        if y is not None or sample_weight is not None:
            raise ValueError("with a tf.data.Dataset as x, labels come from the dataset")
        dataset = x
        if all(s.shape.rank == 0 for s in tf.nest.flatten(dataset.element_spec)):
            dataset = dataset.batch(batch_size)
    else:
        texts = tuple(x) if _is_pair(x) else x
        elements = keras.utils.pack_x_y_sample_weight(
            texts, None if y is None else np.asarray(y),
            None if sample_weight is None else np.asarray(sample_weight))
        dataset = tf.data.Dataset.from_tensor_slices(elements)
        if shuffle:
            count = len(texts[0]) if _is_pair(x) else len(texts)
            dataset = dataset.shuffle(count, seed=seed, reshuffle_each_iteration=True)
        dataset = dataset.batch(batch_size)

    def preprocess(*element):
        if len(element) == 1 or (len(element) == 2 and _is_pair_spec(element)):
            return preprocessor(element[0] if len(element) == 1 else tuple(element))
        return preprocessor(*element)

    return dataset.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
        tf.data.AUTOTUNE)


def _is_pair_spec(element):
    """A 2-tuple of string tensors is a text pair, not (text, label)."""
    return all(isinstance(t, tf.Tensor) and t.dtype == tf.string for t in element)
