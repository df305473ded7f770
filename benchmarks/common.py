"""Shared timing helpers for the benchmarks.

Timings on a shared 2-core CPU are noisy, so every comparison here is *interleaved*: each round
runs every candidate once, in a rotated order, and we report medians over rounds (and ratios of
medians). A large float32 matmul under XLA, timed in the same process, gives a reference
"achievable GFLOP/s" for the machine at that moment.
"""

import os
import platform
import statistics
import subprocess
import time
from typing import Callable, Dict, List, Mapping

import tensorflow as tf


def block(result):
    """Forces every tensor in `result` to be computed (a no-op on CPU, cheap elsewhere)."""
    for tensor in tf.nest.flatten(result):
        if hasattr(tensor, "numpy"):
            tensor.numpy()
    return result


def time_call(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    block(fn())
    return time.perf_counter() - start


def interleaved_timings(candidates: Mapping[str, Callable[[], object]], repeats: int = 10,
                        warmup: int = 2) -> Dict[str, List[float]]:
    """Seconds per call of each candidate, A/B interleaved.

    Each candidate is first called `warmup` times (compilation happens there). Then, `repeats`
    rounds each call every candidate once; the order rotates every round so no candidate always
    runs first (or right after a particular other one).
    """
    names = list(candidates)
    for name in names:
        for _ in range(warmup):
            block(candidates[name]())
    times = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(time_call(candidates[name]))
    return times


def median(values) -> float:
    return statistics.median(values)


def summarize(times: Mapping[str, List[float]]) -> Dict[str, Dict[str, float]]:
    """Median, min, and interquartile spread (seconds) per candidate."""
    out = {}
    for name, values in times.items():
        ordered = sorted(values)
        quart = statistics.quantiles(ordered, n=4) if len(ordered) >= 2 else [ordered[0]] * 3
        out[name] = {"median": statistics.median(ordered), "min": ordered[0],
                     "q1": quart[0], "q3": quart[2], "n": len(ordered)}
    return out


def make_matmul(size: int = 2048, dtype=tf.float32, seed: int = 0):
    """A jit-compiled size^3 matmul and its FLOP count (2 per multiply-add)."""
    generator = tf.random.Generator.from_seed(seed)
    a = generator.normal((size, size), dtype=dtype)
    b = generator.normal((size, size), dtype=dtype)
    matmul = tf.function(lambda: tf.matmul(a, b), jit_compile=True)
    return matmul, 2 * size ** 3


def matmul_gflops(size: int = 2048, repeats: int = 10, warmup: int = 2) -> float:
    """Median GFLOP/s of a size^3 float32 matmul under XLA, measured now."""
    matmul, flops = make_matmul(size)
    times = interleaved_timings({"matmul": matmul}, repeats=repeats, warmup=warmup)["matmul"]
    return flops / median(times) / 1e9


def machine_description() -> str:
    """CPU model name and core count, for the record."""
    model = platform.processor() or "unknown CPU"
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in text.splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except (OSError, subprocess.CalledProcessError):
        pass
    return f"{model}, {os.cpu_count()} logical CPUs, TF {tf.__version__}"


def markdown_table(header: List[str], rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
