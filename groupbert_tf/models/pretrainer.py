"""GroupBERT pre-training model: encoder + tied MLM head + NSP head; loss = MLM + NSP."""

import keras
from keras import ops

from groupbert_tf.layers.initializers import truncated_normal
from groupbert_tf.layers.masked_lm_head import MaskedLMHead
from groupbert_tf.models.encoder import encoder_inputs
from groupbert_tf.models.task import Task, sequence_weights


@keras.saving.register_keras_serializable(package="groupbert_tf")
class GroupBertPretrainer(Task):
    """Masked-LM and next-sentence-prediction pre-training.

    Inputs: `token_ids`, `segment_ids`, `padding_mask` [B, S] and `masked_lm_positions` [B, P].
    Labels: `masked_lm_ids` [B, P], `masked_lm_weights` [B, P] (0 on unused slots),
    `next_sentence_labels` [B] (0 = IsNext, 1 = NotNext, as Google's BERT data).

    Packed rows (training/data/packing.py) add `sequence_ids` [B, S] and `cls_positions` [B, k] to
    the inputs; `next_sentence_labels` is then [B, k] and the labels hold `sequence_weights`
    [B, k] (1.0 on slots with a sequence): NSP runs on every sequence's [CLS], MLM on all
    masked tokens of the row.

    Each loss term is a sum divided by a count (`loss_sums`, `loss_counts`). A distributed
    train step divides the per-replica sums by the global counts, so N replicas compute exactly
    the loss and gradients of one replica on the whole batch.
    """

    def __init__(self, config=None, encoder=None, preprocessor=None, dtype=None, **kwargs):
        super().__init__(config=config, encoder=encoder, preprocessor=preprocessor, dtype=dtype,
                         **kwargs)
        self.mlm_head = MaskedLMHead(
            self.encoder.embeddings.word_embeddings,
            layer_norm_epsilon=self.config.layer_norm_epsilon,
            gelu_approximate=self.config.gelu_approximate,
            initializer_range=self.config.initializer_range,
            name="mlm_head", dtype=dtype)
        self.nsp_head = keras.layers.Dense(
            2, kernel_initializer=truncated_normal(self.config.initializer_range),
            name="nsp_head", dtype=dtype)
        self.mlm_head.build((None, None, self.config.hidden_size))
        self.nsp_head.build((None, self.config.hidden_size))
        self.mlm_loss_tracker = keras.metrics.Mean(name="mlm_loss")
        self.nsp_loss_tracker = keras.metrics.Mean(name="nsp_loss")
        self.mlm_accuracy = keras.metrics.SparseCategoricalAccuracy(name="mlm_accuracy")
        self.nsp_accuracy = keras.metrics.SparseCategoricalAccuracy(name="nsp_accuracy")

    def call(self, inputs, training=None):
        encoded = self.encoder(encoder_inputs(inputs), training=training)
        pooled = encoded["pooled_output"]
        if "cls_positions" in inputs:
            pooled = self.encoder.pool(encoded["sequence_output"], inputs["cls_positions"])
        return {
            "mlm_logits": self.mlm_head(encoded["sequence_output"], inputs["masked_lm_positions"]),
            "nsp_logits": ops.cast(self.nsp_head(pooled), "float32"),
        }

    def serving_outputs(self, inputs):
        """Encoder outputs and NSP probabilities (index 0 = IsNext, 1 = NotNext)."""
        encoded = self.encoder(encoder_inputs(inputs), training=False)
        nsp_logits = ops.cast(self.nsp_head(encoded["pooled_output"]), "float32")
        return {"sequence_output": encoded["sequence_output"],
                "pooled_output": encoded["pooled_output"],
                "nsp_probabilities": ops.softmax(nsp_logits, axis=-1)}

    def default_optimizer(self):
        """AdamW at BERT's pre-training rate 1e-4 (`python -m training.pretrain` uses LAMB
        in the reference form instead: training/optimization.py)."""
        optimizer = super().default_optimizer()
        optimizer.learning_rate = 1e-4
        return optimizer

    def loss_counts(self, y):
        """How many items each loss term averages over (local to this replica)."""
        return {
            "mlm": ops.sum(ops.cast(y["masked_lm_weights"], "float32")),
            "nsp": ops.sum(sequence_weights(y, y["next_sentence_labels"])),
        }

    def loss_sums(self, y, y_pred):
        weights = ops.cast(y["masked_lm_weights"], "float32")
        mlm = keras.losses.sparse_categorical_crossentropy(
            y["masked_lm_ids"], y_pred["mlm_logits"], from_logits=True)
        nsp = keras.losses.sparse_categorical_crossentropy(
            y["next_sentence_labels"], y_pred["nsp_logits"], from_logits=True)
        nsp_weights = sequence_weights(y, y["next_sentence_labels"])
        return {"mlm": ops.sum(mlm * weights), "nsp": ops.sum(nsp * nsp_weights)}

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        losses = self.mean_losses(y, y_pred)
        self.mlm_loss_tracker.update_state(losses["mlm"][0], sample_weight=losses["mlm"][1])
        self.nsp_loss_tracker.update_state(losses["nsp"][0], sample_weight=losses["nsp"][1])
        self.mlm_accuracy.update_state(y["masked_lm_ids"], y_pred["mlm_logits"],
                                       sample_weight=y["masked_lm_weights"])
        self.nsp_accuracy.update_state(
            y["next_sentence_labels"], y_pred["nsp_logits"],
            sample_weight=sequence_weights(y, y["next_sentence_labels"]))
        return self.get_metrics_result()

    @property
    def metrics(self):
        return [*super().metrics, self.mlm_loss_tracker, self.nsp_loss_tracker,
                self.mlm_accuracy, self.nsp_accuracy]
