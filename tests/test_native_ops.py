"""TensorFlow's native grouped convolution (groupbert_tf.native_ops) against the portable
keras.ops form: same outputs and gradients, chosen outside XLA only, and packed rows kept
apart exactly as the tap-mask form keeps them."""

import numpy as np
import pytest
import tensorflow as tf

from groupbert_tf.layers.convolution_module import (ConvolutionModule, conv_tap_mask,
                                                     grouped_conv1d)
from groupbert_tf.native_ops import has_native_grouped_conv1d, native_grouped_conv1d


def _random(shape, seed, dtype=tf.float32):
    return tf.cast(tf.random.stateless_normal(shape, (seed, 0)), dtype)


def _conv_and_gradients(conv, x, kernel):
    with tf.GradientTape() as tape:
        tape.watch([x, kernel])
        y = conv(x, kernel)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * tf.range(1.0, 1.0 + y.shape[-1]))
    return [y, *tape.gradient(loss, [x, kernel])]


@pytest.mark.parametrize("channels, kernel_size, group_in", [(64, 7, 16), (48, 3, 8)])
def test_native_equals_portable_with_gradients(channels, kernel_size, group_in):
    groups = channels // group_in
    x, kernel = _random((3, 13, channels), 1), _random((kernel_size, group_in, channels), 2)
    native = _conv_and_gradients(native_grouped_conv1d, x, kernel)
    portable = _conv_and_gradients(lambda a, k: grouped_conv1d(a, k, groups), x, kernel)
    for got, expected in zip(native, portable):
        # float32 sums of up to 112 products in another order: relative to the largest value.
        scale = np.abs(expected.numpy()).max()
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-6 * scale)


def test_native_bfloat16_within_bfloat16_rounding_of_float32():
    x, kernel = _random((2, 16, 64), 3), _random((7, 16, 64), 4) * 0.1
    expected = grouped_conv1d(x, kernel, 4).numpy()
    got = native_grouped_conv1d(tf.cast(x, tf.bfloat16), tf.cast(kernel, tf.bfloat16))
    assert got.dtype == tf.bfloat16
    # Inputs rounded to 8 bits (relative 2^-8 each), 112 products summed in float32.
    scale = np.abs(expected).max()
    np.testing.assert_allclose(tf.cast(got, tf.float32).numpy(), expected, atol=2e-2 * scale)


def test_native_only_outside_xla():
    seen = {}

    def probe():
        seen[tf.inside_function()] = has_native_grouped_conv1d()
        return tf.constant(0)

    assert has_native_grouped_conv1d()  # Eager, TensorFlow with oneDNN.
    tf.function(probe)()
    assert seen == {True: True}
    tf.function(probe, jit_compile=True)()
    assert seen[True] is False


@pytest.mark.parametrize("kernel_size", [7, 3])
def test_packed_native_equals_tap_mask_form(kernel_size):
    """Sequences of 1, 2 and more tokens side by side, and padding: the native path (one
    convolution per class of sequence index) equals the XLA path (taps masked one by one)
    on every real token, forward and backward."""
    layer = ConvolutionModule(64, kernel_size=kernel_size, group_size=16)
    x = _random((3, 20, 64), 5)
    sequence_ids = tf.constant([[1] * 5 + [2] + [3] * 2 + [4] * 6 + [5] * 3 + [0] * 3,
                                [1] * 20,
                                list(range(1, 11)) + [0] * 10])
    padding_mask = tf.cast(sequence_ids > 0, tf.int32)
    layer(x, padding_mask)
    real = tf.cast(sequence_ids > 0, tf.float32)[:, :, None]

    def run(jit_compile):
        @tf.function(jit_compile=jit_compile)
        def step():
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x, padding_mask, sequence_ids=sequence_ids) * real
                loss = tf.reduce_sum(y * y)
            return [y, *tape.gradient(loss, [x, layer.conv_kernel])]
        return step()

    for got, expected in zip(run(False), run(True)):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_packed_native_equals_each_sequence_alone():
    """The independent check: each packed sequence convolved on its own row (zero padding
    only) gives the packed row's values at that sequence's positions."""
    x = _random((1, 12, 32), 6)
    kernel = _random((7, 16, 32), 7)
    sequence_ids = tf.constant([[1, 1, 1, 2, 3, 3, 3, 3, 3, 4, 4, 0]])
    layer = ConvolutionModule(32, kernel_size=7, group_size=16)
    layer.build((None, None, 32))
    packed = layer._grouped_conv(x, kernel, sequence_ids)[0].numpy()
    for index in range(1, 5):
        positions = np.flatnonzero(sequence_ids.numpy()[0] == index)
        alone = grouped_conv1d(tf.gather(x, positions, axis=1), kernel, 2)[0].numpy()
        np.testing.assert_allclose(packed[positions], alone, rtol=1e-5, atol=1e-5)
    tap_mask = conv_tap_mask(sequence_ids, 7)
    real = slice(0, 11)  # Padding outputs differ (the module zeroes padded inputs first).
    np.testing.assert_allclose(packed[real],
                               grouped_conv1d(x, kernel, 2, tap_mask)[0].numpy()[real],
                               rtol=1e-5, atol=1e-5)


def test_float16_on_cpu_keeps_the_portable_form():
    """oneDNN has no float16 grouped-convolution gradient on CPU: the layer must not pick it."""
    assert has_native_grouped_conv1d("bfloat16")
    assert not has_native_grouped_conv1d("float16")
