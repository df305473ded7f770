"""Numeric precision and compilation of a training job, with an `auto` that picks per device.

Precisions: `float32`, `mixed_bfloat16`, `mixed_float16` (Keras' dtype policies; float16 gets
dynamic loss scaling from `compile`). Compile modes of the loss-and-gradients function:

- `xla`: one XLA program (`jit_compile=True`). Fastest on TPUs and GPUs.
- `graph`: a TensorFlow graph whose ops run on TensorFlow's kernels: oneDNN on x86 CPUs, the
  only path to AMX and AVX512-BF16 matmuls (XLA:CPU in TF 2.21 uses neither).
- `graph_fused`: `graph` plus XLA auto-clustering of element-wise ops only
  (`TF_XLA_FLAGS=--tf_xla_auto_jit=2 --tf_xla_cpu_global_jit --tf_xla_ops_to_cluster=FUSIBLE`):
  matmuls and convolutions stay on oneDNN, the memory-bound chains between them are fused.

TF_XLA_FLAGS are read once, when TensorFlow starts. `ensure_process_flags` therefore restarts
the entry point's process with them (`os.execve` of the same command line) when a job resolves
to `graph_fused` and they are missing: the user never exports a variable. This module imports
no TensorFlow at module level, so entry points can consult it first.

The `auto` choices and the measurements behind them are in docs/throughput.md.
"""

import contextlib
import dataclasses
import os
import sys
from typing import Optional

PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
COMPILE_MODES = ("auto", "xla", "graph", "graph_fused")

FUSIBLE_XLA_FLAGS = ("--tf_xla_auto_jit=2", "--tf_xla_cpu_global_jit",
                     "--tf_xla_ops_to_cluster=FUSIBLE")
_RESTARTED = "GROUPBERT_PROCESS_FLAGS_SET"


@dataclasses.dataclass(frozen=True)
class Performance:
    """A resolved precision and compile mode, with the sentence that says why."""

    precision: str
    compile_mode: str
    reason: str

    @property
    def jit_compile(self) -> bool:
        return self.compile_mode == "xla"


def cpu_flags(path="/proc/cpuinfo") -> frozenset:
    """The `flags` of the first CPU in /proc/cpuinfo (empty where the file does not exist)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def describe_cpu(flags: frozenset) -> str:
    if "amx_bf16" in flags:
        return "CPU with AMX-BF16"
    if "avx512_bf16" in flags:
        return "CPU with AVX512-BF16"
    return "CPU without bfloat16 instructions"


def choose(device: str, gpu_compute_capability: Optional[tuple] = None,
           flags: Optional[frozenset] = None) -> Performance:
    """What `auto` resolves to on `device` ('tpu', 'gpu', 'ipu' or 'cpu'), and why."""
    if device == "tpu":
        return Performance("mixed_bfloat16", "xla",
                           "TPU: bfloat16 is its native matmul type and XLA its compiler")
    if device == "ipu":
        return Performance("float32", "xla", "IPU: Graphcore's wheel compiles with XLA; "
                           "precision is set through its own IPU config")
    if device == "gpu":
        major = (gpu_compute_capability or (0, 0))[0]
        if major >= 8:
            return Performance("mixed_bfloat16", "xla",
                               f"GPU of compute capability {major}.x: bfloat16 tensor cores, "
                               "no loss scaling needed")
        if major >= 7:
            return Performance("mixed_float16", "xla",
                               f"GPU of compute capability {major}.x: float16 tensor cores "
                               "(no bfloat16), with dynamic loss scaling")
        return Performance("float32", "xla", "GPU without tensor cores")
    flags = cpu_flags() if flags is None else flags
    cpu = describe_cpu(flags)
    # graph_fused is not the default: its XLA clusters took minutes to compile on the first
    # step on 2 cores and were not faster afterwards (docs/fast_path.md).
    if "amx_bf16" in flags:
        return Performance("mixed_bfloat16", "graph",
                           f"{cpu}: oneDNN runs bfloat16 matmuls on AMX ~4x faster than "
                           "float32, and the grouped convolution natively; XLA:CPU uses "
                           "neither")
    if "avx512_bf16" in flags:
        return Performance("float32", "xla",
                           f"{cpu}: without AMX, oneDNN's bfloat16 matmuls are only 1.4-2x "
                           "float32's, and the float32 XLA step was as fast or faster "
                           "(docs/fast_path.md)")
    return Performance("float32", "xla", f"{cpu}: XLA's float32 step")


def detect_device(strategy_name: str = "auto") -> tuple:
    """(device, GPU compute capability or None) of this process, for `choose`.

    Uses only physical-device queries, so it can run before the strategy is created.
    """
    import tensorflow as tf
    if strategy_name == "tpu" or (strategy_name == "auto"
                                  and tf.config.list_physical_devices("TPU")):
        return "tpu", None
    if strategy_name == "ipu":  # `auto` never picks the IPU (training/strategy.py).
        return "ipu", None
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return "gpu", details.get("compute_capability")
    return "cpu", None


def resolve(precision: str = "auto", compile_mode: str = "auto",
            strategy_name: str = "auto") -> Performance:
    """Fills in `auto` values for this process's device; explicit values are kept."""
    for name, value, allowed in (("--precision", precision, PRECISIONS),
                                 ("--compile_mode", compile_mode, COMPILE_MODES)):
        if value not in allowed:
            raise ValueError(f"{name}={value!r}: expected one of {', '.join(allowed)}")
    if precision != "auto" and compile_mode != "auto":
        return Performance(precision, compile_mode, "as requested")
    device, capability = detect_device(strategy_name)
    choice = choose(device, capability)
    return Performance(choice.precision if precision == "auto" else precision,
                       choice.compile_mode if compile_mode == "auto" else compile_mode,
                       f"auto: {choice.reason}")


