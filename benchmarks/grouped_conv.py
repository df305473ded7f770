"""Grouped 1-D convolution formulations, forward + backward under XLA, A/B interleaved.

GroupBERT's convolution module runs a 'same'-padded, stride-1 grouped conv (kernel K=7,
group size g=16, so N/g groups) over [batch, seq, N]. This compares formulations of that op
(output plus gradients w.r.t. input and kernel, for a random output cotangent), each in a
`tf.function(jit_compile=True)`:

  stacked          stack the K shifted views, one einsum('bskgi,kigo->bsgo') (the library's
                   first form)
  stacked_gmajor   same, but taps stacked next to the in-group axis: einsum('bsgki,kigo->bsgo')
  per_tap          sum over k of einsum('bsgi,igo->bsgo') on the k-th shifted slice
  group_batched    the library's `grouped_conv1d` (fastest here, so adopted): group-major
                   layout, [G, B*S, K*g] @ [G, K*g, g] batched matmul
  stacked_custom_grad  `stacked` forward; hand-written backward: dx = the same op on the
                   cotangent with the flipped, in/out-transposed kernel, dW = one einsum
  block_diagonal   taps [B*S, K*N] @ block-diagonal dense kernel [K*N, N] (N/g times the FLOPs)
  depthwise        tf.nn.depthwise_conv2d with channel multiplier g, then a sum over the group
  keras_conv1d     `keras.layers.Conv1D(groups=N/g, padding='same', use_bias=False)` (reference)

All forms share Keras' Conv1D kernel layout [K, g, N]. Every form is checked against
`keras_conv1d` before timing.

    python -m benchmarks.grouped_conv --batch_size 32 --seq_length 128 --hidden_size 256
"""

import argparse
import datetime
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from benchmarks.common import (interleaved_timings, machine_description, markdown_table,
                               matmul_gflops, summarize)
from groupbert_tf.layers.convolution_module import grouped_conv1d


def _pad(inputs, kernel_size):
    pad = (kernel_size - 1) // 2
    return tf.pad(inputs, ((0, 0), (pad, kernel_size - 1 - pad), (0, 0)))


