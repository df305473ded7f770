"""`python -m training.finetune`: classification or span-extraction fine-tuning, then export.

  python -m training.finetune --task=classification \
      --train_file=data/sentiment/train.tsv --eval_file=data/sentiment/dev.tsv \
      --init_hf_bert=data/minilm --epochs=2 --batch_size=32 --seq_length=64 \
      --learning_rate=5e-5 --model_dir=runs/sentiment --export_dir=saved_models/sentiment

The encoder starts from `--init_checkpoint DIR` (the weights of a `training.pretrain` run:
`DIR/checkpoints`), from `--init_hf_bert DIR` (a Hugging Face BERT folder, BERT mode), or,
with neither, from random initialisation. Only weights are loaded, never optimizer state.
Dropout is set to `--dropout` (0.1) in the encoder and the head, whatever the pre-training
config said (GroupBERT pre-trains without dropout).

AdamW with linear warmup over `--warmup_proportion` of the steps and linear decay to 0.
At the end of every epoch the model is evaluated on `--eval_file` (accuracy for
classification; SQuAD exact match and F1 after best-span decoding for span), the best epoch's
weights are kept in `--model_dir/best/`, restored at the end and exported with the raw-text
signatures of `groupbert_tf.export` (TF Serving layout `<export_dir>/<version>`).
"""

import dataclasses
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from groupbert_tf.models.classifier import GroupBertClassifier
from groupbert_tf.models.encoder import GroupBertEncoder, as_config
from groupbert_tf.models.span_labeler import GroupBertSpanLabeler
from groupbert_tf.tokenization import BertTokenizer
from training import data as data_lib
from training import checkpointing, cli, flag_checks, glue_data, performance, run_folder
from training import squad_data
from training import trainer
from training.optimization import WarmupPolynomialDecay, create_optimizer
from training.train_step import XlaGradientsTrainStep

TASKS = ("classification", "span")
_DROPOUT = ("hidden_dropout", "attention_dropout")  # Set by --dropout, not by the config.


@keras.saving.register_keras_serializable(package="groupbert_tf")
class ClassifierModel(XlaGradientsTrainStep, GroupBertClassifier):
    """GroupBertClassifier with the TensorFlow distributed XLA train step."""


@keras.saving.register_keras_serializable(package="groupbert_tf")
class SpanLabelerModel(XlaGradientsTrainStep, GroupBertSpanLabeler):
    """GroupBertSpanLabeler with the TensorFlow distributed XLA train step."""


@dataclasses.dataclass
class FinetuneSettings:
    """What a fine-tuning run does (the CLI flags)."""

    task: str
    train_file: str
    eval_file: str
    model_dir: str
    # Preset name, JSON file or GroupBertConfig; None: the config recorded in the
    # --init_checkpoint run folder, else groupbert-mini.
    config: Any = None
    init_checkpoint: Optional[str] = None
    init_hf_bert: Optional[str] = None
    vocab: Optional[str] = None
    lower_case: bool = True
    epochs: int = 2
    batch_size: int = 32
    eval_batch_size: int = 64
    seq_length: int = 128
    learning_rate: float = 5e-5
    warmup_proportion: float = 0.1
    weight_decay: float = 0.01
    dropout: float = 0.1
    export_dir: Optional[str] = None
    # Classification data.
    glue_task: str = "auto"
    text_a_column: Optional[str] = None
    text_b_column: Optional[str] = None
    label_column: Optional[str] = None
    no_header: bool = False
    # Pack up to this many training examples per row (docs/packing.md); 0: one per row.
    max_sequences_per_pack: int = 0
    # Span data.
    doc_stride: int = 128
    max_query_length: int = 64
    max_answer_length: int = 30
    max_train_examples: Optional[int] = None
    seed: int = 0
    precision: str = "auto"
    compile_mode: str = "auto"
    verbose: int = 1
    overwrite_best: bool = False  # Replace a previous run's best/ that this run cannot beat.


def _with_dropout(encoder, rate):
    """The same encoder (same weights) with hidden and attention dropout set to `rate`."""
    config = encoder.config
    if config.hidden_dropout == rate and config.attention_dropout == rate:
        return encoder
    rebuilt = GroupBertEncoder(config.replace(hidden_dropout=rate, attention_dropout=rate),
                               name=encoder.name)
    rebuilt.set_weights(encoder.get_weights())
    return rebuilt


