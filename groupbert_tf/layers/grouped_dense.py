"""Block-diagonal dense layer: one matmul per group."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="groupbert_tf")
class GroupedDense(keras.layers.Layer):
    """Dense layer with `groups` independent blocks.

    Group g maps input features [g*I/G, (g+1)*I/G) to output features [g*O/G, (g+1)*O/G),
    i.e. the kernel is block-diagonal. It is stored as [G, I/G, O/G] and applied group by
    group, so it costs I*O/G multiply-adds instead of I*O and never materialises zeros.
    """

    def __init__(self, units, groups, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.groups = groups
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def build(self, input_shape):
        in_features = input_shape[-1]
        for name, size in (("input features", in_features), ("units", self.units)):
            if size % self.groups:
                raise ValueError(f"GroupedDense '{self.name}': {name} ({size}) must be divisible "
                                 f"by groups ({self.groups})")
        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.groups, in_features // self.groups, self.units // self.groups),
            initializer=self.kernel_initializer,
        )
        self.bias = (self.add_weight(name="bias", shape=(self.units,),
                                     initializer=self.bias_initializer)
                     if self.use_bias else None)

    def call(self, inputs):
        # One matmul per group on a slice of the features, outputs concatenated. Of the forms
        # measured (docs/throughput.md) this was fastest on oneDNN, in bfloat16 too: an einsum
        # 'ngi,gio->ngo' (or a batched matmul) puts the group axis first and pays for
        # transposes of the wide input. Leading axes are flattened: an einsum or matmul
        # broadcast over them copied the kernel on TensorFlow.
        leading = ops.shape(inputs)[:-1]
        flat = ops.reshape(inputs, (-1, inputs.shape[-1]))
        parts = ops.split(flat, self.groups, axis=-1)
        outputs = ops.concatenate(
            [ops.matmul(part, self.kernel[g]) for g, part in enumerate(parts)], axis=-1)
        outputs = ops.reshape(outputs, (*leading, self.units))
        if self.bias is not None:
            outputs = outputs + self.bias
        return outputs

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "groups": self.groups,
            "use_bias": self.use_bias,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
        }
