"""Input throughput from TFRecord shards against what a mini training step consumes.

The `--tfrecords` training stream (`tfrecord.training_dataset`: interleaved reads, shuffle
buffer, parsing, batching) is timed alone, then the train step of each config on batches of
the same stream; rounds alternate so that machine load hits both alike (docs/data.md).

  .venv/bin/python -m benchmarks.input_throughput --tfrecords='/tmp/shards/*.tfrecord'
"""

import argparse
import json
import os
import time

import keras
import tensorflow as tf

from groupbert_tf.config import GroupBertConfig
from training import trainer
from training.data import tfrecord


def _input_examples_per_s(pattern, batch_size, batches, seed):
    dataset = tfrecord.training_dataset(pattern, 128, 20, batch_size, seed=seed, check=False)
    iterator = iter(dataset)
    for _ in range(20):  # Fill the shuffle buffer, start the readers.
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def _step_seconds(model, pattern, batch_size, steps):
    dataset = tfrecord.training_dataset(pattern, 128, 20, batch_size, check=False)
    model.fit(dataset.take(3), epochs=1, steps_per_epoch=3, verbose=0)  # Compile, warm up.
    start = time.perf_counter()
    model.fit(dataset.take(steps), epochs=1, steps_per_epoch=steps, verbose=0)
    return (time.perf_counter() - start) / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tfrecords", required=True)
    parser.add_argument("--configs", default="bert-mini,groupbert-mini")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    settings = trainer.TrainingSettings(model_dir="/tmp/unused", train_steps=1000,
                                        global_batch_size=args.batch_size, seq_length=128,
                                        max_predictions_per_seq=20, compile_mode="xla")
    models = {}
    for name in args.configs.split(","):
        keras.utils.set_random_seed(0)
        models[name] = trainer.build_model(GroupBertConfig.from_preset(name), settings)
    results = {"input_examples_per_s": [], **{f"{n}_step_s": [] for n in models}}
    for round_ in range(args.rounds):
        results["input_examples_per_s"].append(
            _input_examples_per_s(args.tfrecords, args.batch_size, args.batches, round_))
        for name, model in models.items():
            results[f"{name}_step_s"].append(
                _step_seconds(model, args.tfrecords, args.batch_size, args.steps))
    best_input = max(results["input_examples_per_s"])
    fastest = min(min(v) for k, v in results.items() if k.endswith("_step_s"))
    summary = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average": os.getloadavg(), "cpus": os.cpu_count(), "tensorflow": tf.__version__,
        "batch_size": args.batch_size, **results,
        "fastest_step_consumes_examples_per_s": args.batch_size / fastest,
        "ratio_input_to_fastest_step": best_input * fastest / args.batch_size,
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