def build_encoder(settings: FinetuneSettings):
    """Returns (encoder with fine-tuning dropout, vocab path, sentence saying where from)."""
    if settings.init_checkpoint and settings.init_hf_bert:
        raise ValueError("pass --init_checkpoint or --init_hf_bert, not both")
    if settings.init_hf_bert:
        from groupbert_tf.checkpoints import load_hf_bert  # pylint: disable=import-outside-toplevel
        encoder = _with_dropout(load_hf_bert(settings.init_hf_bert), settings.dropout)
        vocab = settings.vocab or os.path.join(settings.init_hf_bert, "vocab.txt")
        how = f"Initialised encoder weights from the Hugging Face BERT in {settings.init_hf_bert}"
        return encoder, vocab, how
    vocab = settings.vocab or data_lib.default_vocab_path()
    recorded = (run_folder.read_config(settings.init_checkpoint, search_run_folder=True)
                if settings.init_checkpoint else None)
    config = as_config(settings.config or recorded or "groupbert-mini")
    if recorded is not None:
        changed = run_folder.config_changes(recorded, config, ignore=_DROPOUT)
        if changed:
            raise ValueError(f"--config differs from the config recorded with "
                             f"--init_checkpoint {settings.init_checkpoint}: "
                             f"{', '.join(changed)}; leave --config out to use the recorded one")
    config = config.replace(hidden_dropout=settings.dropout, attention_dropout=settings.dropout)
    if settings.init_checkpoint:
        path = trainer.find_checkpoint(settings.init_checkpoint)
        pretrainer = trainer.PretrainingModel(config=config)
        encoder_variables = pretrainer.encoder.weights
        # NaN sentinels: a variable the checkpoint does not restore stays NaN, and is caught
        # below (tf.train.Checkpoint silently skips objects it cannot see).
        for variable in encoder_variables:
            variable.assign(np.full(variable.shape, np.nan, variable.dtype))
        status = tf.train.Checkpoint(model=pretrainer).restore(path)
        status.expect_partial()
        status.assert_existing_objects_matched()
        missing = [v.path for v in encoder_variables if np.isnan(v.numpy()).any()]
        if missing:
            raise ValueError(
                f"--init_checkpoint {path} lacks {len(missing)} of the {len(encoder_variables)} "
                f"encoder variables (first: {missing[:3]}); refusing to fine-tune from partly "
                "random weights")
        how = (f"Initialised encoder weights only from pre-training checkpoint {path} "
               "(heads, optimizer state and step are new)")
        return pretrainer.encoder, vocab, how
    return GroupBertEncoder(config), vocab, "Encoder from random initialisation (no checkpoint)"


