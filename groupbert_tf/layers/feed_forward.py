"""GroupBERT's grouped feed-forward module (GFFN); with one group it is BERT's FFN."""

import keras

from groupbert_tf.layers.activations import gelu
from groupbert_tf.layers.grouped_dense import GroupedDense
from groupbert_tf.layers.initializers import truncated_normal


@keras.saving.register_keras_serializable(package="groupbert_tf")
class GroupedFeedForward(keras.layers.Layer):
    """Dense N->I + GELU, grouped I->N down-projection, then a dense N->N mixer.

    The grouped down-projection saves (1 - 1/G) of its FLOPs; the mixer restores
    communication between groups. With `groups=1` there is no mixer and this is exactly
    BERT's dense FFN.
    """

    def __init__(self, hidden_size, intermediate_size, groups=4, gelu_approximate=True,
                 initializer_range=0.02, **kwargs):
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.groups = groups
        self.gelu_approximate = gelu_approximate
        self.initializer_range = initializer_range

    def build(self, input_shape):
        init = truncated_normal(self.initializer_range)
        self.intermediate = keras.layers.Dense(self.intermediate_size, kernel_initializer=init,
                                               name="intermediate", dtype=self.dtype_policy)
        self.intermediate.build(input_shape)
        intermediate_shape = (*input_shape[:-1], self.intermediate_size)
        if self.groups > 1:
            # The reference initialises this bias like a kernel (truncated normal).
            self.output_projection = GroupedDense(
                self.hidden_size, self.groups, kernel_initializer=init,
                bias_initializer=truncated_normal(self.initializer_range), name="output",
                dtype=self.dtype_policy)
            self.mixer = keras.layers.Dense(self.hidden_size, kernel_initializer=init,
                                            name="mixer", dtype=self.dtype_policy)
            self.mixer.build((*input_shape[:-1], self.hidden_size))
        else:
            self.output_projection = keras.layers.Dense(self.hidden_size, kernel_initializer=init,
                                                        name="output", dtype=self.dtype_policy)
            self.mixer = None
        self.output_projection.build(intermediate_shape)

    def call(self, inputs):
        hidden = gelu(self.intermediate(inputs), approximate=self.gelu_approximate)
        hidden = self.output_projection(hidden)
        return self.mixer(hidden) if self.mixer is not None else hidden

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "groups": self.groups,
            "gelu_approximate": self.gelu_approximate,
            "initializer_range": self.initializer_range,
        }
