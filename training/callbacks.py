"""Keras callbacks of the trainer: step checkpoints with a NaN guard, and throughput."""

import math
import time

import keras
import tensorflow as tf
from absl import logging


class StepCheckpoint(keras.callbacks.Callback):
    """Saves the full training state every `every_steps` optimizer iterations.

    A non-finite loss, or non-finite weights at a save (an overflowing gradient leaves its
    own step's loss finite), stop the run with an error before anything is saved, so the last
    checkpoint on disk is always a good one.
    """

    def __init__(self, manager, every_steps):
        super().__init__()
        self.manager = manager
        self.every_steps = every_steps
        self._last_saved = None

    def _step(self):
        return int(self.model.optimizer.iterations.numpy())

    def on_train_begin(self, logs=None):
        # The starting state is on disk already (or is the initialisation).
        self._last_saved = self._step()

    def _weights_finite(self):
        return all(bool(tf.reduce_all(tf.math.is_finite(v)))
                   for v in self.model.trainable_variables)

    def _save(self):
        step = self._step()
        if step != self._last_saved:
            # A finite loss can still come with an overflowing gradient: never save NaNs.
            if not self._weights_finite():
                self.model.stop_training = True
                raise FloatingPointError(
                    f"Non-finite weights at step {step}: training stopped. The last good "
                    f"checkpoint is {self.manager.latest_checkpoint or '(none written yet)'};"
                    " try a lower --learning_rate or more --warmup_steps.")
            path = self.manager.save(checkpoint_number=step)
            self._last_saved = step
            logging.info("Saved checkpoint %s (step %d)", path, step)

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.model.stop_training = True
            raise FloatingPointError(
                f"Loss is {float(loss)} at step {self._step()}: training stopped. The last good "
                f"checkpoint is {self.manager.latest_checkpoint or '(none written yet)'}; try a "
                "lower --learning_rate or more --warmup_steps.")
        # Save on crossing a multiple of `every_steps`: with steps_per_execution (or gradient
        # accumulation) the step seen here need not land on one.
        step = self._step()
        last = self._last_saved
        if last is None or step // self.every_steps > last // self.every_steps:
            self._save()

    def on_train_end(self, logs=None):
        if not self.model.stop_training:
            self._save()


class Throughput(keras.callbacks.Callback):
    """Logs sequences/s, tokens/s and achieved TFLOP/s every `every_steps` steps."""

    def __init__(self, global_batch_size, seq_length, flops_per_sequence, every_steps=50):
        super().__init__()
        self.global_batch_size = global_batch_size
        self.seq_length = seq_length
        self.flops_per_sequence = flops_per_sequence
        self.every_steps = every_steps
        self.history = []

    def on_train_begin(self, logs=None):
        self._start, self._end, self._steps = None, None, 0

    def on_train_batch_end(self, batch, logs=None):
        if self._start is None:  # Skip the first call: it includes XLA compilation.
            self._start, self._steps = time.perf_counter(), 0
            return
        self._steps += 1
        self._end = time.perf_counter()  # Not at report(): end-of-fit work is not training.
        if self._steps % self.every_steps == 0:
            self.report()

    def report(self):
        if not self._steps:
            return None
        elapsed = self._end - self._start
        # Keras calls back once per execution of `steps_per_execution` steps.
        steps = self._steps * self.model.steps_per_execution
        sequences_per_second = steps * self.global_batch_size / elapsed
        record = {
            "sequences_per_second": sequences_per_second,
            "tokens_per_second": sequences_per_second * self.seq_length,
            "tflops": sequences_per_second * self.flops_per_sequence / 1e12,
        }
        self.history.append(record)
        logging.info("Throughput: %.1f seq/s, %.0f tokens/s, %.3f TFLOP/s achieved",
                     record["sequences_per_second"], record["tokens_per_second"], record["tflops"])
        return record
