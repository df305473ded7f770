"""Serving latency, throughput and bf16 accuracy of exported SavedModels, as TF Serving runs them.

  python -m benchmarks.serving speed --models groupbert-mini bert-mini bert-base \
      --export_root /tmp/serving-bench                     # results: docs/serving.md
  python -m benchmarks.serving accuracy --model_dir runs/sentiment-minilm \
      --hf_config data/minilm/config.json --eval_file data/sentiment/dev.tsv

`speed` exports each preset as a 2-label classifier (random weights: speed does not depend on
them) twice, `--compute_dtype` float32 and bfloat16, with `groupbert_tf.export`; existing
exports under `--export_root` are reused, so the (slow) exports can run before the timing.
Each preset's two SavedModels are then loaded in one fresh process that imports only
tensorflow and tensorflow_text (no XLA, no code of ours: what TF Serving runs) and called
through `serving_default` with raw text (Wikipedia extracts, packed to seq 128 in the graph).
float32 and bf16 calls alternate (the order flips every round). Batch 1: latency p50 / p99
over `--latency_calls` calls of each; batch 8 and 32: throughput = batch / median time.
A 2048^3 matmul in float32 and bfloat16 gives the machine's reference speeds, and a short
process with ONEDNN_VERBOSE=1 records which oneDNN kernels (ISA) the bf16 model ran.

`accuracy` exports a fine-tuned classifier (a `training.finetune` run folder) in float32 and
bf16 and runs the dev set through both in a fresh process: max / mean abs logit difference,
agreement of the predicted classes, and each export's accuracy.
"""

import argparse
import collections
import csv
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import textwrap

import numpy as np

from benchmarks import common
from benchmarks.inference import sentences
from groupbert_tf import flops
from groupbert_tf.config import GroupBertConfig

DTYPES = ("float32", "bfloat16")

TIMING = textwrap.dedent(r'''
    import json, sys, time
    import tensorflow as tf
    import tensorflow_text  # noqa: F401

    spec = json.load(sys.stdin)
    fns = {d: tf.saved_model.load(p).signatures["serving_default"]
           for d, p in spec["exports"].items()}
    texts = [t.encode("utf-8") for t in spec["texts"]]

    def once(fn, batch):
        start = time.perf_counter()
        fn(text_a=batch)["logits"].numpy()
        return time.perf_counter() - start

    results = {}
    for batch_size, calls in spec["plan"]:
        batch = tf.constant(texts[:batch_size])
        for fn in fns.values():  # warm-up (oneDNN primitive creation)
            once(fn, batch), once(fn, batch)
        times = {d: [] for d in fns}
        order = list(fns)
        for call in range(calls):
            for d in (order if call % 2 == 0 else order[::-1]):
                times[d].append(once(fns[d], batch))
        results[str(batch_size)] = times
    print(json.dumps(results))
''')

ISA = textwrap.dedent(r'''
    import json, sys
    import tensorflow as tf
    import tensorflow_text  # noqa: F401
    fn = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
    for _ in range(2):
        fn(text_a=tf.constant(["a short text"] * 8))["logits"].numpy()
''')

MATMUL = textwrap.dedent(r'''
    import json, time
    import tensorflow as tf
    times = {"float32": [], "bfloat16": []}
    fns = {}
    for d in times:
        a = tf.cast(tf.random.normal([2048, 2048]), d)
        fns[d] = (tf.function(lambda a: tf.matmul(a, a)), a)
        fns[d][0](a).numpy()
    for r in range(6):
        for d in (list(times) if r % 2 == 0 else list(times)[::-1]):
            start = time.perf_counter()
            fns[d][0](fns[d][1]).numpy()
            times[d].append(time.perf_counter() - start)
    print(json.dumps(times))
''')

LOGITS = textwrap.dedent(r'''
    import json, sys
    import numpy as np
    import tensorflow as tf
    import tensorflow_text  # noqa: F401
    spec = json.load(sys.stdin)
    logits = {}
    for dtype, path in spec["exports"].items():
        fn = tf.saved_model.load(path).signatures["serving_default"]
        texts = [t.encode("utf-8") for t in spec["texts"]]
        logits[dtype] = np.concatenate([fn(text_a=tf.constant(texts[i:i + 32]))["logits"].numpy()
                                        for i in range(0, len(texts), 32)])
    np.savez(spec["out"], **logits)
''')


