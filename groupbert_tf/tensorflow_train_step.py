"""The TensorFlow train step of every task (models/task.py): XLA forward and backward per
replica, optimizer outside XLA.

Keras' whole-step XLA (`jit_compile=True`) cannot run with more than one replica on CPU
(XLA has no CPU collectives, and mirrored variables live on other devices). Compiling only
the loss and gradients keeps XLA's speed and leaves the cross-replica sum and the variable
updates to tf.distribute.
"""

import re

import keras
import tensorflow as tf


def _version_tuple(version):
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


# Keras 3 `model.fit` / `evaluate` under MultiWorkerMirroredStrategy crash with
# "Attempt to convert a value (PerReplica...)": https://github.com/keras-team/keras/issues/20585
# Verified broken and worked around for Keras 3.0 to 3.15.x (pinned: 3.15.1). On a newer Keras
# the workaround is off; tests/test_distributed.py then says whether it is still needed.
# Tests set this to False (in a subprocess) to show the crash it prevents.
MULTI_WORKER_WORKAROUND = (3, 0, 0) <= _version_tuple(keras.__version__) < (3, 16, 0)


def group_micro_batches(dataset, steps):
    """Groups every `steps` consecutive batches of `dataset` into one element whose tensors
    are [batch, steps, ...]: the input of a train step that accumulates `steps` micro-batches
    (`compile(gradient_accumulation_steps=steps)`). The batch axis stays first, so a strategy
    still splits each micro-batch across its replicas."""
    if steps == 1:
        return dataset

    def batch_first(*element):
        return tf.nest.map_structure(
            lambda t: tf.transpose(t, [1, 0, *range(2, t.shape.rank)]), element)

    return dataset.batch(steps, drop_remainder=True).map(batch_first)


class XlaGradientsTrainStep:
    """The train step `groupbert_tf.models.task.Task` takes on the TensorFlow backend; the
    task defines `loss_counts(y)` and `loss_sums(y, y_pred)`.

    Loss terms are per-replica sums divided by *global* counts (all-reduced before the XLA
    call), so R replicas reproduce one replica on the global batch exactly.

    Gradient accumulation happens inside one train step: its input holds the micro-batches
    (`group_micro_batches`), their gradients are summed and applied once. Keras' optimizer
    accumulation applies conditionally, which MirroredStrategy cannot run (a cross-replica
    sum inside `cond`); and the micro-batches' losses share the global counts, so N
    micro-batches equal one batch N times as large.
    """

    def compile(self, *args, jit_compile="auto", gradient_accumulation_steps=1, **kwargs):
        """`jit_compile` here means: XLA-compile the loss and gradients ("auto": yes; the
        whole step never is, see above)."""
        jit_compile = True if jit_compile == "auto" else jit_compile
        super().compile(*args, jit_compile=False, **kwargs)
        self._compile_config.config["jit_compile"] = jit_compile  # What a reload recompiles.
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self._loss_and_gradients = tf.function(
            self._compute_loss_and_gradients, jit_compile=bool(jit_compile),
            reduce_retracing=True)

    def _compute_loss_and_gradients(self, x, y, counts):
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(x, y, y_pred, training=True, counts=counts)
            scaled_loss = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, self.trainable_variables)
        return loss, gradients, y_pred

    def _micro_batches(self, x, y):
        steps = getattr(self, "gradient_accumulation_steps", 1)
        if steps == 1:
            return [(x, y)]
        return [tf.nest.map_structure(lambda t, k=k: t[:, k], (x, y)) for k in range(steps)]

    def train_step(self, data):
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        micro_batches = self._micro_batches(x, y)
        counts = tf.nest.map_structure(lambda *c: tf.add_n(c),
                                       *[self.loss_counts(y_k) for _, y_k in micro_batches])
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync if context is not None else 1
        if replicas > 1:
            counts = context.all_reduce(tf.distribute.ReduceOp.SUM, counts)
        loss, gradients = 0.0, None
        for x_k, y_k in micro_batches:
            loss_k, gradients_k, y_pred = self._loss_and_gradients(x_k, y_k, counts)
            # Embedding gradients are IndexedSlices (a gather); summing, and the
            # cross-replica clipping (training/optimization.py), need dense tensors. The tied
            # MLM decoder makes that gradient dense anyway.
            gradients_k = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g
                           for g in gradients_k]
            loss = loss + loss_k
            gradients = (gradients_k if gradients is None
                         else [a + b for a, b in zip(gradients, gradients_k)])
            self.compute_metrics(x_k, y_k, y_pred)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))
        # `loss` is this replica's share of the global loss; the tracker averages replicas.
        self._loss_tracker.update_state(loss * replicas)
        return self._global_logs(self.get_metrics_result())

    def test_step(self, data):
        return self._global_logs(super().test_step(data))

    # --- keras-team/keras#20585 workaround (MultiWorkerMirroredStrategy) -----------------------
    # Two bugs of keras/src/backend/tensorflow/trainer.py (3.15.1) under MWMS in multi-worker mode:
    # 1. `_maybe_symbolic_build` takes the first batch, a structure of PerReplica values, and
    #    calls `strategy.reduce("MEAN", batch, axis=None)` eagerly to get an example batch. MWMS'
    #    collective reduce does not accept a nested structure and fails converting the PerReplica
    #    to a tensor: the error of the issue, before the first step.
    # 2. `reduce_per_replica(..., "auto")` maps to "mean", which under MWMS is
    #    `strategy.reduce("MEAN", v, axis=0)`: invalid for the scalar metric values every step
    #    returns ("Invalid reduction dimension 0 for input with 0 dimensions").
    # Fix: build from this worker's first local replica batch (only shapes and dtypes matter),
    # and return each log value with shape [1]: Keras' MWMS "mean" over axis 0 then averages
    # the replicas' values into a scalar, as its "mean" does on one worker.

    def _multi_worker_workaround(self):
        strategy = self.distribute_strategy
        return (MULTI_WORKER_WORKAROUND
                and isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
                and strategy.extended._in_multi_worker_mode())

    def _global_logs(self, logs):
        if not self._multi_worker_workaround():
            return logs
        return tf.nest.map_structure(lambda value: tf.reshape(value, [1]), logs)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        accumulating = getattr(self, "gradient_accumulation_steps", 1) > 1
        if iterator is not None and (accumulating or self._multi_worker_workaround()):
            strategy = self.distribute_strategy
            for _, _, distributed_iterator in iterator:
                data_batch = tf.nest.map_structure(
                    lambda v: (strategy.experimental_local_results(v)[0]
                               if isinstance(v, tf.distribute.DistributedValues) else v),
                    next(distributed_iterator))
                break
            iterator = None  # Keras resets the epoch iterator after the build.
        if (data_batch is not None and accumulating and isinstance(data_batch[0], dict)
                and len(data_batch[0]["token_ids"].shape) == 3):
            # Grouped micro-batches [batch, steps, seq] (fit, not evaluate): build from one.
            data_batch = self._micro_batches(*data_batch[:2])[0]
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
