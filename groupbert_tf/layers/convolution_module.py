"""GroupBERT's convolution module: GLU, masked grouped 1-D convolution, LayerNorm, Swish, dense."""

import keras
from keras import ops

from groupbert_tf.layers.initializers import truncated_normal
from groupbert_tf.native_ops import has_native_grouped_conv1d, native_grouped_conv1d


def conv_tap_mask(sequence_ids, kernel_size):
    """[B, S, K] float mask, 1 where tap k of position t reads a position of t's sequence.

    With packed rows (`sequence_ids`: 0 on padding, j on the j-th sequence) this keeps the
    kernel from reading across a sequence boundary, exactly as if each sequence had its own
    zero padding. Taps past the row's ends read the convolution's zero padding either way.
    """
    pad = (kernel_size - 1) // 2
    sequence_length = ops.shape(sequence_ids)[1]
    padded = ops.pad(sequence_ids, ((0, 0), (pad, kernel_size - 1 - pad)), constant_values=-1)
    taps = ops.stack([padded[:, k:k + sequence_length] for k in range(kernel_size)], axis=2)
    return ops.cast(ops.equal(taps, sequence_ids[:, :, None]), "float32")


def grouped_conv1d(inputs, kernel, groups, tap_mask=None):
    """'Same'-padded, stride-1 grouped 1-D convolution as one batched matmul over groups.

    The portable form (keras.ops only), used inside XLA and on other backends; TensorFlow
    outside XLA runs its native grouped convolution instead (groupbert_tf/native_ops.py).
    `kernel` has the layout of Keras' grouped `Conv1D` kernel, [K, C/groups, C]. The padded
    input is put group-major once, the K shifted views are stacked next to the within-group
    channels, and a [G, B*S, K*C/G] x [G, K*C/G, C/G] matmul does the whole convolution. Of
    eight forms measured under XLA on 2 CPU cores (benchmarks/grouped_conv.py,
    docs/benchmarks.md), this was fastest: 0.73x the time of one einsum over stacked taps ('bskgi,kigo->bsgo'), 0.65x a
    sum of K per-tap einsums, and ~90x faster than Keras' grouped `Conv1D`, whose kernel gradient
    is a slow path on CPU. `tap_mask` ([B, S, K], see `conv_tap_mask`) zeroes single taps.
    """
    kernel_size, group_in, channels = kernel.shape
    group_out = channels // groups
    batch, sequence_length = ops.shape(inputs)[0], ops.shape(inputs)[1]
    pad = (kernel_size - 1) // 2
    padded = ops.pad(inputs, ((0, 0), (pad, kernel_size - 1 - pad), (0, 0)))
    padded = ops.reshape(padded, (batch, -1, groups, group_in))
    padded = ops.transpose(padded, (2, 0, 1, 3))  # [G, B, S + K - 1, C/G]
    taps = ops.stack([padded[:, :, k:k + sequence_length] for k in range(kernel_size)], axis=3)
    if tap_mask is not None:
        taps = taps * ops.cast(tap_mask, taps.dtype)[None, :, :, :, None]
    taps = ops.reshape(taps, (groups, -1, kernel_size * group_in))  # [G, B*S, K*C/G]
    grouped_kernel = ops.reshape(kernel, (kernel_size, group_in, groups, group_out))
    grouped_kernel = ops.reshape(ops.transpose(grouped_kernel, (2, 0, 1, 3)),
                                 (groups, kernel_size * group_in, group_out))
    outputs = ops.matmul(taps, grouped_kernel)  # [G, B*S, C/G]
    outputs = ops.reshape(outputs, (groups, batch, sequence_length, group_out))
    return ops.reshape(ops.transpose(outputs, (1, 2, 0, 3)), ops.shape(inputs))


@keras.saving.register_keras_serializable(package="groupbert_tf")
class ConvolutionModule(keras.layers.Layer):
    """GLU -> padding mask -> grouped conv (no bias) -> LayerNorm -> Swish -> dense.

    Multiplying by the padding mask before the convolution keeps padded positions from
    leaking into real tokens through the kernel's receptive field. With packed rows,
    `sequence_ids` also keeps the taps inside each sequence. No dropout inside.
    """

    def __init__(self, hidden_size, kernel_size=7, group_size=16, layer_norm_epsilon=1e-3,
                 initializer_range=0.02, **kwargs):
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.kernel_size = kernel_size
        self.group_size = group_size
        self.layer_norm_epsilon = layer_norm_epsilon
        self.initializer_range = initializer_range

    @property
    def groups(self):
        return self.hidden_size // self.group_size

    def build(self, input_shape):
        init = truncated_normal(self.initializer_range)
        # One N->2N projection holds both GLU halves: [values | gates].
        self.glu = keras.layers.Dense(2 * self.hidden_size, kernel_initializer=init, name="glu",
                                      dtype=self.dtype_policy)
        self.glu.build(input_shape)
        self.conv_kernel = self.add_weight(
            name="conv_kernel", shape=(self.kernel_size, self.group_size, self.hidden_size),
            initializer="glorot_uniform")
        self.conv_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, name="conv_norm", dtype="float32")
        self.conv_norm.build(input_shape)
        self.output_dense = keras.layers.Dense(self.hidden_size, kernel_initializer=init,
                                               name="output", dtype=self.dtype_policy)
        self.output_dense.build(input_shape)

    def call(self, inputs, padding_mask, sequence_ids=None):
        values, gates = ops.split(self.glu(inputs), 2, axis=-1)
        hidden = values * ops.sigmoid(gates)
        hidden = hidden * ops.cast(padding_mask, hidden.dtype)[:, :, None]
        hidden = self._grouped_conv(hidden, ops.cast(self.conv_kernel, hidden.dtype), sequence_ids)
        hidden = ops.silu(self.conv_norm(hidden))
        return self.output_dense(hidden)

    def _grouped_conv(self, hidden, kernel, sequence_ids):
        """The backend's native grouped convolution where it is the fast path, else the
        portable form; both equal per-sequence zero padding on packed rows."""
        if not has_native_grouped_conv1d(hidden.dtype):
            tap_mask = (None if sequence_ids is None
                        else conv_tap_mask(sequence_ids, self.kernel_size))
            return grouped_conv1d(hidden, kernel, self.groups, tap_mask)
        if sequence_ids is None:
            return native_grouped_conv1d(hidden, kernel)
        # A native convolution knows no sequence boundaries. Its taps reach r = (K-1)/2
        # positions, so sequences whose indices differ by r+1 or more are out of each other's
        # reach (the r sequences between them hold at least r tokens). One convolution per
        # class of sequence index mod r+1, of the inputs of that class, kept on that class,
        # is therefore exactly each sequence convolved with its own zero padding.
        classes = (self.kernel_size - 1) // 2 + 1
        outputs = 0
        for index in range(classes):
            in_class = ops.logical_and(ops.equal(sequence_ids % classes, index),
                                       ops.greater(sequence_ids, 0))
            in_class = ops.cast(in_class, hidden.dtype)[:, :, None]
            outputs = outputs + in_class * native_grouped_conv1d(hidden * in_class, kernel)
        return outputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_size": self.hidden_size,
            "kernel_size": self.kernel_size,
            "group_size": self.group_size,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "initializer_range": self.initializer_range,
        }
