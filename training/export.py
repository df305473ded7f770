"""`python -m training.export`: a trained checkpoint -> a TF Serving SavedModel (raw text in).

  python -m training.export --model_dir=runs/pretrain --task=pretraining \
      --export_dir=saved_models/groupbert-mini

The model config is the one the run recorded in `<model_dir>/config.json`
(training.run_folder); `--config` is for folders that predate those records.

Restores the newest checkpoint of `<model_dir>/checkpoints` (for fine-tuning runs, whose best
epoch lives in `<model_dir>/best`, that one when `checkpoints/` has none) or `--checkpoint`,
weights only (`expect_partial`: optimizer slots are skipped), and writes
`<export_dir>/<version>/` with `groupbert_tf.export` (signatures: docs/serving.md).

Task models come from TASK_MODEL_BUILDERS: `builder(config, model_dir) -> keras.Model` with
the same variable structure as the model the checkpoint was written from. Register another
task with `register_task_model(name, builder, output_task)`.
"""

import os
import sys

import tensorflow as tf
from absl import app, flags, logging

from groupbert_tf import export
from groupbert_tf.config import GroupBertConfig
from training import cli, flag_checks, run_folder, trainer

FLAGS = flags.FLAGS


def _pretraining_model(config, model_dir):
    del model_dir
    return trainer.PretrainingModel(config=config)


def _num_labels(model_dir):
    path = os.path.join(model_dir, "labels.txt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: the classification export needs the label "
                                "list that training.finetune writes there")
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def _classification_model(config, model_dir):
    # The fine-tuning model class (training.finetune), so checkpoint paths match.
    from training.finetune import ClassifierModel  # pylint: disable=import-outside-toplevel
    return ClassifierModel(config=config, num_labels=_num_labels(model_dir), dropout=0.0)


def _span_model(config, model_dir):
    del model_dir
    from training.finetune import SpanLabelerModel  # pylint: disable=import-outside-toplevel
    return SpanLabelerModel(config=config, dropout=0.0)


# task -> (builder(config, model_dir) -> keras.Model, the export.TASK_OUTPUTS task)
TASK_MODEL_BUILDERS = {
    "pretraining": (_pretraining_model, "pretraining"),
    "classification": (_classification_model, "classification"),
    "span": (_span_model, "span"),
}


def register_task_model(name, builder, output_task):
    """Adds a `--task`: `builder(config, model_dir)` builds the model to restore."""
    if output_task not in export.TASK_OUTPUTS:
        raise ValueError(f"output_task must be one of {sorted(export.TASK_OUTPUTS)}")
    TASK_MODEL_BUILDERS[name] = (builder, output_task)


def restore_model(task, config, model_dir, checkpoint=None):
    """Builds the task's model and restores its weights; returns (model, checkpoint path)."""
    if task not in TASK_MODEL_BUILDERS:
        raise ValueError(f"--task must be one of {sorted(TASK_MODEL_BUILDERS)}, got {task!r}")
    builder, _ = TASK_MODEL_BUILDERS[task]
    model = builder(config, model_dir)
    path = trainer.find_checkpoint(checkpoint or model_dir,
                                   "--checkpoint" if checkpoint else "--model_dir")
    try:
        # `read`, not `restore`: no save_counter to match (best/ is written without one).
        status = tf.train.Checkpoint(model=model).read(path).expect_partial()
        # Every model variable must come from the checkpoint (optimizer state may be skipped).
        status.assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as error:
        raise ValueError(f"checkpoint {path} does not fit a {task} model of this config "
                         f"({str(error).splitlines()[0]}); is --config the run's?") from None
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

    `compute_dtype="bfloat16"` serves in bfloat16 (export.with_compute_dtype).
    """
    from training import data  # pylint: disable=import-outside-toplevel
    config = resolve_config(config, checkpoint or model_dir)
    model, path = restore_model(task, config, model_dir, checkpoint)
    logging.info("Restored weights from %s", path)
    vocab = vocab or data.default_vocab_path()
    _, output_task = TASK_MODEL_BUILDERS[task]
    if output_task == "pretraining":
        written = export.export_pretraining_model(model, vocab, export_dir,
                                                  seq_length=seq_length, version=version,
                                                  compute_dtype=compute_dtype)
    else:
        written = export.export_saved_model(model, vocab, export_dir, output_task,
                                            seq_length=seq_length, version=version,
                                            lower_case=lower_case, compute_dtype=compute_dtype)
    labels = os.path.join(model_dir, "labels.txt")
    if output_task == "classification" and os.path.isfile(labels):
        # Same place as training.finetune: index i of `probabilities` is line i.
        tf.io.gfile.copy(labels, os.path.join(written, "labels.txt"), overwrite=True)
    logging.info("Exported %s model to %s", task, written)
    return written


def define_flags():
    flags.DEFINE_string("model_dir", None, "Training run folder (its checkpoints/ or best).")
    flags.DEFINE_string("config", None, "Preset name or GroupBertConfig JSON file (default: "
                        "the config.json that the training run recorded in --model_dir).")
    flags.DEFINE_enum("task", "pretraining", sorted(TASK_MODEL_BUILDERS), "Model to export.")
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


def main(argv):
    del argv
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
