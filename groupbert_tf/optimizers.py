"""The reference LAMB update rule and learning-rate schedule, in keras.ops only.

They live here, outside training/ (which imports TensorFlow), so a run on the JAX backend
(benchmarks/pareto_jax.py) trains with exactly the rule and schedule of the TensorFlow
trainer. training/optimization.py adds the TensorFlow-only cross-replica clipping on top and
holds the registered optimizer classes (`groupbert_tf>Lamb`, `groupbert_tf>AdamW`).
"""

import keras
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


class Lamb(keras.optimizers.Lamb):
    """LAMB as in the reference: decay inside the trust ratio, none for biases and norms
    (Keras' `Lamb` decays outside the trust ratio and adapts every variable).

    Global-norm clipping is Keras' own (one replica). Not registered for serialization:
    `training.optimization.Lamb` (this plus cross-replica clipping) is the registered one.
    """

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

