"""Train-step time per precision and compile mode: today's float32 XLA path against the fastest.

A compile mode can need process-wide settings (`graph_fused`'s TF_XLA_FLAGS are read when
TensorFlow starts), so each mode runs in its own worker process, and the coordinator
interleaves them: every round asks each worker in turn (the order rotating) to time one step
of each model. Load that changes over the run therefore hits every mode alike; we report
medians and ratios of medians. The first worker also times 2048^3 matmuls, float32 and
bfloat16, under XLA and on oneDNN: the machine's peaks in the same rounds.

The step is benchmarks/throughput.py's: one pre-training batch (B x S tokens, M masked
positions, no padding), loss = MLM + NSP, gradients w.r.t. every trainable variable, no
optimizer update. FLOPs: groupbert_tf.flops.training_flops. keras-hub's BertBackbone (with a
tied MaskedLMHead and an NSP Dense) is credited with our BERT's FLOPs (same matmuls).

    python -m benchmarks.fast_path --models groupbert-mini bert-mini --batch_size 32
    python -m benchmarks.fast_path --models groupbert-base bert-base keras_hub-base --batch_size 8
    python -m benchmarks.fast_path --models groupbert-base bert-large --batch_size 8 \\
        --modes bfloat16/graph

Each run prints a markdown table and one verdict line per target of docs/throughput.md that
its models allow, and appends its raw timings to --results (JSON lines).
"""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

MODES = {  # name -> (precision, compile mode)
    "float32/xla": ("float32", "xla"),
    "float32/graph": ("float32", "graph"),
    "float32/graph_fused": ("float32", "graph_fused"),
    "bfloat16/graph": ("mixed_bfloat16", "graph"),
    "bfloat16/graph_fused": ("mixed_bfloat16", "graph_fused"),
    "bfloat16/xla": ("mixed_bfloat16", "xla"),
}
TODAY = "float32/xla"
MATMULS = ("matmul-float32-xla", "matmul-float32-onednn", "matmul-bfloat16-onednn",
           "matmul-bfloat16-xla")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["groupbert-mini", "bert-mini"],
                        help="family-size: groupbert-, bert- or keras_hub-<preset size>")
    parser.add_argument("--modes", nargs="+", choices=list(MODES),
                        default=["float32/xla", "bfloat16/graph", "bfloat16/graph_fused"])
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seq_length", type=int, default=128)
    parser.add_argument("--max_predictions", type=int, default=20)
    parser.add_argument("--dropout", type=float, default=0.0,
                        help="BERT and keras-hub dropout (GroupBERT: always 0)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--results", default="docs/results/fast_path.jsonl")
    parser.add_argument("--worker", choices=list(MODES), help=argparse.SUPPRESS)
    parser.add_argument("--with_matmuls", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------------------------
# Worker: builds the models in one mode, then times one call per request on stdin.
# ----------------------------------------------------------------------------------------------

def _config(model, dropout):
    from groupbert_tf.config import GroupBertConfig
    family, size = model.split("-", 1)
    if family == "groupbert":
        return GroupBertConfig.from_preset(f"groupbert-{size}", hidden_dropout=0.0,
                                           attention_dropout=0.0)
    return GroupBertConfig.from_preset(f"bert-{size}", hidden_dropout=dropout,
                                       attention_dropout=dropout)


def _matmul(tf, dtype, xla, size=2048):
    generator = tf.random.Generator.from_seed(0)
    a = tf.cast(generator.normal((size, size)), dtype)
    b = tf.cast(generator.normal((size, size)), dtype)
    return tf.function(lambda: tf.matmul(a, b), jit_compile=xla)


def gradient_step(model, inputs, labels, compile_mode):
    """The timed step: MLM + NSP loss and its gradient w.r.t. every trainable variable.

    The model and its variables come in through the closure. Bound as default arguments, the
    Keras variables became inputs of the traced function, unconnected to the variables the
    model reads: every gradient came back None and the step timed the forward pass only
    (until 2026-12-02; docs/fast_path.md)."""
    import tensorflow as tf
    from benchmarks import throughput

    def step():
        with tf.GradientTape() as tape:
            loss = throughput.pretraining_loss(labels, model(inputs, training=True))
        return loss, tape.gradient(loss, model.trainable_variables)

    return tf.function(step, jit_compile=compile_mode == "xla")


def worker(args):
    from training import performance
    precision, compile_mode = MODES[args.worker]
    chosen = performance.ensure_process_flags(
        performance.Performance(precision, compile_mode, "benchmark"))
    if chosen.compile_mode != compile_mode:
        raise SystemExit(f"worker {args.worker}: {chosen.reason}")
    import keras
    import tensorflow as tf
    from benchmarks import throughput
    from benchmarks.common import block
    from groupbert_tf import flops

    candidates, info = {}, {}
    for model_name in args.models:
        config = _config(model_name, args.dropout)
        inputs, labels = throughput.make_batch(config.vocab_size, args.batch_size,
                                               args.seq_length, args.max_predictions)
        inputs = {k: tf.constant(v) for k, v in inputs.items()}
        labels = {k: tf.constant(v) for k, v in labels.items()}
        model = throughput.build_model(
            "keras_hub" if model_name.startswith("keras_hub") else "ours", config, inputs,
            precision)
        fn = gradient_step(model, inputs, labels, compile_mode)
        start = time.perf_counter()
        fn()[0].numpy()
        info[model_name] = {
            "compile_s": time.perf_counter() - start,
            "flops": args.batch_size * flops.training_flops(config, args.seq_length,
                                                            args.max_predictions)}
        candidates[model_name] = fn
    if args.with_matmuls:
        for name in MATMULS:
            _, dtype, kernel = name.split("-")
            candidates[name] = _matmul(tf, getattr(tf, dtype), kernel == "xla")
            candidates[name]().numpy()
            info[name] = {"compile_s": 0.0, "flops": 2 * 2048 ** 3}
    for fn in candidates.values():  # A second warm-up call: caches, oneDNN primitives.
        block(fn())
    print(json.dumps({"ready": info, "keras": keras.__version__}), flush=True)
    for line in sys.stdin:
        name = line.strip()
        start = time.perf_counter()
        block(candidates[name]())
        print(json.dumps({"seconds": time.perf_counter() - start}), flush=True)


# ----------------------------------------------------------------------------------------------
# Coordinator
# ----------------------------------------------------------------------------------------------

def _start_worker(mode, args, with_matmuls):
    command = [sys.executable, "-m", "benchmarks.fast_path", "--worker", mode,
               "--models", *args.models, "--batch_size", str(args.batch_size),
               "--seq_length", str(args.seq_length), "--max_predictions",
               str(args.max_predictions), "--dropout", str(args.dropout)]
    if with_matmuls:
        command.append("--with_matmuls")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=env)


