"""The base of the task models: losses as sums over items divided by item counts."""

import keras
from keras import ops


def sequence_weights(y, labels):
    """1.0 per real sequence: the `sequence_weights` [B, k] of packed rows
    (training/packing.py; 0 on empty slots), else one per row, shaped like `labels`."""
    if isinstance(y, dict) and "sequence_weights" in y:
        return ops.cast(y["sequence_weights"], "float32")
    return ops.ones(ops.shape(labels), "float32")


class TaskModel(keras.Model):
    """A task model defines `loss_counts(y)` (items each loss term averages over) and
    `loss_sums(y, y_pred)` (the summed per-item losses).

    Keeping the two apart lets the distributed train step (training/train_step.py) divide each
    replica's sums by the *global* counts, so R replicas compute exactly the loss and
    gradients of one replica on the whole batch.
    """

    def loss_counts(self, y):
        raise NotImplementedError

    def loss_sums(self, y, y_pred):
        raise NotImplementedError

    def mean_losses(self, y, y_pred, counts=None):
        """{term: (mean loss, count)}; max(count, 1) makes an empty term zero, not NaN."""
        counts = self.loss_counts(y) if counts is None else counts
        sums = self.loss_sums(y, y_pred)
        return {name: (sums[name] / ops.maximum(counts[name], 1.0), counts[name])
                for name in sums}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True,
                     counts=None):
        return sum(mean for mean, _ in self.mean_losses(y, y_pred, counts).values())
