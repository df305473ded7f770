"""`python -m training.pretrain`: MLM + NSP pre-training with `model.fit`, then a SavedModel.

Defaults are the README's `make pretrain`: GroupBERT-mini on the built-in Wikipedia corpus,
seq 128, sized to finish in about ten minutes on 2 CPU cores (docs/pretraining.md).
Flag precedence: command line > `--overrides` JSON file > defaults.
"""

import dataclasses
import json
import os
import sys

import keras
from absl import app, flags, logging

from groupbert_tf import export  # noqa: F401  (written next)
from groupbert_tf.config import GroupBertConfig
from training import checkpointing, cli, data, flag_checks, pretraining_data, run_folder, tfrecord
from training import performance, trainer
from training import strategy as strategy_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("config", "groupbert-mini", "Preset name or a GroupBertConfig JSON file.")
flags.DEFINE_string("overrides", None,
                    "JSON file of overrides: GroupBertConfig fields and/or flag names.")
flags.DEFINE_string("model_dir", "runs/pretrain",
                    "Checkpoints and TensorBoard logs; a run resumes from the checkpoint here.")
flags.DEFINE_string("init_checkpoint", None,
                    "Load weights only (not optimizer state or step) from this checkpoint "
                    "(a run folder, its checkpoints/ or a prefix); without --config, the "
                    "config that run recorded.")
flags.DEFINE_list("corpus", None,
                  "Text files, one document per blank-line-separated block "
                  "(default: the Wikipedia extracts of `python -m training.data fetch`).")
flags.DEFINE_string("vocab", None, "WordPiece vocab file (default: bert-base-uncased).")
flags.DEFINE_list("tfrecords", None,
                  "Pre-made BERT pre-training TFRecords (Google/NVIDIA/Graphcore format) "
                  "instead of --corpus.")
flags.DEFINE_integer("train_steps", 200,
                     "Optimizer steps (the default fits ~10 minutes on 2 CPU cores).")
flags.DEFINE_integer("batch_size", 32, "Global batch size (split across replicas).")
flags.DEFINE_integer("seq_length", 128, "Sequence length.")
flags.DEFINE_integer("max_predictions_per_seq", 20, "Static number of MLM predictions.")
flags.DEFINE_enum("optimizer", "lamb", ["lamb", "adamw"], "Optimizer.")
flags.DEFINE_float("learning_rate", 1e-2,
                   "Peak learning rate (LAMB; the best of a sweep at small sizes, docs/results.md).")
flags.DEFINE_integer("warmup_steps", 20, "Warmup steps.")
flags.DEFINE_float("warmup_power", 0.5, "Warmup shape: 1 = linear, 0.5 = square root.")
flags.DEFINE_float("weight_decay", 0.01, "Weight decay (not on biases and LayerNorm).")
flags.DEFINE_integer("gradient_accumulation_steps", 1, "Batches per optimizer step.")
flags.DEFINE_integer("steps_per_execution", 1, "Batches per tf.function call.")
flags.DEFINE_integer("checkpoint_every", 50, "Save a checkpoint every N steps.")
flags.DEFINE_integer("log_every", 50, "Throughput log interval in steps.")
flags.DEFINE_integer("seed", 0, "Seed for data and initialisation.")
flags.DEFINE_bool("shuffle", True,
                  "Shuffle --tfrecords files and examples (seeded by --seed); --noshuffle reads "
                  "them in file order. Either way a resumed run skips the records already "
                  "trained on and continues the same stream.")
flags.DEFINE_integer("shuffle_buffer", 10_000, "--tfrecords examples in the shuffle buffer.",
                     lower_bound=1)
flags.DEFINE_float("validation_fraction", 0.01, "Share of documents held out for validation.")
flags.DEFINE_integer("max_sequences_per_pack", 0,
                     "Pack up to this many pairs per row (docs/packing.md; e.g. 3 at seq 128, 8 "
                     "at 512); --batch_size then counts rows. With --tfrecords: the files hold "
                     "packed rows with this many slots. 0: one pair per row. Validation stays "
                     "unpacked.")
