"""BERT's embeddings: word + learned absolute position + segment, then LayerNorm and dropout."""

import keras
from keras import ops

from groupbert_tf.layers.initializers import truncated_normal


def packed_position_ids(sequence_ids):
    """Position ids [B, S] that restart at 0 at each sequence of a packed row.

    `sequence_ids` numbers the sequences 1, 2, ... in row order (0 = padding): a token's
    position is its index minus the number of real tokens of earlier sequences. Padding
    keeps its index, as in an unpacked row.
    """
    index = ops.arange(ops.shape(sequence_ids)[1], dtype=sequence_ids.dtype)
    earlier = ops.logical_and(sequence_ids[:, None, :] > 0,
                              sequence_ids[:, None, :] < sequence_ids[:, :, None])
    return index[None] - ops.sum(ops.cast(earlier, sequence_ids.dtype), axis=-1)


@keras.saving.register_keras_serializable(package="groupbert_tf")
class BertEmbeddings(keras.layers.Layer):
    """Sum of the three embeddings, normalised. `word_embeddings` is the table the MLM
    decoder is tied to. With packed rows, `sequence_ids` restarts the positions at each
    sequence (see `packed_position_ids`)."""

    def __init__(self, vocab_size, hidden_size, max_position_embeddings=512, type_vocab_size=2,
                 layer_norm_epsilon=1e-3, hidden_dropout=0.0, initializer_range=0.02, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.layer_norm_epsilon = layer_norm_epsilon
        self.hidden_dropout = hidden_dropout
        self.initializer_range = initializer_range

    def build(self, input_shape):
        init = truncated_normal(self.initializer_range)
        self.word_embeddings = keras.layers.Embedding(
            self.vocab_size, self.hidden_size, embeddings_initializer=init,
            name="word_embeddings", dtype=self.dtype_policy)
        self.word_embeddings.build(input_shape)
        self.position_embeddings = self.add_weight(
            name="position_embeddings", shape=(self.max_position_embeddings, self.hidden_size),
            initializer=init)
        self.segment_embeddings = keras.layers.Embedding(
            self.type_vocab_size, self.hidden_size, embeddings_initializer=init,
            name="segment_embeddings", dtype=self.dtype_policy)
        self.segment_embeddings.build(input_shape)
        self.layer_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, name="layer_norm", dtype="float32")
        self.layer_norm.build((*input_shape, self.hidden_size))
        self.dropout = keras.layers.Dropout(self.hidden_dropout, dtype=self.dtype_policy)

    def call(self, token_ids, segment_ids, training=None, sequence_ids=None):
        if sequence_ids is None:
            sequence_length = ops.shape(token_ids)[1]
            positions = self.position_embeddings[:sequence_length][None]
        else:
            positions = ops.take(self.position_embeddings, packed_position_ids(sequence_ids),
                                 axis=0)
        embedded = (self.word_embeddings(token_ids) + self.segment_embeddings(segment_ids)
                    + ops.cast(positions, self.compute_dtype))
        return self.dropout(self.layer_norm(embedded), training=training)

    def compute_output_shape(self, input_shape):
        return (*input_shape, self.hidden_size)

    def get_config(self):
        return {
            **super().get_config(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "max_position_embeddings": self.max_position_embeddings,
            "type_vocab_size": self.type_vocab_size,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "hidden_dropout": self.hidden_dropout,
            "initializer_range": self.initializer_range,
        }
