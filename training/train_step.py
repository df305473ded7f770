"""The TensorFlow train step: XLA forward and backward per replica, optimizer outside XLA.

Keras' whole-step XLA (`jit_compile=True`) cannot run with more than one replica on CPU
(XLA has no CPU collectives, and mirrored variables live on other devices). Compiling only
the loss and gradients keeps XLA's speed and leaves the cross-replica sum and the variable
updates to tf.distribute.
"""

import keras
import tensorflow as tf


class XlaGradientsTrainStep:
    """Mixin for a task model that defines `loss_counts(y)` and `loss_sums(y, y_pred)`.

    Loss terms are per-replica sums divided by *global* counts (all-reduced before the XLA
    call), so R replicas reproduce one replica on the global batch exactly.
    """

    def compile(self, *args, jit_compile=True, **kwargs):
        """`jit_compile` here means: XLA-compile the loss and gradients."""
        super().compile(*args, jit_compile=False, **kwargs)
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

    def train_step(self, data):
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        counts = self.loss_counts(y)
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync if context is not None else 1
        if replicas > 1:
            counts = context.all_reduce(tf.distribute.ReduceOp.SUM, counts)
        loss, gradients, y_pred = self._loss_and_gradients(x, y, counts)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))
        # `loss` is this replica's share of the global loss; the tracker averages replicas.
        self._loss_tracker.update_state(loss * replicas)
        return self.compute_metrics(x, y, y_pred)
