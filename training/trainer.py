"""`model.fit` pre-training: model and optimizer in the strategy's scope, resume, callbacks."""

import dataclasses
import os
import shutil
import tempfile
from typing import Optional

import keras
import tensorflow as tf
from absl import logging

from groupbert_tf import flops
from groupbert_tf.config import GroupBertConfig
from groupbert_tf.models.pretrainer import GroupBertPretrainer
from groupbert_tf.tensorflow_train_step import group_micro_batches
from training import callbacks as training_callbacks
from training import checkpointing, performance, run_folder
from training.optimization import WarmupPolynomialDecay, create_optimizer
from training.settings import setting

MAX_DEFAULT_WARMUP = 10_000  # BERT's warmup; shorter runs warm up over 10% of their steps.


@dataclasses.dataclass
class TrainingSettings:
    """What a pre-training run does: the training flags of `python -m training.pretrain`
    (defaults are the README's `make pretrain`; data and strategy flags live elsewhere)."""

    model_dir: str = setting("runs/pretrain", "Checkpoints and TensorBoard logs; a run "
                             "resumes from the checkpoint here.")
    train_steps: int = setting(200, "Optimizer steps (the default fits ~10 minutes on 2 CPU "
                               "cores).")
    global_batch_size: int = setting(32, "Global batch size (split across replicas).",
                                     flag="batch_size")
    seq_length: int = setting(128, "Sequence length.")
    max_predictions_per_seq: int = setting(20, "Static number of MLM predictions.")
    optimizer: str = setting("lamb", "Optimizer.", choices=("lamb", "adamw"))
    learning_rate: float = setting(1e-2, "Peak learning rate (LAMB; the best of a sweep at "
                                   "small sizes, docs/results.md).")
    warmup_steps: Optional[int] = setting(None, "Warmup steps (default: 10% of --train_steps, "
                                          f"at most {MAX_DEFAULT_WARMUP}).")
    warmup_power: float = setting(0.5, "Warmup shape: 1 = linear, 0.5 = square root.")
    weight_decay: float = setting(0.01, "Weight decay (not on biases and LayerNorm).")
    gradient_accumulation_steps: int = setting(1, "Batches per optimizer step.")
    steps_per_execution: int = setting(1, "Batches per tf.function call.")
    checkpoint_every: int = setting(50, "Save a checkpoint every N steps.")
    log_every: int = setting(50, "Throughput log interval in steps.")
    init_checkpoint: Optional[str] = setting(
        None, "Load weights only (not optimizer state or step) from this checkpoint (a run "
        "folder, its checkpoints/ or a prefix); without --config, the config that run "
        "recorded.")
    precision: str = "auto"  # Flags of training/performance.py.
    compile_mode: str = "auto"
    verbose: int = setting(1, "Keras progress: 1 = progress bar, 2 = one line per epoch.")

    def __post_init__(self):
        if self.warmup_steps is None:  # A fixed default would swallow a short run.
            self.warmup_steps = min(MAX_DEFAULT_WARMUP, self.train_steps // 10)


def build_model(config: GroupBertConfig, settings: TrainingSettings) -> GroupBertPretrainer:
    """Creates and compiles the model; call inside `strategy.scope()`."""
    model = GroupBertPretrainer(config=config)
    schedule = WarmupPolynomialDecay(
        settings.learning_rate, settings.warmup_steps, settings.train_steps,
        warmup_power=settings.warmup_power)
    optimizer = create_optimizer(settings.optimizer, schedule, weight_decay=settings.weight_decay)
    model.compile(optimizer=optimizer, jit_compile=settings.compile_mode == "xla",
                  steps_per_execution=settings.steps_per_execution,
                  gradient_accumulation_steps=settings.gradient_accumulation_steps)
    optimizer.build(model.trainable_variables)
    return model


def _is_chief(strategy):
    """False only on the non-chief workers of a multi-worker strategy."""
    return strategy.extended.should_checkpoint


def find_checkpoint(path, flag="--init_checkpoint"):
    """The checkpoint a run folder holds, as a prefix.

    In order: the newest in `<path>/checkpoints` (pre-training), fine-tuning's best epoch
    `<path>/best/best`, the newest in `<path>`, or `path` itself as a prefix.
    """
    folders = [os.path.join(path, "checkpoints"), os.path.join(path, "best"), path]
    for folder in folders if os.path.isdir(path) else []:
        newest = checkpointing.newest_intact(folder)  # Skips unreadable ones, with a warning.
        if newest:
            return newest
    if tf.io.gfile.exists(path + ".index"):
        checkpointing.check_readable(path)
        return path
    raise FileNotFoundError(f"{flag} {path}: no checkpoint in {os.path.join(path, 'checkpoints')}, "
                            f"{os.path.join(path, 'best')} or {path}")


def restore_or_initialize(model, model_dir, init_checkpoint=None):
    """Resumes the full state from `model_dir`, else loads weights from `init_checkpoint`.

    Returns (checkpoint manager, a sentence saying which happened).
    """
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    directory = os.path.join(model_dir, "checkpoints")
    chief = _is_chief(model.distribute_strategy)
    # Before the manager reads the state file: the chief sets unreadable checkpoints aside,
    # so rotation only ever deletes intact ones.
    latest = checkpointing.newest_intact(directory, tidy=chief)
    if chief:
        manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=3)
    else:
        # Multi-worker: every worker must save (saving reads synced variables, a collective),
        # but only the chief writes <model_dir>/checkpoints; the others write to a local
        # temporary folder, removed at the end of `pretrain`.
        manager = tf.train.CheckpointManager(
            checkpoint, tempfile.mkdtemp(prefix="groupbert-worker-checkpoints-"), max_to_keep=1)
    if latest:
        try:
            checkpoint.restore(latest).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as error:
            raise ValueError(f"checkpoint {latest} does not fit this model and optimizer: "
                             f"{str(error).splitlines()[0]}") from None
        return manager, (f"Resumed training state from {latest} at step "
                         f"{int(model.optimizer.iterations.numpy())}")
    if init_checkpoint:
        path = find_checkpoint(init_checkpoint)
        checkpointing.load_weights(model, path)
        return manager, f"Initialised weights only from {path} (optimizer state and step are new)"
    return manager, "Started from random initialisation"


