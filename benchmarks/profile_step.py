"""Where a train step's time goes: TensorFlow profiler trace, summed per op type.

Traces a few pre-training train steps (benchmarks/throughput.py's step: loss + gradients) of
each model in one precision and compile mode, reads the trace's XPlane (the protobuf the
TensorBoard profile plugin reads) and sums the host time of every TensorFlow op by type
(_MklMatMul, Conv2DBackpropFilter, Cast, ...) over all threads: op time, which exceeds wall
time where ops run in parallel. XLA clusters show as `_XlaRun`. Prints one markdown table per
model: op time per step and share, largest first.

    python -m benchmarks.profile_step --models groupbert-mini bert-mini \\
        --precision mixed_bfloat16 --compile_mode graph --batch_size 32
"""

import argparse
import collections
import glob
import os
import sys
import tempfile


def parse_args(argv=None):
    from training import performance
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["groupbert-mini", "bert-mini"])
    parser.add_argument("--precision", default="mixed_bfloat16",
                        choices=performance.PRECISIONS[1:])
    parser.add_argument("--compile_mode", default="graph", choices=performance.COMPILE_MODES[1:])
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seq_length", type=int, default=128)
    parser.add_argument("--max_predictions", type=int, default=20)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=14)
    return parser.parse_args(argv)


def op_times(logdir):
    """{op type: total microseconds} of the TensorFlow ops in a profiler trace folder."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2
    totals = collections.Counter()
    for path in glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True):
        space = xplane_pb2.XSpace()
        with open(path, "rb") as f:
            space.ParseFromString(f.read())
        for plane in space.planes:
            if plane.name != "/host:CPU":
                continue
            for line in plane.lines:
                for event in line.events:
                    name = plane.event_metadata[event.metadata_id].name
                    # TensorFlow ops are "node name:OpType"; runtime events use "::".
                    if ":" in name and "::" not in name and "__inference" not in name:
                        totals[name.rsplit(":", 1)[-1]] += event.duration_ps / 1e6
    return totals


def main(argv=None):
    args = parse_args(argv)
    from training import performance
    performance.ensure_process_flags(performance.Performance(args.precision, args.compile_mode,
                                                             "profile"))
    import tensorflow as tf
    from benchmarks import fast_path, throughput

    for model_name in args.models:
        config = fast_path._config(model_name, 0.0)
        inputs, labels = throughput.make_batch(config.vocab_size, args.batch_size,
                                               args.seq_length, args.max_predictions)
        inputs = {k: tf.constant(v) for k, v in inputs.items()}
        labels = {k: tf.constant(v) for k, v in labels.items()}
        model = throughput.build_model("ours", config, inputs, args.precision)
        variables = model.trainable_variables

        @tf.function(jit_compile=args.compile_mode == "xla")
        def step():
            with tf.GradientTape() as tape:
                loss = throughput.pretraining_loss(labels, model(inputs, training=True))
            return loss, tape.gradient(loss, variables)

        step(), step()
        logdir = tempfile.mkdtemp(prefix="profile-")
        tf.profiler.experimental.start(logdir)
        for _ in range(args.steps):
            step()[0].numpy()
        tf.profiler.experimental.stop()
        totals = op_times(logdir)
        total = sum(totals.values())
        print(f"\n### {model_name}, {args.precision} / {args.compile_mode}, B={args.batch_size} "
              f"S={args.seq_length}: {total / args.steps / 1e3:.0f} ms of op time per step")
        print(throughput.table(
            ["op type", "ms/step", "share"],
            [[op, f"{t / args.steps / 1e3:.1f}", f"{t / total:.0%}"]
             for op, t in totals.most_common(args.top)]))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
