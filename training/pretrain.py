"""`python -m training.pretrain`: MLM + NSP pre-training with `model.fit`, then a SavedModel.

Defaults are the README's `make pretrain`: GroupBERT-mini on the built-in Wikipedia corpus,
seq 128, sized to finish in about ten minutes on 2 CPU cores (docs/pretraining.md).
Flag precedence: command line > `--overrides` JSON file > defaults.
"""

import dataclasses
import json
import os
import sys
from typing import List, Optional

import keras
from absl import app, flags, logging

from groupbert_tf import export
from groupbert_tf.config import GroupBertConfig
from training import checkpointing, cli, flag_checks, run_folder
from training.data import download, pretraining_data, tfrecord
from training import performance, settings as settings_lib, trainer
from training import strategy as strategy_lib
from training.settings import setting

FLAGS = flags.FLAGS


@dataclasses.dataclass
class PretrainDataSettings:
    """The data, model and export flags of `python -m training.pretrain` (the training
    flags are `trainer.TrainingSettings`)."""

    config: str = setting("groupbert-mini", "Preset name or a GroupBertConfig JSON file.")
    corpus: Optional[List[str]] = setting(
        None, "Text files, one document per blank-line-separated block (default: the "
        "Wikipedia extracts of `python -m training.data fetch`).")
    vocab: Optional[str] = setting(None, "WordPiece vocab file (default: bert-base-uncased).")
    tfrecords: Optional[List[str]] = setting(
        None, "Pre-made BERT pre-training TFRecords (Google/NVIDIA/Graphcore format) instead "
        "of --corpus.")
    seed: int = setting(0, "Seed for data and initialisation.")
    shuffle: bool = setting(
        True, "Shuffle --tfrecords files and examples (seeded by --seed); --noshuffle reads "
        "them in file order. Either way a resumed run skips the records already trained on "
        "and continues the same stream.")
    shuffle_buffer: int = setting(10_000, "--tfrecords examples in the shuffle buffer.")
    validation_fraction: float = setting(0.01, "Share of documents held out for validation.")
    max_sequences_per_pack: int = setting(
        0, "Pack up to this many pairs per row (docs/packing.md; e.g. 3 at seq 128, 8 at 512); "
        "--batch_size then counts rows. With --tfrecords: the files hold packed rows with "
        "this many slots. 0: one pair per row. Validation stays unpacked.")
    export_dir: str = setting("saved_models/groupbert-mini", "SavedModel export (TF Serving "
                              "layout <dir>/<version>); empty: no export.")


settings_lib.define_flags(PretrainDataSettings)
settings_lib.define_flags(trainer.TrainingSettings)
settings_lib.define_overrides_flag(what="GroupBertConfig fields and/or flag names")
strategy_lib.define_flags()
performance.define_flags()


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
    names = settings_lib.flag_names(PretrainDataSettings, trainer.TrainingSettings)
    return {name: FLAGS[name].value for name in names if name not in _NOT_RECORDED}


def _main(argv):
    del argv
    if checkpointing.candidates(os.path.join(FLAGS.model_dir, "checkpoints")):
        run_folder.restore_flags(FLAGS, FLAGS.model_dir, _run_flags())
    config_overrides = settings_lib.apply_overrides(
        FLAGS, [f.name for f in dataclasses.fields(GroupBertConfig)])
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
    vocab = FLAGS.vocab or download.default_vocab_path()
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
        corpus = FLAGS.corpus or [download.default_corpus_path()]

        def train_dataset_fn(start_step):
            return pretraining_data.pretraining_dataset(
                corpus, vocab, FLAGS.batch_size, split="train", seed=FLAGS.seed + start_step,
                max_sequences_per_pack=FLAGS.max_sequences_per_pack, **dataset_args)

        if FLAGS.validation_fraction > 0:
            validation = pretraining_data.pretraining_dataset(
                corpus, vocab, FLAGS.batch_size, split="validation", seed=FLAGS.seed,
                **dataset_args)

    settings = settings_lib.from_flags(trainer.TrainingSettings)
    keras.utils.set_random_seed(FLAGS.seed)
    model, throughput, results = trainer.pretrain(config, settings, strategy, train_dataset_fn,
                                                  validation, flag_values=_run_flags())
    summary = {"step": int(model.optimizer.iterations.numpy()), "model_dir": FLAGS.model_dir}
    if throughput.history:
        summary.update(throughput.history[-1])
    if results:
        summary.update({f"validation_{k}": float(v) for k, v in results.items()})
    if FLAGS.export_dir and strategy.extended.should_checkpoint:
        summary["export"] = export.export_saved_model(model, vocab, FLAGS.export_dir,
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