class BestCheckpoint(keras.callbacks.Callback):
    """Keeps the weights of the epoch with the highest `monitor` in `directory`, across reruns.

    A rerun into the same folder starts from the recorded best and replaces it only with a
    better epoch. `identity` (task, labels, eval file, model) is what a recorded best must
    match to be comparable and restorable; another one is refused unless `overwrite`.
    """

    def __init__(self, directory, monitor, identity=None, overwrite=False):
        super().__init__()
        self.directory = directory
        self.monitor = monitor
        self.identity = identity or {}
        self.history: List[Dict[str, float]] = []
        self.previous = self._previous_best(overwrite)
        self.best = self.previous[monitor] if self.previous else -np.inf
        self.best_epoch = None  # Of this run.

    def _previous_best(self, overwrite):
        checkpointing.remove_temporary_saves(self.directory)
        path = os.path.join(self.directory, "best.json")
        if not os.path.isfile(path):
            return None
        try:
            with open(path, encoding="utf-8") as f:
                record = json.load(f)
        except (OSError, ValueError) as error:
            raise ValueError(f"{path} cannot be read ({error}): pass --overwrite_best to "
                             "replace that best result") from None
        if overwrite:
            logging.warning("--overwrite_best: replacing the best result in %s (%s = %s)",
                            self.directory, self.monitor, record.get(self.monitor))
            return None
        try:
            checkpointing.check_readable(self.prefix)
        except checkpointing.UnreadableCheckpointError as error:
            raise ValueError(f"{error}: pass --overwrite_best to replace that best result "
                             "(or choose another --model_dir)") from None
        changed = run_folder.changes(record.get("run") or {}, self.identity)
        if changed or self.monitor not in record:
            raise ValueError(
                f"{self.directory} holds the best result of another run "
                f"({', '.join(changed) or 'no ' + self.monitor}): pass --overwrite_best to "
                "replace it, or choose another --model_dir")
        logging.info("Best so far, from a previous run: %s = %.4f; only a better epoch "
                     "replaces it.", self.monitor, record[self.monitor])
        return record

    @property
    def prefix(self):
        # A tf.train.Checkpoint prefix, so `python -m training.export` and
        # `--init_checkpoint` find it (training.trainer.find_checkpoint).
        return os.path.join(self.directory, "best")

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.monitor not in logs:
            raise KeyError(f"BestCheckpoint: no {self.monitor!r} in the epoch logs {sorted(logs)}")
        record = {"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()}}
        self.history.append(record)
        value = float(logs[self.monitor])
        if value > self.best:
            self.best, self.best_epoch = value, epoch + 1
            tf.io.gfile.makedirs(self.directory)
            tf.train.Checkpoint(model=self.model).write(self.prefix)
            with open(os.path.join(self.directory, "best.json"), "w") as f:
                json.dump({**record, "run": self.identity}, f, indent=2)
            logging.info("Epoch %d: %s = %.4f, the best so far: saved to %s", epoch + 1,
                         self.monitor, value, self.prefix)
        else:
            logging.info("Epoch %d: %s = %.4f (best %.4f, %s)", epoch + 1, self.monitor,
                         value, self.best, f"epoch {self.best_epoch}" if self.best_epoch
                         else "a previous run")

    def restore_best(self):
        """Loads the best weights: this run's best epoch, or the previous run's if better."""
        if self.best_epoch is not None or self.previous is not None:
            tf.train.Checkpoint(model=self.model).read(self.prefix).expect_partial()


class SpanEvaluation(keras.callbacks.Callback):
    """Runs best-span decoding on the eval set after each epoch; logs `val_exact_match`/`val_f1`."""

    def __init__(self, examples, features, dataset, max_answer_length):
        super().__init__()
        self.examples = examples
        self.features = features
        self.dataset = dataset
        self.max_answer_length = max_answer_length
        self.predictions = None

    def evaluate(self):
        outputs = self.model.predict(self.dataset, verbose=0)
        self.predictions = squad_data.decode(self.examples, self.features,
                                             outputs["start_logits"], outputs["end_logits"],
                                             self.max_answer_length)
        return squad_data.evaluate(self.examples, self.predictions)

    def on_epoch_end(self, epoch, logs=None):
        results = self.evaluate()
        if logs is not None:
            logs["val_exact_match"] = results["exact_match"]
            logs["val_f1"] = results["f1"]
        logging.info("Epoch %d: exact match %.2f, F1 %.2f on %d questions", epoch + 1,
                     results["exact_match"], results["f1"], len(self.examples))


def _classification_data(settings, tokenizer):
    if settings.glue_task != "auto":
        if settings.glue_task not in glue_data.GLUE_TASKS:
            raise ValueError(f"--glue_task must be 'auto' or one of "
                             f"{sorted(glue_data.GLUE_TASKS)}, got {settings.glue_task!r}")
        columns = glue_data.GLUE_TASKS[settings.glue_task]
    elif settings.text_a_column is not None or settings.label_column is not None:
        if settings.text_a_column is None or settings.label_column is None:
            raise ValueError("--text_a_column and --label_column go together")

        def parse(value):
            return None if value is None else (int(value) if value.isdigit() else value)

        columns = glue_data.Columns(text_a=parse(settings.text_a_column),
                                    text_b=parse(settings.text_b_column),
                                    label=parse(settings.label_column),
                                    header=not settings.no_header)
    else:
        columns = None
    train = glue_data.read_examples(settings.train_file, columns, settings.max_train_examples)
    evaluation = glue_data.read_examples(settings.eval_file, columns)
    labels = glue_data.LabelVocabulary.from_examples(train)
    train_ds = glue_data.make_dataset(train, tokenizer, labels, settings.seq_length,
                                      settings.batch_size, training=True, seed=settings.seed,
                                      path=settings.train_file,
                                      max_sequences_per_pack=settings.max_sequences_per_pack)
    eval_ds = glue_data.make_dataset(evaluation, tokenizer, labels, settings.seq_length,
                                     settings.eval_batch_size, training=False,
                                     path=settings.eval_file)
    logging.info("Classification: %d training / %d eval examples, labels %s", len(train),
                 len(evaluation), labels.labels)
    # Training rows per epoch: packing puts several examples in one.
    rows = int(train_ds.cardinality()) * settings.batch_size
    return train_ds, eval_ds, rows, labels


def run(settings: FinetuneSettings) -> Dict[str, Any]:
    """Fine-tunes, keeps the best epoch, exports; returns a summary (also in results.json).

    Holds `<model_dir>/run.lock` throughout and records the encoder config and the settings
    there (training.run_folder), so the export CLI needs no --config.
    """
    if settings.task not in TASKS:
        raise ValueError(f"--task must be one of {TASKS}, got {settings.task!r}")
    if settings.max_sequences_per_pack and settings.task != "classification":
        raise ValueError(f"--max_sequences_per_pack packs classification examples; "
                         f"--task={settings.task} trains unpacked")
    if settings.export_dir:
        run_folder.check_writable(settings.export_dir, "--export_dir")
    chosen = performance.configure(settings.precision, settings.compile_mode)
    settings = dataclasses.replace(settings, precision=chosen.precision,
                                   compile_mode=chosen.compile_mode)
    with run_folder.RunLock(settings.model_dir), performance.dtype_policy(chosen.precision):
        return _run(settings)


def _run(settings):
    started = time.perf_counter()
    keras.utils.set_random_seed(settings.seed)
    encoder, vocab, how = build_encoder(settings)
    logging.info("%s.", how)
    if settings.seq_length > encoder.config.max_position_embeddings:
        raise ValueError(f"--seq_length {settings.seq_length} exceeds the encoder's "
                         f"max_position_embeddings {encoder.config.max_position_embeddings}")
    tokenizer = BertTokenizer(vocab, lower_case=settings.lower_case)
    if tokenizer.vocab_size != encoder.config.vocab_size:
        raise ValueError(f"vocab {vocab} has {tokenizer.vocab_size} tokens but the encoder's "
                         f"vocab_size is {encoder.config.vocab_size}")

    callbacks: List[keras.callbacks.Callback] = []
    labels = None
    if settings.task == "classification":
        train_ds, eval_ds, num_train, labels = _classification_data(settings, tokenizer)
        model = ClassifierModel(encoder=encoder, num_labels=len(labels), dropout=settings.dropout)
        monitor = "val_accuracy"
        fit_kwargs = {"validation_data": eval_ds}
    else:
        train_examples = squad_data.read_squad(settings.train_file)
        if settings.max_train_examples:
            train_examples = train_examples[:settings.max_train_examples]
        eval_examples = squad_data.read_squad(settings.eval_file)
        common = dict(seq_length=settings.seq_length, doc_stride=settings.doc_stride,
                      max_query_length=settings.max_query_length)
        train_features = squad_data.convert_examples(train_examples, tokenizer, training=True,
                                                     **common)
        eval_features = squad_data.convert_examples(eval_examples, tokenizer, **common)
        logging.info("Span: %d training questions -> %d features; %d eval questions -> %d "
                     "features", len(train_examples), len(train_features), len(eval_examples),
                     len(eval_features))
        num_train = len(train_features)
        train_ds = squad_data.make_dataset(train_features, settings.batch_size, training=True,
                                           seed=settings.seed)
        eval_ds = squad_data.make_dataset(eval_features, settings.eval_batch_size,
                                          training=False)
        model = SpanLabelerModel(encoder=encoder, dropout=settings.dropout)
        callbacks.append(SpanEvaluation(eval_examples, eval_features, eval_ds,
                                        settings.max_answer_length))
        monitor = "val_f1"
        fit_kwargs = {}

    steps_per_epoch = num_train // settings.batch_size
    total_steps = steps_per_epoch * settings.epochs
    schedule = WarmupPolynomialDecay(settings.learning_rate,
                                     int(settings.warmup_proportion * total_steps), total_steps)
    optimizer = create_optimizer("adamw", schedule, weight_decay=settings.weight_decay)
    model.compile(optimizer=optimizer, jit_compile=settings.compile_mode == "xla")
    identity = {
        "task": settings.task, "monitor": monitor, "seq_length": settings.seq_length,
        "eval_file": os.path.abspath(settings.eval_file),
        "labels": labels.labels if labels else None,
        "config": {k: v for k, v in encoder.config.to_dict().items() if k not in _DROPOUT},
    }
    best = BestCheckpoint(os.path.join(settings.model_dir, "best"), monitor, identity,
                          overwrite=settings.overwrite_best)
    # Only now, once a previous run's best is known to be comparable, replace its records.
    run_folder.write_records(settings.model_dir, encoder.config, dataclasses.asdict(settings))
    if labels is not None:
        labels.save(os.path.join(settings.model_dir, "labels.txt"))
    callbacks.append(best)
    logging.info("Training %d epoch(s) of %d steps (batch %d, seq %d), peak LR %g, %d warmup "
                 "steps", settings.epochs, steps_per_epoch, settings.batch_size,
                 settings.seq_length, settings.learning_rate, schedule.warmup_steps)
    train_started = time.perf_counter()
    model.fit(train_ds, epochs=settings.epochs, callbacks=callbacks, verbose=settings.verbose,
              shuffle=False,  # The datasets shuffle themselves (seeded).
              **fit_kwargs)
    train_seconds = time.perf_counter() - train_started
    best.restore_best()
    summary: Dict[str, Any] = {
        "task": settings.task, "initialisation": how, "monitor": monitor,
        "best_epoch": best.best_epoch, "best": best.best, "history": best.history,
        "best_from_previous_run": best.best_epoch is None and best.previous is not None,
        "train_seconds": train_seconds, "steps_per_epoch": steps_per_epoch,
    }
    if labels is not None:
        summary["labels"] = labels.labels
    results_path = os.path.join(settings.model_dir, "results.json")

    def write_results():
        summary["total_seconds"] = time.perf_counter() - started
        with open(results_path, "w") as f:
            json.dump(summary, f, indent=2)

    write_results()  # Before the export, so a failed export leaves the results.
    if settings.export_dir:
        from groupbert_tf import export  # pylint: disable=import-outside-toplevel
        path = export.export_saved_model(model, vocab, settings.export_dir, settings.task,
                                         seq_length=settings.seq_length,
                                         lower_case=settings.lower_case)
        if labels is not None:
            labels.save(os.path.join(path, "labels.txt"))
        summary["export"] = path
        logging.info("Exported %s", path)
        write_results()
    logging.info("Best %s = %.4f at epoch %s; %.0f s training, %.0f s in all.", monitor,
                 best.best, best.best_epoch, train_seconds, summary["total_seconds"])
    return summary


FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_enum("task", "classification", TASKS, "Task head.")
    flags.DEFINE_string("train_file", None, "Training data: GLUE-style TSV/CSV or SQuAD JSON.")
    flags.DEFINE_string("eval_file", None, "Evaluation data, same format.")
    flags.DEFINE_string("init_checkpoint", None,
                        "Folder of a training.pretrain run (its checkpoints/): encoder weights.")
    flags.DEFINE_string("init_hf_bert", None, "Hugging Face BERT folder (config.json, "
                        "model.safetensors, vocab.txt): BERT-mode encoder weights.")
    flags.DEFINE_string("config", None, "Preset or JSON config (default: the config that the "
                        "--init_checkpoint run recorded, else groupbert-mini; ignored with "
                        "--init_hf_bert, whose config.json is used).")
    flags.DEFINE_string("vocab", None, "WordPiece vocab (default: the HF folder's vocab.txt, "
                        "else the bert-base-uncased vocab of `training.data fetch`).")
    flags.DEFINE_bool("lower_case", True, "Lower-case and strip accents (uncased models).")
    flags.DEFINE_integer("epochs", 2, "Epochs.")
    flags.DEFINE_integer("batch_size", 32, "Training batch size.")
    flags.DEFINE_integer("eval_batch_size", 64, "Evaluation batch size.")
    flags.DEFINE_integer("seq_length", 128, "Sequence length.")
    flags.DEFINE_float("learning_rate", 5e-5, "Peak learning rate (AdamW).")
    flags.DEFINE_float("warmup_proportion", 0.1, "Share of the steps with linear warmup.")
    flags.DEFINE_float("weight_decay", 0.01, "Weight decay (not on biases and LayerNorm).")
    flags.DEFINE_float("dropout", 0.1, "Dropout of encoder and head during fine-tuning.")
    flags.DEFINE_string("model_dir", "runs/finetune", "Best checkpoint, labels, results.json.")
    flags.DEFINE_bool("overwrite_best", False, "Replace the best result a previous run left in "
                      "--model_dir even if this run is not better, or not comparable.")
    flags.DEFINE_string("export_dir", None, "SavedModel export folder; empty: no export.")
    flags.DEFINE_string("glue_task", "auto", "Column layout: auto (from the header) or one of "
                        f"{sorted(glue_data.GLUE_TASKS)}.")
    flags.DEFINE_string("text_a_column", None, "Column (name or 0-based index) of text A.")
    flags.DEFINE_string("text_b_column", None, "Column of text B (sentence pairs).")
    flags.DEFINE_string("label_column", None, "Column of the label.")
    flags.DEFINE_bool("no_header", False, "The files have no header line.")
    flags.DEFINE_integer("max_sequences_per_pack", 0,
                         "Classification: pack up to this many training examples per row "
                         "(docs/packing.md); --batch_size then counts rows. Evaluation and "
                         "export stay unpacked. 0: one example per row.")
    flags.DEFINE_integer("doc_stride", 128, "Span: tokens between window starts.")
    flags.DEFINE_integer("max_query_length", 64, "Span: question tokens kept.")
    flags.DEFINE_integer("max_answer_length", 30, "Span: longest answer, in tokens.")
    flags.DEFINE_integer("max_train_examples", None, "Use only the first N training examples.")
    flags.DEFINE_integer("seed", 0, "Seed.")
    performance.define_flags()
    flags.DEFINE_integer("verbose", 1, "Keras progress: 1 = bar, 2 = one line per epoch.")
    flags.mark_flags_as_required(["train_file", "eval_file"])


def main(argv):
    del argv
    flag_checks.check(FLAGS)  # Before anything is built.
    # Process-wide settings before TensorFlow does any work (this may restart the process).
    # (`run` resolves `auto` again after the restart and logs what it chose and why.)
    performance.ensure_process_flags(performance.resolve(FLAGS.precision, FLAGS.compile_mode))
    settings = FinetuneSettings(
        task=FLAGS.task, train_file=FLAGS.train_file, eval_file=FLAGS.eval_file,
        model_dir=FLAGS.model_dir, config=FLAGS.config, init_checkpoint=FLAGS.init_checkpoint,
        init_hf_bert=FLAGS.init_hf_bert, vocab=FLAGS.vocab, lower_case=FLAGS.lower_case,
        epochs=FLAGS.epochs, batch_size=FLAGS.batch_size, eval_batch_size=FLAGS.eval_batch_size,
        seq_length=FLAGS.seq_length, learning_rate=FLAGS.learning_rate,
        warmup_proportion=FLAGS.warmup_proportion, weight_decay=FLAGS.weight_decay,
        dropout=FLAGS.dropout, export_dir=FLAGS.export_dir or None, glue_task=FLAGS.glue_task,
        text_a_column=FLAGS.text_a_column, text_b_column=FLAGS.text_b_column,
        label_column=FLAGS.label_column, no_header=FLAGS.no_header,
        max_sequences_per_pack=FLAGS.max_sequences_per_pack,
        doc_stride=FLAGS.doc_stride, max_query_length=FLAGS.max_query_length,
        max_answer_length=FLAGS.max_answer_length, max_train_examples=FLAGS.max_train_examples,
        seed=FLAGS.seed, precision=FLAGS.precision, compile_mode=FLAGS.compile_mode,
        verbose=FLAGS.verbose,
        overwrite_best=FLAGS.overwrite_best)
    summary = run(settings)
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))


if __name__ == "__main__":
    define_flags()
    app.run(cli.one_line_errors(main, "finetune"), argv=sys.argv)