flags.DEFINE_string("export_dir", "saved_models/groupbert-mini",
                    "SavedModel export (TF Serving layout <dir>/<version>); empty: no export.")
flags.DEFINE_integer("verbose", 1, "Keras progress: 1 = progress bar, 2 = one line per epoch.")
strategy_lib.define_flags()
performance.define_flags()


def apply_overrides(path):
    """Reads `--overrides`; returns the GroupBertConfig fields and sets the named flags."""
    try:
        with open(path) as f:
            values = json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"--overrides {path}: {error}") from error
    if not isinstance(values, dict):
        raise ValueError(f"--overrides {path}: expected a JSON object, got "
                         f"{type(values).__name__}")
    config_fields = {f.name for f in dataclasses.fields(GroupBertConfig)}
    config_overrides = {}
    for key, value in values.items():
        if key in config_fields:
            config_overrides[key] = value
        elif key in FLAGS and key not in ("config", "overrides"):
            if not FLAGS[key].present:  # The command line wins.
                try:
                    FLAGS[key].value = FLAGS[key].parser.parse(value)
                except (flags.Error, ValueError, TypeError) as error:
                    raise ValueError(f"--overrides {path}: bad value {value!r} for flag "
                                     f"{key!r}: {error}") from error
        else:
            raise ValueError(f"--overrides {path}: unknown key {key!r} (neither a "
                             "GroupBertConfig field nor a flag)")
    return config_overrides


def load_config(name_or_path, overrides, overrides_path=None):
    """A preset or a JSON file, then the overrides; errors name the flag, file and field."""
    try:
        config = GroupBertConfig.load(name_or_path)
    except ValueError as error:
        raise ValueError(f"--config {error}") from error
    try:
        return config.replace(**overrides)
    except ValueError as error:
        raise ValueError(f"--overrides {overrides_path}: {error}") from error


# Flags that a run folder records and a rerun takes back (all but where the run is and
# what it starts from), so rerunning with only --model_dir resumes the same run.
_NOT_RECORDED = ("model_dir", "config", "overrides", "init_checkpoint")


def _run_flags():
    return {f.name: f.value for f in FLAGS.get_key_flags_for_module(sys.modules[__name__])
            if f.name not in _NOT_RECORDED}


