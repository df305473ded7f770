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

from groupbert_tf import export
from groupbert_tf.models.encoder import GroupBertEncoder, as_config
from groupbert_tf.models.pretrainer import GroupBertPretrainer
from groupbert_tf.tokenization import BertTokenizer
from training import checkpointing, cli, flag_checks, performance, run_folder
from training.data import download, glue_data
from training import settings as settings_lib
from training import tasks, trainer
from training.optimization import WarmupPolynomialDecay, create_optimizer
from training.settings import setting

_DROPOUT = ("hidden_dropout", "attention_dropout")  # Set by --dropout, not by the config.


@dataclasses.dataclass
class FinetuneSettings:
    """What a fine-tuning run does: the flags of `python -m training.finetune`."""

    train_file: str = setting(None, "Training data: GLUE-style TSV/CSV or SQuAD JSON.")
    eval_file: str = setting(None, "Evaluation data, same format.")
    task: str = setting("classification", "Task head.", choices=tasks.FINETUNING)
    model_dir: str = setting("runs/finetune", "Best checkpoint, labels, results.json.")
    config: Any = setting(None, "Preset or JSON config (default: the config that the "
                          "--init_checkpoint run recorded, else groupbert-mini; ignored with "
                          "--init_hf_bert, whose config.json is used).")
    init_checkpoint: Optional[str] = setting(
        None, "Folder of a training.pretrain run (its checkpoints/): encoder weights.")
    init_hf_bert: Optional[str] = setting(
        None, "Hugging Face BERT folder (config.json, model.safetensors, vocab.txt): "
        "BERT-mode encoder weights.")
    vocab: Optional[str] = setting(None, "WordPiece vocab (default: the HF folder's vocab.txt, "
                                   "else the bert-base-uncased vocab of `training.data fetch`).")
    lower_case: bool = setting(True, "Lower-case and strip accents (uncased models).")
    epochs: int = setting(2, "Epochs.")
    batch_size: int = setting(32, "Training batch size.")
    eval_batch_size: int = setting(64, "Evaluation batch size.")
    seq_length: int = setting(128, "Sequence length.")
    learning_rate: float = setting(5e-5, "Peak learning rate (AdamW).")
    warmup_proportion: float = setting(0.1, "Share of the steps with linear warmup.")
    weight_decay: float = setting(0.01, "Weight decay (not on biases and LayerNorm).")
    dropout: float = setting(0.1, "Dropout of encoder and head during fine-tuning.")
    export_dir: Optional[str] = setting(None, "SavedModel export folder; empty: no export.")
    glue_task: str = setting("auto", "Column layout: auto (from the header) or one of "
                             f"{sorted(glue_data.GLUE_TASKS)}.")
    text_a_column: Optional[str] = setting(None, "Column (name or 0-based index) of text A.")
    text_b_column: Optional[str] = setting(None, "Column of text B (sentence pairs).")
    label_column: Optional[str] = setting(None, "Column of the label.")
    no_header: bool = setting(False, "The files have no header line.")
    max_sequences_per_pack: int = setting(
        0, "Classification: pack up to this many training examples per row (docs/packing.md); "
        "--batch_size then counts rows. Evaluation and export stay unpacked. 0: one example "
        "per row.")
    doc_stride: int = setting(128, "Span: tokens between window starts.")
    max_query_length: int = setting(64, "Span: question tokens kept.")
    max_answer_length: int = setting(30, "Span: longest answer, in tokens.")
    max_train_examples: Optional[int] = setting(None, "Use only the first N training examples.")
    seed: int = setting(0, "Seed.")
    precision: str = "auto"  # Flags of training/performance.py.
    compile_mode: str = "auto"
    verbose: int = setting(1, "Keras progress: 1 = bar, 2 = one line per epoch.")
    overwrite_best: bool = setting(False, "Replace the best result a previous run left in "
                                   "--model_dir even if this run is not better, or not "
                                   "comparable.")


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
    vocab = settings.vocab or download.default_vocab_path()
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
        # Any task's checkpoint holds the encoder under `model/encoder`.
        pretrainer = GroupBertPretrainer(config=config)
        checkpointing.load_weights(pretrainer, path, part="encoder")
        how = (f"Initialised encoder weights only from checkpoint {path} "
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


def run(settings: FinetuneSettings) -> Dict[str, Any]:
    """Fine-tunes, keeps the best epoch, exports; returns a summary (also in results.json).

    Holds `<model_dir>/run.lock` throughout and records the encoder config and the settings
    there (training.run_folder), so the export CLI needs no --config.
    """
    task = tasks.get(settings.task)(settings)
    if not task.finetuning:
        raise ValueError(f"--task must be one of {tasks.FINETUNING}, got {settings.task!r}")
    task.check_settings()
    if settings.export_dir:
        run_folder.check_writable(settings.export_dir, "--export_dir")
    chosen = performance.configure(settings.precision, settings.compile_mode)
    settings = task.settings = dataclasses.replace(settings, precision=chosen.precision,
                                                   compile_mode=chosen.compile_mode)
    with run_folder.RunLock(settings.model_dir), performance.dtype_policy(chosen.precision):
        return _run(settings, task)


def _run(settings, task):
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
    inputs = task.build_inputs(tokenizer)
    model = task.build_model(encoder)
    steps_per_epoch = inputs.train_rows // settings.batch_size
    total_steps = steps_per_epoch * settings.epochs
    schedule = WarmupPolynomialDecay(settings.learning_rate,
                                     int(settings.warmup_proportion * total_steps), total_steps)
    optimizer = create_optimizer("adamw", schedule, weight_decay=settings.weight_decay)
    model.compile(optimizer=optimizer, jit_compile=settings.compile_mode == "xla")
    identity = {
        "task": settings.task, "monitor": task.monitor, "seq_length": settings.seq_length,
        "eval_file": os.path.abspath(settings.eval_file),
        "labels": None, **task.identity(),
        "config": {k: v for k, v in encoder.config.to_dict().items() if k not in _DROPOUT},
    }
    best = BestCheckpoint(os.path.join(settings.model_dir, "best"), task.monitor, identity,
                          overwrite=settings.overwrite_best)
    # Only now, once a previous run's best is known to be comparable, replace its records.
    run_folder.write_records(settings.model_dir, encoder.config, dataclasses.asdict(settings))
    task.write_records(settings.model_dir)
    logging.info("Training %d epoch(s) of %d steps (batch %d, seq %d), peak LR %g, %d warmup "
                 "steps", settings.epochs, steps_per_epoch, settings.batch_size,
                 settings.seq_length, settings.learning_rate, schedule.warmup_steps)
    train_started = time.perf_counter()
    model.fit(inputs.train, epochs=settings.epochs, callbacks=[*task.callbacks(inputs), best],
              verbose=settings.verbose,
              shuffle=False,  # The datasets shuffle themselves (seeded).
              **task.fit_kwargs(inputs))
    train_seconds = time.perf_counter() - train_started
    best.restore_best()
    summary: Dict[str, Any] = {
        "task": settings.task, "initialisation": how, "monitor": task.monitor,
        "best_epoch": best.best_epoch, "best": best.best, "history": best.history,
        "best_from_previous_run": best.best_epoch is None and best.previous is not None,
        "train_seconds": train_seconds, "steps_per_epoch": steps_per_epoch, **task.summary(),
    }
    results_path = os.path.join(settings.model_dir, "results.json")

    def write_results():
        summary["total_seconds"] = time.perf_counter() - started
        with open(results_path, "w") as f:
            json.dump(summary, f, indent=2)

    write_results()  # Before the export, so a failed export leaves the results.
    if settings.export_dir:
        path = export.export_saved_model(model, vocab, settings.export_dir,
                                         seq_length=settings.seq_length,
                                         lower_case=settings.lower_case)
        task.write_records(path)
        summary["export"] = path
        logging.info("Exported %s", path)
        write_results()
    logging.info("Best %s = %.4f at epoch %s; %.0f s training, %.0f s in all.", task.monitor,
                 best.best, best.best_epoch, train_seconds, summary["total_seconds"])
    return summary


FLAGS = flags.FLAGS


def define_flags():
    settings_lib.define_flags(FinetuneSettings)
    settings_lib.define_overrides_flag()
    performance.define_flags()
    flags.mark_flags_as_required(["train_file", "eval_file"])


def main(argv):
    del argv
    settings_lib.apply_overrides(FLAGS)
    flag_checks.check(FLAGS)  # Before anything is built.
    # Process-wide settings before TensorFlow does any work (this may restart the process).
    # (`run` resolves `auto` again after the restart and logs what it chose and why.)
    performance.ensure_process_flags(performance.resolve(FLAGS.precision, FLAGS.compile_mode))
    settings = settings_lib.from_flags(FinetuneSettings, export_dir=FLAGS.export_dir or None)
    summary = run(settings)
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))


if __name__ == "__main__":
    define_flags()
    app.run(cli.one_line_errors(main, "finetune"), argv=sys.argv)