def _read(process, mode):
    line = process.stdout.readline()
    if not line:
        raise SystemExit(f"worker {mode} exited with status {process.wait()}")
    return json.loads(line)


def cpu_description():
    from training.performance import cpu_flags, describe_cpu
    from benchmarks.throughput import cpu_model
    flags = cpu_flags()
    isa = sorted(f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "fma"))
    return f"{cpu_model()} ({describe_cpu(flags)}; {' '.join(isa)})"


def verdicts(med, info, modes, models):
    """One line per target of docs/throughput.md that these models and modes allow."""
    lines = []
    fastest = {m: min((mode for mode in modes if mode != TODAY), key=lambda mode: med[mode, m],
                      default=None) for m in models}
    if TODAY in modes:
        for m in models:
            if fastest[m] and m.split("-")[0] in ("groupbert", "bert"):
                speedup = med[TODAY, m] / med[fastest[m], m]
                target = " (target at base: >= 2.5x)" if m.endswith("-base") else ""
                lines.append(f"- {m}: fastest mode {fastest[m]} is {speedup:.2f}x today's "
                             f"{TODAY}{target}" + (
                                 f": {'MET' if speedup >= 2.5 else 'MISSED'}" if target else ""))
    sizes = {m.split("-", 1)[1] for m in models}
    for size in sorted(sizes):
        g, b = f"groupbert-{size}", f"bert-{size}"
        if g in models and b in models and fastest[g] and fastest[b]:
            time_ratio = med[fastest[g], g] / med[fastest[b], b]
            flop_ratio = info[g]["flops"] / info[b]["flops"]
            ok = time_ratio <= 1.1 * flop_ratio
            lines.append(f"- GroupBERT/BERT-{size} step time {time_ratio:.2f} against FLOP ratio "
                         f"{flop_ratio:.2f}: {time_ratio / flop_ratio:.2f}x (target <= 1.1x): "
                         f"{'MET' if ok else 'MISSED'}")
        k = f"keras_hub-{size}"
        if k in models and b in models and fastest[k] and fastest[b]:
            ratio = med[fastest[k], k] / med[fastest[b], b]
            lines.append(f"- our BERT-{size} ({fastest[b]}) is {ratio:.2f}x keras-hub's "
                         f"BertBackbone ({fastest[k]}) (target >= 1.2x): "
                         f"{'MET' if ratio >= 1.2 else 'MISSED'}")
    if "groupbert-base" in models and "bert-large" in models:
        g, b = "groupbert-base", "bert-large"
        ratio = med[fastest[g], g] / med[fastest[b], b]
        flop_ratio = info[g]["flops"] / info[b]["flops"]
        lines.append(f"- GroupBERT-base step {ratio:.2f}x BERT-large's (FLOP ratio "
                     f"{flop_ratio:.2f}; target <= 0.45x): {'MET' if ratio <= 0.45 else 'MISSED'}")
    peaks = [key for key in med if key[1] == "matmul-bfloat16-onednn"]
    if peaks:
        peak = info["matmul-bfloat16-onednn"]["flops"] / med[peaks[0]]
        for m, share in (("groupbert-base", 0.5), ("bert-base", 0.6)):
            if m in models and fastest[m]:
                rate = info[m]["flops"] / med[fastest[m], m]
                lines.append(f"- {m} at {rate / 1e9:.0f} GFLOP/s = {rate / peak:.0%} of the "
                             f"bf16 oneDNN matmul's {peak / 1e9:.0f} (target >= {share:.0%}): "
                             f"{'MET' if rate >= share * peak else 'MISSED'}")
    return lines


