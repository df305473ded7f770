"""Same quality in bfloat16: pre-training loss curves, bfloat16 against float32.

Pre-trains each model on the default corpus (the `make pretrain` recipe: batch 32, seq 128,
LAMB) once per precision, and a second float32 run with another initialisation seed (same
data): the float32 seed-to-seed difference is the yardstick for the bfloat16-to-float32
difference. Every `--eval_every` steps the held-out MLM loss is computed on the validation
documents (fixed masks; no Keras metric is touched, so training logs stay intact). Each run
appends its curve to --results as soon as it finishes; a rerun skips the runs already there.

    python -m benchmarks.precision_quality --models groupbert-mini bert-mini --steps 300
    python -m benchmarks.precision_quality --report   # docs table from the results
"""

import argparse
import json
import os
import sys
import tempfile

RUNS = (("float32", "xla", 0), ("mixed_bfloat16", "graph", 0), ("float32", "xla", 1))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["groupbert-mini", "bert-mini"])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval_every", type=int, default=50)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=1e-2)
    parser.add_argument("--results", default="docs/results/precision_quality.jsonl")
    parser.add_argument("--report", action="store_true")
    return parser.parse_args(argv)


def _done(path):
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        runs = [json.loads(line) for line in f if line.strip()]
    return {(r["model"], r["precision"], r["init_seed"]): r for r in runs}


def run_one(model_name, precision, compile_mode, init_seed, args):
    import keras
    import tensorflow as tf
    from groupbert_tf.config import GroupBertConfig
    from training import trainer
    from training.data import download, pretraining_data

    corpus, vocab = [download.default_corpus_path()], download.default_vocab_path()
    common = dict(seq_length=128, max_predictions_per_seq=20, validation_fraction=0.01)
    validation = pretraining_data.pretraining_dataset(
        corpus, vocab, args.batch_size, split="validation", seed=0, **common)

    class ValidationCurve(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.curve, self.train = [], []
            self._sum, self._predict = 0.0, None

        def _validation_loss(self):
            if self._predict is None:
                self._predict = tf.function(lambda x: self.model(x, training=False))
            sums = counts = 0.0
            for x, y in validation:
                y_pred = self._predict(x)
                sums += float(self.model.loss_sums(y, y_pred)["mlm"])
                counts += float(self.model.loss_counts(y)["mlm"])
            return sums / counts

        def on_train_batch_end(self, batch, logs=None):
            # Keras logs the running mean of the loss: recover this step's value.
            step = batch + 1
            total = logs["loss"] * step
            self.train.append(total - self._sum)
            self._sum = total
            if step % args.eval_every == 0:
                self.curve.append((step, self._validation_loss()))

    config = GroupBertConfig.from_preset(model_name)
    curve = ValidationCurve()
    keras.utils.set_random_seed(init_seed)
    settings = trainer.TrainingSettings(
        model_dir=tempfile.mkdtemp(prefix="precision-quality-"), train_steps=args.steps,
        global_batch_size=args.batch_size, seq_length=128, max_predictions_per_seq=20,
        learning_rate=args.learning_rate, warmup_steps=max(args.steps // 10, 1),
        checkpoint_every=args.steps, log_every=args.eval_every, precision=precision,
        compile_mode=compile_mode, verbose=0)
    trainer.pretrain(config, settings, tf.distribute.get_strategy(),
                     lambda start: pretraining_data.pretraining_dataset(
                         corpus, vocab, args.batch_size, split="train", seed=start, **common),
                     callbacks=[curve])
    return {"model": model_name, "precision": precision, "compile_mode": compile_mode,
            "init_seed": init_seed, "steps": args.steps, "batch_size": args.batch_size,
            "learning_rate": args.learning_rate, "validation_mlm_loss": curve.curve,
            "train_loss": curve.train}


def report(path):
    done = _done(path)
    rows = []
    for model in sorted({key[0] for key in done}):
        runs = {key[1:]: run for key, run in done.items() if key[0] == model}
        f32, bf16, f32_other = (runs.get(k) for k in (("float32", 0), ("mixed_bfloat16", 0),
                                                       ("float32", 1)))
        if not (f32 and bf16 and f32_other):
            continue
        for (step, a), (_, b), (_, c) in zip(f32["validation_mlm_loss"],
                                             bf16["validation_mlm_loss"],
                                             f32_other["validation_mlm_loss"]):
            rows.append(f"| {model} | {step} | {a:.3f} | {b:.3f} | {b - a:+.3f} | {c:.3f} | "
                        f"{c - a:+.3f} |")
    print("| model | step | float32 | bfloat16 | bf16 - f32 | float32, seed 1 | "
          "seed 1 - seed 0 |\n|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


def main(argv=None):
    args = parse_args(argv)
    if args.report:
        return report(args.results)
    done = _done(args.results)
    os.makedirs(os.path.dirname(args.results) or ".", exist_ok=True)
    for model in args.models:
        for precision, compile_mode, seed in RUNS:
            if (model, precision, seed) in done:
                continue
            print(f"=== {model} {precision}/{compile_mode} seed {seed}", flush=True)
            result = run_one(model, precision, compile_mode, seed, args)
            with open(args.results, "a") as f:
                f.write(json.dumps(result) + "\n")
            print(json.dumps(result["validation_mlm_loss"]), flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
