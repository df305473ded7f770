"""The one seam where model code may use a backend's own kernel: TensorFlow's grouped conv.

TensorFlow runs a grouped `conv1d` (a [K, C/groups, C] filter) on oneDNN's grouped
convolution on x86 CPUs (cuDNN's on GPUs) when it is not XLA-compiled. There it is the fast
path: fused into one primitive, forward and backward, in float32 and bfloat16, it took 1/20 of
the time of the keras.ops batched-matmul form on 2 CPU cores (docs/throughput.md). Inside an
XLA program TensorFlow's grouped convolution has a slow kernel gradient on CPU, and other
backends keep the portable form: `has_native_grouped_conv1d` says which applies.

Keras' own `ops.conv` cannot be used for this: on TensorFlow it wraps every grouped
convolution in a forced-XLA function.
"""

import keras


def _in_xla_context(tf):
    # Public TensorFlow has no predicate for "being traced into an XLA program"; this is the
    # one tf.function(jit_compile=True) itself sets while tracing.
    from tensorflow.python.ops import control_flow_util
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def _has_grouped_conv_gradient(tf, dtype):
    # On CPU only oneDNN has grouped-convolution gradients ("Gradients for grouped
    # convolutions are not supported on CPU" with TF_ENABLE_ONEDNN_OPTS=0), and only in
    # float32 and bfloat16; cuDNN has them in every float type.
    from tensorflow.python.util import _pywrap_util_port
    if tf.config.list_logical_devices("GPU"):
        return True
    return _pywrap_util_port.IsMklEnabled() and dtype in ("float32", "bfloat16")


def has_native_grouped_conv1d(dtype="float32") -> bool:
    """Whether `native_grouped_conv1d` is the fast path here for `dtype` inputs: TensorFlow,
    outside XLA, with a kernel that also has gradients (oneDNN or a GPU)."""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf
    return not _in_xla_context(tf) and _has_grouped_conv_gradient(
        tf, keras.backend.standardize_dtype(dtype))


def native_grouped_conv1d(inputs, kernel):
    """'Same'-padded stride-1 grouped conv of [B, S, C] `inputs` with a [K, C/G, C] `kernel`
    on TensorFlow's kernel (use where `has_native_grouped_conv1d()`)."""
    import tensorflow as tf
    return tf.nn.conv1d(inputs, kernel, stride=1, padding="SAME")
