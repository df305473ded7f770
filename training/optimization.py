"""Optimizers and learning-rate schedule of the reference recipes (LAMB and AdamW).

Two departures from stock Keras 3.15.1, both to match the reference BERT/GroupBERT LAMB:
- LAMB's weight decay is part of the update whose norm sets the trust ratio, and biases and
  LayerNorm parameters get neither weight decay nor layer adaptation (Keras' `Lamb` decays
  outside the trust ratio and adapts every variable). That rule and the schedule are
  backend-agnostic and live in groupbert_tf/optimizers.py (the JAX path uses them too).
- Global-norm clipping is applied to the cross-replica gradient. Keras clips each replica's
  gradient before summing them, which changes the result as soon as there are two replicas.
"""

import keras
import tensorflow as tf

from groupbert_tf import optimizers
# Re-exported: the schedule and the exclusions are backend-agnostic (groupbert_tf/optimizers.py).
from groupbert_tf.optimizers import EXCLUDED_FROM_DECAY, WarmupPolynomialDecay


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
class Lamb(CrossReplicaClipping, optimizers.Lamb):
    """LAMB as in the reference (groupbert_tf/optimizers.py) with cross-replica clipping."""


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
