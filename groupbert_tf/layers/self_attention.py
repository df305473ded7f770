"""BERT's multi-head scaled dot-product self-attention."""

import math

import keras
from keras import ops

from groupbert_tf.layers.initializers import truncated_normal


@keras.saving.register_keras_serializable(package="groupbert_tf")
class SelfAttention(keras.layers.Layer):
    """Multi-head self-attention with an additive mask on padded keys.

    Scores and softmax run in float32 even under mixed precision. `call(...,
    return_attention_probs=True)` also returns the [B, heads, S, S] probabilities. With
    packed rows, `sequence_ids` [B, S] (0 = padding, j = j-th sequence) keeps each sequence's
    attention inside the sequence.
    """

    def __init__(self, hidden_size, num_heads, attention_dropout=0.0, initializer_range=0.02,
                 **kwargs):
        super().__init__(**kwargs)
        if hidden_size % num_heads:
            raise ValueError(f"SelfAttention: hidden_size ({hidden_size}) must be divisible by "
                             f"num_heads ({num_heads})")
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.attention_dropout = attention_dropout
        self.initializer_range = initializer_range

    def build(self, input_shape):
        init = truncated_normal(self.initializer_range)
        for name in ("query", "key", "value", "output"):
            dense = keras.layers.Dense(self.hidden_size, kernel_initializer=init, name=name,
                                       dtype=self.dtype_policy)
            dense.build(input_shape)
            setattr(self, f"{name}_dense", dense)
        self.dropout = keras.layers.Dropout(self.attention_dropout, dtype=self.dtype_policy)

    def _split_heads(self, x):
        return ops.reshape(x, (*ops.shape(x)[:2], self.num_heads, self.hidden_size // self.num_heads))

    def call(self, inputs, padding_mask, training=None, return_attention_probs=False,
             sequence_ids=None):
        query = self._split_heads(self.query_dense(inputs))
        key = self._split_heads(self.key_dense(inputs))
        value = self._split_heads(self.value_dense(inputs))
        query = query * ops.cast(1.0 / math.sqrt(self.hidden_size // self.num_heads), query.dtype)
        scores = ops.cast(ops.einsum("bqhd,bkhd->bhqk", query, key), "float32")
        if sequence_ids is None:
            key_is_padding = 1.0 - ops.cast(padding_mask, "float32")[:, None, None, :]
        else:
            # Packed rows: a query sees only the real keys of its own sequence.
            same = ops.equal(sequence_ids[:, :, None], sequence_ids[:, None, :])
            visible = ops.logical_and(same, ops.cast(padding_mask, "bool")[:, None, :])
            key_is_padding = 1.0 - ops.cast(visible, "float32")[:, None]
        probs = ops.softmax(scores - 1e9 * key_is_padding, axis=-1)
        dropped = self.dropout(ops.cast(probs, value.dtype), training=training)
        context = ops.einsum("bhqk,bkhd->bqhd", dropped, value)
        outputs = self.output_dense(ops.reshape(context, ops.shape(inputs)))
        return (outputs, probs) if return_attention_probs else outputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_size": self.hidden_size,
            "num_heads": self.num_heads,
            "attention_dropout": self.attention_dropout,
            "initializer_range": self.initializer_range,
        }
