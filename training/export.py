"""`python -m training.export`: a trained checkpoint -> a TF Serving SavedModel (raw text in).

  python -m training.export --model_dir=runs/pretrain --task=pretraining \
      --export_dir=saved_models/groupbert-mini

The model config is the one the run recorded in `<model_dir>/config.json`
(training.run_folder); `--config` is for folders that predate those records.

Restores the newest checkpoint of `<model_dir>/checkpoints` (for fine-tuning runs, whose best
epoch lives in `<model_dir>/best`, that one when `checkpoints/` has none) or `--checkpoint`,
weights only (`expect_partial`: optimizer slots are skipped), and writes
`<export_dir>/<version>/` with `groupbert_tf.export` (signatures: docs/serving.md).

The task (`--task`, default: the one the run recorded, else pretraining) rebuilds its model
(training/tasks: the classifier reads its label count from `<model_dir>/labels.txt`).
"""

import os
import sys

import tensorflow as tf
from absl import app, flags, logging

from groupbert_tf import export
from groupbert_tf.config import GroupBertConfig
from training import checkpointing, cli, flag_checks, run_folder, tasks, trainer
from training import settings as settings_lib

FLAGS = flags.FLAGS


def recorded_task(model_dir):
    """The task a run folder recorded (fine-tuning runs record one), else pretraining."""
    recorded = (run_folder.read_settings(model_dir) or {}).get("settings") or {}
    return recorded.get("task", "pretraining")


def restore_model(task, config, model_dir, checkpoint=None):
    """Builds the task's model and restores its weights; returns (model, checkpoint path)."""
    model = tasks.get(task).restore_model(config, model_dir)
    flag = "--checkpoint" if checkpoint else "--model_dir"
    path = trainer.find_checkpoint(checkpoint or model_dir, flag)
    try:
        checkpointing.load_weights(model, path, flag=flag)
    except ValueError as error:
        raise ValueError(f"{error} (a {task} model of this config: is --task or --config "
                         "the run's?)") from None
    return model, path


def resolve_config(config, model_dir):
    """`config` (preset, JSON file or GroupBertConfig), or, when None, the one the run in
    `model_dir` recorded; an explicit config that contradicts the record is refused."""
    recorded = run_folder.read_config(model_dir, search_run_folder=True)
    if config is None:
        if recorded is None:
            raise ValueError(f"--model_dir {model_dir} records no {run_folder.CONFIG} "
                             "(a run from before run folders recorded it): pass --config")
        return recorded
    config = config if isinstance(config, GroupBertConfig) else GroupBertConfig.load(config)
    changed = recorded and run_folder.config_changes(
        recorded, config, ignore=("hidden_dropout", "attention_dropout"))
    if changed:
        raise ValueError(f"--config differs from the config recorded in {model_dir}: "
                         f"{', '.join(changed)}; leave --config out to use the recorded one")
    return config


def export_from_checkpoint(model_dir, config, task, export_dir, vocab=None, seq_length=128,
                           version=None, checkpoint=None, lower_case=True,
                           compute_dtype="float32"):
    """Restores a checkpoint and exports it; returns the version folder written.

    `task` None: the run's recorded task. `compute_dtype="bfloat16"` serves in bfloat16
    (export.with_compute_dtype).
    """
    from training.data import download  # pylint: disable=import-outside-toplevel
    task = task or recorded_task(model_dir)
    config = resolve_config(config, checkpoint or model_dir)
    model, path = restore_model(task, config, model_dir, checkpoint)
    logging.info("Restored weights from %s", path)
    written = export.export_saved_model(model, vocab or download.default_vocab_path(), export_dir,
                                        seq_length=seq_length, version=version,
                                        lower_case=lower_case, compute_dtype=compute_dtype)
    labels = os.path.join(model_dir, tasks.classification.LABELS)
    if os.path.isfile(labels):
        # Same place as training.finetune: index i of `probabilities` is line i.
        tf.io.gfile.copy(labels, os.path.join(written, tasks.classification.LABELS),
                         overwrite=True)
    logging.info("Exported %s model to %s", task, written)
    return written


def define_flags():
    flags.DEFINE_string("model_dir", None, "Training run folder (its checkpoints/ or best).")
    flags.DEFINE_string("config", None, "Preset name or GroupBertConfig JSON file (default: "
                        "the config.json that the training run recorded in --model_dir).")
    flags.DEFINE_enum("task", None, sorted(tasks.TASKS), "Model to export (default: the task "
                      "the run in --model_dir recorded, else pretraining).")
    flags.DEFINE_string("export_dir", "saved_models/groupbert-mini",
                        "Model folder; the export goes to <export_dir>/<version>.")
    flags.DEFINE_string("checkpoint", None, "Checkpoint prefix or folder (default: newest).")
    flags.DEFINE_string("vocab", None, "WordPiece vocab (default: bert-base-uncased).")
    flags.DEFINE_bool("lower_case", True, "Lower-case and strip accents (uncased vocab).")
    flags.DEFINE_integer("seq_length", 128, "Packed length of the text signatures.")
    flags.DEFINE_integer("version", None, "Version number (default: next free integer).")
    flags.DEFINE_enum("compute_dtype", "float32", sorted(export.COMPUTE_DTYPE_POLICIES),
                      "Serving compute dtype: bfloat16 runs matmuls on oneDNN's bf16 kernels "
                      "(AVX512_BF16 / AMX CPUs); LayerNorms and outputs stay float32.")
    flags.mark_flag_as_required("model_dir")
    settings_lib.define_overrides_flag()


def main(argv):
    del argv
    settings_lib.apply_overrides(FLAGS)
    flag_checks.check(FLAGS)
    run_folder.check_writable(FLAGS.export_dir, "--export_dir")
    path = export_from_checkpoint(FLAGS.model_dir, FLAGS.config, FLAGS.task, FLAGS.export_dir,
                                  vocab=FLAGS.vocab, seq_length=FLAGS.seq_length,
                                  version=FLAGS.version, checkpoint=FLAGS.checkpoint,
                                  lower_case=FLAGS.lower_case,
                                  compute_dtype=FLAGS.compute_dtype)
    print(path)


if __name__ == "__main__":
    define_flags()
    app.run(cli.one_line_errors(main, "export"), argv=sys.argv)