def coordinate(args):
    from benchmarks.throughput import table
    workers = {}
    for index, mode in enumerate(args.modes):
        workers[mode] = _start_worker(mode, args, with_matmuls=index == 0)
    info = {}
    try:
        for mode, process in workers.items():
            info.update(_read(process, mode)["ready"])
        keys = [(mode, name) for mode in args.modes for name in args.models]
        keys += [(args.modes[0], name) for name in MATMULS]
        times = {key: [] for key in keys}
        for round_index in range(args.repeats):
            shift = round_index % len(keys)
            for mode, name in keys[shift:] + keys[:shift]:
                workers[mode].stdin.write(name + "\n")
                workers[mode].stdin.flush()
                times[mode, name].append(_read(workers[mode], mode)["seconds"])
    finally:
        for process in workers.values():
            process.stdin.close()
            process.wait(timeout=60)
    med = {key: statistics.median(v) for key, v in times.items()}
    rows = []
    for mode, name in keys:
        flops = info[name]["flops"]
        speedup = (f"{med[TODAY, name] / med[mode, name]:.2f}x"
                   if (TODAY, name) in med and not name.startswith("matmul") else "-")
        rows.append([name, mode if not name.startswith("matmul") else "-",
                     f"{med[mode, name] * 1e3:.0f}",
                     f"{min(times[mode, name]) * 1e3:.0f}-{max(times[mode, name]) * 1e3:.0f}",
                     f"{flops / med[mode, name] / 1e9:.0f}", speedup])
    return med, info, keys, times, rows, table(
        ["model", "precision/compile", "median ms", "range ms", "GFLOP/s", f"vs {TODAY}"], rows)


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    now = datetime.datetime.now(datetime.timezone.utc)
    load = os.getloadavg()
    print(f"# {cpu_description()}, {os.cpu_count()} logical CPUs; {now:%Y-%m-%d %H:%M} UTC; "
          f"load average {load[0]:.1f}")
    print(f"# B={args.batch_size} S={args.seq_length} M={args.max_predictions}, dropout "
          f"{args.dropout:g} (GroupBERT 0), {args.repeats} interleaved rounds, medians")
    med, info, keys, times, _, text = coordinate(args)
    print(text)
    lines = verdicts(med, info, args.modes, args.models)
    print("\n".join(lines))
    end_load = os.getloadavg()[0]
    print(f"# load average at the end {end_load:.1f}")
    if args.results:
        os.makedirs(os.path.dirname(args.results) or ".", exist_ok=True)
        with open(args.results, "a") as f:
            f.write(json.dumps({
                "date": f"{now:%Y-%m-%d %H:%M} UTC", "cpu": cpu_description(),
                "load": [round(load[0], 1), round(end_load, 1)], "batch_size": args.batch_size,
                "seq_length": args.seq_length, "dropout": args.dropout,
                "times": {f"{m}|{n}": v for (m, n), v in times.items()},
                "flops": {k: v["flops"] for k, v in info.items()},
                "verdicts": lines}) + "\n")


if __name__ == "__main__":
    main()
