"""Sequence packing: real tokens per second, packed against unpacked, and the loss it reaches.

Both variants run the same model (`training.trainer.build_model`: the pre-training model, its
optimizer and its train step) on rows of the same shape [batch, seq] from the same pipeline
(`training.data.pretraining_data.pretraining_dataset`, default corpus, dynamic masking); the packed
rows hold up to `--max_sequences_per_pack` pairs each. Only the step is timed: batches are
drawn beforehand and cycled. Steps are A/B interleaved (`benchmarks.common`), medians.
Real tokens per step = the batches' mean count of non-padding tokens.

`--loss_steps N` also trains two fresh, identically initialised models on the same number
of real tokens, N unpacked steps and correspondingly fewer packed ones (warmup scaled the same
way), and reports each one's MLM loss on the same unpacked validation split.

    python -m benchmarks.packing --seq_lengths 128 512 --repeats 10
    python -m benchmarks.packing --seq_lengths 128 --loss_steps 200
"""

import argparse
import datetime
import itertools
import os
import sys

import numpy as np

from training import performance


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="groupbert-mini")
    parser.add_argument("--seq_lengths", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[32, 8],
                        help="Rows per step, one per --seq_lengths entry.")
    parser.add_argument("--packs", type=int, nargs="+", default=[3, 8],
                        help="max_sequences_per_pack, one per --seq_lengths entry.")
    parser.add_argument("--predictions", type=int, nargs="+", default=[20, 80],
                        help="max_predictions_per_seq, one per --seq_lengths entry.")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batches", type=int, default=8, help="Distinct batches cycled.")
    parser.add_argument("--dupe_factor", type=int, default=1)
    parser.add_argument("--loss_steps", type=int, default=0,
                        help="Unpacked steps of the loss comparison (0: skip it).")
    parser.add_argument("--loss_match", choices=["rows", "steps"], default="rows",
                        help="rows: both take --batch_sizes rows per step, packed takes fewer "
                        "steps; steps: both take --loss_steps steps, unpacked takes more rows "
                        "per step (as many real tokens as a packed step).")
    parser.add_argument("--throughput", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--learning_rate", type=float, default=5e-3)
    parser.add_argument("--precision", default="float32", choices=performance.PRECISIONS)
    parser.add_argument("--compile_mode", default="xla", choices=performance.COMPILE_MODES)
    args = parser.parse_args(argv)
    n = len(args.seq_lengths)
    for name in ("batch_sizes", "packs", "predictions"):
        if len(getattr(args, name)) < n:
            parser.error(f"--{name} needs one value per --seq_lengths entry ({n})")
    return args


def _settings(seq_length, batch_size, predictions, train_steps, warmup_steps, args):
    from training import trainer

    return trainer.TrainingSettings(
        model_dir="", train_steps=train_steps, global_batch_size=batch_size,
        seq_length=seq_length, max_predictions_per_seq=predictions, optimizer="lamb",
        learning_rate=args.learning_rate, warmup_steps=warmup_steps, precision=args.precision,
        compile_mode=args.compile_mode)


def _dataset(seq_length, batch_size, predictions, pack, args, split="train", seed=0):
    from training.data import download, pretraining_data

    return pretraining_data.pretraining_dataset(
        download.default_corpus_path(), download.default_vocab_path(), batch_size, split=split,
        seq_length=seq_length, max_predictions_per_seq=predictions,
        dupe_factor=args.dupe_factor, seed=seed, max_sequences_per_pack=pack or None)


def _real_tokens(batches):
    return float(np.mean([float(x["padding_mask"].numpy().sum()) for x, _ in batches]))


def throughput(config, seq_length, batch_size, pack, predictions, args):
    from benchmarks import common
    from training import trainer

    batches = {name: list(_dataset(seq_length, batch_size, predictions, k, args)
                          .take(args.batches))
               for name, k in (("unpacked", 0), ("packed", pack))}
    tokens = {name: _real_tokens(b) for name, b in batches.items()}
    model = trainer.build_model(config, _settings(seq_length, batch_size, predictions,
                                                  10_000, 10, args))
    cycles = {name: itertools.cycle(b) for name, b in batches.items()}
    candidates = {name: (lambda c=cycle: model.train_on_batch(*next(c)))
                  for name, cycle in cycles.items()}
    times = common.interleaved_timings(candidates, repeats=args.repeats, warmup=args.warmup)
    summary = common.summarize(times)
    rows, rate = [], {}
    for name in ("unpacked", "packed"):
        med = summary[name]["median"]
        rate[name] = tokens[name] / med
        rows.append([name, f"{tokens[name] / (batch_size * seq_length):.1%}",
                     f"{1e3 * med:.0f}", f"{1e3 * summary[name]['q1']:.0f}-"
                     f"{1e3 * summary[name]['q3']:.0f}", f"{rate[name]:.0f}"])
    print(f"\n## {config.name if hasattr(config, 'name') else args.config}, seq {seq_length}, "
          f"batch {batch_size} rows, max_sequences_per_pack {pack}")
    print(common.markdown_table(["rows", "real tokens / position", "step ms (median)",
                                 "step ms (IQR)", "real tokens/s"], rows))
    ratio = rate["packed"] / rate["unpacked"]
    step_ratio = summary["packed"]["median"] / summary["unpacked"]["median"]
    print(f"- packed / unpacked real tokens/s: {ratio:.2f}x (step time ratio {step_ratio:.3f})")
    return {"tokens": tokens, "summary": summary, "ratio": ratio}


def loss_comparison(config, seq_length, batch_size, pack, predictions, args):
    import keras

    from training import trainer

    validation = list(_dataset(seq_length, batch_size, predictions, 0, args,
                               split="validation", seed=1))
    probe = {name: _real_tokens(list(_dataset(seq_length, batch_size, predictions, k, args)
                                     .take(args.batches)))
             for name, k in (("unpacked", 0), ("packed", pack))}
    unpacked_steps, unpacked_rows = args.loss_steps, batch_size
    if args.loss_match == "rows":
        packed_steps = max(1, round(unpacked_steps * probe["unpacked"] / probe["packed"]))
    else:
        packed_steps = unpacked_steps
        unpacked_rows = round(batch_size * probe["packed"] / probe["unpacked"])
    warmup = max(1, unpacked_steps // 10)
    results = {}
    for name, k, steps, rows in (("unpacked", 0, unpacked_steps, unpacked_rows),
                                 ("packed", pack, packed_steps, batch_size)):
        keras.utils.set_random_seed(0)
        model = trainer.build_model(config, _settings(
            seq_length, rows, predictions, steps,
            max(1, round(warmup * steps / unpacked_steps)), args))
        train = _dataset(seq_length, rows, predictions, k, args, seed=2)
        real = 0.0
        for x, y in train.take(steps):
            model.train_on_batch(x, y)
            real += float(x["padding_mask"].numpy().sum())
        losses = [model.test_on_batch(x, y, return_dict=True)["mlm_loss"] for x, y in validation]
        results[name] = {"steps": steps, "rows": rows, "real_tokens": real,
                         "validation_mlm_loss": float(np.mean(losses))}
    print(f"\n## Validation MLM loss after the same real tokens, seq {seq_length} "
          f"(matched: {args.loss_match})")
    from benchmarks import common
    print(common.markdown_table(
        ["", "rows per step", "steps", "real tokens trained", "validation MLM loss"],
        [[name, r["rows"], r["steps"], f"{r['real_tokens']:.0f}",
          f"{r['validation_mlm_loss']:.3f}"] for name, r in results.items()]))
    print(f"- validation batches: {len(validation)} of {batch_size} unpacked rows")
    return results


def main(argv=None):
    args = parse_args(argv)
    import keras

    from benchmarks import common
    from groupbert_tf.config import GroupBertConfig

    config = GroupBertConfig.load(args.config)
    now = datetime.datetime.now(datetime.timezone.utc)
    load = os.getloadavg()
    print(f"# {common.machine_description()}, Keras {keras.__version__}; {now:%Y-%m-%d %H:%M} "
          f"UTC; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print(f"# {' '.join(sys.argv)}")
    print(f"# {args.config}, LAMB train step, precision {args.precision}, compile mode "
          f"{args.compile_mode}; {args.repeats} interleaved rounds after {args.warmup} warm-up "
          "calls; medians")
    for i, seq_length in enumerate(args.seq_lengths):
        shape = (seq_length, args.batch_sizes[i], args.packs[i], args.predictions[i])
        if args.throughput:
            throughput(config, *shape, args)
        if args.loss_steps:
            loss_comparison(config, *shape, args)
    load = os.getloadavg()
    print(f"\n# load average at the end {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")


if __name__ == "__main__":
    main()
