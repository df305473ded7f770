"""Serving throughput of exported SavedModels: GroupBERT vs BERT, loaded as TF Serving loads them.

Exports `groupbert-<size>` and `bert-<size>` pre-training models (random weights; speed does not
depend on them) with `groupbert_tf.export.export_saved_model`, or takes existing exports
(`--groupbert_dir`, `--bert_dir`: a version folder). Each is loaded with `tf.saved_model.load`
(after `import tensorflow_text`, as TF Serving links the tensorflow-text ops) and called through
its signatures, as a server does:

  - `serve_token_ids`: int32 `token_ids`, `segment_ids`, `padding_mask` [batch, seq_length];
  - `serving_default`: raw text (`text_a` tf.string [batch]), tokenized and packed in the graph.

No XLA (TF Serving does not run forced-XLA functions by default). For each batch size the four
(model, signature) candidates are A/B interleaved (`benchmarks.common.interleaved_timings`);
medians, seq/s = batch / median, GroupBERT/BERT ratios next to the forward-FLOP ratio.

    python -m benchmarks.inference --size mini --batch_sizes 1 8 32 --repeats 10
"""

import argparse
import datetime
import os
import statistics
import sys
import tempfile

import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the ops the SavedModels use)

from benchmarks import common
from benchmarks.throughput import cpu_model
from groupbert_tf import flops as flop_count
from groupbert_tf.config import GroupBertConfig


def export(family, size, vocab, export_root, seq_length):
    import keras
    from groupbert_tf.export import export_saved_model
    from groupbert_tf.models.pretrainer import GroupBertPretrainer
    keras.utils.set_random_seed(0)
    config = GroupBertConfig.from_preset(f"{family}-{size}")
    model = GroupBertPretrainer(config)
    model({"token_ids": np.zeros((1, seq_length), "int32"),
           "segment_ids": np.zeros((1, seq_length), "int32"),
           "padding_mask": np.ones((1, seq_length), "int32"),
           "masked_lm_positions": np.zeros((1, 1), "int32")})
    return export_saved_model(model, vocab, os.path.join(export_root, f"{family}-{size}"),
                                    seq_length=seq_length)


def sentences(path, count, max_chars=700):
    """`count` texts from the corpus (one document per line), cut to `max_chars`, cycled."""
    texts = []
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            texts = [line.strip()[:max_chars] for line in f if len(line.strip()) > 200]
            texts = texts[:max(count, 1)]
    if not texts:
        texts = ["The quick brown fox jumps over the lazy dog. " * 12]
    return [texts[i % len(texts)] for i in range(count)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="mini")
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--seq_length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--vocab", default="data/vocab.txt")
    parser.add_argument("--corpus", default="data/wiki/documents.txt")
    parser.add_argument("--groupbert_dir", help="an exported version folder (default: export)")
    parser.add_argument("--bert_dir", help="an exported version folder (default: export)")
    parser.add_argument("--export_root", help="where to export (default: a temporary folder)")
    args = parser.parse_args(argv)
    s = args.seq_length

    export_root = args.export_root or tempfile.mkdtemp(prefix="groupbert-inference-")
    dirs = {"groupbert": args.groupbert_dir, "bert": args.bert_dir}
    for family in dirs:
        if dirs[family] is None:
            dirs[family] = export(family, args.size, args.vocab, export_root, s)
    loaded = {family: tf.saved_model.load(path) for family, path in dirs.items()}

    fwd = {family: flop_count.forward_flops(GroupBertConfig.from_preset(f"{family}-{args.size}"),
                                            s) for family in dirs}
    load = os.getloadavg()
    print(f"# {common.machine_description()}; "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; load average "
          f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print(f"# {' '.join(sys.argv)}")
    print(f"# SavedModels: {dirs['groupbert']}, {dirs['bert']} (tf.saved_model.load, "
          f"signatures, no XLA); {args.repeats} interleaved rounds after {args.warmup} warm-up "
          f"calls, medians")

    rows, ratio_lines = [], []
    for batch in args.batch_sizes:
        rng = np.random.default_rng(batch)
        ids = {
            "token_ids": tf.constant(rng.integers(1000, 30000, (batch, s)), tf.int32),
            "segment_ids": tf.constant((np.arange(s)[None] >= s // 2).repeat(batch, 0),
                                       tf.int32),
            "padding_mask": tf.constant(np.ones((batch, s)), tf.int32),
        }
        text = tf.constant(sentences(args.corpus, batch))
        candidates = {}
        for family, model in loaded.items():
            token_fn = model.signatures["serve_token_ids"]
            text_fn = model.signatures["serving_default"]
            candidates[(family, "serve_token_ids")] = (lambda f=token_fn: f(**ids))
            candidates[(family, "serving_default (text)")] = (lambda f=text_fn: f(text_a=text))
        times = common.interleaved_timings(candidates, repeats=args.repeats, warmup=args.warmup)
        med = {key: statistics.median(v) for key, v in times.items()}
        for (family, signature), t in med.items():
            ordered = sorted(times[(family, signature)])
            q = statistics.quantiles(ordered, n=4) if len(ordered) >= 2 else [ordered[0]] * 3
            rows.append([str(batch), f"`{family}-{args.size}`", f"`{signature}`",
                         f"{t * 1e3:.1f}", f"{q[0] * 1e3:.1f}-{q[2] * 1e3:.1f}",
                         f"{batch / t:.1f}", f"{batch * fwd[family] / t / 1e9:.1f}"])
        for signature in ("serve_token_ids", "serving_default (text)"):
            g, b = times[("groupbert", signature)], times[("bert", signature)]
            ratio_lines.append(
                f"- batch {batch}, `{signature}`: GroupBERT/BERT time "
                f"{med[('groupbert', signature)] / med[('bert', signature)]:.3f} (median of "
                f"per-round ratios {statistics.median([x / y for x, y in zip(g, b)]):.3f}); "
                f"forward FLOP ratio {fwd['groupbert'] / fwd['bert']:.3f}")
    print(f"\n### exported `{args.size}` SavedModels, S={s}")
    print(common.markdown_table(["batch", "model", "signature", "median ms", "IQR ms", "seq/s",
                                 "GFLOP/s"], rows))
    print("\n".join(ratio_lines))
    load = os.getloadavg()
    print(f"\n# load average at the end {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")


if __name__ == "__main__":
    main()