def _fresh(script, spec=None, args=(), env=None):
    """Runs `script` in a fresh Python with none of our code importable; returns stdout."""
    env = {**os.environ, "PYTHONPATH": "", **(env or {})}
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True,
                          text=True, cwd="/", env=env, check=False,
                          input=None if spec is None else json.dumps(spec))
    if proc.returncode:
        raise RuntimeError(f"fresh process failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def export_random_classifier(preset, export_root, vocab, seq_length):
    """{dtype: version folder} of `preset` as a random 2-label classifier (reused if there)."""
    import keras  # pylint: disable=import-outside-toplevel
    from groupbert_tf import export  # pylint: disable=import-outside-toplevel
    from groupbert_tf.models.classifier import GroupBertClassifier  # pylint: disable=import-outside-toplevel
    paths, model = {}, None
    for dtype in DTYPES:
        path = os.path.join(export_root, preset, dtype, "1")
        if not os.path.isdir(path):
            if model is None:
                keras.utils.set_random_seed(0)
                model = GroupBertClassifier(GroupBertConfig.from_preset(preset), num_labels=2,
                                            dropout=0.0)
            export.export_saved_model(model, vocab, os.path.dirname(path),
                                      seq_length=seq_length, version=1, compute_dtype=dtype)
        paths[dtype] = path
    return paths


def onednn_kernels(version_dir):
    """Counts of `primitive:implementation (source dtype)` oneDNN ran for a batch of 8."""
    out = _fresh(ISA, args=[version_dir], env={"ONEDNN_VERBOSE": "1"})
    counts = collections.Counter()
    for line in out.splitlines():
        fields = line.split(",")
        if len(fields) > 8 and fields[:4] == ["onednn_verbose", "v1", "primitive", "exec"]:
            source = re.search(r"src[_:]([a-z0-9]+)", fields[8])
            counts[f"{fields[5]}:{fields[6] or '(default)'} "
                   f"({source.group(1) if source else '?'})"] += 1
    return counts


def _load():
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def speed(args):
    texts = sentences(args.corpus, 32)
    plan = [(1, args.latency_calls), (8, args.throughput_rounds), (32, args.throughput_rounds)]
    exports = {p: export_random_classifier(p, args.export_root, args.vocab, args.seq_length)
               for p in args.models}
    if args.export_only:
        return
    now = datetime.datetime.now(datetime.timezone.utc)
    print(f"# {common.machine_description()}; {now:%Y-%m-%d %H:%M} UTC; "
          f"load average at the start {_load()}")
    print(f"# {' '.join(sys.argv)}")
    rows, latency = [], {}
    for preset in args.models:
        times = json.loads(_fresh(TIMING, {"exports": exports[preset], "texts": texts,
                                           "plan": plan}).strip().splitlines()[-1])
        load = _load()
        for dtype in DTYPES:
            ms = sorted(t * 1e3 for t in times["1"][dtype])
            p99 = float(np.percentile(ms, 99))
            throughput = [b / statistics.median(times[str(b)][dtype]) for b in (8, 32)]
            latency[(preset, dtype)] = statistics.median(ms)
            rows.append([f"`{preset}`", dtype, f"{statistics.median(ms):.1f}", f"{p99:.1f}",
                         f"{throughput[0]:.1f}", f"{throughput[1]:.1f}", load])
        ratios = [statistics.median(times[b]["float32"]) / statistics.median(times[b]["bfloat16"])
                  for b in ("1", "8", "32")]
        rows.append([f"`{preset}`", "**bf16 speed-up**", f"{ratios[0]:.2f}x", "",
                     f"{ratios[1]:.2f}x", f"{ratios[2]:.2f}x", ""])
    print(f"\nseq {args.seq_length}; batch 1: {args.latency_calls} calls per dtype; batch 8 and "
          f"32: medians of {args.throughput_rounds} calls per dtype\n")
    print(common.markdown_table(["model", "compute", "batch 1 p50 ms", "batch 1 p99 ms",
                                 "batch 8 seq/s", "batch 32 seq/s", "load average after"],
                                rows))
    print()
    for size in ("mini", "medium", "base", "large"):
        g, b = f"groupbert-{size}", f"bert-{size}"
        if g in args.models and b in args.models:
            fwd = (flops.forward_flops(GroupBertConfig.from_preset(g), args.seq_length)
                   / flops.forward_flops(GroupBertConfig.from_preset(b), args.seq_length))
            for dtype in DTYPES:
                print(f"- {size}, {dtype}: GroupBERT/BERT batch-1 p50 latency "
                      f"{latency[(g, dtype)] / latency[(b, dtype)]:.2f}; forward FLOP ratio "
                      f"{fwd:.2f}")
    matmul = json.loads(_fresh(MATMUL).strip().splitlines()[-1])
    gflops = {d: 2 * 2048 ** 3 / statistics.median(t) / 1e9 for d, t in matmul.items()}
    print(f"2048^3 matmul (plain TF, oneDNN, 6 interleaved calls each, median): float32 "
          f"{gflops['float32']:.0f} GFLOP/s, bfloat16 {gflops['bfloat16']:.0f} GFLOP/s "
          f"({gflops['bfloat16'] / gflops['float32']:.2f}x)")
    if args.models:
        kernels = onednn_kernels(exports[args.models[0]]["bfloat16"])
        print(f"\noneDNN kernels run by the bf16 `{args.models[0]}` export (batch 8, 2 calls): "
              + ", ".join(f"{k} x{n}" for k, n in kernels.most_common()))
    print(f"\n# load average at the end {_load()}")


def accuracy(args):
    from training import export as export_cli  # pylint: disable=import-outside-toplevel
    from groupbert_tf.checkpoints.hf_bert import hf_bert_config  # pylint: disable=import-outside-toplevel
    config = (hf_bert_config(args.hf_config) if args.hf_config
              else GroupBertConfig.load(args.config))
    exports = {}
    for dtype in DTYPES:
        path = os.path.join(args.export_root, f"accuracy-{dtype}", "1")
        if not os.path.isdir(path):
            export_cli.export_from_checkpoint(args.model_dir, config, "classification",
                                              os.path.dirname(path), vocab=args.vocab,
                                              seq_length=args.seq_length, version=1,
                                              compute_dtype=dtype)
        exports[dtype] = path
    with open(args.eval_file, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    with open(os.path.join(args.model_dir, "labels.txt"), encoding="utf-8") as f:
        labels = [line.strip() for line in f if line.strip()]
    texts = [row["sentence"] for row in rows]
    gold = np.array([labels.index(row["label"]) for row in rows])
    out = os.path.join(args.export_root, "accuracy-logits.npz")
    _fresh(LOGITS, {"exports": exports, "texts": texts, "out": out})
    logits = dict(np.load(out))
    difference = np.abs(logits["bfloat16"] - logits["float32"])
    predicted = {d: logits[d].argmax(-1) for d in DTYPES}
    agree = int((predicted["float32"] == predicted["bfloat16"]).sum())
    print(f"# {common.machine_description()}; "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"# {' '.join(sys.argv)}")
    print(f"- {len(texts)} sentences of {args.eval_file}, seq {args.seq_length}")
    print(f"- logits: max abs difference {difference.max():.4f}, mean {difference.mean():.4f}; "
          f"float32 logit range [{logits['float32'].min():.2f}, {logits['float32'].max():.2f}]")
    print(f"- class agreement {agree}/{len(texts)} = {agree / len(texts):.2%}")
    for dtype in DTYPES:
        correct = int((predicted[dtype] == gold).sum())
        print(f"- {dtype} accuracy {correct}/{len(texts)} = {correct / len(texts):.2%}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("speed", "accuracy"):
        sub = commands.add_parser(name)
        sub.add_argument("--export_root", default="/tmp/groupbert-serving-bench")
        sub.add_argument("--vocab", default="data/vocab.txt")
        sub.add_argument("--seq_length", type=int, default=128)
    sub = commands.choices["speed"]
    sub.add_argument("--models", nargs="+",
                     default=["groupbert-mini", "bert-mini", "groupbert-base", "bert-base"])
    sub.add_argument("--latency_calls", type=int, default=50)
    sub.add_argument("--throughput_rounds", type=int, default=5)
    sub.add_argument("--corpus", default="data/wiki/documents.txt")
    sub.add_argument("--export_only", action="store_true", help="export, do not time")
    sub = commands.choices["accuracy"]
    sub.add_argument("--model_dir", required=True, help="a training.finetune run folder")
    sub.add_argument("--hf_config", help="config.json of the HF BERT it was fine-tuned from")
    sub.add_argument("--config", default="groupbert-mini", help="else: preset or JSON file")
    sub.add_argument("--eval_file", default="data/sentiment/dev.tsv")
    args = parser.parse_args(argv)
    os.makedirs(args.export_root, exist_ok=True)
    if args.command == "speed":
        speed(args)
    else:
        accuracy(args)


if __name__ == "__main__":
    main()
