"""Sequence classification: encoder + dropout + Dense(num_labels) on the pooled output."""

import keras
from keras import ops

from groupbert_tf.layers.initializers import truncated_normal
from groupbert_tf.models.encoder import encoder_inputs
from groupbert_tf.models.task import Task, sequence_weights


def _labels(y, key):
    return y[key] if isinstance(y, dict) else y


@keras.saving.register_keras_serializable(package="groupbert_tf")
class GroupBertClassifier(Task):
    """Single-sentence or sentence-pair classification on the pooled [CLS] output.

    Inputs: `token_ids`, `segment_ids`, `padding_mask` [B, S], or raw strings (one text, or a
    pair `(texts_a, texts_b)`) when built with a `preprocessor`. Output: {"logits": [B, L]}
    (float32). Labels: {"labels": int [B]} or a bare int [B].

        classifier = GroupBertClassifier.from_preset("runs/pretrain", num_labels=2)
        classifier.compile()          # AdamW 5e-5, the task's loss and accuracy
        classifier.fit(["a fine film", "a dull one"], [1, 0], batch_size=2)

    Packed rows (training/data/packing.py) add `sequence_ids` [B, S] and `cls_positions` [B, k]:
    each example is classified on its own [CLS], logits are [B, k, L], labels [B, k] with
    `sequence_weights` [B, k] (1.0 on slots with an example).
    """

    def __init__(self, config=None, num_labels=2, encoder=None, preprocessor=None, dropout=0.1,
                 dtype=None, **kwargs):
        super().__init__(config=config, encoder=encoder, preprocessor=preprocessor, dtype=dtype,
                         **kwargs)
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {num_labels}")
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
        encoded = self.encoder(encoder_inputs(inputs), training=training)
        pooled = encoded["pooled_output"]
        if "cls_positions" in inputs:
            pooled = self.encoder.pool(encoded["sequence_output"], inputs["cls_positions"])
        pooled = self.dropout(pooled, training=training)
        return {"logits": ops.cast(self.classifier(pooled), "float32")}

    def serving_outputs(self, inputs):
        logits = self(inputs, training=False)["logits"]
        return {"logits": logits, "probabilities": ops.softmax(logits, axis=-1)}

    def loss_counts(self, y):
        return {"classification": ops.sum(sequence_weights(y, _labels(y, "labels")))}

    def loss_sums(self, y, y_pred):
        losses = keras.losses.sparse_categorical_crossentropy(
            _labels(y, "labels"), y_pred["logits"], from_logits=True)
        weights = sequence_weights(y, _labels(y, "labels"))
        return {"classification": ops.sum(losses * weights)}

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        mean, count = self.mean_losses(y, y_pred)["classification"]
        self.loss_tracker_.update_state(mean, sample_weight=count)
        self.accuracy.update_state(_labels(y, "labels"), y_pred["logits"],
                                   sample_weight=sequence_weights(y, _labels(y, "labels")))
        return self.get_metrics_result()

    @property
    def metrics(self):
        return [*super().metrics, self.loss_tracker_, self.accuracy]

    def get_config(self):
        return {**super().get_config(), "num_labels": self.num_labels,
                "dropout": self.dropout_rate}
