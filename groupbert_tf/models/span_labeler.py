"""Span extraction (SQuAD-style): a start and an end logit per token."""

import keras
from keras import ops

from groupbert_tf.layers.initializers import truncated_normal
from groupbert_tf.models.encoder import ENCODER_INPUTS
from groupbert_tf.models.task import Task

# Added to the logits of padding positions: softmax gives them zero probability in float32
# and bfloat16 alike, and no decoder can pick them.
PADDING_LOGIT = -10000.0


@keras.saving.register_keras_serializable(package="groupbert_tf")
class GroupBertSpanLabeler(Task):
    """Start/end logits per token over the encoder's sequence output.

    Inputs: `token_ids`, `segment_ids`, `padding_mask` [B, S]. Output:
    {"start_logits": [B, S], "end_logits": [B, S]} (float32; padding positions get
    PADDING_LOGIT). Labels: {"start_positions": int [B], "end_positions": int [B]}; a
    window that does not contain the answer points both at [CLS] (position 0), as in BERT.
    Loss: mean of the start and end cross-entropies, each a sum over a count. Served on
    (question, context) pairs, with each word piece's byte offsets in its text.
    """

    serving_text_inputs = ("text_a", "text_b")
    serving_offsets = True

    def __init__(self, config=None, encoder=None, preprocessor=None, dropout=0.1, dtype=None,
                 **kwargs):
        super().__init__(config=config, encoder=encoder, preprocessor=preprocessor, dtype=dtype,
                         **kwargs)
        self.dropout_rate = dropout
        self.dropout = keras.layers.Dropout(dropout, name="span_dropout")
        self.span_head = keras.layers.Dense(
            2, kernel_initializer=truncated_normal(self.config.initializer_range),
            name="span_head", dtype=dtype)
        self.span_head.build((None, None, self.config.hidden_size))
        self.loss_tracker_ = keras.metrics.Mean(name="span_loss")
        self.start_accuracy = keras.metrics.SparseCategoricalAccuracy(name="start_accuracy")
        self.end_accuracy = keras.metrics.SparseCategoricalAccuracy(name="end_accuracy")

    def call(self, inputs, training=None):
        encoded = self.encoder({name: inputs[name] for name in ENCODER_INPUTS}, training=training)
        hidden = self.dropout(encoded["sequence_output"], training=training)
        logits = ops.cast(self.span_head(hidden), "float32")  # [B, S, 2]
        padding = 1.0 - ops.cast(inputs["padding_mask"], "float32")
        logits = logits + PADDING_LOGIT * padding[:, :, None]
        return {"start_logits": logits[:, :, 0], "end_logits": logits[:, :, 1]}

    def serving_outputs(self, inputs):
        return self(inputs, training=False)

    def loss_counts(self, y):
        return {"span": ops.cast(ops.shape(y["start_positions"])[0], "float32")}

    def loss_sums(self, y, y_pred):
        start = keras.losses.sparse_categorical_crossentropy(
            y["start_positions"], y_pred["start_logits"], from_logits=True)
        end = keras.losses.sparse_categorical_crossentropy(
            y["end_positions"], y_pred["end_logits"], from_logits=True)
        return {"span": 0.5 * (ops.sum(start) + ops.sum(end))}

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        mean, count = self.mean_losses(y, y_pred)["span"]
        self.loss_tracker_.update_state(mean, sample_weight=count)
        self.start_accuracy.update_state(y["start_positions"], y_pred["start_logits"])
        self.end_accuracy.update_state(y["end_positions"], y_pred["end_logits"])
        return self.get_metrics_result()

    @property
    def metrics(self):
        return [*super().metrics, self.loss_tracker_, self.start_accuracy, self.end_accuracy]

    def get_config(self):
        return {**super().get_config(), "dropout": self.dropout_rate}