def stacked(inputs, kernel, groups):
    kernel_size, group_in, channels = kernel.shape
    batch, seq = tf.shape(inputs)[0], tf.shape(inputs)[1]
    padded = _pad(inputs, kernel_size)
    taps = tf.stack([padded[:, k:k + seq] for k in range(kernel_size)], axis=2)  # b s k n
    taps = tf.reshape(taps, (batch, seq, kernel_size, groups, group_in))
    grouped_kernel = tf.reshape(kernel, (kernel_size, group_in, groups, channels // groups))
    outputs = tf.einsum("bskgi,kigo->bsgo", taps, grouped_kernel)
    return tf.reshape(outputs, tf.shape(inputs))


def stacked_gmajor(inputs, kernel, groups):
    kernel_size, group_in, channels = kernel.shape
    batch, seq = tf.shape(inputs)[0], tf.shape(inputs)[1]
    padded = _pad(inputs, kernel_size)
    padded = tf.reshape(padded, (batch, -1, groups, group_in))
    taps = tf.stack([padded[:, k:k + seq] for k in range(kernel_size)], axis=3)  # b s g k i
    grouped_kernel = tf.reshape(kernel, (kernel_size, group_in, groups, channels // groups))
    outputs = tf.einsum("bsgki,kigo->bsgo", taps, grouped_kernel)
    return tf.reshape(outputs, tf.shape(inputs))


def per_tap(inputs, kernel, groups):
    kernel_size, group_in, channels = kernel.shape
    batch, seq = tf.shape(inputs)[0], tf.shape(inputs)[1]
    padded = tf.reshape(_pad(inputs, kernel_size), (batch, -1, groups, group_in))
    grouped_kernel = tf.reshape(kernel, (kernel_size, group_in, groups, channels // groups))
    outputs = tf.add_n([tf.einsum("bsgi,igo->bsgo", padded[:, k:k + seq], grouped_kernel[k])
                        for k in range(kernel_size)])
    return tf.reshape(outputs, tf.shape(inputs))


def group_batched(inputs, kernel, groups):
    return grouped_conv1d(inputs, kernel, groups)


def _transposed_kernel(kernel, groups):
    """Kernel of the input-gradient conv: taps reversed, in/out swapped within each group."""
    kernel_size, group_in, channels = kernel.shape
    group_out = channels // groups
    grouped = tf.reshape(kernel, (kernel_size, group_in, groups, group_out))
    flipped = tf.transpose(tf.reverse(grouped, axis=[0]), (0, 3, 2, 1))  # k o g i
    return tf.reshape(flipped, (kernel_size, group_out, groups * group_in))


def stacked_custom_grad(inputs, kernel, groups):
    kernel_size, group_in, channels = kernel.shape

    @tf.custom_gradient
    def conv(x, w):
        seq = tf.shape(x)[1]
        padded = _pad(x, kernel_size)
        taps = tf.stack([padded[:, k:k + seq] for k in range(kernel_size)], axis=2)
        taps = tf.reshape(taps, (tf.shape(x)[0], seq, kernel_size, groups, group_in))
        w4 = tf.reshape(w, (kernel_size, group_in, groups, channels // groups))
        y = tf.reshape(tf.einsum("bskgi,kigo->bsgo", taps, w4), tf.shape(x))

        def grad(dy):
            dx = grouped_conv1d(dy, _transposed_kernel(w, groups), groups)
            dy4 = tf.reshape(dy, (tf.shape(dy)[0], seq, groups, channels // groups))
            dw = tf.reshape(tf.einsum("bskgi,bsgo->kigo", taps, dy4), tf.shape(w))
            return dx, dw

        return y, grad

    return conv(inputs, kernel)


def block_diagonal(inputs, kernel, groups):
    kernel_size, group_in, channels = kernel.shape
    group_out = channels // groups
    seq = tf.shape(inputs)[1]
    padded = _pad(inputs, kernel_size)
    taps = tf.concat([padded[:, k:k + seq] for k in range(kernel_size)], axis=-1)  # b s (k c)
    grouped = tf.reshape(kernel, (kernel_size, group_in, groups, group_out))
    dense = tf.einsum("kigo,gh->kgiho", grouped, tf.eye(groups, dtype=kernel.dtype))
    dense = tf.reshape(dense, (kernel_size * channels, channels))
    return tf.einsum("bsc,cd->bsd", taps, dense)


def depthwise(inputs, kernel, groups):
    kernel_size, group_in, channels = kernel.shape
    group_out = channels // groups
    batch, seq = tf.shape(inputs)[0], tf.shape(inputs)[1]
    grouped = tf.reshape(kernel, (kernel_size, group_in, groups, group_out))
    # filter[k, g*group_in + i, o] = kernel[k, i, g*group_out + o]
    filters = tf.reshape(tf.transpose(grouped, (0, 2, 1, 3)),
                         (1, kernel_size, channels, group_out))
    outputs = tf.nn.depthwise_conv2d(inputs[:, None], filters, strides=(1, 1, 1, 1),
                                     padding="SAME")  # b 1 s (g i o)
    outputs = tf.reshape(outputs, (batch, seq, groups, group_in, group_out))
    return tf.reshape(tf.reduce_sum(outputs, axis=3), tf.shape(inputs))


def make_keras_conv1d(kernel, groups):
    kernel_size, _, channels = kernel.shape
    layer = keras.layers.Conv1D(channels, kernel_size, padding="same", groups=groups,
                                use_bias=False)
    layer.build((None, None, channels))

    def apply(inputs, kernel_value, groups_):
        # Run the layer's own op with the given kernel (so the kernel gradient flows).
        return layer.convolution_op(inputs, kernel_value)

    return apply


FORMS = {
    "stacked": stacked,
    "stacked_gmajor": stacked_gmajor,
    "per_tap": per_tap,
    "group_batched": group_batched,
    "stacked_custom_grad": stacked_custom_grad,
    "block_diagonal": block_diagonal,
    "depthwise": depthwise,
}


# Timed separately with fewer rounds (each interleaved with `stacked`).
SLOW = {"keras_conv1d", "depthwise", "block_diagonal"}


def log(message):
    print(f"[grouped_conv] {message}", file=sys.stderr, flush=True)


def conv_flops(batch, seq, hidden, kernel_size, group_size):
    """Forward FLOPs of the grouped conv (2 per multiply-add), zero padding included."""
    return 2 * batch * seq * kernel_size * group_size * hidden


def build_step(form, inputs, kernel, cotangent, groups):
    """jit-compiled forward + backward: returns (output, d input, d kernel)."""

    @tf.function(jit_compile=True)
    def step():
        with tf.GradientTape() as tape:
            tape.watch([inputs, kernel])
            outputs = form(inputs, kernel, groups)
            loss = tf.reduce_sum(outputs * cotangent)
        d_inputs, d_kernel = tape.gradient(loss, [inputs, kernel])
        return outputs, d_inputs, d_kernel

    return step


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seq_length", type=int, default=128)
    parser.add_argument("--hidden_size", type=int, default=256)
    parser.add_argument("--kernel_size", type=int, default=7)
    parser.add_argument("--group_size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--slow_repeats", type=int, default=5,
                        help="rounds for the slow forms: " + ", ".join(sorted(SLOW)))
    parser.add_argument("--forms", default=",".join([*FORMS, "keras_conv1d"]),
                        help="comma-separated subset of: " + ", ".join([*FORMS, "keras_conv1d"]))
    args = parser.parse_args(argv)

    b, s, n, k, g = (args.batch_size, args.seq_length, args.hidden_size, args.kernel_size,
                     args.group_size)
    groups = n // g
    rng = np.random.default_rng(0)
    inputs = tf.constant(rng.standard_normal((b, s, n)), tf.float32)
    kernel = tf.constant(rng.standard_normal((k, g, n)) / np.sqrt(k * g), tf.float32)
    cotangent = tf.constant(rng.standard_normal((b, s, n)), tf.float32)

    names = [name.strip() for name in args.forms.split(",") if name.strip()]
    forms = {name: (FORMS[name] if name in FORMS else make_keras_conv1d(kernel, groups))
             for name in names}
    steps = {name: build_step(form, inputs, kernel, cotangent, groups)
             for name, form in forms.items()}

    # Numerical check of every form against Keras' Conv1D (output and both gradients).
    reference = build_step(make_keras_conv1d(kernel, groups), inputs, kernel, cotangent, groups)
    start = time.perf_counter()
    reference = reference()
    log(f"keras_conv1d reference: first call {time.perf_counter() - start:.1f} s")
    errors = {}
    for name, step in steps.items():
        start = time.perf_counter()
        got = step()
        log(f"{name}: first call (compile + run) {time.perf_counter() - start:.1f} s")
        errors[name] = max(
            float(np.max(np.abs(a.numpy() - r.numpy())) / (np.max(np.abs(r.numpy())) + 1e-30))
            for a, r in zip(got, reference))
        if errors[name] > 1e-4:
            log(f"WARNING: {name} disagrees with keras Conv1D: rel. error {errors[name]:.2e}")

    peak = matmul_gflops()
    fast = {name: step for name, step in steps.items() if name not in SLOW}
    times = interleaved_timings(fast, repeats=args.repeats, warmup=1)
    log("fast forms timed")
    slow = [name for name in steps if name in SLOW]
    if slow:
        # Slow forms: fewer rounds, interleaved with `stacked` as the anchor of their ratio.
        anchor = {"stacked": build_step(stacked, inputs, kernel, cotangent, groups)}
        slow_times = interleaved_timings({**anchor, **{n: steps[n] for n in slow}},
                                         repeats=args.slow_repeats, warmup=1)
        for name in slow:
            times[name] = slow_times[name]
        anchor_median = summarize({"a": slow_times["stacked"]})["a"]["median"]
    peak_after = matmul_gflops()
    stats = summarize(times)
    flops = 3 * conv_flops(b, s, n, k, g)  # forward + input grad + kernel grad
    base = stats["stacked"]["median"] if "stacked" in stats else None

    def ratio(name):
        if name in SLOW:
            return stats[name]["median"] / anchor_median
        return stats[name]["median"] / base if base else float("nan")

    print(f"# grouped conv fwd+bwd, B={b} S={s} N={n} K={k} g={g} ({groups} groups)")
    print(f"# {machine_description()}; {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"# 2048^3 float32 matmul under XLA: {peak:.1f} GFLOP/s before, {peak_after:.1f} after")
    print(f"# useful FLOPs per step (3 x 2*B*S*K*g*N): {flops / 1e9:.3f} G; "
          f"{args.repeats} interleaved rounds, medians")
    rows = []
    for name in names:
        st = stats[name]
        rows.append([f"`{name}`", f"{st['median'] * 1e3:.2f}",
                     f"{st['q1'] * 1e3:.2f}-{st['q3'] * 1e3:.2f}",
                     f"{ratio(name):.2f}",
                     f"{flops / st['median'] / 1e9:.1f}", f"{errors[name]:.1e}"])
    print(markdown_table(["form", "median ms", "IQR ms", "x stacked", "useful GFLOP/s",
                          "max rel. err vs Conv1D"], rows))


if __name__ == "__main__":
    main()