# A resume may not change these (the optimizer state or the data seen per step would no
# longer mean what they meant); other changed settings are allowed with a warning.
RESUME_REFUSED = ("optimizer", "seq_length", "global_batch_size",
                  "gradient_accumulation_steps")
RESUME_QUIET = ("model_dir", "train_steps", "checkpoint_every", "log_every", "verbose",
                "init_checkpoint")


def pretrain(config, settings: TrainingSettings, strategy, train_dataset_fn,
             validation_dataset=None, flag_values=None, callbacks=()):
    """Runs (or resumes) pre-training and returns (model, throughput, validation metrics).

    `callbacks` are Keras callbacks added to the run's own (checkpoints, throughput, logs).

    `train_dataset_fn(start_step)` returns the training dataset of global batches (Keras
    distributes it over the replicas); it is told the optimizer step so a resumed run does
    not replay the data the killed run already saw. `settings.train_steps` counts optimizer
    updates; with gradient accumulation each takes several batches.

    The chief holds `<model_dir>/run.lock` throughout and records the config and settings
    (plus `flag_values`, the CLI's flags) in the run folder; a resume whose model config or
    RESUME_REFUSED settings differ from the records is refused, naming each field.
    """
    if not _is_chief(strategy):
        return _train(config, settings, strategy, train_dataset_fn, validation_dataset,
                      callbacks)
    with run_folder.RunLock(settings.model_dir):
        recorded = dataclasses.asdict(settings)
        if checkpointing.candidates(os.path.join(settings.model_dir, "checkpoints")):
            run_folder.check_resume(settings.model_dir, config, recorded, RESUME_REFUSED,
                                    RESUME_QUIET)
        run_folder.write_records(settings.model_dir, config, recorded, flag_values)
        return _train(config, settings, strategy, train_dataset_fn, validation_dataset,
                      callbacks)


def _train(config, settings, strategy, train_dataset_fn, validation_dataset,
           extra_callbacks):
    chosen = performance.configure(settings.precision, settings.compile_mode)
    settings = dataclasses.replace(settings, precision=chosen.precision,
                                   compile_mode=chosen.compile_mode)
    with performance.dtype_policy(chosen.precision), strategy.scope():
        model = build_model(config, settings)
        manager, how = restore_or_initialize(model, settings.model_dir, settings.init_checkpoint)
    logging.info("%s.", how)
    start_step = int(model.optimizer.iterations.numpy())
    if start_step >= settings.train_steps:
        logging.info("Already at step %d of %d: nothing to train.", start_step,
                     settings.train_steps)
    throughput = training_callbacks.Throughput(  # Sequences per optimizer step:
        settings.global_batch_size * settings.gradient_accumulation_steps, settings.seq_length,
        flops.training_flops(config, settings.seq_length, settings.max_predictions_per_seq),
        every_steps=max(settings.log_every // settings.steps_per_execution, 1))
    callbacks = [
        *extra_callbacks,
        training_callbacks.StepCheckpoint(manager, settings.checkpoint_every),
        throughput,
    ]
    chief = _is_chief(strategy)
    if chief:  # Other workers would write duplicate event files into the same folder.
        callbacks.append(keras.callbacks.TensorBoard(
            os.path.join(settings.model_dir, "tensorboard"), update_freq=settings.log_every))
    try:
        if start_step < settings.train_steps:
            # One epoch of exactly the remaining steps: step counts stay exact across resumes.
            steps = settings.train_steps - start_step
            # `take`: Keras runs whole executions of `steps_per_execution` steps unless the
            # data ends, which would overshoot `train_steps` when it does not divide it.
            dataset = group_micro_batches(
                train_dataset_fn(start_step).take(steps * settings.gradient_accumulation_steps),
                settings.gradient_accumulation_steps)
            model.fit(dataset, epochs=1, steps_per_epoch=steps, callbacks=callbacks,
                      verbose=settings.verbose)
            throughput.report()
    finally:
        if not chief:
            shutil.rmtree(manager.directory, ignore_errors=True)
    results = None
    if validation_dataset is not None:
        results = model.evaluate(validation_dataset, return_dict=True, verbose=0)
        logging.info("Validation: MLM loss %.4f, MLM accuracy %.4f, NSP accuracy %.4f",
                     results["mlm_loss"], results["mlm_accuracy"], results["nsp_accuracy"])
    return model, throughput, results
