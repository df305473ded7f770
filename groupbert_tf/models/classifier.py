"""Sequence classification: encoder + dropout + Dense(num_labels) on the pooled output."""

import keras
from keras import ops

from groupbert_tf.layers.initializers import truncated_normal
from groupbert_tf.models.encoder import ENCODER_INPUTS, GroupBertEncoder, as_config
from groupbert_tf.models.task_model import TaskModel


def _labels(y, key):
    return y[key] if isinstance(y, dict) else y


@keras.saving.register_keras_serializable(package="groupbert_tf")
class GroupBertClassifier(TaskModel):
    """Single-sentence or sentence-pair classification on the pooled [CLS] output.

    Inputs: `token_ids`, `segment_ids`, `padding_mask` [B, S]. Output: {"logits": [B, L]}
    (float32). Labels: {"labels": int [B]} (a bare [B] tensor works too).

    The loss is a sum divided by a count (`loss_sums`, `loss_counts`), like the pre-trainer,
    so the distributed train step of `training.train_step` divides by the global batch.
    """

    def __init__(self, config=None, num_labels=2, encoder=None, dropout=0.1, dtype=None,
                 **kwargs):
        super().__init__(dtype=dtype, **kwargs)
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {num_labels}")
        self.encoder = encoder if encoder is not None else GroupBertEncoder(config, dtype=dtype)
        self.config = self.encoder.config
        self.num_labels = num_labels
        self.dropout_rate = dropout
        self.dropout = keras.layers.Dropout(dropout, name="classifier_dropout")
        self.classifier = keras.layers.Dense(
            num_labels, kernel_initializer=truncated_normal(self.config.initializer_range),
            name="classifier", dtype=dtype)
        self.classifier.build((None, self.config.hidden_size))
        self.loss_tracker_ = keras.metrics.Mean(name="classification_loss")
        self.accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")

    def call(self, inputs, training=None):
        encoded = self.encoder({name: inputs[name] for name in ENCODER_INPUTS}, training=training)
        pooled = self.dropout(encoded["pooled_output"], training=training)
        return {"logits": ops.cast(self.classifier(pooled), "float32")}

    def loss_counts(self, y):
        return {"classification": ops.cast(ops.shape(_labels(y, "labels"))[0], "float32")}

    def loss_sums(self, y, y_pred):
        losses = keras.losses.sparse_categorical_crossentropy(
            _labels(y, "labels"), y_pred["logits"], from_logits=True)
        return {"classification": ops.sum(losses)}

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        mean, count = self.mean_losses(y, y_pred)["classification"]
        self.loss_tracker_.update_state(mean, sample_weight=count)
        self.accuracy.update_state(_labels(y, "labels"), y_pred["logits"])
        return self.get_metrics_result()

    @property
    def metrics(self):
        return [*super().metrics, self.loss_tracker_, self.accuracy]

    def get_config(self):
        return {"config": self.config.to_dict(), "num_labels": self.num_labels,
                "dropout": self.dropout_rate, "name": self.name}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        return cls(config=as_config(config.pop("config")), **config)