def process_flags_active() -> bool:
    """Whether this process started with the XLA flags that `graph_fused` needs."""
    present = os.environ.get("TF_XLA_FLAGS", "").split()
    return all(flag in present for flag in FUSIBLE_XLA_FLAGS)


def ensure_process_flags(performance: Performance) -> Performance:
    """Restarts the process with `graph_fused`'s TF_XLA_FLAGS when they are missing.

    Called by entry points (`python -m training.pretrain`, ...) after flag parsing. Where a
    restart is impossible (a second attempt, or an interpreter without `sys.orig_argv`),
    falls back to `graph` and says so.
    """
    if performance.compile_mode != "graph_fused" or process_flags_active():
        return performance
    if os.environ.get(_RESTARTED) or not getattr(sys, "orig_argv", None):
        return dataclasses.replace(
            performance, compile_mode="graph",
            reason=performance.reason + "; TF_XLA_FLAGS could not be set before TensorFlow "
            "started, so element-wise ops are not fused")
    env = dict(os.environ)
    env["TF_XLA_FLAGS"] = " ".join([env.get("TF_XLA_FLAGS", ""), *FUSIBLE_XLA_FLAGS]).strip()
    env[_RESTARTED] = "1"
    print(f"Restarting with TF_XLA_FLAGS={env['TF_XLA_FLAGS']!r} for --compile_mode="
          "graph_fused (TensorFlow reads them only at start).", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os.execve(sys.executable, sys.orig_argv, env)
    raise AssertionError("unreachable")  # execve does not return


def configure(precision: str = "auto", compile_mode: str = "auto") -> Performance:
    """Resolves the settings and logs what was chosen and why."""
    from absl import logging
    chosen = resolve(precision, compile_mode)
    logging.info("Precision %s, compile mode %s (%s).", chosen.precision, chosen.compile_mode,
                 chosen.reason)
    if chosen.compile_mode == "graph_fused" and not process_flags_active():
        logging.warning("compile mode graph_fused without its TF_XLA_FLAGS at process start: "
                        "element-wise ops are not fused (the training CLIs set them).")
    return chosen


@contextlib.contextmanager
def dtype_policy(precision: str):
    """Models built inside compute in `precision`; Keras' global policy is restored after."""
    import keras
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def define_flags(flag_values=None):
    """--precision and --compile_mode, shared by the training CLIs."""
    from absl import flags
    flag_values = flag_values or flags.FLAGS
    flags.DEFINE_enum("precision", "auto", PRECISIONS,
                      "Numeric precision. auto: bfloat16 on TPUs, Ampere+ GPUs and CPUs with "
                      "AMX; float16 on Volta/Turing GPUs; else float32.",
                      flag_values=flag_values)
    flags.DEFINE_enum("compile_mode", "auto", COMPILE_MODES,
                      "How the forward and backward pass is compiled. auto: graph "
                      "(TensorFlow's oneDNN kernels) on CPUs with AMX, else xla.",
                      flag_values=flag_values)
