"""Optimizers and learning-rate schedule of the reference recipes (LAMB and AdamW).

Two departures from stock Keras 3.15.1, both to match the reference BERT/GroupBERT LAMB:
- LAMB's weight decay is part of the update whose norm sets the trust ratio, and biases and
  LayerNorm parameters get neither weight decay nor layer adaptation (Keras' `Lamb` decays
  outside the trust ratio and adapts every variable).
- Global-norm clipping is applied to the cross-replica gradient. Keras clips each replica's
  gradient before summing them, which changes the result as soon as there are two replicas.
"""

import keras
import tensorflow as tf
from keras import ops

# Substrings of variable names that get no weight decay (and no LAMB adaptation).
EXCLUDED_FROM_DECAY = ("bias", "gamma", "beta")


@keras.saving.register_keras_serializable(package="groupbert_tf")
class WarmupPolynomialDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Warm up as (k / warmup_steps) ** warmup_power, then decay polynomially to `end_lr`.

    k = step + 1 is the update number (Keras passes the 0-based iteration), so the first
    update has a non-zero rate and update number `warmup_steps` is at the peak; the decay
    reaches `end_learning_rate` at step `total_steps`.
    `warmup_power=1` is linear warmup; the GroupBERT reference uses 0.5 (square-root warmup).
    """

    def __init__(self, peak_learning_rate, warmup_steps, total_steps, warmup_power=1.0,
                 decay_power=1.0, end_learning_rate=0.0):
        if total_steps <= 0:
            raise ValueError(f"total_steps must be > 0, got {total_steps}")
        if not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], "
                             f"got {warmup_steps}")
        self.peak_learning_rate = peak_learning_rate
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.warmup_power = warmup_power
        self.decay_power = decay_power
        self.end_learning_rate = end_learning_rate

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup = ops.power(ops.minimum((step + 1.0) / max(self.warmup_steps, 1), 1.0),
                           self.warmup_power)
        decay_steps = max(self.total_steps - self.warmup_steps, 1)
        progress = ops.clip((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        decayed = ((self.peak_learning_rate - self.end_learning_rate)
                   * ops.power(1.0 - progress, self.decay_power) + self.end_learning_rate)
        in_warmup = step < self.warmup_steps
        return ops.where(in_warmup, self.peak_learning_rate * warmup, decayed)

    def get_config(self):
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "warmup_power": self.warmup_power,
            "decay_power": self.decay_power,
            "end_learning_rate": self.end_learning_rate,
        }


class CrossReplicaClipping:
    """Clips the global norm of the summed gradient, not of each replica's share.

    Called in replica context before Keras sums gradients across replicas: we sum them
    here, clip, and hand each replica 1/R of the clipped total so Keras' sum restores it.
    """

    def _clip_gradients(self, grads):
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync if context is not None else 1
        if replicas == 1 or not self.global_clipnorm:
            return super()._clip_gradients(grads)
        summed = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        clipped, _ = tf.clip_by_global_norm(summed, self.global_clipnorm)
        return [g / replicas for g in clipped]


@keras.saving.register_keras_serializable(package="groupbert_tf")
class AdamW(CrossReplicaClipping, keras.optimizers.AdamW):
    """Keras AdamW with cross-replica global-norm clipping."""


@keras.saving.register_keras_serializable(package="groupbert_tf")
class Lamb(CrossReplicaClipping, keras.optimizers.Lamb):
    """LAMB as in the reference: decay inside the trust ratio, none for biases and norms."""

    def __init__(self, weight_decay_rate=0.01, **kwargs):
        kwargs.pop("weight_decay", None)  # Handled in update_step, not by Keras.
        super().__init__(**kwargs)
        self.weight_decay_rate = weight_decay_rate

    def _adapts(self, variable):
        return not any(name in variable.name for name in EXCLUDED_FROM_DECAY)

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        step = ops.cast(self.iterations + 1, variable.dtype)
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        self.assign_add(m, (gradient - m) * (1 - self.beta_1))
        self.assign_add(v, (ops.square(gradient) - v) * (1 - self.beta_2))
        m_hat = m / (1.0 - ops.power(ops.cast(self.beta_1, variable.dtype), step))
        v_hat = v / (1.0 - ops.power(ops.cast(self.beta_2, variable.dtype), step))
        update = m_hat / (ops.sqrt(v_hat) + self.epsilon)
        if self._adapts(variable):
            update = update + self.weight_decay_rate * variable
            w_norm = ops.sqrt(ops.sum(ops.square(variable)))
            u_norm = ops.sqrt(ops.sum(ops.square(update)))
            ratio = ops.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, 1.0)
            update = ratio * update
        self.assign_sub(variable, lr * update)

    def get_config(self):
        return {**super().get_config(), "weight_decay_rate": self.weight_decay_rate}


def create_optimizer(name, learning_rate, weight_decay=0.01, beta_1=0.9, beta_2=0.999,
                     epsilon=1e-6, global_clipnorm=1.0):
    """`lamb` or `adamw` with the reference's hyper-parameters and exclusions.

    Gradient accumulation is the train step's (groupbert_tf/tensorflow_train_step.py), not the optimizer's.
    """
    common = dict(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
                  global_clipnorm=global_clipnorm)
    if name == "lamb":
        return Lamb(weight_decay_rate=weight_decay, **common)
    if name == "adamw":
        optimizer = AdamW(weight_decay=weight_decay, **common)
        optimizer.exclude_from_weight_decay(var_names=list(EXCLUDED_FROM_DECAY))
        return optimizer
    raise ValueError(f"--optimizer must be 'lamb' or 'adamw', got {name!r}")
