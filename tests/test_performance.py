"""training/performance.py: what `auto` picks per device, bad values, the process restart
that sets graph_fused's TF_XLA_FLAGS before TensorFlow starts, and the dtype-policy scope."""

import os
import subprocess
import sys
import textwrap

import keras
import pytest

from training import performance

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("flags, expected", [
    (frozenset({"avx512f", "amx_bf16", "avx512_bf16"}), ("mixed_bfloat16", "graph")),
    (frozenset({"avx512f", "avx512_bf16"}), ("float32", "xla")),
    (frozenset({"avx2", "fma"}), ("float32", "xla")),
])
def test_auto_on_cpus(flags, expected):
    """bfloat16 on oneDNN only where AMX makes it pay (docs/fast_path.md)."""
    choice = performance.choose("cpu", flags=flags)
    assert (choice.precision, choice.compile_mode) == expected
    assert performance.describe_cpu(flags) in choice.reason


@pytest.mark.parametrize("device, capability, expected", [
    ("tpu", None, ("mixed_bfloat16", "xla")),
    ("gpu", (9, 0), ("mixed_bfloat16", "xla")),
    ("gpu", (8, 0), ("mixed_bfloat16", "xla")),
    ("gpu", (7, 5), ("mixed_float16", "xla")),
    ("gpu", (6, 1), ("float32", "xla")),
])
def test_auto_on_accelerators_compiles_with_xla(device, capability, expected):
    choice = performance.choose(device, capability)
    assert (choice.precision, choice.compile_mode) == expected
    assert choice.jit_compile


def test_cpu_flags_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\n\n"
                       "processor\t: 1\nflags\t\t: fpu\n")
    assert performance.cpu_flags(str(cpuinfo)) == {"fpu", "avx512f", "avx512_bf16"}
    assert performance.cpu_flags(str(tmp_path / "missing")) == frozenset()


def test_resolve_keeps_explicit_values_and_fills_auto():
    assert performance.resolve("mixed_float16", "xla") == performance.Performance(
        "mixed_float16", "xla", "as requested")
    filled = performance.resolve("float32", "auto")
    assert filled.precision == "float32"
    expected = performance.choose("cpu").compile_mode  # This test machine has no accelerator.
    assert filled.compile_mode == expected and filled.reason.startswith("auto: ")


@pytest.mark.parametrize("precision, compile_mode, flag", [
    ("bfloat16", "auto", "--precision='bfloat16'"),
    ("auto", "jit", "--compile_mode='jit'"),
])
def test_resolve_names_the_bad_flag(precision, compile_mode, flag):
    with pytest.raises(ValueError, match=f"^{flag}: expected one of"):
        performance.resolve(precision, compile_mode)


def test_dtype_policy_scope_restores_the_global_policy():
    before = keras.mixed_precision.global_policy().name
    with performance.dtype_policy("mixed_bfloat16"):
        assert keras.layers.Dense(2).compute_dtype == "bfloat16"
    assert keras.mixed_precision.global_policy().name == before
    with pytest.raises(RuntimeError):
        with performance.dtype_policy("mixed_float16"):
            raise RuntimeError("inside")
    assert keras.mixed_precision.global_policy().name == before


RESTART_SCRIPT = textwrap.dedent("""
    import os, sys
    from training import performance
    print("start", os.environ.get("TF_XLA_FLAGS", ""), flush=True)
    chosen = performance.ensure_process_flags(
        performance.Performance("float32", sys.argv[1], "test"))
    import tensorflow as tf  # Starts after the flags are in place.
    print("chosen", chosen.compile_mode, performance.process_flags_active(), flush=True)
    """)


def _run(compile_mode, **env):
    """The script's 'start'/'chosen' lines; TF_XLA_FLAGS only where `env` sets them."""
    base = {k: v for k, v in os.environ.items() if k != "TF_XLA_FLAGS"}
    result = subprocess.run([sys.executable, "-c", RESTART_SCRIPT, compile_mode], cwd=REPO,
                            env={**base, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "3", **env},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line.startswith(("start", "chosen"))]


@pytest.mark.slow
def test_graph_fused_restarts_the_process_once_with_its_flags():
    lines = _run("graph_fused", TF_XLA_FLAGS="--tf_xla_clustering_debug")
    flags = " ".join(performance.FUSIBLE_XLA_FLAGS)
    assert lines == ["start --tf_xla_clustering_debug",
                     f"start --tf_xla_clustering_debug {flags}",
                     "chosen graph_fused True"]


@pytest.mark.slow
def test_other_modes_do_not_restart():
    assert _run("graph") == ["start ", "chosen graph False"]


@pytest.mark.slow
def test_no_second_restart_falls_back_to_graph():
    """A process that was already restarted once (the marker is set) does not loop."""
    assert _run("graph_fused", GROUPBERT_PROCESS_FLAGS_SET="1") == ["start ",
                                                                    "chosen graph False"]
