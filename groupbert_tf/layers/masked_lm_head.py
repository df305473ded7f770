"""BERT's masked-language-model head with the decoder tied to the word embeddings."""

import keras
from keras import ops

from groupbert_tf.layers.activations import gelu
from groupbert_tf.layers.initializers import truncated_normal


@keras.saving.register_keras_serializable(package="groupbert_tf")
class MaskedLMHead(keras.layers.Layer):
    """Gathers the masked positions, then Dense + GELU + LayerNorm and vocabulary logits.

    Only the static `max_predictions_per_seq` positions are transformed, not the whole
    sequence. The decoder is `matmul(h, transpose(word_embeddings))` plus an output bias:
    on CPU this is faster and lighter than an einsum over the vocabulary.
    """

    def __init__(self, token_embedding, layer_norm_epsilon=1e-3, gelu_approximate=True,
                 initializer_range=0.02, **kwargs):
        super().__init__(**kwargs)
        self.token_embedding = token_embedding
        self.layer_norm_epsilon = layer_norm_epsilon
        self.gelu_approximate = gelu_approximate
        self.initializer_range = initializer_range

    def build(self, sequence_output_shape, masked_positions_shape=None):
        # Argument names are `call()`'s plus `_shape`: Keras needs that to build on first call.
        hidden_size = sequence_output_shape[-1]
        self.transform = keras.layers.Dense(
            hidden_size, kernel_initializer=truncated_normal(self.initializer_range),
            name="transform", dtype=self.dtype_policy)
        self.transform.build((None, None, hidden_size))
        self.layer_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, name="layer_norm", dtype="float32")
        self.layer_norm.build((None, None, hidden_size))
        # autocast=False: the bias is added to float32 logits; under mixed precision an
        # autocast read would be bfloat16 and the add would fail.
        self.output_bias = self.add_weight(name="output_bias",
                                           shape=(self.token_embedding.input_dim,),
                                           initializer="zeros", autocast=False)

    def call(self, sequence_output, masked_positions):
        gathered = ops.take_along_axis(
            sequence_output, ops.cast(masked_positions, "int32")[:, :, None], axis=1)
        hidden = gelu(self.transform(gathered), approximate=self.gelu_approximate)
        hidden = ops.cast(self.layer_norm(hidden), self.compute_dtype)
        table = ops.cast(self.token_embedding.embeddings, self.compute_dtype)
        logits = ops.matmul(hidden, ops.transpose(table))
        return ops.cast(logits, "float32") + self.output_bias

    def get_config(self):
        # The tied embedding is wired up by the owning model, not serialised here.
        config = super().get_config()
        config.update(layer_norm_epsilon=self.layer_norm_epsilon,
                      gelu_approximate=self.gelu_approximate,
                      initializer_range=self.initializer_range)
        return config