def _main(argv):
    del argv
    if checkpointing.candidates(os.path.join(FLAGS.model_dir, "checkpoints")):
        run_folder.restore_flags(FLAGS, FLAGS.model_dir, _run_flags())
    config_overrides = apply_overrides(FLAGS.overrides) if FLAGS.overrides else {}
    flag_checks.check(FLAGS)  # Before anything is built.
    run_folder.check_writable(FLAGS.model_dir, "--model_dir")
    if FLAGS.export_dir:
        run_folder.check_writable(FLAGS.export_dir, "--export_dir")
    # Process-wide settings first (this may restart the process), then the strategy, which
    # must exist before TensorFlow creates any tensor.
    # (The trainer resolves `auto` again after the restart and logs what it chose and why.)
    performance.ensure_process_flags(performance.resolve(FLAGS.precision, FLAGS.compile_mode,
                                                         FLAGS.strategy))
    config_source = FLAGS.config
    if not FLAGS["config"].present:  # --config is needed only to start a run.
        config_source = (run_folder.config_path(FLAGS.model_dir)
                         or (FLAGS.init_checkpoint and run_folder.config_path(
                             FLAGS.init_checkpoint, search_run_folder=True))
                         or FLAGS.config)
    config = load_config(config_source, config_overrides, FLAGS.overrides)  # Plain Python.
    logging.info("Model config:\n%s", config.to_json())
    strategy, _ = strategy_lib.strategy_from_flags(  # An IPU pipeline is cut between layers.
        num_layers=config.num_layers, batch_size=FLAGS.batch_size,
        gradient_accumulation_steps=FLAGS.gradient_accumulation_steps)
    strategy_lib.per_replica_batch_size(FLAGS.batch_size, strategy.num_replicas_in_sync,
                                        "batch_size")
    vocab = FLAGS.vocab or data.default_vocab_path()
    dataset_args = dict(seq_length=FLAGS.seq_length,
                        max_predictions_per_seq=FLAGS.max_predictions_per_seq,
                        validation_fraction=FLAGS.validation_fraction)
    validation = None
    if FLAGS.tfrecords:
        def train_dataset_fn(start_step):
            # FILE sharding when there are at least as many shards as workers; otherwise every
            # worker reads the same global batches and keeps its replicas' slices (DATA), so
            # N workers train on exactly the batches one process would.
            return tfrecord.training_dataset(
                FLAGS.tfrecords, FLAGS.seq_length, FLAGS.max_predictions_per_seq,
                FLAGS.batch_size, num_workers=strategy_lib.num_workers(strategy),
                start_batch=start_step * FLAGS.gradient_accumulation_steps,
                shuffle=FLAGS.shuffle, seed=FLAGS.seed, shuffle_buffer=FLAGS.shuffle_buffer,
                max_sequences_per_pack=FLAGS.max_sequences_per_pack)
    else:
        corpus = FLAGS.corpus or [data.default_corpus_path()]

        def train_dataset_fn(start_step):
            return pretraining_data.pretraining_dataset(
                corpus, vocab, FLAGS.batch_size, split="train", seed=FLAGS.seed + start_step,
                max_sequences_per_pack=FLAGS.max_sequences_per_pack, **dataset_args)

        if FLAGS.validation_fraction > 0:
            validation = pretraining_data.pretraining_dataset(
                corpus, vocab, FLAGS.batch_size, split="validation", seed=FLAGS.seed,
                **dataset_args)

    settings = trainer.TrainingSettings(
        model_dir=FLAGS.model_dir, train_steps=FLAGS.train_steps,
        global_batch_size=FLAGS.batch_size, seq_length=FLAGS.seq_length,
        max_predictions_per_seq=FLAGS.max_predictions_per_seq, optimizer=FLAGS.optimizer,
        learning_rate=FLAGS.learning_rate, warmup_steps=FLAGS.warmup_steps,
        warmup_power=FLAGS.warmup_power, weight_decay=FLAGS.weight_decay,
        gradient_accumulation_steps=FLAGS.gradient_accumulation_steps,
        steps_per_execution=FLAGS.steps_per_execution, checkpoint_every=FLAGS.checkpoint_every,
        log_every=FLAGS.log_every, init_checkpoint=FLAGS.init_checkpoint,
        precision=FLAGS.precision, compile_mode=FLAGS.compile_mode,
        verbose=FLAGS.verbose)
    keras.utils.set_random_seed(FLAGS.seed)
    model, throughput, results = trainer.pretrain(config, settings, strategy, train_dataset_fn,
                                                  validation, flag_values=_run_flags())
    summary = {"step": int(model.optimizer.iterations.numpy()), "model_dir": FLAGS.model_dir}
    if throughput.history:
        summary.update(throughput.history[-1])
    if results:
        summary.update({f"validation_{k}": float(v) for k, v in results.items()})
    if FLAGS.export_dir and strategy.extended.should_checkpoint:
        summary["export"] = export.export_pretraining_model(model, vocab, FLAGS.export_dir,
                                                            seq_length=FLAGS.seq_length)
    if strategy.extended.should_checkpoint:  # Multi-worker: the chief writes it.
        with open(os.path.join(FLAGS.model_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    logging.info("Summary: %s", json.dumps(summary))


# A configuration, data or divergence error ends the run with a one-line message naming the
# flag, file or field (exit status 1), not a traceback.
main = cli.one_line_errors(_main, "pretrain")

if __name__ == "__main__":
    app.run(main, argv=sys.argv)
